"""Optional active health probes: off by default, and cheap when on.

Passive health from live traffic is the default (probes that send completions cost money). An upstream can turn
on `health_checks.active = {"enabled": true, "path": "/v1/models", "interval": 30}`: each target then gets a GET
on that path (never a billed completion). A probe that fails counts as a health failure like a failed request; a
probe that succeeds lets a resting target back in, once its cool-down is over, without waiting for a caller to be
its trial request (``HealthBoard.probe_success``). A good probe says nothing about completions, so it neither resets
a closed circuit's failure run nor feeds the latency EWMA that latency-aware balancing reads.

A probe reaches its target exactly as traffic does (addon/targets.py: origin, URL with IPv6 brackets, credential
headers; sent as built by `UpstreamClient.send`) and its answer is classified like an attempt's
(`attempt.classify_status`). See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import aiohttp

from addon.attempt import classify_status
from addon.live import LiveConfig
from addon.targets import credential_headers, target_url
from addon.upstream import Attempt, UpstreamClient
from store.health_file import target_key
from store.models import Target, Upstream

log = logging.getLogger("aigw.probes")

PROBE_TIMEOUT = 5.0  # seconds for a whole probe (connecting: at most 2)


class Prober:
    def __init__(self, live: Callable[[], LiveConfig | None], client: UpstreamClient, *, tick: float = 1.0) -> None:
        self.live = live
        self.client = client
        self.tick = tick
        self._due: dict[str, float] = {}
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                self._schedule()
            except Exception:
                log.exception("aigw: active probe scheduling failed")

    def _schedule(self) -> None:
        now = time.monotonic()
        live = self.live()
        if live is None:
            return
        wanted: set[str] = set()
        for upstream in live.upstreams():
            active = upstream.health_checks.active
            if active is None or not active.enabled:
                continue
            interval = float(active.interval)
            path = active.path or "/v1/models"
            for target in upstream.targets:
                key = target_key(upstream.id, target.id)
                wanted.add(key)
                if key in self._running or self._due.get(key, 0.0) > now:
                    continue
                self._due[key] = now + interval
                self._running.add(key)
                task = asyncio.get_running_loop().create_task(self.probe(live, upstream, target, path, key),
                                                              name=f"aigw-probe-{key}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        for key in [k for k in self._due if k not in wanted]:  # probes turned off, or target gone
            del self._due[key]

    async def probe(self, live: LiveConfig, upstream: Upstream, target: Target, path: str, key: str) -> None:
        policy = live.policy(upstream)
        health = live.health
        try:
            call = Attempt(method="GET", url=target_url(target, path), headers=credential_headers(target), body=b"",
                           stream=False, connect_timeout=2.0, headers_timeout=PROBE_TIMEOUT,
                           first_token_timeout=PROBE_TIMEOUT, idle_timeout=PROBE_TIMEOUT)
            async with asyncio.timeout(PROBE_TIMEOUT):  # the whole probe, body included
                resp = await self.client.send(call)
                try:
                    await resp.read()
                finally:
                    resp.release()
            status = resp.status
            reason = classify_status(status)
            if reason is None:
                if health.probe_success(key, policy):
                    log.info("aigw: %s is back (active probe %s answered %d)", key, path, status)
            else:
                health.failure(key, policy, f"probe: HTTP {status}", health=reason.counts_for_health, probe=True)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            health.failure(key, policy, f"probe: {type(exc).__name__}", probe=True)
        except Exception:
            log.exception("aigw: probe of %s failed unexpectedly", key)
        finally:
            self._running.discard(key)
