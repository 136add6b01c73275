"""Fault injection on loopback: a provider breaks in every way we know, the caller sees no failed request."""

from __future__ import annotations

import collections
import concurrent.futures
import time

import pytest
from openai import APIError, OpenAI

from aigw.procs import free_port
from tests.e2e.harness import anthropic_target, http, openai_target, wait_until

FAST_FAILOVER = {"connect_timeout": 1.0, "headers_timeout": 0.6, "first_token_timeout": 0.6, "idle_timeout": 0.6,
                 "total_timeout": 20.0}

FAULTS = {
    "refused": None,  # the target's port has no listener
    "500": [{"status": 500}],
    "529-overloaded": [{"status": 529}],
    "429-retry-after": [{"status": 429, "retry_after": "30"}],
    "closed-connection": [{"close": True}],
    "hang": [{"delay": 5}],
    "cut-before-content": [{"cut_after": 1}],
    "slow-first-token": [{"first_token_delay": 5}],
    "error-event-before-content": [{"error_event_after": 1}],
}


def _client(proxy, key) -> OpenAI:
    return OpenAI(base_url=f"{proxy.base}/v1", api_key=key, max_retries=0, _strict_response_validation=True,
                  timeout=30)


def _ask(client: OpenAI, stream: bool) -> tuple[str, dict]:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4", messages=[{"role": "user", "content": "Hi"}], max_tokens=32, stream=stream,
        **({"stream_options": {"include_usage": True}} if stream else {}))
    headers = {k.lower(): v for k, v in raw.headers.items()}
    parsed = raw.parse()
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
    else:
        text = parsed.choices[0].message.content
    return text, headers


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_one_broken_target_200_of_200_served(admin, proxy, subdomain, mock_factory, fault, stream):
    good = mock_factory("good", "sk-ant-test")
    if FAULTS[fault] is None:
        bad_port = free_port()
    else:
        bad = mock_factory("bad", "sk-openai-test")
        bad.set_faults(FAULTS[fault])
        bad_port = bad.port
    cfg = admin.guide_setup([openai_target(bad_port), anthropic_target(good.port)], subdomain=subdomain,
                            extra={"failover": FAST_FAILOVER})
    client = _client(proxy, cfg["key"])
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: _ask(client, stream), range(200)))
    assert all(text for text, _ in results)
    providers = collections.Counter(h["x-selected-provider"] for _, h in results)
    assert providers == {"anthropic": 200}
    # The breaker took the broken target out after its threshold: few requests paid for the failover.
    failovers = sum(1 for _, h in results if "," in h["x-gateway-attempts"])
    assert 1 <= failovers <= 20, failovers
    gid, uid, bad_id = cfg["gateway"]["id"], cfg["upstream"]["id"], cfg["upstream"]["targets"][0]["id"]

    def bad_state():
        targets = admin.ok("GET", f"/gateways/{gid}/upstreams/{uid}/health")["targets"]
        return next(t for t in targets if t["target_id"] == bad_id)

    # The proxy publishes health at least once a second; the admin API shows the open circuit and why.
    seen = wait_until(lambda: bad_state()["state"] == "open" and bad_state(), timeout=3)
    assert seen["last_error"] and seen["failures"] >= 1


def test_cut_after_content_is_a_loud_error_not_a_clean_end(admin, proxy, subdomain, mock_factory):
    bad = mock_factory("bad", "sk-ant-test")
    bad.set_faults([{"cut_after": 5}])  # message_start, block start, ping, 2 deltas: content already sent
    cfg = admin.guide_setup([anthropic_target(bad.port, weight=1)], subdomain=subdomain,
                            extra={"failover": FAST_FAILOVER})
    client = _client(proxy, cfg["key"])
    got = []
    with pytest.raises(APIError):
        for chunk in client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Hi"}],
                                                    max_tokens=64, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert got, "content before the cut reached the caller"


def test_idle_stall_after_content_becomes_an_error_event(admin, proxy, subdomain, mock_factory):
    bad = mock_factory("bad", "sk-ant-test")
    bad.set_faults([{"stall_after": 5, "stall": 5}])
    cfg = admin.guide_setup([anthropic_target(bad.port, weight=1)], subdomain=subdomain,
                            extra={"failover": FAST_FAILOVER})
    client = _client(proxy, cfg["key"])
    t0 = time.monotonic()
    with pytest.raises(APIError):
        for _ in client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=64, stream=True):
            pass
    assert time.monotonic() - t0 < 4


def test_breaker_opens_then_recovers_through_half_open(admin, proxy, subdomain, mock_factory):
    flaky = mock_factory("flaky", "sk-openai-test")
    good = mock_factory("good", "sk-ant-test")
    cfg = admin.guide_setup([openai_target(flaky.port, priority=1), anthropic_target(good.port, priority=2)],
                            subdomain=subdomain, health_checks={"passive": True, "threshold": 2, "interval": 1},
                            extra={"failover": FAST_FAILOVER})
    gid, uid = cfg["gateway"]["id"], cfg["upstream"]["id"]
    flaky_id = cfg["upstream"]["targets"][0]["id"]
    client = _client(proxy, cfg["key"])
    flaky.set_faults([{"status": 503}])
    chains = [_ask(client, False)[1]["x-gateway-attempts"] for _ in range(4)]
    assert chains[:2] == ["openai:503,anthropic:200"] * 2
    assert chains[2:] == ["anthropic:200"] * 2  # open: the priority-1 target is skipped

    def state():
        targets = admin.ok("GET", f"/gateways/{gid}/upstreams/{uid}/health")["targets"]
        return next(t for t in targets if t["target_id"] == flaky_id)

    opened = wait_until(lambda: state()["state"] == "open" and state(), timeout=3)
    assert opened["consecutive_failures"] >= 2 and "503" in (opened["last_error"] or "")
    flaky.set_faults([])
    time.sleep(1.1)  # the cool-down (interval) passes; the next request is the trial
    text, headers = _ask(client, False)
    assert headers["x-gateway-attempts"] == "openai:200"
    wait_until(lambda: state()["state"] == "closed", timeout=3)


def test_fail_open_when_every_target_is_out(admin, proxy, subdomain, mock_factory):
    a = mock_factory("a", "sk-openai-test")
    b = mock_factory("b", "sk-ant-test")
    cfg = admin.guide_setup([openai_target(a.port), anthropic_target(b.port)], subdomain=subdomain,
                            health_checks={"passive": True, "threshold": 1, "interval": 60},
                            extra={"failover": FAST_FAILOVER})
    client = _client(proxy, cfg["key"])
    a.set_faults([{"status": 500}])
    b.set_faults([{"status": 500}])
    r = http("POST", f"{proxy.base}/v1/chat/completions",
             {"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}]}, {"X-Api-Key": cfg["key"]})
    assert r.status == 502 and r.json()["error"]["message"]
    a.set_faults([])
    b.set_faults([])
    text, headers = _ask(client, False)  # both circuits are open: the least-recently-failed one is tried anyway
    assert text and headers.get("x-gateway-fail-open") == "true"


def test_429_everywhere_is_429_with_retry_after(admin, proxy, subdomain, mock_factory):
    a = mock_factory("a", "sk-openai-test")
    b = mock_factory("b", "sk-ant-test")
    a.set_faults([{"status": 429, "retry_after": "7"}])
    b.set_faults([{"status": 429, "retry_after": "3"}])
    cfg = admin.guide_setup([openai_target(a.port), anthropic_target(b.port)], subdomain=subdomain)
    r = http("POST", f"{proxy.base}/v1/chat/completions",
             {"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}]}, {"X-Api-Key": cfg["key"]})
    assert r.status == 429
    assert r.headers["retry-after"] == "3"
    assert r.json()["error"]["type"] == "rate_limit_error"


def test_credential_failure_skips_target_without_banning_it(admin, proxy, subdomain, mock_factory):
    a = mock_factory("a", "sk-openai-test")
    b = mock_factory("b", "sk-ant-test")
    cfg = admin.guide_setup([openai_target(a.port, key="wrong-key", priority=1), anthropic_target(b.port, priority=2)],
                            subdomain=subdomain, health_checks={"passive": True, "threshold": 1, "interval": 60})
    client = _client(proxy, cfg["key"])
    for _ in range(3):
        assert _ask(client, False)[1]["x-gateway-attempts"] == "openai:401,anthropic:200"
    targets = admin.ok("GET", f"/gateways/{cfg['gateway']['id']}/upstreams/{cfg['upstream']['id']}/health")
    wait_until(lambda: any("401" in (t["last_error"] or "") for t in admin.ok(
        "GET", f"/gateways/{cfg['gateway']['id']}/upstreams/{cfg['upstream']['id']}/health")["targets"]), timeout=3)
    assert targets


def test_other_4xx_is_returned_not_failed_over(admin, proxy, subdomain, mock_factory):
    a = mock_factory("a", "sk-openai-test")
    b = mock_factory("b", "sk-ant-test")
    a.set_faults([{"status": 400}])
    cfg = admin.guide_setup([openai_target(a.port, priority=1), anthropic_target(b.port, priority=2)],
                            subdomain=subdomain)
    r = http("POST", f"{proxy.base}/v1/chat/completions",
             {"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}]}, {"X-Api-Key": cfg["key"]})
    assert r.status == 400 and r.headers["x-gateway-attempts"] == "openai:400"


def test_every_target_timing_out_is_504(admin, proxy, subdomain, mock_factory):
    a = mock_factory("a", "sk-openai-test")
    b = mock_factory("b", "sk-ant-test")
    a.set_faults([{"delay": 5}])
    b.set_faults([{"delay": 5}])
    cfg = admin.guide_setup([openai_target(a.port), anthropic_target(b.port)], subdomain=subdomain,
                            extra={"failover": FAST_FAILOVER})
    t0 = time.monotonic()
    r = http("POST", f"{proxy.base}/v1/messages",
             {"model": "claude-3-sonnet", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]},
             {"x-api-key": cfg["key"], "anthropic-version": "2023-06-01"})
    assert r.status == 504
    assert r.json()["type"] == "error" and r.json()["error"]["message"]
    assert time.monotonic() - t0 < 4
