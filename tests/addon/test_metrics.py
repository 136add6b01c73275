"""addon/metrics.py: the exposition after a known sequence of requests, the health collector, the listener."""

from __future__ import annotations

import io
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

import addon.metrics as metrics_mod
from addon.accesslog import AccessLog
from addon.health import HealthBoard, HealthPolicy
from addon.metrics import Metrics, SnapshotModels
from addon.metrics_server import MetricsServer, parse_listen
from addon.record import AttemptRecord, RequestRecord, TokenUsage

SECRET_KEY = "sk-aigw-abSECRETSECRETSECRET0123456789"


def rec(**fields) -> RequestRecord:
    attempts = [AttemptRecord(*a) for a in fields.pop("attempts", ())]
    usage = TokenUsage(*fields.pop("usage")) if "usage" in fields else TokenUsage()
    base = dict(request_id="req-1", method="POST", path="/v1/chat/completions", ingress="openai",
                gateway_id="g1", gateway="main", upstream_id="u1", upstream="chat", key_id="key_1",
                key_prefix="sk-aigw-ab", status=200)
    base.update(fields)
    return RequestRecord(attempts=attempts, usage=usage, **base)


def sequence() -> list[RequestRecord]:
    """Plain answers, a stream after a failover, a fail-open, a stream cut after commit, an unrouted 404."""
    plain = dict(target_id="t1", provider="openai", served_model="gpt-4o", requested_model="gpt-4o",
                 attempts=[("t1", "openai", "ok", 200, 0.5)], duration_s=0.75, upstream_s=0.5,
                 usage=(100, 20, 10, True), cost=0.5)
    return [
        rec(**plain),
        rec(ingress="anthropic", stream=True, target_id="t1", provider="openai", requested_model="claude-x",
            served_model="unlisted-model", attempts=[("t0", "anthropic", "5xx", 503, 0.25),
                                                     ("t1", "openai", "ok", 200, 0.5)],
            ttft_s=1.0, upstream_s=0.5, duration_s=4.0, usage=(50, 200, 0, True), cost=0.25),
        rec(status=503, error_class="unavailable", fail_open=True, served_model="gpt-4o",
            attempts=[("t0", "anthropic", "timeout", None, 30.0), ("t1", "openai", "connect", None, 0.125)],
            duration_s=30.25, upstream_s=30.125),
        rec(ingress="anthropic", stream=True, target_id="t0", provider="anthropic", served_model="claude-x",
            attempts=[("t0", "anthropic", "ok", 200, 0.25)], ttft_s=0.5, upstream_s=0.25, duration_s=10.0,
            stream_error="idle timeout"),
        rec(gateway=None, gateway_id=None, upstream=None, upstream_id=None, status=404, error_class="not_found",
            duration_s=0.0625),
        rec(**plain),
    ]


def lab(**labels: str) -> tuple:
    return tuple(sorted(labels.items()))


def scrape(m: Metrics, accept: str = "") -> dict[str, dict[tuple, float]]:
    body, _ = m.exposition(accept)
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


@pytest.fixture
def observed() -> tuple[Metrics, dict]:
    m = Metrics(models={"gpt-4o", "claude-x"})
    for r in sequence():
        m.observe(r)
    return m, scrape(m)


def test_request_counters_match_exactly(observed):
    _, s = observed
    assert s["aigw_requests_total"] == {
        lab(gateway="main", upstream="chat", target="t1", provider="openai", ingress="openai",
            status_class="2xx", stream="false"): 2,
        lab(gateway="main", upstream="chat", target="t1", provider="openai", ingress="anthropic",
            status_class="2xx", stream="true"): 1,
        lab(gateway="main", upstream="chat", target="none", provider="none", ingress="openai",
            status_class="5xx", stream="false"): 1,
        lab(gateway="main", upstream="chat", target="t0", provider="anthropic", ingress="anthropic",
            status_class="2xx", stream="true"): 1,
        lab(gateway="none", upstream="none", target="none", provider="none", ingress="openai",
            status_class="4xx", stream="false"): 1,
    }
    assert s["aigw_failovers_total"] == {lab(gateway="main", upstream="chat"): 3,
                                         lab(gateway="none", upstream="none"): 0}
    assert s["aigw_fail_open_total"] == {lab(gateway="main", upstream="chat"): 1,
                                         lab(gateway="none", upstream="none"): 0}
    assert s["aigw_stream_errors_total"] == {lab(gateway="main", upstream="chat", target="t1"): 0,
                                             lab(gateway="main", upstream="chat", target="t0"): 1}
    assert s["aigw_request_errors_total"] == {lab(gateway="main", error_class="unavailable"): 1,
                                              lab(gateway="none", error_class="not_found"): 1}
    assert s["aigw_requests_in_flight"] == {(): 0}
    assert s["aigw_metrics_errors_total"] == {(): 0}


def test_attempt_counters_match_exactly(observed):
    _, s = observed
    assert s["aigw_upstream_attempts_total"] == {
        lab(upstream="chat", target="t1", provider="openai", outcome="ok", stream="false"): 2,
        lab(upstream="chat", target="t0", provider="anthropic", outcome="5xx", stream="true"): 1,
        lab(upstream="chat", target="t1", provider="openai", outcome="ok", stream="true"): 1,
        lab(upstream="chat", target="t0", provider="anthropic", outcome="timeout", stream="false"): 1,
        lab(upstream="chat", target="t1", provider="openai", outcome="connect", stream="false"): 1,
        lab(upstream="chat", target="t0", provider="anthropic", outcome="ok", stream="true"): 1,
    }
    # Latency only for attempts that got an HTTP answer (the timeout and the connect error did not).
    count = s["aigw_upstream_latency_seconds_count"]
    assert count[lab(upstream="chat", target="t1", provider="openai", stream="false")] == 2
    assert count[lab(upstream="chat", target="t0", provider="anthropic", stream="true")] == 2
    assert count[lab(upstream="chat", target="t0", provider="anthropic", stream="false")] == 0
    assert s["aigw_upstream_latency_seconds_sum"][lab(upstream="chat", target="t0", provider="anthropic",
                                                      stream="true")] == 0.5


def test_usage_counters_and_model_label(observed):
    _, s = observed
    listed = lab(gateway="main", upstream="chat", target="t1", provider="openai", model="gpt-4o")
    unlisted = lab(gateway="main", upstream="chat", target="t1", provider="openai", model="other")
    assert s["aigw_input_tokens_total"] == {listed: 200, unlisted: 50}
    assert s["aigw_output_tokens_total"] == {listed: 40, unlisted: 200}
    assert s["aigw_cached_tokens_total"] == {listed: 20, unlisted: 0}
    assert s["aigw_estimated_cost_total"] == {listed: 1.0, unlisted: 0.25}


def test_histograms(observed):
    _, s = observed
    main_plain = lab(gateway="main", upstream="chat", stream="false")
    main_stream = lab(gateway="main", upstream="chat", stream="true")
    assert s["aigw_request_duration_seconds_count"] == {main_plain: 3, main_stream: 2,
                                                        lab(gateway="none", upstream="none", stream="false"): 1}
    assert s["aigw_request_duration_seconds_sum"][main_plain] == 31.75
    buckets = s["aigw_request_duration_seconds_bucket"]
    assert buckets[lab(gateway="main", upstream="chat", stream="true", le="5.0")] == 1
    assert buckets[lab(gateway="main", upstream="chat", stream="true", le="10.0")] == 2
    assert buckets[lab(gateway="main", upstream="chat", stream="false", le="1.0")] == 2
    assert buckets[lab(gateway="main", upstream="chat", stream="false", le="+Inf")] == 3
    # TTFT: stream tuples only; a value equal to a bound counts in that bucket ("le").
    assert s["aigw_ttft_seconds_count"] == {lab(gateway="main", upstream="chat", target="t1"): 1,
                                            lab(gateway="main", upstream="chat", target="t0"): 1}
    ttft = s["aigw_ttft_seconds_bucket"]
    assert ttft[lab(gateway="main", upstream="chat", target="t1", le="1.0")] == 1
    assert ttft[lab(gateway="main", upstream="chat", target="t1", le="0.75")] == 0
    overhead = s["aigw_gateway_overhead_seconds_sum"]
    assert overhead == {lab(gateway="main", stream="false"): 0.625, lab(gateway="main", stream="true"): 0.75,
                        lab(gateway="none", stream="false"): 0.0625}
    assert s["aigw_gateway_overhead_seconds_bucket"][lab(gateway="main", stream="false", le="0.25")] == 3


def test_openmetrics_on_request(observed):
    m, _ = observed
    body, content_type = m.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in parse_openmetrics(body.decode())}
    total = sum(x.value for x in families["aigw_requests"].samples if x.name == "aigw_requests_total")
    assert total == 6


def test_no_key_or_unlisted_model_in_the_exposition(observed):
    m, _ = observed
    text = m.exposition()[0].decode()
    for leak in ("key_1", "sk-aigw-ab", SECRET_KEY, "unlisted-model", "req-1", "/v1/chat"):
        assert leak not in text
    assert "_created" not in text


def test_observe_never_raises_and_counts_the_failure():
    m = Metrics(process=False)
    m.observe(SimpleNamespace(gateway="g"))  # type: ignore[arg-type]  # not a record at all
    assert m.errors == 1
    assert scrape(m)["aigw_metrics_errors_total"] == {(): 1}


def test_unknown_outcome_and_error_class_are_folded():
    m = Metrics(process=False)
    m.observe(rec(status=502, error_class="made-up", attempts=[("t1", "openai", "weird", 502, 0.1)]))
    s = scrape(m)
    assert list(s["aigw_request_errors_total"]) == [lab(gateway="main", error_class="other")]
    assert [dict(k)["outcome"] for k in s["aigw_upstream_attempts_total"]] == ["other"]


def test_series_are_capped(monkeypatch):
    monkeypatch.setattr(metrics_mod, "MAX_SERIES", 3)
    m = Metrics(process=False)
    for i in range(10):
        m.observe(rec(upstream=f"up{i}", target_id="t1", provider="openai"))
    counts = scrape(m)["aigw_requests_total"]
    assert len(counts) == 4 and sum(counts.values()) == 10
    assert counts[lab(gateway="other", upstream="other", target="other", provider="other", ingress="other",
                      status_class="2xx", stream="false")] == 7


def test_in_flight_gauge():
    m = Metrics(process=False)
    m.request_started()
    m.request_started()
    m.request_finished()
    assert scrape(m)["aigw_requests_in_flight"] == {(): 1}
    m.request_finished()
    m.request_finished()  # one too many never goes negative
    assert m.in_flight == 0


def test_snapshot_models_follow_the_snapshot():
    def snap(*models):
        target = SimpleNamespace(models=list(models), default_model=None)
        return SimpleNamespace(upstreams=lambda: (SimpleNamespace(targets=[target]),))
    current = [snap("a", "b")]
    models = SnapshotModels(lambda: current[0])
    m = Metrics(models=models, process=False)
    m.observe(rec(served_model="b", usage=(1, 1, 0, True)))
    current[0] = snap("c")
    m.observe(rec(served_model="b", usage=(1, 1, 0, True)))
    assert {dict(k)["model"]: v for k, v in scrape(m)["aigw_input_tokens_total"].items()} == {"b": 1, "other": 1}
    assert SnapshotModels(lambda: None)() == frozenset()


def test_health_collector_reads_circuits_at_scrape_time():
    now = [100.0]
    board = HealthBoard(clock=lambda: now[0])
    policy = HealthPolicy(threshold=1, interval=10)
    gateways = {"g1": SimpleNamespace(name="main"), "g2": SimpleNamespace(name="main")}
    ups = (SimpleNamespace(id="u1", name="chat", gateway_id="g1",
                           targets=[SimpleNamespace(id="t0", provider="anthropic"),
                                    SimpleNamespace(id="t1", provider=None)]),
           SimpleNamespace(id="u2", name="chat", gateway_id="g2",
                           targets=[SimpleNamespace(id="t0", provider="anthropic")]))
    snapshot = SimpleNamespace(upstreams=lambda: ups, gateway=gateways.get)
    m = Metrics(process=False)
    m.watch_health(lambda: SimpleNamespace(health=board, snapshot=snapshot))
    board.failure("u1/t0", policy, "5xx")
    board.begin("u1/t1", policy)
    board.success("u1/t1", policy, ttfb_s=0.25)
    s = scrape(m)
    t0 = lab(gateway="main", upstream="chat", target="t0", provider="anthropic")
    t1 = lab(gateway="main", upstream="chat", target="t1", provider="passthrough")
    twin = lab(gateway="main", upstream="chat#u2", target="t0", provider="anthropic")
    assert s["aigw_target_circuit_state"] == {t0: 2, t1: 0, twin: 0}
    assert s["aigw_target_in_flight"] == {t0: 0, t1: 1, twin: 0}
    assert s["aigw_target_ttfb_ewma_seconds"] == {t1: 0.25}
    now[0] += 11  # cooled down: the next request would be the trial
    assert scrape(m)["aigw_target_circuit_state"][t0] == 1


def test_health_collector_before_a_config():
    m = Metrics(process=False)
    m.watch_health(lambda: None)
    assert "# TYPE aigw_target_circuit_state gauge" in m.exposition()[0].decode()
    assert "aigw_target_circuit_state" not in scrape(m)  # no samples until a configuration is loaded


def test_a_failing_health_source_does_not_fail_the_scrape():
    def broken():
        raise RuntimeError("half-loaded")
    m = Metrics(process=False)
    m.watch_health(broken)
    m.observe(rec())
    assert scrape(m)["aigw_requests_total"]


def test_every_metric_is_documented():
    """docs/observability.md lists exactly the aigw_ metrics the exposition has."""
    m = Metrics(process=False)
    access_log = AccessLog(io.StringIO())
    m.watch_access_log(access_log)
    m.watch_health(lambda: None)
    access_log.close()
    body = m.exposition()[0].decode()
    emitted = {name if kind != "counter" else name.removesuffix("_total") + "_total"
               for name, kind in re.findall(r"^# TYPE (aigw_\w+) (\w+)", body, re.MULTILINE)}
    doc = (Path(__file__).resolve().parents[2] / "docs" / "observability.md").read_text()
    documented = set(re.findall(r"^\| `(aigw_\w+)` \| (?:counter|gauge|histogram) \|", doc, re.MULTILINE))
    assert emitted == documented


def test_parse_listen():
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("  ") is None
    for bad in ("9464", ":9464", "host:", "host:99999", "host:x"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def _get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read().decode()


def test_listener_serves_metrics_livez_readyz():
    m = Metrics()
    for r in sequence():
        m.observe(r)
    ready = [False]
    server = MetricsServer("127.0.0.1", 0, m, ready=lambda: ready[0])
    port = server.start()
    try:
        assert port > 0 and server.port == port
        base = f"http://127.0.0.1:{port}"
        status, ctype, body = _get(base + "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(body)}
        assert {"aigw_requests", "aigw_ttft_seconds", "process_cpu_seconds"} <= names
        status, ctype, body = _get(base + "/metrics", "application/openmetrics-text; version=1.0.0")
        assert status == 200 and ctype.startswith("application/openmetrics-text")
        assert any(f.name == "aigw_requests" for f in parse_openmetrics(body))
        assert _get(base + "/livez")[0] == 200
        assert _get(base + "/readyz")[0] == 503
        ready[0] = True
        assert _get(base + "/readyz")[0] == 200
        assert _get(base + "/nope")[0] == 404
    finally:
        server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=2)


def test_listener_on_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = MetricsServer("::1", 0, Metrics(process=False), ready=lambda: True)
    try:
        port = server.start()
    except OSError:
        pytest.skip("no IPv6 loopback")
    try:
        assert _get(f"http://[::1]:{port}/readyz")[0] == 200
    finally:
        server.stop()


def test_readyz_is_503_when_the_check_raises():
    def broken() -> bool:
        raise RuntimeError("no config")
    server = MetricsServer("127.0.0.1", 0, Metrics(process=False), ready=broken)
    port = server.start()
    try:
        assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 503
    finally:
        server.stop()
