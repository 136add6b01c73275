"""Limits shared through a real redis-server by two real mitmdump processes: one limit in total, not one per
process; and what happens when Redis goes away (fail open, fail closed) and comes back."""

from __future__ import annotations

import os
import shutil

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aigw.procs import RedisProcess, free_port
from tests.e2e.harness import Admin, http, openai_target, start_mitmdump, wait_until

BODY = {"model": "gpt-4", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def redis_proc(tmp_path):
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed; scripts/test installs it (apt-get install redis-server)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisProcess(tmp_path / "redis").start()
    yield server
    server.stop()


def _proxy(stack, url: str, *extra: str, quiet: bool = True):
    return start_mitmdump(stack["data"], stack["root"] / "mitm-conf", extra=["--set", f"aigw_redis={url}", *extra],
                          quiet=quiet)


def _chat(proxy, key: str) -> int:
    return http("POST", f"{proxy.base}/v1/chat/completions", BODY, {"X-Api-Key": key}).status


def _storage_errors(proxy) -> float:
    body = http("GET", f"http://127.0.0.1:{proxy.metrics_port}/metrics").body.decode()
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if s.name == "aigw_limit_storage_errors_total":
                return s.value
    raise AssertionError("aigw_limit_storage_errors_total is not exported")


def test_two_processes_sharing_redis_enforce_one_limit(stack, admin, mock_factory, subdomain, redis_proc):
    small = mock_factory("openai-small", "sk-small")
    big = mock_factory("openai-big", "sk-big")
    # A generous timeout: this test is about sharing, not about a slow Redis (tested below).
    one = _proxy(stack, redis_proc.url, "--set", "aigw_redis_timeout=2")
    two = _proxy(stack, redis_proc.url, "--set", "aigw_redis_timeout=2")
    try:
        cfg = Admin(admin.base, one.base).guide_setup(
            [openai_target(small.port, key="sk-small", limits={"requests": "4/day"}),
             openai_target(big.port, key="sk-big")], subdomain=subdomain)
        key = admin.ok("POST", f"/gateways/{cfg['gateway']['id']}/keys",
                       {"name": "shared", "limits": {"requests": "6/day"}})
        Admin(admin.base, one.base).wait_live(key["key"])
        Admin(admin.base, two.base).wait_live(key["key"])
        statuses = [_chat(one if i % 2 == 0 else two, key["key"]) for i in range(10)]
        assert statuses == [200] * 6 + [429] * 4  # six in total across both processes, not six each
        # The unlimited key: the small target's 4/day is shared too, the big one takes the rest, no errors.
        statuses = [_chat(one if i % 2 == 0 else two, cfg["key"]) for i in range(10)]
        assert statuses == [200] * 10
        assert len(small.requests()) == 4 and len(big.requests()) == 12
        assert _storage_errors(one) == 0 and _storage_errors(two) == 0
    finally:
        one.stop()
        two.stop()


def test_redis_down_fails_open_or_closed_and_comes_back(stack, admin, mock_factory, subdomain, tmp_path):
    if shutil.which("redis-server") is None and os.environ.get("CI") != "true":
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    oa = mock_factory("openai-mock", "sk-oa")
    port = free_port()
    redis = RedisProcess(tmp_path / "redis", port)  # not started yet: nothing listens on its port
    url = redis.url
    opened = _proxy(stack, url, "--set", "aigw_limits_on_error=open", "--set", "aigw_redis_timeout=0.2",
                    quiet=False)
    closed = _proxy(stack, url, "--set", "aigw_limits_on_error=closed", "--set", "aigw_redis_timeout=0.2")
    try:
        cfg = Admin(admin.base, opened.base).guide_setup([openai_target(oa.port, key="sk-oa")], subdomain=subdomain)
        key = admin.ok("POST", f"/gateways/{cfg['gateway']['id']}/keys",
                       {"name": "limited", "limits": {"requests": "2/day"}})
        Admin(admin.base, opened.base).wait_live(key["key"])
        Admin(admin.base, closed.base).wait_live(key["key"])
        assert [_chat(opened, key["key"]) for _ in range(4)] == [200] * 4  # served without the limit
        assert _storage_errors(opened) >= 4
        refused = http("POST", f"{closed.base}/v1/chat/completions", BODY, {"X-Api-Key": key["key"]})
        assert refused.status == 503 and "rate-limit storage" in refused.json()["error"]["message"]
        assert _chat(closed, cfg["key"]) == 200  # a key without limits never needs the storage
        assert "unreachable" in opened.log()
        redis.start()
        try:
            # Back: the limit applies again (two per day, counted from now).
            wait_until(lambda: _chat(opened, key["key"]) == 429, timeout=15)
            assert _chat(closed, key["key"]) == 429
            assert "answers again" in opened.log()
        finally:
            redis.stop()
    finally:
        opened.stop()
        closed.stop()
