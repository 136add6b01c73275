"""Passive health of provider targets: a circuit breaker fed by live traffic.

Active probes cost money (a probe against an LLM endpoint is a billed completion), so health is learned
from the requests the gateway sends anyway. Per target key (``"<upstream_id>/<target_id>"``) a circuit is

- **closed**: traffic flows. It opens after ``threshold`` consecutive failures that all fall within
  ``interval`` seconds, or (when ``error_ratio`` is set) when the failure ratio over the last ``interval``
  seconds reaches ``error_ratio`` with at least ``min_requests`` outcomes, or at once when a 429 says when to
  come back (``Retry-After``).
- **open**: no traffic for the cool-down (``interval`` seconds, or the provider's ``Retry-After``).
- **half-open**: the cool-down has elapsed; exactly one request (the trial) is let through. Its success
  closes the circuit, its failure opens it for another full cool-down.

"Consecutive" is deliberate: on a busy target a handful of scattered 5xx among thousands of successes must
not ban it for everyone; the error-ratio rule is the tool for a target that fails *often* but not always.

Active probes (``health_checks.active``, off by default) feed the same circuits: a failed probe counts like a
failed request; a good probe is weaker evidence than a served completion, so it only stands in for the
half-open trial (``probe_success``) and never resets a closed circuit's failure run or feeds the TTFB EWMA.

A 401/403 says the *credential* is broken, not the provider: ``failure(..., health=False)`` keeps the error
visible but never counts towards opening, so one bad key does not take a provider away from other upstreams.

Several proxy processes share their verdicts (addon/shared_state.py): the board tells a listener
(``on_transition``) each time one of its circuits opens (or its cool-down is extended), goes half-open or closes,
and ``apply_shared`` takes what another process decided — an open circuit stays out here until its end without
counting as a failure here, a close closes it — without telling the listener again (no echo). A circuit's
``origin`` (in ``snapshot``) names the process whose verdict it holds, None for this one's own.

Pure logic, one event loop: no locks, no I/O; ``clock`` (monotonic seconds) and ``wall`` (epoch seconds, for
display and for the cool-down ends processes exchange) are injectable so tests are deterministic. Every operation
is O(1) amortised per key.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from addon.health_policy import HealthPolicy

__all__ = ["HealthPolicy", "HealthBoard", "Transition", "CLOSED", "OPEN", "HALF_OPEN", "STATES"]

log = logging.getLogger("aigw.health")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)

EWMA_ALPHA = 0.3
RETRY_AFTER_MIN_S = 1.0
RETRY_AFTER_MAX_S = 3600.0
# The error-ratio window is `interval` seconds cut into this many buckets: O(1) memory per key however busy
# the target is, at the price of the window's far edge being up to interval/_BUCKETS seconds coarse.
_BUCKETS = 10


@dataclass(frozen=True, slots=True)
class Transition:
    """One circuit changed state: what a board tells its listener, and what processes exchange.

    ``until``: epoch seconds when an open circuit admits traffic again (None for the other states)."""

    key: str
    state: str
    until: float | None = None
    reason: str | None = None


class _Circuit:
    """Mutable state of one target key. Slots: thousands of these may live for the process lifetime."""

    __slots__ = (
        "state", "open_until", "trial", "in_flight", "requests", "failures", "consecutive", "recent",
        "last_error", "last_error_wall", "last_failure_at", "ewma", "win", "win_width", "win_n", "win_f",
        "origin", "origin_reason",
    )

    def __init__(self) -> None:
        self.state = CLOSED
        self.open_until = 0.0
        self.trial = False  # a half-open trial request is in flight
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.consecutive = 0
        self.recent: deque[float] = deque(maxlen=1)  # timestamps of the current run of failures
        self.last_error: str | None = None
        self.last_error_wall: float | None = None
        self.last_failure_at: float | None = None  # monotonic; health-relevant failures only
        self.ewma: float | None = None
        self.win: deque[list] = deque()  # [bucket_index, outcomes, failures], oldest first
        self.win_width = 0.0
        self.win_n = 0
        self.win_f = 0
        self.origin: str | None = None  # the process whose verdict this state is (None: this process's own)
        self.origin_reason: str | None = None  # why that process opened it

    def record(self, now: float, interval: float, failed: bool) -> None:
        """Add one outcome to the sliding error-ratio window, dropping buckets older than `interval`."""
        width = interval / _BUCKETS
        if width != self.win_width:  # the policy changed: old buckets are not comparable
            self.reset_window()
            self.win_width = width
        idx = int(now // width)
        win = self.win
        while win and win[0][0] <= idx - _BUCKETS:
            _, n, f = win.popleft()
            self.win_n -= n
            self.win_f -= f
        if win and win[-1][0] == idx:
            bucket = win[-1]
            bucket[1] += 1
            bucket[2] += failed
        else:
            win.append([idx, 1, int(failed)])
        self.win_n += 1
        self.win_f += failed

    def reset_window(self) -> None:
        self.win.clear()
        self.win_n = self.win_f = 0


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HealthBoard:
    """Circuit state of every target key the proxy has talked to.

    Call order per attempt: ``is_available`` (via the balancer) → ``begin`` → ``success`` or ``failure`` →
    ``end`` (in ``finally``). Unknown keys are closed and allocate nothing until ``begin``/``success``/``failure``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        self._clock = clock
        self._wall = wall
        self._circuits: dict[str, _Circuit] = {}
        # Told of every transition of this process's own making (addon/shared_state.py); must not raise or block.
        self.on_transition: Callable[[Transition], None] | None = None

    def _get(self, key: str) -> _Circuit:
        c = self._circuits.get(key)
        if c is None:
            c = self._circuits[key] = _Circuit()
        return c

    # -- the request path -------------------------------------------------------------------------------

    def is_available(self, key: str, policy: HealthPolicy) -> bool:
        """May a new request go to `key`? Half-open admits only while no trial is in flight."""
        c = self._circuits.get(key)
        if c is None or c.state == CLOSED or not policy.breaker:
            return True
        if c.state == OPEN:
            return self._clock() >= c.open_until  # cooled down: the next request will be the trial
        return not c.trial

    def begin(self, key: str, policy: HealthPolicy) -> None:
        """A request starts on `key`. If the circuit is not closed, this request becomes the trial.

        That includes a fail-open request sent to a circuit still cooling down: its success is the best
        evidence there is that the target is back, so it may close the circuit too.
        """
        c = self._get(key)
        c.in_flight += 1
        c.requests += 1
        if c.state != CLOSED and policy.breaker and not c.trial:
            was = c.state
            c.state = HALF_OPEN
            c.trial = True
            if was == OPEN:
                self._emit(key, c)

    def end(self, key: str) -> None:
        """A request on `key` is over (always called). Releases a trial that ended without a verdict
        (cancelled, or a credential error), so the next request can try; a trial that succeeded or failed
        has already moved the circuit. Cost of not knowing *which* request ends: if an older request ends
        while a trial is in flight, one extra trial may be admitted — harmless, never a stuck circuit."""
        c = self._circuits.get(key)
        if c is None:
            return
        if c.in_flight > 0:
            c.in_flight -= 1
        if c.trial and c.state == HALF_OPEN:
            c.trial = False

    def success(self, key: str, policy: HealthPolicy, ttfb_s: float | None = None) -> None:
        """The target answered well: closes a half-open circuit, ends the failure run, feeds the TTFB EWMA."""
        c = self._get(key)
        c.consecutive = 0
        c.recent.clear()
        c.record(self._clock(), policy.interval, failed=False)
        if ttfb_s is not None:
            c.ewma = ttfb_s if c.ewma is None else c.ewma + EWMA_ALPHA * (ttfb_s - c.ewma)
        if c.state == HALF_OPEN:
            self._close(c)  # judged from now on on what the recovered target does
            self._emit(key, c)

    def failure(
        self,
        key: str,
        policy: HealthPolicy,
        reason: str,
        *,
        retry_after_s: float | None = None,
        health: bool = True,
        probe: bool = False,
    ) -> None:
        """The target failed. `health=False` (401/403): visible, never counted. `retry_after_s` (429): open
        now for that long, bounded to [1, 3600] s — the provider said when to come back. `probe`: the failure
        of an active probe, which may open the circuit when probes are on even if passive health is off."""
        c = self._get(key)
        now = self._clock()
        c.failures += 1
        c.last_error = reason
        c.last_error_wall = self._wall()
        if not health:
            return
        c.last_failure_at = now
        c.consecutive += 1
        if c.recent.maxlen != policy.threshold:
            c.recent = deque(c.recent, maxlen=policy.threshold)
        c.recent.append(now)
        c.record(now, policy.interval, failed=True)
        if not (policy.passive or (probe and policy.active)):
            return
        if retry_after_s is not None:
            self._open(key, c, now, min(max(float(retry_after_s), RETRY_AFTER_MIN_S), RETRY_AFTER_MAX_S))
        elif c.state == HALF_OPEN or (c.state == CLOSED and self._tripped(c, policy, now)):
            self._open(key, c, now, policy.interval)

    def probe_success(self, key: str, policy: HealthPolicy) -> bool:
        """An active probe got a good answer; True when that closed the circuit.

        A probe (e.g. GET /v1/models) proves the target is reachable, not that completions work, so it is weaker
        evidence than a served request: on a closed circuit it changes nothing (a failing completion endpoint
        behind a healthy model list must still trip), it never cuts a cool-down short (a Retry-After is the
        provider's word), and it does not feed the TTFB EWMA. Once the cool-down is over it stands in for the
        half-open trial, so a recovered target is back without a caller having to risk a request on it — unless
        a real trial is already in flight, which then decides.
        """
        c = self._get(key)  # a probed target is known (and published as closed) even before any traffic
        if c.state == CLOSED or not policy.breaker:
            return False
        if c.state == OPEN and self._clock() < c.open_until:
            return False
        if c.state == HALF_OPEN and c.trial:
            return False
        self._close(c)
        self._emit(key, c)
        return True

    @staticmethod
    def _tripped(c: _Circuit, policy: HealthPolicy, now: float) -> bool:
        recent = c.recent
        if len(recent) >= policy.threshold and now - recent[0] <= policy.interval:
            return True
        ratio = policy.error_ratio
        return ratio is not None and c.win_n >= policy.min_requests and c.win_f >= ratio * c.win_n

    def _open(self, key: str, c: _Circuit, now: float, cooldown: float) -> None:
        until = now + cooldown
        if c.state == OPEN and c.open_until > until:
            until = c.open_until  # never shorten a cool-down already running (e.g. a longer Retry-After)
        moved = c.state != OPEN or until != c.open_until or c.origin is not None
        c.state = OPEN
        c.open_until = until
        c.trial = False
        c.recent.clear()
        if moved:
            self._emit(key, c)

    @staticmethod
    def _close(c: _Circuit) -> None:
        c.state = CLOSED
        c.trial = False
        c.consecutive = 0
        c.recent.clear()
        c.reset_window()

    def _emit(self, key: str, c: _Circuit) -> None:
        """A transition of this process's own making: the state is its own again, and the listener hears of it."""
        c.origin = c.origin_reason = None
        listener = self.on_transition
        if listener is None:
            return
        until = self._wall() + (c.open_until - self._clock()) if c.state == OPEN else None
        try:
            listener(Transition(key, c.state, until, c.last_error if c.state == OPEN else None))
        except Exception:  # the request path must not fail because sharing did
            log.exception("aigw: a health transition listener failed")

    # -- other processes' verdicts (addon/shared_state.py) ----------------------------------------------

    def apply_shared(self, change: Transition, origin: str) -> bool:
        """What process `origin` decided for a key; True when it changed this board. Never told to the listener.

        open: the key is out until ``change.until`` (epoch), like a local cool-down (a longer one running here is
        kept), with no failure counted here. closed: the circuit closes (another process's trial succeeded).
        half_open: nothing — this process's cool-down ends at the same time, and the trial's verdict follows."""
        if change.state == OPEN:
            if change.until is None:
                return False
            remaining = change.until - self._wall()
            if remaining <= 0:
                return False
            c = self._get(change.key)
            until = self._clock() + min(remaining, RETRY_AFTER_MAX_S)
            if c.state == OPEN and c.open_until >= until:
                return False
            c.state, c.open_until, c.trial = OPEN, until, False
            c.origin, c.origin_reason = origin, change.reason
            return True
        if change.state == CLOSED:
            c = self._circuits.get(change.key)
            if c is None or c.state == CLOSED:
                return False
            self._close(c)
            c.origin, c.origin_reason = origin, None
            return True
        return False

    def own_open(self) -> list[Transition]:
        """The circuits this process opened itself that are still cooling down (re-published after an outage)."""
        now, wall = self._clock(), self._wall()
        return [Transition(key, OPEN, wall + (c.open_until - now), c.last_error)
                for key, c in list(self._circuits.items())
                if c.state == OPEN and c.origin is None and c.open_until > now]

    def fail_open_order(self, keys: list[str]) -> list[str]:
        """Every candidate is out: order them so the one most likely to be back goes first.

        Sorted by when each circuit (re)admits traffic, then by last failure: with equal cool-downs that is
        least-recently-failed first, and a target that sent a long Retry-After is not hammered before one
        that merely failed later with the default cool-down. Never-failed keys lead; ties keep input order.
        """
        circuits = self._circuits
        never = float("-inf")

        def rank(key: str) -> tuple[float, float]:
            c = circuits.get(key)
            if c is None:
                return (never, never)
            ready = c.open_until if c.state != CLOSED else never
            return (ready, never if c.last_failure_at is None else c.last_failure_at)

        return sorted(keys, key=rank)

    # -- visibility -------------------------------------------------------------------------------------

    def state(self, key: str) -> str:
        """"closed" | "open" | "half_open"; an open circuit whose cool-down elapsed reports "half_open"."""
        c = self._circuits.get(key)
        if c is None:
            return CLOSED
        if c.state == OPEN and self._clock() >= c.open_until:
            return HALF_OPEN
        return c.state

    def in_flight(self, key: str) -> int:
        c = self._circuits.get(key)
        return 0 if c is None else c.in_flight

    def ewma_ttfb(self, key: str) -> float | None:
        """Smoothed time to first byte in seconds, None until the first measured success."""
        c = self._circuits.get(key)
        return None if c is None else c.ewma

    def snapshot(self, key: str) -> dict:
        """Plain-data view of one key (the health file's per-target document)."""
        c = self._circuits.get(key)
        if c is None:
            c = _Circuit()
        remaining = c.open_until - self._clock() if c.state == OPEN else 0.0
        doc = {
            "state": self.state(key),
            "consecutive_failures": c.consecutive,
            "last_error": c.last_error,
            "last_error_at": None if c.last_error_wall is None else _rfc3339(c.last_error_wall),
            "cooldown_remaining_s": round(max(remaining, 0.0), 3),
            "ewma_ttfb_ms": None if c.ewma is None else round(c.ewma * 1000.0, 1),
            "in_flight": c.in_flight,
            "requests": c.requests,
            "failures": c.failures,
        }
        if c.origin is not None:  # the state is another process's verdict (addon/shared_state.py)
            doc.update(source="shared", origin=c.origin, origin_reason=c.origin_reason)
        return doc

    def export(self) -> dict[str, dict]:
        """Snapshot of every known key; fresh dicts of plain values, safe to hand to a writer thread."""
        return {key: self.snapshot(key) for key in list(self._circuits)}

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the state of keys no longer configured (call after a snapshot reload)."""
        keep = keep if isinstance(keep, (set, frozenset)) else set(keep)
        for key in [k for k in self._circuits if k not in keep]:
            del self._circuits[key]
