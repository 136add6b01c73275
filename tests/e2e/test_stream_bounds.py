"""Hardening #8: a committed stream is bounded in time and in memory.

After the first content, a provider that trickles bytes without ever completing an event must not hold the stream
open past `idle_timeout` (counted from the last event the caller got) or past `total_timeout` (from the request's
start), and one endless line must not grow the gateway's memory: each ends with a protocol-correct error event.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

from tests.e2e.harness import http as http_call
from tests.e2e.harness import openai_target

BODY = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 64, "stream": True}


def _stream(proxy, subdomain, key, timeout: float = 20.0) -> tuple[bytes, float]:
    """POST a streamed chat and read it to its end; returns the raw body and how long it took."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(BODY),
                     {"Host": f"{subdomain}.example.com", "X-Api-Key": key, "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()[:300]
        body = resp.read()
    finally:
        conn.close()
    return body, time.monotonic() - started


def _events(raw: bytes) -> list[dict | str]:
    out: list[dict | str] = []
    for block in raw.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                data = line[6:]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _setup(admin, subdomain, mock, failover):
    return admin.guide_setup([openai_target(mock.port, weight=1)], subdomain=subdomain,
                             extra={"failover": failover})


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def test_trickle_after_commit_ends_at_total_timeout(admin, proxy, subdomain, mock_factory):
    mock = mock_factory("openai-mock", "sk-openai-test")
    mock.set_faults([{"trickle_after": 3, "trickle_chunk": 1, "trickle_interval": 0.05}])
    cfg = _setup(admin, subdomain, mock, {"idle_timeout": 30.0, "total_timeout": 2.0})
    raw, took = _stream(proxy, subdomain, cfg["key"])
    events = _events(raw)
    assert any(isinstance(e, dict) and e.get("choices") for e in events), raw[:300]  # content came first
    assert isinstance(events[-1], dict) and events[-1]["error"]["type"] == "timeout_error", events[-1]
    assert "total_timeout" in events[-1]["error"]["message"]
    assert took < 2.0 + 3.0, f"stream held open {took:.1f} s with total_timeout 2 s"


def test_trickle_after_commit_is_idle(admin, proxy, subdomain, mock_factory):
    """Bytes that never complete an event are not progress: idle_timeout ends the stream."""
    mock = mock_factory("openai-mock", "sk-openai-test")
    mock.set_faults([{"trickle_after": 3, "trickle_chunk": 1, "trickle_interval": 0.05}])
    cfg = _setup(admin, subdomain, mock, {"idle_timeout": 1.0, "total_timeout": 60.0})
    raw, took = _stream(proxy, subdomain, cfg["key"])
    events = _events(raw)
    assert isinstance(events[-1], dict) and events[-1]["error"]["type"] == "timeout_error", events[-1]
    assert "mid-stream" in events[-1]["error"]["message"]
    assert took < 1.0 + 3.0, f"stream held open {took:.1f} s with idle_timeout 1 s"


def test_endless_line_after_commit_is_refused_without_growing_memory(admin, proxy, subdomain, mock_factory):
    """One 100 MB line without a newline: an error event once the SSE bound is passed, RSS stays flat, and an
    unrelated request meanwhile is not slowed down."""
    mock = mock_factory("openai-mock", "sk-openai-test")
    mock.set_faults([{"match": {"stream": True}, "trickle_after": 3, "trickle_chunk": 65536,
                      "trickle_interval": 0, "trickle_bytes": 100 * 1024 * 1024}])
    cfg = _setup(admin, subdomain, mock, {"idle_timeout": 30.0, "total_timeout": 60.0})
    before = _rss_kib(proxy.proc.pid)
    side: dict[str, float] = {}

    def unrelated() -> None:
        worst = 0.0
        for _ in range(10):
            t0 = time.monotonic()
            r = http_call("POST", f"{proxy.base}/v1/chat/completions", {**BODY, "stream": False},
                          {"Host": f"{subdomain}.example.com", "X-Api-Key": cfg["key"]}, timeout=15)
            assert r.status == 200
            worst = max(worst, time.monotonic() - t0)
        side["worst"] = worst

    thread = threading.Thread(target=unrelated)
    thread.start()
    raw, took = _stream(proxy, subdomain, cfg["key"])
    thread.join(30)
    grown_mib = (_rss_kib(proxy.proc.pid) - before) / 1024
    events = _events(raw)
    assert isinstance(events[-1], dict) and "larger than" in events[-1]["error"]["message"], events[-1]
    assert grown_mib < 100, f"RSS grew {grown_mib:.0f} MiB"
    assert side["worst"] < 1.0, f"an unrelated request took {side['worst']:.2f} s"
    print(f"endless line refused after {took:.2f} s; RSS grew {grown_mib:.1f} MiB; "
          f"slowest unrelated request {side['worst'] * 1000:.0f} ms")
