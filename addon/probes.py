"""Optional active health probes: off by default, and cheap when on.

Passive health from live traffic is the default (probes that send completions cost money). An upstream can turn
on `health_checks.active = {"enabled": true, "path": "/v1/models", "interval": 30}`: each target then gets a GET
on that path (never a billed completion). A probe that fails counts as a health failure like a failed request; a
probe that succeeds lets a resting target back in, once its cool-down is over, without waiting for a caller to be
its trial request (``HealthBoard.probe_success``). A good probe says nothing about completions, so it neither resets
a closed circuit's failure run nor feeds the latency EWMA that latency-aware balancing reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import aiohttp

from addon.live import LiveConfig
from store.health_file import target_key
from addon.upstream import UpstreamClient, classify_status

log = logging.getLogger("aigw.probes")


class Prober:
    def __init__(self, live: Callable[[], LiveConfig | None], client: UpstreamClient,
                 origin: Callable[[Any], tuple[str, str, int]],
                 auth_headers: Callable[[Any], dict[str, str]], *, tick: float = 1.0) -> None:
        self.live = live
        self.client = client
        self.origin = origin
        self.auth_headers = auth_headers
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
            active = getattr(getattr(upstream, "health_checks", None), "active", None)
            if not active or not getattr(active, "enabled", False):
                continue
            interval = float(getattr(active, "interval", 30) or 30)
            path = getattr(active, "path", None) or "/v1/models"
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

    async def probe(self, live: LiveConfig, upstream: Any, target: Any, path: str, key: str) -> None:
        policy = live.policy(upstream)
        health = live.health
        try:
            scheme, host, port = self.origin(target)
            headers = self.auth_headers(target)
            timeout = aiohttp.ClientTimeout(total=5.0, connect=2.0)
            async with self.client.session().get(f"{scheme}://{host}:{port}{path}", headers=headers,
                                                 timeout=timeout, allow_redirects=False) as resp:
                await resp.read()
                status = resp.status
            reason = classify_status(status)
            if reason is None:
                if health.probe_success(key, policy):
                    log.info("aigw: %s is back (active probe %s answered %d)", key, path, status)
            else:
                health.failure(key, policy, f"probe: HTTP {status}", health=reason not in ("401", "403"), probe=True)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            health.failure(key, policy, f"probe: {type(exc).__name__}", probe=True)
        except Exception:
            log.exception("aigw: probe of %s failed unexpectedly", key)
        finally:
            self._running.discard(key)
