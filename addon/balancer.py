"""Target selection for one upstream: which target gets a request, and in what order the rest are tried.

``Balancer.plan()`` returns every usable target once, in attempt order:

- Targets are grouped by ``priority`` (lower is better). A worse tier is tried only after every available
  target of the better tiers, so it carries traffic only when they are out or have failed this request.
- Inside a tier the upstream's algorithm orders the weighted targets; weight-0 targets follow them
  ("never chosen unless nothing else is left").
- Targets the caller reports unavailable (open circuits) are left out. If that leaves nothing at all, the
  plan is *fail-open*: every target, for the caller to reorder with ``HealthBoard.fail_open_order`` —
  trying a probably-broken target beats refusing the request outright.

Each plan advances rotating state (smooth weighted round-robin, sticky pins) exactly once, for the pick; the
failover tail is derived without mutating anything, so a request that fails over does not skew the rotation.

Sticky pins can be shared by several processes (addon/shared_state.py through addon/live.py): ``on_pin`` hears of
every pin set, ``has_pin``/``adopt`` let a pin recalled from elsewhere stand in for a missing local one.

Pure logic on one event loop: no locks, no I/O; ``rng`` and ``clock`` are injectable for deterministic tests.
Construction is cheap (the sticky hash ring is built on first use), so rebuild a Balancer whenever the
upstream changes; ``inherit()`` carries rotation and sticky pins over from the previous one.
"""

from __future__ import annotations

import random
import statistics
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

from store.models import ALGORITHM_ALIASES, ALGORITHMS

__all__ = ["ALGORITHMS", "Balancer", "Plan", "cheapest_first", "expected_cost", "normalize_algorithm"]


VNODES_PER_TARGET = 100  # ring points for a target of average weight: keeps the key spread within a few %
STICKY_MAX_PINS = 10_000
# latency-aware: share of picks that go to the slower of the two sampled targets. Without it a target that
# was slow once is never picked again and its EWMA never recovers; 2% re-measures it without hurting p95.
EXPLORE_RATIO = 0.02


def normalize_algorithm(name: str) -> str:
    """Canonical algorithm name; ValueError for an unknown one (validation should have caught it)."""
    canonical = ALGORITHM_ALIASES.get(name, name)
    if canonical not in ALGORITHMS:
        raise ValueError(f"unknown load-balancing algorithm {name!r}; expected one of {sorted(ALGORITHMS)}")
    return canonical


@dataclass(slots=True)
class Plan:
    """Targets in attempt order; ``order[0]`` is the pick. ``fail_open``: nothing was available, ``order``
    holds every target and the caller should reorder it by health (``HealthBoard.fail_open_order``)."""

    order: list
    fail_open: bool = False


#: What a request is assumed to use when nothing better is known: (input, output) tokens.
DEFAULT_EXPECTED = (1000, 500)


def expected_cost(target: Any, expected: tuple[int, int] | None) -> float:
    """What `target` would charge for the expected (input, output) tokens, from its ``pricing``; a target without
    pricing costs infinitely much (an unknown price is not a low one), so it comes after every priced one."""
    pricing = getattr(target, "pricing", None)
    if pricing is None:
        return float("inf")
    tokens_in, tokens_out = expected or DEFAULT_EXPECTED
    return tokens_in * pricing.input_per_million + tokens_out * pricing.output_per_million


def cheapest_first(order: Sequence, expected: tuple[int, int] | None) -> list:
    """A plan re-ordered cheapest first (stable: equal prices keep their order)."""
    return sorted(order, key=lambda t: expected_cost(t, expected))


def _hash64(text: str) -> int:
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "big")


class _Tier:
    """Targets of one priority, with their SWRR current weights and (lazily) their hash ring."""

    __slots__ = ("targets", "weights", "current", "index", "ring_points", "ring_owners")

    def __init__(self, targets: list) -> None:
        self.targets = tuple(targets)
        self.weights = tuple(max(int(t.weight), 0) for t in targets)
        self.current = [0] * len(targets)
        self.index = {t.id: i for i, t in enumerate(targets)}
        self.ring_points: list[int] | None = None
        self.ring_owners: list[int] = []

    def build_ring(self) -> None:
        """~VNODES_PER_TARGET points per target scaled by weight relative to the tier mean. Points hash the
        target id, so they do not move when other targets come or go: only ~1/N of the keys move."""
        weighted = [i for i, w in enumerate(self.weights) if w > 0]
        mean = sum(self.weights[i] for i in weighted) / len(weighted) if weighted else 1
        points = []
        for i in weighted:
            tid = self.targets[i].id
            for v in range(max(1, round(VNODES_PER_TARGET * self.weights[i] / mean))):
                points.append((_hash64(f"{tid}#{v}"), i))
        points.sort()
        self.ring_points = [p for p, _ in points]
        self.ring_owners = [i for _, i in points]

    def ring_walk(self, key_hash: int, up: list[bool], wanted: int) -> list[int]:
        """Distinct available targets clockwise from `key_hash`: the owner, then its successors."""
        if self.ring_points is None:
            self.build_ring()
        points, owners = self.ring_points, self.ring_owners
        size = len(points)
        start = bisect_left(points, key_hash)
        seen: list[int] = []
        for step in range(size):
            i = owners[(start + step) % size]
            if up[i] and i not in seen:
                seen.append(i)
                if len(seen) == wanted:
                    break
        return seen


def _zero(_target: Any) -> int:
    return 0


def _unknown(_target: Any) -> float | None:
    return None


class Balancer:
    """Orders one upstream's targets per request according to its algorithm (see module docstring)."""

    def __init__(
        self,
        algorithm: str,
        targets: Sequence,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        sticky_ttl: float = 300.0,
    ) -> None:
        self.algorithm = normalize_algorithm(algorithm)
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._sticky_ttl = float(sticky_ttl)
        by_priority: dict[int, list] = {}
        for t in targets:
            by_priority.setdefault(int(t.priority), []).append(t)
        self._tiers = tuple(_Tier(by_priority[p]) for p in sorted(by_priority))
        self._all = [t for tier in self._tiers for t in tier.targets]
        self._pins: OrderedDict[str, tuple[Any, float]] = OrderedDict()  # sticky_key → (target id, expiry)
        self._expected: tuple[int, int] | None = None  # the current plan's request (lowest-cost)
        # Told (sticky key, target id) of every pin set, refreshes included; must be cheap and must not raise.
        self.on_pin: Callable[[str, Any], None] | None = None
        self._rank = {
            "round-robin": self._rank_swrr,
            "weighted-round-robin": self._rank_swrr,
            "random": self._rank_random,
            "least-connections": self._rank_least,
            "latency-aware": self._rank_latency,
            "sticky": self._rank_sticky,
            "lowest-cost": self._rank_cost,
        }[self.algorithm]

    def inherit(self, previous: Balancer) -> None:
        """Carry SWRR positions (per target id and priority) and sticky pins over from the Balancer this one
        replaces, so a config edit neither restarts the rotation nor reshuffles sticky sessions."""
        old = {(t.id, t.priority): (tier, i) for tier in previous._tiers for i, t in enumerate(tier.targets)}
        for tier in self._tiers:
            for i, t in enumerate(tier.targets):
                hit = old.get((t.id, t.priority))
                if hit is not None:
                    tier.current[i] = hit[0].current[hit[1]]
        self._pins = previous._pins  # pins to targets that are gone are ignored on lookup

    def plan(
        self,
        *,
        available: Callable[[Any], bool],
        in_flight: Callable[[Any], int] = _zero,
        ewma: Callable[[Any], float | None] = _unknown,
        sticky_key: str | None = None,
        expected: tuple[int, int] | None = None,
    ) -> Plan:
        """Attempt order for one request. Calls `available` once per target; advances state once.
        ``expected``: the request's estimated (input, output) tokens (lowest-cost)."""
        self._expected = expected
        order: list = []
        for tier in self._tiers:
            targets, weights = tier.targets, tier.weights
            up = [available(t) for t in targets]
            weighted = [i for i, w in enumerate(weights) if w and up[i]]
            if weighted:
                pick_tier = not order  # only the tier that yields the pick advances its state
                ranked = self._rank(tier, weighted, up, pick_tier, in_flight, ewma, sticky_key)
                order.extend(targets[i] for i in ranked)
            order.extend(t for t, w, ok in zip(targets, weights, up) if ok and not w)
        if not order:
            return Plan(list(self._all), fail_open=True)
        return Plan(order)

    def served(self, sticky_key: str | None, target: Any) -> None:
        """Record which target answered a sticky request. After a failover the session is re-pinned to the
        target that served it at once, rather than paying the failover again until the old target's circuit
        opens."""
        if self.algorithm != "sticky" or sticky_key is None:
            return
        pin = self._pins.get(sticky_key)
        if pin is not None and pin[0] == target.id:
            return
        self._pin(sticky_key, target.id, self._clock())

    def has_pin(self, sticky_key: str) -> bool:
        """Whether `sticky_key` has a live pin here (the fast path: nothing to recall from elsewhere)."""
        pin = self._pins.get(sticky_key)
        return pin is not None and pin[1] > self._clock()

    def adopt(self, sticky_key: str, target_id: Any) -> None:
        """Take a pin another process made (a target gone from here is ignored on lookup, like any pin)."""
        if self.algorithm == "sticky" and not self.has_pin(sticky_key):
            self._store_pin(sticky_key, target_id, self._clock())

    def _pin(self, key: str, target_id: Any, now: float) -> None:
        self._store_pin(key, target_id, now)
        if self.on_pin is not None:
            self.on_pin(key, target_id)

    def _store_pin(self, key: str, target_id: Any, now: float) -> None:
        pins = self._pins
        pins[key] = (target_id, now + self._sticky_ttl)
        pins.move_to_end(key)
        if len(pins) > STICKY_MAX_PINS:
            pins.popitem(last=False)

    # -- algorithms: each returns the tier's weighted available indices in attempt order -----------------

    def _rank_swrr(self, tier: _Tier, idx: list[int], up, advance: bool, in_flight, ewma, key) -> list[int]:
        """nginx smooth weighted round-robin: each pick adds every weight to its current value, takes the
        largest, subtracts the total from it. Exact proportions, interleaved (5,1,1 → a a b a c a a).
        The failover tail is who would be picked next, without taking those steps."""
        cur, w = tier.current, tier.weights
        if advance:
            best, total = idx[0], 0
            for i in idx:
                cur[i] += w[i]
                total += w[i]
                if cur[i] > cur[best]:
                    best = i
            cur[best] -= total
            if len(idx) == 1:
                return idx
            rest = [i for i in idx if i != best]
            rest.sort(key=lambda i: -(cur[i] + w[i]))
            return [best, *rest]
        return sorted(idx, key=lambda i: -(cur[i] + w[i]))

    def _rank_random(self, tier: _Tier, idx: list[int], up, advance, in_flight, ewma, key) -> list[int]:
        """Weighted shuffle without replacement (Efraimidis–Spirakis: sort by u^(1/w)); the first element is
        a weighted random pick, each next one a weighted pick among the rest."""
        rnd, w = self._rng.random, tier.weights
        return sorted(idx, key=lambda i: rnd() ** (1.0 / w[i]), reverse=True)

    def _rank_least(self, tier: _Tier, idx: list[int], up, advance, in_flight, ewma, key) -> list[int]:
        """Fewest in-flight requests per unit of weight. Ties (always, when idle) go to the SWRR winner, so an
        idle or evenly loaded upstream still spreads by weight instead of piling onto the first target.
        SWRR bookkeeping runs over all candidates so its current weights stay balanced (sum 0)."""
        cur, w, targets = tier.current, tier.weights, tier.targets
        load = {i: in_flight(targets[i]) / w[i] for i in idx}
        if advance:
            total = 0
            for i in idx:
                cur[i] += w[i]
                total += w[i]
            best = min(idx, key=lambda i: (load[i], -cur[i]))
            cur[best] -= total
            rest = [i for i in idx if i != best]
            rest.sort(key=lambda i: (load[i], -(cur[i] + w[i])))
            return [best, *rest]
        return sorted(idx, key=lambda i: (load[i], -(cur[i] + w[i])))

    def _rank_latency(self, tier: _Tier, idx: list[int], up, advance, in_flight, ewma, key) -> list[int]:
        """Power of two choices on cost = EWMA(TTFB) × (1 + in-flight).

        Two distinct targets are sampled by weight and the cheaper one wins (sampling, not a global minimum,
        avoids herding every request onto one target between measurements). A target without a measurement
        counts as the tier's median: a new target gets traffic and is measured soon, yet a target whose
        successes never carry a TTFB cannot monopolise the tier as it would if "unknown" meant "best".
        The tail is every other target, cheapest first."""
        targets = tier.targets
        if len(idx) == 1:
            return idx
        lat = [ewma(targets[i]) for i in idx]
        if None in lat:
            known = [x for x in lat if x is not None]
            fill = statistics.median(known) if known else 0.0
            lat = [fill if x is None else x for x in lat]
        busy = [in_flight(targets[i]) for i in idx]
        cost = {i: (lat[n] * (1 + busy[n]), busy[n]) for n, i in enumerate(idx)}
        by_cost = sorted(idx, key=cost.__getitem__)
        if not advance:
            return by_cost
        a, b = self._rank_random(tier, idx, up, advance, in_flight, ewma, key)[:2]
        if cost[b] < cost[a]:
            a, b = b, a
        pick = b if self._rng.random() < EXPLORE_RATIO else a
        by_cost.remove(pick)
        return [pick, *by_cost]

    def _rank_cost(self, tier: _Tier, idx: list[int], up, advance, in_flight, ewma, key) -> list[int]:
        """Cheapest first for the request's expected tokens (``pricing``; unpriced targets last); the rest by
        price as failover. The cheapest targets, when several cost the same, share the traffic by weight (SWRR
        among them only: a dearer target's weight does not skew their rotation)."""
        expected, targets = self._expected, tier.targets
        price = {i: expected_cost(targets[i], expected) for i in idx}
        cheapest = min(price.values())
        group = [i for i in idx if price[i] == cheapest]
        head = self._rank_swrr(tier, group, up, advance, in_flight, ewma, key) if len(group) > 1 else group
        return head + sorted((i for i in idx if price[i] != cheapest), key=price.__getitem__)

    def _rank_sticky(self, tier: _Tier, idx: list[int], up, advance, in_flight, ewma, key) -> list[int]:
        """Consistent hashing on `sticky_key`, remembered: a key keeps going where it was last served for
        `sticky_ttl` seconds after its last request (prompt caches stay warm), even when a target it had
        left comes back. If that target is out, the next available one on the ring takes over and becomes
        the new pin. The tail is the ring order after the pick. No key: plain SWRR."""
        if key is None:
            return self._rank_swrr(tier, idx, up, advance, in_flight, ewma, key)
        ring = tier.ring_walk(_hash64(key), up, len(idx))
        if not advance:
            return ring
        now = self._clock()
        pins = self._pins
        pin = pins.get(key)
        pick = ring[0]
        if pin is not None and pin[1] > now:
            i = tier.index.get(pin[0])
            if i is not None and i != pick and i in idx:
                ring.remove(i)
                ring.insert(0, i)
                pick = i
        self._pin(key, tier.targets[pick].id, now)
        return ring
