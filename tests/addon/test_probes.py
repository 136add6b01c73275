"""Active probes against a real (loopback) mock provider: GETs only, failures open, a good probe closes a rested
circuit, nothing is probed when probes are off."""

from __future__ import annotations

import asyncio

import pytest

from addon.health import HealthBoard, HealthPolicy
from addon.probes import Prober
from addon.upstream import UpstreamClient
from aigw.mock import MockProvider
from store.health_file import target_key
from store.models import Upstream


class FakeLive:
    def __init__(self, upstreams: list) -> None:
        self._upstreams = upstreams
        self.health = HealthBoard()

    def upstreams(self) -> list:
        return list(self._upstreams)

    def policy(self, upstream) -> HealthPolicy:
        return HealthPolicy.from_model(upstream.health_checks)


def _upstream(uid: str, port: int, *, enabled: bool = True, interval: int = 1, threshold: int = 2, rest: int = 1,
              target_id: str = "t1") -> Upstream:
    target = {"id": target_id, "host": "127.0.0.1", "port": port, "protocol": "http",
              "credentials": {"header_name": "Authorization", "header_value": "Bearer sk-probe"}}
    hc = {"passive": True, "threshold": threshold, "interval": rest, "min_requests": 10,
          "active": {"enabled": enabled, "path": "/v1/models", "interval": interval}}
    return Upstream.model_validate({"id": uid, "name": uid, "targets": [target], "health_checks": hc})


async def _until(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


@pytest.fixture
async def mock():
    async with MockProvider(api_key="sk-probe", name="probed") as m:
        yield m


@pytest.fixture
async def client():
    c = UpstreamClient()
    yield c
    await c.close()


def _prober(live, client) -> Prober:
    return Prober(lambda: live, client, tick=0.02)


async def test_failing_probes_open_and_a_good_probe_after_the_rest_closes(mock, client):
    up = _upstream("u1", mock.port)
    live = FakeLive([up])
    key = target_key("u1", "t1")
    mock.set_faults([{"match": {"path_contains": "/v1/models"}, "status": 503}])
    prober = _prober(live, client)
    for _ in range(2):  # two probes (threshold 2) without waiting for the 1 s interval
        prober._due.clear()
        prober._schedule()
        await _until(lambda: not prober._running)
    assert live.health.state(key) == "open"
    assert live.health.snapshot(key)["last_error"] == "probe: HTTP 503"
    mock.set_faults([])
    prober._due.clear()
    prober._schedule()  # still resting: a good probe does not cut the cool-down short
    await _until(lambda: not prober._running)
    assert live.health.snapshot(key)["cooldown_remaining_s"] > 0
    live.health._circuits[key].open_until = 0.0  # the rest is over
    prober._due.clear()
    prober._schedule()
    await _until(lambda: not prober._running)
    assert live.health.state(key) == "closed"
    assert live.health.ewma_ttfb(key) is None  # a model list's latency says nothing about completions
    reqs = mock.requests()
    assert len(reqs) == 4 and all(r["method"] == "GET" and r["path"] == "/v1/models" for r in reqs)
    assert reqs[0]["headers"]["authorization"] == "Bearer sk-probe"


async def test_refused_probe_is_a_failure(client):
    up = _upstream("u2", 1, threshold=1)  # port 1: nothing listens
    live = FakeLive([up])
    prober = _prober(live, client)
    prober._schedule()
    await _until(lambda: not prober._running)
    assert live.health.state(target_key("u2", "t1")) == "open"
    assert live.health.snapshot(target_key("u2", "t1"))["last_error"].startswith("probe: ")


async def test_run_probes_on_interval_keeps_task_references_and_skips_disabled(mock, client):
    on, off = _upstream("on", mock.port, interval=1), _upstream("off", mock.port, enabled=False, target_id="t-off")
    live = FakeLive([on, off])
    prober = _prober(live, client)
    runner = asyncio.create_task(prober.run())
    try:
        await _until(lambda: len(mock.requests()) >= 1)
        assert target_key("off", "t-off") not in prober._due
        await asyncio.sleep(0.3)
        assert len(mock.requests()) == 1  # interval 1 s: not again yet, although the tick is 20 ms
        assert not prober._tasks  # finished probe tasks are released
    finally:
        runner.cancel()
    live._upstreams = [off]  # probes turned off: the schedule forgets the target
    prober._schedule()
    assert prober._due == {}
