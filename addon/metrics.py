"""Prometheus metrics of the data plane (docs/observability.md); addon/metrics_server.py serves them.

`Metrics.observe(record)` runs once per finished request on the event loop: a few µs, never raises. Series are
plain numbers written by that one thread (no lock: a histogram observation is a `bisect` and two additions) and
each label tuple is bound to its series once, so a request costs two dict lookups plus the additions. Metric
families are built only at scrape time, in the listener's thread (`MetricsServer`), and encoded by
prometheus_client (text format or OpenMetrics). Reads from that thread are safe under the GIL; a scrape racing
an observation may see a histogram's `_sum` one observation ahead of its buckets, never a torn value.

Label values come from the configuration (gateway and upstream names, target ids, provider families), the
ingress format, a status class, an attempt outcome or error kind from a fixed vocabulary, and a model *only*
when a target lists it (else "other"): never a key, key id or caller-chosen string. Past `MAX_SERIES` label
tuples per cache new ones fold into "other", so a bug cannot grow the series count without bound.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable, Container, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from addon.record import RequestRecord
from providers.errors import KINDS
from store.health_file import target_key

__all__ = ["CIRCUIT_VALUES", "LATENCY_BUCKETS", "OUTCOMES", "OVERHEAD_BUCKETS", "TTFT_BUCKETS",
           "HealthCollector", "Metrics", "SnapshotModels"]

log = logging.getLogger("aigw.metrics")

NONE = "none"    # label value of a field the request never got (no gateway, no target...)
OTHER = "other"  # label value of anything outside the configuration or a fixed vocabulary
MAX_SERIES = 4096  # distinct label tuples per cache before new ones fold into OTHER

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TTFT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}
OUTCOMES = frozenset({"ok", "connect", "timeout", "5xx", "429", "401", "403", "cut", "unsupported", "limited",
                      "error"})
LIMIT_SCOPES = frozenset({"key", "target"})
LIMIT_KINDS = frozenset({"requests", "tokens", "concurrent", "budget"})
ERROR_CLASSES = frozenset(KINDS)

_REQ = ("gateway", "upstream", "target", "provider", "ingress", "status_class", "stream")
_TOK = ("gateway", "upstream", "target", "provider", "model")
_ATT = ("upstream", "target", "provider", "outcome", "stream")


def _flag(value: bool) -> str:
    return "true" if value else "false"


class _Cell:
    """One counter series."""
    __slots__ = ("v",)

    def __init__(self) -> None:
        self.v = 0.0


class _Hist:
    """One histogram series: per-bucket (not cumulative) counts, the last one is +Inf."""
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # bisect_left: a value equal to a bound is "le" it
        self.sum += value


class _Family:
    """The series of one metric by label values; `collect` builds its prometheus_client family."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], bounds: tuple[float, ...] | None = None):
        self.name, self.doc, self.labels, self.bounds = name, doc, labels, bounds
        self.series: dict[tuple[str, ...], Any] = {}
        self._les = None if bounds is None else [floatToGoString(b) for b in bounds] + ["+Inf"]

    def child(self, *values: Any) -> Any:
        """The series of these label values, created at the first call (a cold path: once per tuple)."""
        values = tuple(str(v) for v in values)
        s = self.series.get(values)
        if s is None:
            s = self.series[values] = _Cell() if self.bounds is None else _Hist(self.bounds)
        return s

    def collect(self) -> Metric:
        items = list(self.series.items())  # one C-level copy: the event loop may add a series meanwhile
        if self._les is None:
            counter = CounterMetricFamily(self.name, self.doc, labels=self.labels)
            for values, cell in items:
                counter.add_metric(values, cell.v)
            return counter
        hist = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for values, h in items:
            total, buckets = 0, []
            for le, n in zip(self._les, list(h.counts)):
                total += n
                buckets.append((le, total))
            hist.add_metric(values, buckets, h.sum)
        return hist


class _ReqChildren:
    __slots__ = ("duration", "fail_open", "failovers", "overhead", "requests", "stream_errors", "ttft")


class _TokChildren:
    __slots__ = ("cached", "cost", "input", "output")


class LiveLike(Protocol):
    """What HealthCollector reads: `addon.live.LiveConfig` (its `health` board and current `snapshot`)."""
    health: Any
    @property
    def snapshot(self) -> Any: ...


class SnapshotModels:
    """The models listed by any target of the current snapshot, recomputed only when the snapshot changes.

    `SnapshotModels(lambda: live.snapshot if live else None)` is the `models` argument of `Metrics`."""

    def __init__(self, snapshot: Callable[[], Any]) -> None:
        self._get = snapshot
        self._snap: Any = None
        self._models: frozenset[str] = frozenset()

    def __call__(self) -> frozenset[str]:
        snap = self._get()
        if snap is not self._snap:
            models: set[str] = set()
            for upstream in (snap.upstreams() if snap is not None else ()):
                for t in upstream.targets:
                    models.update(t.models)
                    if t.default_model:
                        models.add(t.default_model)
            self._snap, self._models = snap, frozenset(models)
        return self._models


class HealthCollector:
    """Circuit state, in-flight attempts and TTFB EWMA of every configured target, read at scrape time."""

    def __init__(self, live: Callable[[], LiveLike | None]) -> None:
        self._live = live

    def collect(self) -> Iterator[Metric]:
        labels = ("gateway", "upstream", "target", "provider")
        state = GaugeMetricFamily("aigw_target_circuit_state",
                                  "Circuit breaker state per target: 0 closed, 1 half-open, 2 open.", labels=labels)
        inflight = GaugeMetricFamily("aigw_target_in_flight", "Upstream attempts in flight per target.",
                                     labels=labels)
        ewma = GaugeMetricFamily("aigw_target_ttfb_ewma_seconds",
                                 "Smoothed time to first byte per target (after its first success).", labels=labels)
        try:
            self._fill(state, inflight, ewma)
        except Exception:  # noqa: BLE001  (a half-loaded configuration must not fail the whole scrape)
            log.exception("aigw: reading circuit state for metrics failed")
        yield state
        yield inflight
        yield ewma

    def _fill(self, state: GaugeMetricFamily, inflight: GaugeMetricFamily, ewma: GaugeMetricFamily) -> None:
        live = self._live()
        if live is not None:
            board, snap, seen = live.health, live.snapshot, set()
            for upstream in snap.upstreams():
                gateway = snap.gateway(upstream.gateway_id) if upstream.gateway_id else None
                gw = gateway.name if gateway is not None else NONE
                for t in upstream.targets:
                    key = target_key(upstream.id, t.id)
                    values = (gw, upstream.name, t.id, t.provider or "passthrough")
                    if values in seen:  # names are unique per gateway, not per gateway *name*
                        values = (gw, f"{upstream.name}#{upstream.id}", t.id, values[3])
                    seen.add(values)
                    state.add_metric(values, CIRCUIT_VALUES.get(board.state(key), 2))
                    inflight.add_metric(values, board.in_flight(key))
                    seconds = board.ewma_ttfb(key)
                    if seconds is not None:
                        ewma.add_metric(values, seconds)


class Metrics:
    """Every aigw metric, exported through a private registry (`self.registry`, never the global one).

    models: the configured model names (a container, or a callable returning one — `SnapshotModels`); a served
    model outside it is labelled "other". process: also export process_* and python_gc_* metrics.
    `observe`, `request_started` and `request_finished` belong to the event loop (one thread)."""

    def __init__(self, *, models: Callable[[], Container[str]] | Container[str] | None = None,
                 process: bool = True) -> None:
        fixed: Container[str] = frozenset() if models is None or callable(models) else models
        self._models: Callable[[], Container[str]] = models if callable(models) else (lambda: fixed)
        self.in_flight = 0  # requests started and not finished
        self.errors = 0     # observe() calls that failed (a bug; never raised into the request path)
        F = _Family
        self._requests = F("aigw_requests", "Client requests finished.", _REQ)
        self._duration = F("aigw_request_duration_seconds", "Request start to the last byte handed to the proxy.",
                           ("gateway", "upstream", "stream"), LATENCY_BUCKETS)
        self._overhead = F("aigw_gateway_overhead_seconds",
                           "Time the gateway added: request time minus provider wait (streams: up to TTFT).",
                           ("gateway", "stream"), OVERHEAD_BUCKETS)
        self._ttft = F("aigw_ttft_seconds", "Streams: request start to the first content sent to the caller.",
                       ("gateway", "upstream", "target"), TTFT_BUCKETS)
        self._failovers = F("aigw_failovers", "Failed attempts followed by another attempt, or by none.",
                            ("gateway", "upstream"))
        self._fail_open = F("aigw_fail_open", "Requests sent while every target's circuit was open.",
                            ("gateway", "upstream"))
        self._stream_errors = F("aigw_stream_errors", "Committed streams that ended badly.",
                                ("gateway", "upstream", "target"))
        self._errors = F("aigw_request_errors", "Requests answered with a gateway error, by kind.",
                         ("gateway", "error_class"))
        self._attempts = F("aigw_upstream_attempts", "Upstream attempts by outcome.", _ATT)
        self._latency = F("aigw_upstream_latency_seconds",
                          "Attempts that got an HTTP answer: sending to the answer (streams: to the commit point).",
                          ("upstream", "target", "provider", "stream"), LATENCY_BUCKETS)
        self._input = F("aigw_input_tokens", "Input tokens reported by providers (cached ones included).", _TOK)
        self._output = F("aigw_output_tokens", "Output tokens reported by providers.", _TOK)
        self._cached = F("aigw_cached_tokens", "Input tokens read from a provider's prompt cache.", _TOK)
        self._cost = F("aigw_estimated_cost", "Estimated cost from the targets' pricing (in its currency).", _TOK)
        self._limited = F("aigw_rate_limited", "Requests refused by a key's limit, and targets skipped by theirs "
                                               "(scope key or target).", ("scope", "limit"))
        self._families = (self._requests, self._duration, self._overhead, self._ttft, self._failovers,
                          self._fail_open, self._stream_errors, self._errors, self._attempts, self._latency,
                          self._input, self._output, self._cached, self._cost, self._limited)
        self.limit_storage_errors = 0  # limit-storage (Redis) calls that failed or timed out
        self.shared_state_errors = 0  # shared health / sticky-pin (Redis) calls that failed, timed out or were dropped
        self._req_cache: dict[tuple, _ReqChildren] = {}
        self._tok_cache: dict[tuple, _TokChildren] = {}
        self._att_cache: dict[tuple, tuple[_Cell, _Hist]] = {}
        self._err_cache: dict[tuple, _Cell] = {}
        self._access_log: Any = None
        self.registry = CollectorRegistry()
        self.registry.register(self)  # type: ignore[arg-type]  # collect() below
        if process:
            ProcessCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    # -- the request path -----------------------------------------------------------------------------------
    def request_started(self) -> None:
        self.in_flight += 1

    def request_finished(self) -> None:
        if self.in_flight > 0:
            self.in_flight -= 1

    def observe(self, record: RequestRecord) -> None:
        """Count one finished request. Never raises (a failure is counted in aigw_metrics_errors_total)."""
        try:
            self._observe(record)
        except Exception:  # noqa: BLE001  (never into the request path)
            self.errors += 1

    def _observe(self, rec: RequestRecord) -> None:
        gw = rec.gateway or NONE
        up = rec.upstream or NONE
        target = rec.target_id or NONE
        provider = rec.provider or NONE
        stream = rec.stream
        key = (gw, up, target, provider, rec.ingress or NONE, rec.status_class, stream)
        c = self._req_cache.get(key) or self._bind_request(key)
        c.requests.v += 1
        c.duration.observe(rec.duration_s)
        c.overhead.observe(rec.overhead_s)
        if c.ttft is not None and rec.ttft_s is not None:
            c.ttft.observe(rec.ttft_s)
        if rec.attempts:
            failovers = rec.failovers
            if failovers:
                c.failovers.v += failovers
            cache = self._att_cache
            for a in rec.attempts:
                akey = (up, a.target_id or NONE, a.provider or NONE, a.outcome, stream)
                counter, latency = cache.get(akey) or self._bind_attempt(akey)
                counter.v += 1
                if a.status is not None:
                    latency.observe(a.seconds)
        if rec.fail_open:
            c.fail_open.v += 1
        if c.stream_errors is not None and rec.stream_error:
            c.stream_errors.v += 1
        if rec.error_class is not None:
            ekey = (gw, rec.error_class)
            (self._err_cache.get(ekey) or self._bind_error(ekey)).v += 1
        usage, cost = rec.usage, rec.cost
        if usage.reported or cost:
            model = rec.served_model or rec.requested_model
            model = (model if model in self._models() else OTHER) if model else NONE
            tkey = (gw, up, target, provider, model)
            t = self._tok_cache.get(tkey) or self._bind_tokens(tkey)
            if usage.input_tokens > 0:
                t.input.v += usage.input_tokens
            if usage.output_tokens > 0:
                t.output.v += usage.output_tokens
            if usage.cached_tokens > 0:
                t.cached.v += usage.cached_tokens
            if cost is not None and cost > 0:
                t.cost.v += cost

    def limit_denied(self, scope: str, limit: str) -> None:
        """A key's request refused by a limit (scope "key"), or a target skipped by one ("target")."""
        self._limited.child(scope if scope in LIMIT_SCOPES else OTHER, limit if limit in LIMIT_KINDS else OTHER).v += 1

    def limit_storage_error(self) -> None:
        self.limit_storage_errors += 1

    def shared_state_error(self) -> None:
        self.shared_state_errors += 1

    # -- binding label tuples to series (once per tuple) -----------------------------------------------------
    @staticmethod
    def _bind(cache: dict, key: tuple, overflow: Callable[[tuple], tuple], make: Callable[..., Any]) -> Any:
        """Bind `key`'s series, or once the cache is full those of its overflow tuple (a few, then none new)."""
        if len(cache) >= MAX_SERIES:
            key = overflow(key)
            found = cache.get(key)
            if found is not None:
                return found
        made = cache[key] = make(*key)
        return made

    def _bind_request(self, key: tuple) -> _ReqChildren:
        def make(gw: str, up: str, target: str, provider: str, ingress: str, status_class: str,
                 stream: bool) -> _ReqChildren:
            c, flag = _ReqChildren(), _flag(stream)
            c.requests = self._requests.child(gw, up, target, provider, ingress, status_class, flag)
            c.duration = self._duration.child(gw, up, flag)
            c.overhead = self._overhead.child(gw, flag)
            c.failovers = self._failovers.child(gw, up)
            c.fail_open = self._fail_open.child(gw, up)
            # Stream-only series exist only for stream tuples (no zero TTFT histogram for plain answers).
            c.ttft = self._ttft.child(gw, up, target) if stream else None
            c.stream_errors = self._stream_errors.child(gw, up, target) if stream else None
            return c
        return self._bind(self._req_cache, key, lambda k: (OTHER,) * 5 + k[5:], make)

    def _bind_attempt(self, key: tuple) -> tuple[_Cell, _Hist]:
        def make(up: str, target: str, provider: str, outcome: str, stream: bool) -> tuple[_Cell, _Hist]:
            flag = _flag(stream)
            return (self._attempts.child(up, target, provider, outcome if outcome in OUTCOMES else OTHER, flag),
                    self._latency.child(up, target, provider, flag))
        return self._bind(self._att_cache, key, lambda k: (OTHER,) * 3 + k[3:], make)

    def _bind_error(self, key: tuple) -> _Cell:
        def make(gw: str, error_class: str) -> _Cell:
            return self._errors.child(gw, error_class if error_class in ERROR_CLASSES else OTHER)
        return self._bind(self._err_cache, key, lambda k: (OTHER, k[1]), make)

    def _bind_tokens(self, key: tuple) -> _TokChildren:
        def make(*labels: str) -> _TokChildren:
            t = _TokChildren()
            t.input, t.output = self._input.child(*labels), self._output.child(*labels)
            t.cached, t.cost = self._cached.child(*labels), self._cost.child(*labels)
            return t
        return self._bind(self._tok_cache, key, lambda k: (OTHER,) * 5, make)

    # -- scrape time -----------------------------------------------------------------------------------------
    def watch_health(self, live: Callable[[], LiveLike | None]) -> None:
        """Export circuit state per target from `live()` (a LiveConfig, or None before one is loaded)."""
        self.registry.register(HealthCollector(live))  # type: ignore[arg-type]

    def watch_access_log(self, access_log: Any) -> None:
        """Export an AccessLog's `written` / `dropped` / `errors` line counts."""
        self._access_log = access_log

    def collect(self) -> Iterator[Metric]:
        """The registry's view (prometheus_client's collector protocol); runs in the scraping thread."""
        for family in self._families:
            yield family.collect()
        yield GaugeMetricFamily("aigw_requests_in_flight", "Client requests being handled.", value=self.in_flight)
        yield CounterMetricFamily("aigw_metrics_errors", "observe() calls that failed.", value=self.errors)
        yield CounterMetricFamily("aigw_limit_storage_errors", "Limit-storage (Redis) calls that failed or timed "
                                  "out; the on-error policy applied.", value=self.limit_storage_errors)
        yield CounterMetricFamily("aigw_shared_state_errors", "Shared circuit-state and sticky-pin (Redis) calls "
                                  "that failed or timed out, and updates dropped; local state applied.",
                                  value=self.shared_state_errors)
        alog = self._access_log
        if alog is not None:
            yield CounterMetricFamily("aigw_access_log_lines", "Access-log lines written.", value=alog.written)
            yield CounterMetricFamily("aigw_access_log_dropped", "Access-log lines dropped: queue full.",
                                      value=alog.dropped)
            yield CounterMetricFamily("aigw_access_log_errors", "Access-log lines lost to write errors.",
                                      value=alog.errors)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The scrape body and its content type for an Accept header (OpenMetrics when asked for)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
