"""Two real mitmdump proxies sharing one real redis-server (aigw_redis): a circuit opened on one is honoured by the
other within a second, a sticky pin made on one is honoured by the other, a key limit is one limit across both;
with Redis stopped both keep serving on their own state, and once it is back they converge again.

Every wait is a bounded poll on a condition; faults come from the mock provider (aigw.mock)."""

from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import pytest

from addon.balancer import Balancer
from aigw.procs import RedisProcess
from store.health_file import read_health, target_key
from tests.e2e.harness import Admin, http, openai_target, start_mitmdump, wait_until

BODY = {"model": "gpt-4", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
HEALTH = {"passive": True, "threshold": 3, "interval": 60}
FAILOVER = {"connect_timeout": 1.0, "headers_timeout": 2.0, "first_token_timeout": 2.0, "idle_timeout": 2.0,
            "total_timeout": 20.0}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed; scripts/test installs it (apt-get install redis-server)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pair(stack, redis_server):
    """Proxies A and B: same store, each its own port, one Redis."""
    extra = ["--set", f"aigw_redis={redis_server.url}", "--set", "aigw_redis_timeout=1"]
    a = start_mitmdump(stack["data"], stack["root"] / "mitm-conf", extra=extra, quiet=False)
    try:
        b = start_mitmdump(stack["data"], stack["root"] / "mitm-conf", extra=extra, quiet=False)
    except Exception:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def _chat(proxy, key: str, headers: dict | None = None):
    return http("POST", f"{proxy.base}/v1/chat/completions", BODY, {"X-Api-Key": key, **(headers or {})})


def _attempts(proxy, key: str, headers: dict | None = None) -> str:
    r = _chat(proxy, key, headers)
    assert r.status == 200, (r.status, r.body[:300])
    return r.headers["x-gateway-attempts"]


def _setup(stack, pair, targets: list[dict], subdomain: str, **kw) -> dict:
    a, b = pair
    cfg = Admin(stack["admin"].base, a.base).guide_setup(targets, subdomain=subdomain, health_checks=HEALTH,
                                                         extra={"failover": FAILOVER, **kw.pop("extra", {})}, **kw)
    Admin(stack["admin"].base, b.base).wait_live(cfg["key"])
    return cfg


def _open_on(proxy, key: str, bad) -> None:
    """Requests on `proxy` until its circuit of `bad` opens: a request then no longer tries it."""
    wait_until(lambda: _attempts(proxy, key) == "openai:200" and _attempts(proxy, key) == "openai:200",
               timeout=10)
    assert len(bad.requests()) >= HEALTH["threshold"]


def _published(stack, proxy, key: str) -> dict | None:
    """`key`'s entry in the health file when `proxy` wrote it last (every proxy on the store writes it)."""
    doc = read_health(str(stack["data"]) + ".health.json")
    if doc is None or doc.get("pid") != proxy.proc.pid:
        return None
    return doc["targets"].get(key)


def _shared_open(stack, proxy, key: str) -> dict:
    """Wait until `proxy` publishes `key` open by another process's verdict (bounded)."""
    def entry():
        e = _published(stack, proxy, key)
        return e if e is not None and e.get("source") == "shared" and e["state"] == "open" else None

    return wait_until(entry, timeout=15)


def _avoids(proxy, key: str, bad, n: int = 6) -> bool:
    """`n` requests on `proxy`, none of them sent to `bad` (round-robin over two would hit it every other one)."""
    before = len(bad.requests())
    chains = [_attempts(proxy, key) for _ in range(n)]
    return chains == ["openai:200"] * n and len(bad.requests()) == before


def test_a_circuit_opened_on_one_proxy_is_honoured_by_the_other(stack, pair, mock_factory, subdomain):
    a, b = pair
    bad, good = mock_factory("shared-bad", "sk-openai-test"), mock_factory("shared-good", "sk-openai-test")
    cfg = _setup(stack, pair, [openai_target(bad.port, id="sh-bad"), openai_target(good.port, id="sh-good")],
                 subdomain)
    bad.set_faults([{"status": 500}])
    _open_on(a, cfg["key"], bad)
    # Within a second B no longer sends to it either.
    wait_until(lambda: _avoids(b, cfg["key"], bad, 2), timeout=1.0)
    assert _avoids(b, cfg["key"], bad)
    # B's published health says it holds another process's verdict: B did not open the circuit itself (fewer
    # failures of its own than the threshold; a circuit B opened would read "local").
    entry = _shared_open(stack, b, target_key(cfg["upstream"]["id"], "sh-bad"))
    assert entry["origin"] and entry["failures"] < HEALTH["threshold"]


def test_a_sticky_pin_made_on_one_proxy_is_honoured_by_the_other(stack, pair, mock_factory, subdomain,
                                                                  redis_server):
    a, b = pair
    ids = ["sp-a", "sp-b", "sp-c"]
    mocks = {i: mock_factory(i, "sk-openai-test") for i in ids}
    cfg = _setup(stack, pair, [openai_target(mocks[i].port, id=i) for i in ids], subdomain, algorithm="sticky",
                 extra={"sticky": {"hash_on": "header:X-Session-Id", "ttl": 300}})
    ring = [SimpleNamespace(id=i, weight=50, priority=1) for i in ids]
    session = next(s for s in (f"sess-{n}" for n in range(1000))
                   if Balancer("sticky", ring).plan(available=lambda _t: True, sticky_key=s).order[0].id == "sp-a")
    hdr = {"X-Session-Id": session}
    mocks["sp-a"].set_faults([{"status": 500, "times": 1}])  # one failure: a failover, not an open circuit
    r = _chat(a, cfg["key"], hdr)
    assert r.status == 200 and r.headers["x-gateway-attempts"].count(",") == 1
    home = r.headers["x-selected-target"]
    assert home != "sp-a"

    import redis

    with redis.Redis.from_url(redis_server.url, socket_timeout=2) as client:
        def pinned() -> bool:
            names = client.keys(f"aigw:sticky:default:{cfg['upstream']['id']}:*")
            return any(client.get(n) == home.encode() for n in names)

        wait_until(pinned, timeout=5)  # the pin is written behind the answer
    # B never served this session: without the shared pin it would go to the ring's owner, sp-a (healthy again).
    for proxy in (b, a, b):
        r = _chat(proxy, cfg["key"], hdr)
        assert r.status == 200 and r.headers["x-selected-target"] == home, r.headers
    assert len(mocks["sp-a"].requests()) == 1


def test_a_key_limit_is_one_limit_across_both(stack, pair, mock_factory, subdomain):
    a, b = pair
    good = mock_factory("shared-limit", "sk-openai-test")
    cfg = _setup(stack, pair, [openai_target(good.port)], subdomain)
    key = stack["admin"].ok("POST", f"/gateways/{cfg['gateway']['id']}/keys",
                            {"name": "limited", "limits": {"requests": "5/day"}})["key"]
    Admin(stack["admin"].base, a.base).wait_live(key)
    Admin(stack["admin"].base, b.base).wait_live(key)
    statuses = [_chat(a if i % 2 == 0 else b, key).status for i in range(6)]
    assert statuses == [200] * 5 + [429]


def test_without_redis_both_serve_and_converge_when_it_is_back(stack, pair, mock_factory, subdomain,
                                                                redis_server):
    a, b = pair
    bad, good = mock_factory("outage-bad", "sk-openai-test"), mock_factory("outage-good", "sk-openai-test")
    cfg = _setup(stack, pair, [openai_target(bad.port, id="out-bad"), openai_target(good.port, id="out-good")],
                 subdomain)
    redis_server.stop()
    try:
        # Both serve on their own state; a circuit opened on A now stays A's.
        assert _chat(b, cfg["key"]).status == 200
        bad.set_faults([{"status": 500}])
        _open_on(a, cfg["key"], bad)
        # B was not told: it still tries the bad target (once here: one failure of its own, below its threshold).
        wait_until(lambda: _attempts(b, cfg["key"]) == "openai:500,openai:200", timeout=5)
        wait_until(lambda: "shared state" in a.log() and "unreachable" in a.log(), timeout=10)
    finally:
        redis_server.start()
    # Back: A re-publishes its open circuit and B takes it (reconnection backs off to at most 5 s).
    _shared_open(stack, b, target_key(cfg["upstream"]["id"], "out-bad"))
    assert _avoids(b, cfg["key"], bad)
    wait_until(lambda: "answers again" in a.log(), timeout=10)
