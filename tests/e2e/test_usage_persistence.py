"""Usage and cost through `aigw up`: counted from the provider's reported tokens, priced per target, visible in the
admin API within about a second, kept across a clean restart and across `kill -9` (at most ~1 s of counts lost —
here none, because the test waits until the proxy has written them)."""

from __future__ import annotations

import signal
import subprocess
import urllib.request

import pytest

from aigw.procs import free_port, wait_port
from tests.e2e.harness import BIN, Admin, anthropic_target, http, wait_until

BODY = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hello usage!"}], "max_tokens": 16}
PRICING = {"input_per_million": 3.0, "output_per_million": 15.0, "cached_input_per_million": 0.3}


def _up(data, admin_port, proxy_port, metrics_port):
    proc = subprocess.Popen([str(BIN / "aigw"), "up", "--admin-port", str(admin_port), "--proxy-port",
                             str(proxy_port), "--metrics-listen", f"127.0.0.1:{metrics_port}", "--data", str(data)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(admin_port, 30, proc)
    wait_port(proxy_port, 30, proc)
    wait_port(metrics_port, 30, proc)
    return proc


def _ready(metrics_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.timeout(180)
def test_usage_is_counted_priced_and_survives_restart_and_kill(tmp_path, mock_factory):
    admin_port, proxy_port, metrics_port = free_port(), free_port(), free_port()
    data = tmp_path / "data" / "aigw.json"
    base = f"http://127.0.0.1:{proxy_port}"
    admin = Admin(f"http://127.0.0.1:{admin_port}", base)
    mock = mock_factory("anthropic-mock", "sk-ant-test")
    sent = {"requests": 0, "input": 0, "output": 0}

    def call():
        r = http("POST", f"{base}/v1/chat/completions", BODY,
                 {"Host": "your-subdomain.example.com", "X-Api-Key": cfg["key"]})
        assert r.status == 200
        sent["requests"] += 1
        sent["input"] += r.json()["usage"]["prompt_tokens"]
        sent["output"] += r.json()["usage"]["completion_tokens"]

    def usage(group_by="key"):
        return admin.ok("GET", f"/gateways/{gid}/usage?group_by={group_by}")

    proc = _up(data, admin_port, proxy_port, metrics_port)
    try:
        assert _ready(metrics_port) == 200
        cfg = admin.guide_setup([anthropic_target(mock.port, weight=1, pricing=PRICING)])
        gid = cfg["gateway"]["id"]
        call()
        call()
        got = wait_until(lambda: (u := usage())["totals"]["requests"] == 2 and u, timeout=10)
        assert got["totals"]["input_tokens"] == sent["input"] > 0
        assert got["totals"]["output_tokens"] == sent["output"] > 0
        want_cost = (sent["input"] * 3.0 + sent["output"] * 15.0) / 1e6
        assert got["totals"]["cost"] == pytest.approx(want_cost)
        assert len(got["groups"]) == 1 and got["groups"][0]["requests"] == 2  # one key
        by_model = usage("model")
        assert [row["group"] for row in by_model["groups"]] == ["claude-3-sonnet"]
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean stop: what was written survives
        proc.wait(15)

    proc = _up(data, admin_port, proxy_port, metrics_port)
    try:
        assert usage()["totals"]["requests"] == 2  # kept across kill -9
        call()
    finally:
        proc.terminate()  # a clean stop writes the last count
        proc.wait(30)

    proc = _up(data, admin_port, proxy_port, metrics_port)
    try:
        totals = usage()["totals"]
        assert totals["requests"] == 3 == sent["requests"]
        assert totals["input_tokens"] == sent["input"] and totals["output_tokens"] == sent["output"]
        key_id = usage()["groups"][0]["group"]
        per_key = admin.ok("GET", f"/gateways/{gid}/keys/{key_id}/usage")
        assert per_key["totals"]["requests"] == 3
    finally:
        proc.terminate()
        proc.wait(30)
