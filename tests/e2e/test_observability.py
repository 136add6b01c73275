"""Metrics, access log and usage through a real mitmdump: a known sequence of requests (served, failed over,
streamed, refused) must show up exactly — counters parsed with prometheus_client's own parser, one JSON log line per
request with no secret and no prompt in it."""

from __future__ import annotations

import json
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from aigw.procs import free_port
from tests.e2e.harness import Admin, anthropic_target, http, openai_target, start_mitmdump, wait_until

PROMPT = "The secret prompt text: purple elephants at dawn"
PROVIDER_KEY = "sk-ant-PROVIDER-SECRET-0123456789"
DEAD_KEY = "sk-openai-DEAD-SECRET-0123456789"


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _samples(port: int) -> dict[str, list]:
    status, body = _get(port, "/metrics")
    assert status == 200
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def _total(samples, name: str, **labels) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_and_access_log_match_a_known_sequence(tmp_path, admin, mock_factory, subdomain, stack):
    log_file = tmp_path / "access.log"
    proxy = start_mitmdump(stack["data"], stack["root"] / "mitm-conf",
                           extra=["--set", f"aigw_access_log={log_file}"])
    try:
        an = mock_factory("anthropic-mock", PROVIDER_KEY)
        dead = free_port()
        cfg = Admin(admin.base, proxy.base).guide_setup(
            [openai_target(dead, priority=1, key=DEAD_KEY), anthropic_target(an.port, priority=2, key=PROVIDER_KEY)],
            subdomain=subdomain, extra={"health_checks": {"passive": False, "threshold": 3, "interval": 60}})
        assert _get(proxy.metrics_port, "/livez")[0] == 200
        assert _get(proxy.metrics_port, "/readyz")[0] == 200
        gw = cfg["gateway"]["name"]
        body = {"model": "gpt-4", "max_tokens": 16, "messages": [{"role": "user", "content": PROMPT}]}
        usage = {"input": 0, "output": 0}
        for _ in range(2):
            r = http("POST", f"{proxy.base}/v1/chat/completions", body, {"X-Api-Key": cfg["key"]})
            assert r.status == 200 and r.headers["x-gateway-attempts"] == "openai:connect,anthropic:200"
            u = r.json()["usage"]
            usage["input"] += u["prompt_tokens"]
            usage["output"] += u["completion_tokens"]
        r = http("POST", f"{proxy.base}/v1/chat/completions",
                 dict(body, stream=True, stream_options={"include_usage": True}), {"X-Api-Key": cfg["key"]})
        assert r.status == 200
        chunks = [json.loads(line[6:]) for line in r.body.decode().split("\n")
                  if line.startswith("data: {")]
        u = [c for c in chunks if c.get("usage")][-1]["usage"]
        usage["input"] += u["prompt_tokens"]
        usage["output"] += u["completion_tokens"]
        bad = http("POST", f"{proxy.base}/v1/chat/completions", body,
                   {"X-Api-Key": "aigw-not-a-real-key-0000000000", "Host": f"{subdomain}.example.com"})
        assert bad.status == 401

        # Streams are counted when they end; the records reach the metrics right after the answer.
        def settled():
            s = _samples(proxy.metrics_port)
            return s if _total(s, "aigw_requests_total", gateway=gw) == 3 else None

        s = wait_until(settled, timeout=10)
        assert _total(s, "aigw_requests_total", gateway=gw, status_class="2xx", provider="anthropic") == 3
        assert _total(s, "aigw_requests_total", gateway=gw, stream="true") == 1
        assert _total(s, "aigw_failovers_total", gateway=gw) == 3
        up = cfg["upstream"]["name"]
        assert _total(s, "aigw_upstream_attempts_total", upstream=up, outcome="connect") == 3
        assert _total(s, "aigw_upstream_attempts_total", upstream=up, outcome="ok") == 3
        assert _total(s, "aigw_input_tokens_total", gateway=gw) == usage["input"] > 0
        assert _total(s, "aigw_output_tokens_total", gateway=gw) == usage["output"] > 0
        assert _total(s, "aigw_ttft_seconds_count", gateway=gw) == 1
        assert _total(s, "aigw_request_duration_seconds_count", gateway=gw) == 3
        assert _total(s, "aigw_requests_in_flight") == 0
        exposition = _get(proxy.metrics_port, "/metrics")[1]
        for secret in (PROVIDER_KEY, DEAD_KEY, cfg["key"], PROMPT):
            assert secret.encode() not in exposition
        # The metrics are not on the proxy port.
        assert http("GET", f"{proxy.base}/metrics", None, {"Host": f"{subdomain}.example.com"}).status != 200
    finally:
        proxy.stop()  # a clean stop drains the access log

    raw = log_file.read_text()
    lines = [json.loads(line) for line in raw.splitlines()]
    ours = [ln for ln in lines if ln["gateway"] == gw]
    assert len(ours) == 3 and {ln["status"] for ln in ours} == {200}
    assert all(ln["attempt_count"] == 2 and ln["failovers"] == 1 and ln["provider"] == "anthropic" for ln in ours)
    assert sum(ln["input_tokens"] for ln in ours) == usage["input"]
    assert [ln["stream"] for ln in ours].count(True) == 1
    assert all(ln["key_prefix"] and ln["key_prefix"] in cfg["key"] for ln in ours)
    assert any(ln["status"] == 401 and ln["error_class"] for ln in lines)
    for secret in (PROVIDER_KEY, DEAD_KEY, cfg["key"], "aigw-not-a-real-key-0000000000", PROMPT):
        assert secret not in raw
