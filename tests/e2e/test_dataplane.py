"""The guide's load-balanced chat through a real mitmdump, with the real openai SDK and strict mock providers."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import threading
import time

import pytest
from openai import OpenAI

from tests.e2e.harness import anthropic_target, http, openai_target, wait_until

GUIDE_BODY = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 1020,
              "system": "You are an assistant"}


def _chat(proxy, subdomain, key, body=None, headers=None):
    h = {"Host": f"{subdomain}.example.com", "X-Api-Key": key}
    h.update(headers or {})
    return http("POST", f"{proxy.base}/v1/chat/completions", body or GUIDE_BODY, h)


def _client(proxy, key, **kw) -> OpenAI:
    return OpenAI(base_url=f"{proxy.base}/v1", api_key=key, max_retries=0, _strict_response_validation=True,
                  timeout=30, **kw)


def _two_mocks(mock_factory):
    oa = mock_factory("openai-mock", "sk-openai-test")
    an = mock_factory("anthropic-mock", "sk-ant-test")
    return oa, an


def test_guide_curl_returns_openai_completion_from_either_provider(admin, proxy, subdomain, mock_factory):
    oa, an = _two_mocks(mock_factory)
    cfg = admin.guide_setup([openai_target(oa.port), anthropic_target(an.port)], subdomain=subdomain)
    seen = collections.Counter()
    for _ in range(4):
        r = _chat(proxy, subdomain, cfg["key"])
        assert r.status == 200, r.body
        body = r.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["choices"][0]["finish_reason"] == "stop"
        assert r.headers["x-selected-provider"] in ("openai", "anthropic")
        assert r.headers["x-selected-target"]
        assert r.headers["x-gateway-attempts"] == f"{r.headers['x-selected-provider']}:200"
        assert float(r.headers["x-gateway-overhead-ms"]) >= 0
        seen[r.headers["x-selected-provider"]] += 1
    assert seen == {"openai": 2, "anthropic": 2}
    # What each provider received is in its own format: the strict Anthropic mock accepted the translation.
    sent = an.requests()[-1]
    assert sent["body"]["system"] and "messages" in sent["body"] and sent["body"]["max_tokens"] == 1020
    assert "x-api-key" in sent["headers"] and sent["headers"]["x-api-key"] == "sk-ant-test"
    assert cfg["key"] not in json.dumps(sent["headers"])
    sent = oa.requests()[-1]
    assert sent["body"]["messages"][0] == {"role": "system", "content": "You are an assistant"}
    assert sent["headers"]["authorization"] == "Bearer sk-openai-test"
    assert "x-api-key" not in sent["headers"]


@pytest.mark.parametrize("weights,low,high", [((50, 50), 0.40, 0.60), ((75, 25), 0.65, 0.85)])
def test_weighted_split_over_200_requests(admin, proxy, subdomain, mock_factory, weights, low, high):
    oa, an = _two_mocks(mock_factory)
    cfg = admin.guide_setup([openai_target(oa.port, weight=weights[0]), anthropic_target(an.port, weight=weights[1])],
                            subdomain=subdomain)
    counts = collections.Counter()

    def one(_):
        r = _chat(proxy, subdomain, cfg["key"])
        assert r.status == 200, r.body
        return r.headers["x-selected-provider"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        counts.update(pool.map(one, range(200)))
    share = counts["openai"] / 200
    assert low <= share <= high, counts


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_openai_sdk_non_stream_and_stream_against_each_provider(admin, proxy, subdomain, mock_factory, provider):
    oa, an = _two_mocks(mock_factory)
    target = openai_target(oa.port, weight=1) if provider == "openai" else anthropic_target(an.port, weight=1)
    cfg = admin.guide_setup([target], subdomain=subdomain)
    client = _client(proxy, cfg["key"])  # no Host header: the key names the gateway

    completion = client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=64)
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens

    chunks = list(client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=64, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == completion.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0

    with client.chat.completions.stream(model="gpt-4", messages=[{"role": "user", "content": "Hi"}],
                                        max_tokens=64) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == text


def test_stream_events_arrive_as_the_provider_sends_them(admin, proxy, subdomain, mock_factory):
    an = mock_factory("anthropic-mock", "sk-ant-test")
    cfg = admin.guide_setup([anthropic_target(an.port, weight=1)], subdomain=subdomain)
    # The mock pauses 0.4 s after its 4th event (the first text delta): the first content must reach the client before the pause ends.
    an.set_faults([{"stall_after": 4, "stall": 0.4}])
    client = _client(proxy, cfg["key"])
    t0 = time.monotonic()
    first = None
    for chunk in client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=64, stream=True):
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.monotonic() - t0
    total = time.monotonic() - t0
    assert first is not None and total >= 0.4
    assert first < total - 0.3, (first, total)


def test_missing_wrong_and_foreign_keys_are_401_in_openai_format(admin, proxy, subdomain, mock_factory):
    oa = mock_factory("openai-mock", "sk-openai-test")
    cfg = admin.guide_setup([openai_target(oa.port)], subdomain=subdomain)
    for headers in ({}, {"X-Api-Key": "aigw-not-a-key"}, {"Authorization": "Bearer nope"}):
        r = http("POST", f"{proxy.base}/v1/chat/completions", GUIDE_BODY,
                 {"Host": f"{subdomain}.example.com", **headers})
        assert r.status == 401, r.body
        assert r.json()["error"]["code"] == "invalid_api_key"
    other = admin.guide_setup([openai_target(oa.port)], subdomain=subdomain + "x")
    r = _chat(proxy, subdomain, other["key"])
    assert r.status == 401
    # A deleted key stops working within a second.
    keys = admin.ok("GET", f"/gateways/{cfg['gateway']['id']}/keys")
    admin.ok("DELETE", f"/gateways/{cfg['gateway']['id']}/keys/{keys[0]['id']}")
    wait_until(lambda: _chat(proxy, subdomain, cfg["key"]).status == 401, timeout=3)
    assert not oa.requests() or all("aigw-" not in json.dumps(r["headers"]) for r in oa.requests())


def test_no_rule_is_404_and_anthropic_ingress_errors_are_anthropic_shaped(admin, proxy, subdomain, mock_factory):
    oa = mock_factory("openai-mock", "sk-openai-test")
    cfg = admin.guide_setup([openai_target(oa.port)], subdomain=subdomain, rule_path="/v1/chat")
    r = http("POST", f"{proxy.base}/v1/messages", {"model": "m", "max_tokens": 5, "messages": []},
             {"x-api-key": cfg["key"]})
    assert r.status == 404
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "not_found_error"
    r = http("POST", f"{proxy.base}/v1/messages", {"model": "m"}, {"x-api-key": "bad"})
    assert r.status == 401 and r.json()["error"]["type"] == "authentication_error"
    r = http("POST", f"{proxy.base}/v1/chat/completions", b"{not json", {"X-Api-Key": cfg["key"]})
    assert r.status == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert b"<html" not in r.body.lower()


def test_a_target_down_every_request_still_served(admin, proxy, subdomain, mock_factory):
    from aigw.procs import free_port

    an = mock_factory("anthropic-mock", "sk-ant-test")
    dead = free_port()  # nothing listens there: connection refused
    cfg = admin.guide_setup([openai_target(dead), anthropic_target(an.port)], subdomain=subdomain)
    client = _client(proxy, cfg["key"])
    statuses = collections.Counter()
    for i in range(30):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4", messages=[{"role": "user", "content": "Hi"}], max_tokens=32, stream=bool(i % 2))
        statuses[raw.status_code] += 1
        assert raw.headers["x-selected-provider"] == "anthropic"
        if i == 0:
            assert raw.headers["x-gateway-attempts"].startswith("openai:connect,anthropic:200") or \
                raw.headers["x-gateway-attempts"] == "anthropic:200"
        raw.parse()
    assert statuses == {200: 30}


def test_config_change_applies_live_under_load(admin, proxy, subdomain, mock_factory):
    oa, an = _two_mocks(mock_factory)
    cfg = admin.guide_setup([openai_target(oa.port, weight=1)], subdomain=subdomain)
    gid, uid = cfg["gateway"]["id"], cfg["upstream"]["id"]
    stop = threading.Event()
    results: list[tuple[float, float, int, str]] = []  # (started, finished, status, provider)

    def load():
        while not stop.is_set():
            started = time.monotonic()
            r = _chat(proxy, subdomain, cfg["key"])
            results.append((started, time.monotonic(), r.status, r.headers.get("x-selected-provider", "")))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(results) > 20, timeout=10)
        upstream = admin.ok("GET", f"/gateways/{gid}/upstreams/{uid}")
        upstream["targets"] = [anthropic_target(an.port, weight=1)]
        changed_at = time.monotonic()
        admin.ok("PUT", f"/gateways/{gid}/upstreams/{uid}", upstream)
        first_new = wait_until(lambda: next((r for r in list(results) if r[3] == "anthropic"), None), timeout=5)
        wait_until(lambda: sum(1 for r in list(results) if r[0] > first_new[1]) > 40, timeout=10)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    # The contract is 1 s (0.25 s stat poll + rebuild); the margin absorbs a CPU-starved CI machine.
    print(f"[live config] first answer from the new target {first_new[1] - changed_at:.3f} s after the PUT started")
    assert first_new[1] - changed_at < 2.5, first_new[1] - changed_at
    assert all(status == 200 for _, _, status, _ in results), collections.Counter(r[2] for r in results)
    # Every request that started after one was served by the new target is served by it too: the switch is
    # atomic and never goes back.
    after = [provider for started, _, _, provider in results if started > first_new[1]]
    assert after and set(after) == {"anthropic"}


def test_a_request_one_target_cannot_do_goes_to_one_that_can(admin, proxy, subdomain, mock_factory):
    oa, an = _two_mocks(mock_factory)
    body = dict(GUIDE_BODY, n=2)
    cfg = admin.guide_setup([anthropic_target(an.port, priority=1), openai_target(oa.port, priority=2)],
                            subdomain=subdomain)
    r = _chat(proxy, subdomain, cfg["key"], body)
    assert r.status == 200, r.body
    assert r.headers["x-gateway-attempts"] == "anthropic:unsupported,openai:200"
    assert len(r.json()["choices"]) == 2
    only = admin.guide_setup([anthropic_target(an.port)], subdomain=subdomain + "a")
    r = _chat(proxy, subdomain + "a", only["key"], body)
    assert r.status == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "n" in r.json()["error"]["message"]


def test_oversized_and_compressed_bodies(admin, proxy, subdomain, mock_factory):
    import gzip

    oa = mock_factory("openai-mock", "sk-openai-test")
    cfg = admin.guide_setup([openai_target(oa.port, weight=1)], subdomain=subdomain)
    big = json.dumps(dict(GUIDE_BODY, messages=[{"role": "user", "content": "x" * (11 * 1024 * 1024)}])).encode()
    r = http("POST", f"{proxy.base}/v1/chat/completions", big, {"X-Api-Key": cfg["key"]})
    assert r.status == 413 and r.json()["error"]["type"] == "invalid_request_error"
    assert not oa.requests()
    packed = gzip.compress(json.dumps(GUIDE_BODY).encode())
    r = http("POST", f"{proxy.base}/v1/chat/completions", packed,
             {"X-Api-Key": cfg["key"], "Content-Encoding": "gzip"})
    assert r.status == 200, r.body
    r = http("POST", f"{proxy.base}/v1/chat/completions", b"\x1f\x8bnot gzip",
             {"X-Api-Key": cfg["key"], "Content-Encoding": "gzip"})
    assert r.status == 400


def test_a_caller_hanging_up_mid_stream_releases_the_provider(admin, proxy, subdomain, mock_factory):
    import socket

    an = mock_factory("anthropic-mock", "sk-ant-test")
    # The provider sends its first content, then thinks for 4 s: the gateway must not wait that long to notice.
    an.set_faults([{"stall_after": 5, "stall": 4}])
    cfg = admin.guide_setup([anthropic_target(an.port, weight=1)], subdomain=subdomain)
    body = json.dumps(dict(GUIDE_BODY, stream=True)).encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"X-Api-Key: " + cfg["key"].encode() + b"\r\nContent-Length: " + str(len(body)).encode() +
                  b"\r\n\r\n" + body)
        first = s.recv(65536)
        assert b"200" in first.split(b"\r\n", 1)[0]
    hung_up = time.monotonic()
    # The gateway closes its provider connection at once instead of holding a stream nobody will receive.
    wait_until(lambda: an.requests() and an.requests()[-1].get("outcome") == "client_closed", timeout=5)
    assert time.monotonic() - hung_up < 2.0


def test_endpoint_service_forwards_untranslated_json_and_streams(admin, proxy, subdomain, mock_factory):
    oa = mock_factory("openai-mock", "sk-openai-test", chunk_delay=0.01)
    gw = admin.ok("POST", "/gateways", {"name": "passthrough", "subdomain": subdomain})
    svc = admin.ok("POST", f"/gateways/{gw['id']}/services",
                   {"name": "direct", "type": "endpoint", "host": "127.0.0.1", "port": oa.port, "protocol": "http",
                    "path": "/"})
    admin.ok("POST", f"/gateways/{gw['id']}/rules", {"path": "/v1", "service_id": svc["id"], "methods": ["POST"]})
    key = admin.ok("POST", f"/gateways/{gw['id']}/keys", {"name": "k"})["key"]
    admin.wait_live(key)
    # The caller's own provider credential goes through untouched; the gateway key never does.
    headers = {"X-TG-API-Key": key, "Authorization": "Bearer sk-openai-test"}
    plain = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 20, "seed": 7}
    r = http("POST", f"{proxy.base}/v1/chat/completions", plain, headers)
    assert r.status == 200, r.body
    sent = oa.requests()[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["body"] == plain  # untranslated, byte for byte
    assert "x-tg-api-key" not in sent["headers"] and sent["headers"]["authorization"] == "Bearer sk-openai-test"
    # A gateway key sent as the bearer token is the gateway's, not the provider's: it is not forwarded.
    r = http("POST", f"{proxy.base}/v1/chat/completions", plain, {"Authorization": f"Bearer {key}"})
    assert r.status == 502 and r.headers["x-gateway-attempts"] == "passthrough:401"
    assert key not in json.dumps(oa.requests()[-1]["headers"])
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    r = http("POST", f"{proxy.base}/v1/chat/completions", body, headers)
    assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.body.rstrip().endswith(b"data: [DONE]")
    assert r.headers["x-selected-provider"] == "passthrough"
