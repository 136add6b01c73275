"""Live configuration and health state of the data plane.

The request path never touches TinyDB (docs/architecture.md): it reads the in-memory Snapshot, which a background
task swaps when the store file changes (stat every `poll_interval`, rebuild in a worker thread, keep the last good
one on error). Balancer state (smooth round-robin counters, sticky pins) survives a reload as long as the
upstream's targets and algorithm are unchanged. Health lives in memory too and is published to the health file
twice a second for the admin API (which may run in another process). With `aigw_redis`, circuit transitions and
sticky pins are shared with the other proxy processes (`shared`, addon/shared_state.py; docs/shared-state.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

from addon.balancer import Balancer, Plan
from addon.health import HealthBoard, HealthPolicy
from addon.quota import QuotaBoard
from store.health_file import health_path_for, target_key, write_health
from store.models import HealthChecks, Target, Upstream, format_rfc3339
from store.config.loader import ConfigFileLoader
from store.snapshot import Snapshot, SnapshotLoader

if TYPE_CHECKING:
    from addon.shared_state import SharedState

log = logging.getLogger("aigw.live")


def target_identity(target: Target) -> tuple:
    """What makes a target the same server for health purposes: its provider and where it is reached."""
    return target.provider, target.protocol, target.host, target.port


class LiveConfig:
    def __init__(self, data_path: str, *, poll_interval: float = 0.25, publish_interval: float = 0.5,
                 config_path: str | None = None, worker: str | None = None) -> None:
        self.data_path = data_path
        self.worker = worker  # under `aigw up --workers`: this process's own health file (store/workers.py)
        self.health_path = health_path_for(data_path, worker)
        # The snapshot's source: the store file, or a configuration file (database-less; store/config/loader.py).
        # Side files (health, usage) stay next to data_path.
        self.config_path = config_path
        self.loader = ConfigFileLoader(config_path) if config_path else SnapshotLoader(data_path)
        self.health = HealthBoard()
        self.quotas = QuotaBoard()  # targets out of quota (addon/limiter.py), skipped by every plan
        self.poll_interval = poll_interval
        self.publish_interval = publish_interval
        # upstream id → (balancer, the snapshot's upstream object it was built from)
        self._balancers: dict[str, tuple[Balancer, Upstream]] = {}
        # health key → the target's identity (provider and origin) that its health state describes
        self._identities: dict[str, tuple] = {}
        self._policies: dict[str, tuple[HealthChecks | None, HealthPolicy]] = {}  # upstream id → (its health_checks, policy)
        self._tasks: list[asyncio.Task] = []
        self.shared: SharedState | None = None  # set by the addon while aigw_redis is on
        self._prune()  # record the identities of the targets health will be kept for

    @property
    def snapshot(self) -> Snapshot:
        return self.loader.current

    # -- background work --------------------------------------------------------------------------------
    def start(self, create_task) -> None:
        self._tasks.append(create_task(self._watch(), name="aigw-config-watch"))
        self._tasks.append(create_task(self._publish(), name="aigw-health-publish"))

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self._write_health()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                if self.loader.changed():
                    await asyncio.to_thread(self.loader.reload)
                    self._prune()
            except Exception:  # keep serving with the last good snapshot
                log.exception("aigw: configuration reload failed; keeping the previous configuration")

    async def _publish(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.publish_interval)
            try:
                await asyncio.to_thread(write_health, self.health_path, self._health_doc())
            except Exception as exc:
                if not failing:  # once per outage, not once a second
                    log.warning("aigw: cannot publish health state to %s: %s", self.health_path, exc)
                failing = True
            else:
                if failing:
                    log.info("aigw: publishing health state to %s again", self.health_path)
                failing = False

    def _health_doc(self) -> dict:
        targets = self.health.export()
        for key, block in self.quotas.export().items():
            entry = targets.setdefault(key, {"state": "closed"})
            entry["quota_exhausted_until"] = format_rfc3339(datetime.fromtimestamp(block["until"], UTC))
            entry["quota_reason"] = block["why"]
        return {"written_at": time.time(), "pid": os.getpid(), "targets": targets}

    def _write_health(self) -> None:
        try:
            write_health(self.health_path, self._health_doc())
        except Exception:
            log.exception("aigw: could not publish health state")

    def upstreams(self) -> list[Upstream]:
        return list(self.snapshot.upstreams())

    def _prune(self) -> None:
        """Forget balancers and health of targets that are gone from the configuration, and the health of a
        target whose identity changed (same id, other provider or origin): its history describes another
        server. Health survives every other edit (weight, priority, path, credentials, headers)."""
        live_keys: set[str] = set()
        live_upstreams: set[str] = set()
        identities: dict[str, tuple] = {}
        for upstream in self.upstreams():
            live_upstreams.add(upstream.id)
            for t in upstream.targets:
                key = target_key(upstream.id, t.id)
                live_keys.add(key)
                identities[key] = target_identity(t)
        moved = {k for k, ident in identities.items() if self._identities.get(k, ident) != ident}
        self._identities = identities
        live_keys -= moved
        for uid in list(self._balancers):
            if uid not in live_upstreams:
                del self._balancers[uid]
        self.health.forget(live_keys)
        self.quotas.forget(live_keys)
        for uid in list(self._policies):
            if uid not in live_upstreams:
                del self._policies[uid]

    # -- per request ------------------------------------------------------------------------------------
    def policy(self, upstream: Upstream) -> HealthPolicy:
        checks = upstream.health_checks
        cached = self._policies.get(upstream.id)
        if cached is None or cached[0] is not checks:
            cached = (checks, HealthPolicy.from_model(checks))
            self._policies[upstream.id] = cached
        return cached[1]

    def balancer(self, upstream: Upstream) -> Balancer:
        """The upstream's balancer, holding exactly this snapshot's Target objects.

        A reload gives every upstream a new object: the balancer is then rebuilt around the new targets (any
        field may have changed — host, port, path, credentials) and inherits rotation counters and sticky pins of
        the targets that are still there. Between reloads the identity check makes this one dict lookup."""
        cached = self._balancers.get(upstream.id)
        if cached is not None and cached[1] is upstream:
            return cached[0]
        ttl = float(upstream.sticky.ttl if upstream.sticky is not None and upstream.sticky.ttl else 300)
        balancer = Balancer(upstream.algorithm, list(upstream.targets), sticky_ttl=ttl)
        if cached is not None and cached[0].algorithm == balancer.algorithm:
            balancer.inherit(cached[0])
        balancer.on_pin = partial(self._pinned, upstream.id, ttl)
        self._balancers[upstream.id] = (balancer, upstream)
        return balancer

    def _pinned(self, upstream_id: str, ttl: float, sticky_key: str, target_id: str) -> None:
        if self.shared is not None:
            self.shared.pinned(upstream_id, sticky_key, target_id, ttl)

    async def recall_pin(self, upstream: Upstream, sticky_key: str | None) -> None:
        """Before a sticky plan: a session this process holds no pin for takes the one another process made."""
        shared = self.shared
        if shared is None or sticky_key is None or self.balancer(upstream).has_pin(sticky_key):
            return
        target_id = await shared.recall(upstream.id, sticky_key)
        if target_id is not None:
            self.balancer(upstream).adopt(sticky_key, target_id)

    def configured(self, key: str) -> bool:
        """Whether health key `key` names a target of the current configuration."""
        return key in self._identities

    def plan(self, upstream: Upstream, sticky_key: str | None = None,
             expected: tuple[int, int] | None = None) -> tuple[list[Target], bool]:
        """Targets in attempt order, and whether every target was out (fail-open). ``expected``: the request's
        estimated (input, output) tokens, for the lowest-cost algorithm."""
        policy = self.policy(upstream)
        health, quotas = self.health, self.quotas
        uid = upstream.id

        def available(t: Target) -> bool:
            key = target_key(uid, t.id)
            return health.is_available(key, policy) and quotas.blocked_for(key) is None

        def in_flight(t: Target) -> int:
            return health.in_flight(target_key(uid, t.id))

        def ewma(t: Target) -> float | None:
            return health.ewma_ttfb(target_key(uid, t.id))

        plan: Plan = self.balancer(upstream).plan(available=available, in_flight=in_flight, ewma=ewma,
                                                  sticky_key=sticky_key, expected=expected)
        order = list(plan.order)
        if plan.fail_open:
            by_key = {target_key(uid, t.id): t for t in order}
            order = [by_key[k] for k in health.fail_open_order(list(by_key))]
        return order, plan.fail_open
