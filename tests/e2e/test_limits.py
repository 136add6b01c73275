"""Limits through a real mitmdump with the real SDKs: a key's requests, tokens, concurrency and budget; a target's
own rate limit and what its provider's headers say; lowest-cost routing. (Two processes sharing one Redis:
tests/e2e/test_limits_redis.py.)"""

from __future__ import annotations

import json
import threading

import anthropic
import openai
import pytest
from openai import OpenAI

from tests.e2e.harness import Admin, anthropic_target, http, openai_target, wait_until

BODY = {"model": "gpt-4", "max_tokens": 16, "messages": [{"role": "user", "content": "hello there"}]}


def _key(admin: Admin, cfg: dict, limits: dict | None, name: str = "limited") -> dict:
    key = admin.ok("POST", f"/gateways/{cfg['gateway']['id']}/keys", {"name": name, "limits": limits})
    admin.wait_live(key["key"])
    return key


def _chat(proxy, key: str, body: dict | None = None):
    return http("POST", f"{proxy.base}/v1/chat/completions", body or BODY, {"X-Api-Key": key})


def _openai(proxy, key: str, retries: int = 2) -> OpenAI:
    return OpenAI(base_url=f"{proxy.base}/v1", api_key=key, max_retries=retries, _strict_response_validation=True,
                  timeout=30)


def test_request_limit_gives_exactly_n_then_rate_limit_errors_both_sdks(admin, proxy, mock_factory, subdomain):
    oa = mock_factory("openai-mock", "sk-oa")
    cfg = admin.guide_setup([openai_target(oa.port, key="sk-oa")], subdomain=subdomain)
    key = _key(admin, cfg, {"requests": "3/day"})
    client = _openai(proxy, key["key"])
    served = []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model="gpt-4", max_tokens=8,
                                                               messages=[{"role": "user", "content": "hi"}])
        served.append(raw.headers)
        raw.parse()
    assert [h["x-ratelimit-remaining-requests"] for h in served] == ["2", "1", "0"]
    assert all(h["x-ratelimit-limit-requests"] == "3" for h in served)
    assert all(h["x-ratelimit-reset-requests"] for h in served)
    with pytest.raises(openai.RateLimitError) as caught:  # after the SDK's own two retries
        client.chat.completions.create(model="gpt-4", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    err = caught.value
    assert err.status_code == 429 and err.code == "rate_limit_exceeded" and err.type == "requests"
    assert int(err.response.headers["retry-after"]) >= 1 and int(err.response.headers["retry-after-ms"]) >= 1
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(oa.requests()) == 3  # nothing over the limit reached the provider
    # Anthropic's SDK sees its own error type for the same key.
    # (No retries: this SDK waits whatever retry-after says, here hours.)
    ac = anthropic.Anthropic(base_url=proxy.base, api_key=key["key"], max_retries=0, timeout=30,
                             _strict_response_validation=True)
    with pytest.raises(anthropic.RateLimitError) as caught_a:
        ac.messages.create(model="claude-3-sonnet", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert caught_a.value.body["error"]["type"] == "rate_limit_error"
    # The gateway's other key is not limited, and the limit shows in the key's view.
    assert _chat(proxy, cfg["key"]).status == 200
    view = admin.ok("GET", f"/gateways/{cfg['gateway']['id']}/keys/{key['id']}")
    assert view["limits"]["requests"] == {"limit": 3, "window": "day"}


def test_token_limit_stops_a_key_after_reported_usage_crosses_it(admin, proxy, mock_factory, subdomain):
    oa = mock_factory("openai-mock", "sk-oa")
    cfg = admin.guide_setup([openai_target(oa.port, key="sk-oa")], subdomain=subdomain)
    limit = 40
    key = _key(admin, cfg, {"tokens": {"limit": limit, "window": "day"}})
    used, answers = 0, 0
    while True:
        stream = answers % 2 == 1  # streams and JSON answers both debit
        body = dict(BODY, stream=True, stream_options={"include_usage": True}) if stream else BODY
        r = _chat(proxy, key["key"], body)
        if r.status == 429:
            break
        assert r.status == 200, r.body[:300]
        answers += 1
        if stream:
            events = [json.loads(line[6:]) for line in r.body.decode().split("\n") if line.startswith("data: {")]
            usage = [e for e in events if e.get("usage")][-1]["usage"]
        else:
            usage = r.json()["usage"]
        used += usage["prompt_tokens"] + usage["completion_tokens"]
        assert answers < 50, "the token limit never applied"
    # Refused only once the reported usage had crossed the limit, and at once after it did.
    assert used >= limit and used - limit < 40
    err = r.json()["error"]
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "tokens"
    assert r.headers["x-ratelimit-remaining-tokens"] == "0"
    assert len(oa.requests()) == answers


def test_budget_stops_a_key_with_insufficient_quota(admin, proxy, mock_factory, subdomain):
    oa = mock_factory("openai-mock", "sk-oa")
    pricing = {"input_per_million": 1_000_000, "output_per_million": 1_000_000}  # one USD per token
    cfg = admin.guide_setup([openai_target(oa.port, key="sk-oa", pricing=pricing)], subdomain=subdomain)
    key = _key(admin, cfg, {"budget": {"period": "day", "cost": 2}})
    client = _openai(proxy, key["key"])
    client.chat.completions.create(model="gpt-4", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as caught:  # the first answer's tokens cost more than 2 USD
        client.chat.completions.create(model="gpt-4", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    err = caught.value
    assert err.code == "insufficient_quota" and err.type == "insufficient_quota"
    assert err.response.headers["x-should-retry"] == "false"  # the SDK did not retry a spent budget
    assert len(oa.requests()) == 1


def test_concurrency_limit_refuses_while_a_stream_is_in_flight(admin, proxy, mock_factory, subdomain):
    oa = mock_factory("openai-mock", "sk-oa")
    cfg = admin.guide_setup([openai_target(oa.port, key="sk-oa")], subdomain=subdomain)
    key = _key(admin, cfg, {"concurrent": 1})
    oa.set_faults([{"match": {"stream": True}, "times": 1, "stall_after": 2, "stall": 1.5}])
    results = {}
    slow = threading.Thread(target=lambda: results.setdefault(
        "slow", _chat(proxy, key["key"], dict(BODY, stream=True))))
    slow.start()
    wait_until(lambda: len(oa.requests()) == 1, timeout=5)
    busy = _chat(proxy, key["key"])
    slow.join(timeout=30)
    assert results["slow"].status == 200 and b"[DONE]" in results["slow"].body
    assert busy.status == 429 and "in flight" in busy.json()["error"]["message"]
    assert wait_until(lambda: _chat(proxy, key["key"]).status == 200, timeout=5)  # the slot came back


def test_target_rate_limit_moves_traffic_before_the_provider_refuses(admin, proxy, mock_factory, subdomain):
    small = mock_factory("openai-small", "sk-small")
    big = mock_factory("openai-big", "sk-big")
    cfg = admin.guide_setup([openai_target(small.port, key="sk-small", limits={"requests": "3/day"}),
                             openai_target(big.port, key="sk-big")], subdomain=subdomain)
    statuses = [_chat(proxy, cfg["key"]).status for _ in range(12)]
    assert statuses == [200] * 12  # no caller saw the limit
    assert len(small.requests()) == 3 and len(big.requests()) == 9
    health = admin.ok("GET", f"/gateways/{cfg['gateway']['id']}/upstreams/{cfg['upstream']['id']}/health")
    small_id = cfg["upstream"]["targets"][0]["id"]

    def shown():
        doc = admin.ok("GET", f"/gateways/{cfg['gateway']['id']}/upstreams/{cfg['upstream']['id']}/health")
        entry = next(t for t in doc["targets"] if t["target_id"] == small_id)
        return entry if entry["quota_exhausted_until"] else None

    entry = wait_until(shown, timeout=5)
    assert entry["quota_reason"] == "limits.requests" and entry["state"] == "closed"  # not a health failure
    assert health["targets"]


def test_every_target_limited_is_a_429_with_retry_after(admin, proxy, mock_factory, subdomain):
    oa = mock_factory("openai-mock", "sk-oa")
    cfg = admin.guide_setup([openai_target(oa.port, key="sk-oa", limits={"requests": "2/day"})],
                            subdomain=subdomain)
    assert [_chat(proxy, cfg["key"]).status for _ in range(2)] == [200, 200]
    r = _chat(proxy, cfg["key"])
    assert r.status == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(r.headers["retry-after"]) >= 1
    assert "openai:limited" in r.headers["x-gateway-attempts"]
    assert len(oa.requests()) == 2


def test_provider_saying_no_requests_left_is_avoided_until_its_reset(admin, proxy, mock_factory, subdomain):
    tired = mock_factory("openai-tired", "sk-tired")
    fresh = mock_factory("anthropic-fresh", "sk-fresh")
    cfg = admin.guide_setup([openai_target(tired.port, key="sk-tired", weight=90),
                             anthropic_target(fresh.port, key="sk-fresh", weight=10)], subdomain=subdomain)
    tired.set_faults([{"times": 1, "headers": {"x-ratelimit-remaining-requests": "0",
                                               "x-ratelimit-reset-requests": "1.5s",
                                               "x-ratelimit-limit-requests": "100"}}])
    first = _chat(proxy, cfg["key"])
    assert first.status == 200 and first.headers["x-selected-provider"] == "openai"
    after = [_chat(proxy, cfg["key"]).headers["x-selected-provider"] for _ in range(8)]
    assert after == ["anthropic"] * 8  # no request went to the provider that said it had none left
    assert len(tired.requests()) == 1
    # After its reset it is used again.
    wait_until(lambda: _chat(proxy, cfg["key"]).headers["x-selected-provider"] == "openai", timeout=10)


def test_lowest_cost_prefers_the_cheaper_target_and_fails_over_to_the_dearer(admin, proxy, mock_factory, subdomain):
    cheap = mock_factory("openai-cheap", "sk-cheap")
    dear = mock_factory("anthropic-dear", "sk-dear")
    cfg = admin.guide_setup(
        [anthropic_target(dear.port, key="sk-dear", pricing={"input_per_million": 3, "output_per_million": 15}),
         openai_target(cheap.port, key="sk-cheap", pricing={"input_per_million": 0.5, "output_per_million": 1.5})],
        algorithm="lowest-cost", subdomain=subdomain)
    assert {_chat(proxy, cfg["key"]).headers["x-selected-provider"] for _ in range(6)} == {"openai"}
    assert len(dear.requests()) == 0
    cheap.set_faults([{"times": 1, "status": 500}])
    r = _chat(proxy, cfg["key"])
    assert r.status == 200 and r.headers["x-gateway-attempts"] == "openai:500,anthropic:200"


def test_a_key_low_on_budget_goes_cheapest_first(admin, proxy, mock_factory, subdomain):
    cheap = mock_factory("openai-cheap", "sk-cheap")
    dear = mock_factory("openai-dear", "sk-dear")
    cfg = admin.guide_setup(
        [openai_target(dear.port, key="sk-dear", weight=99, pricing={"input_per_million": 1_000_000,
                                                                     "output_per_million": 1_000_000}),
         openai_target(cheap.port, key="sk-cheap", weight=1, pricing={"input_per_million": 1,
                                                                      "output_per_million": 1})],
        subdomain=subdomain)
    key = _key(admin, cfg, {"budget": {"period": "month", "cost": 1_000_000, "prefer_lowest_cost_below": 0.9}})
    first = _chat(proxy, key["key"])
    assert first.status == 200 and len(dear.requests()) == 1  # weight 99 picks the dear one while the budget is fresh
    usage = first.json()["usage"]
    spent = usage["prompt_tokens"] + usage["completion_tokens"]  # one USD per token
    # The budget becomes 100 times what was spent: 99 % is left, under the 99.9 % mark (a dear answer sent before
    # the edit is live spends only another 1 %).
    gid = cfg["gateway"]["id"]
    admin.ok("PATCH", f"/gateways/{gid}/keys/{key['id']}",
             {"limits": {"budget": {"period": "month", "cost": 100 * spent, "prefer_lowest_cost_below": 0.999}}})
    wait_until(lambda: _chat(proxy, key["key"]).headers.get("x-selected-target") == cheap_id(cfg), timeout=10)
    before = len(dear.requests())
    for _ in range(4):
        r = _chat(proxy, key["key"])
        assert r.status == 200 and r.headers["x-selected-target"] == cheap_id(cfg)
    assert len(dear.requests()) == before


def cheap_id(cfg: dict) -> str:
    return cfg["upstream"]["targets"][1]["id"]
