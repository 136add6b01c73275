"""Balancer: tiers, weight 0, fail-open, and each algorithm's pick and failover order."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from itertools import groupby

import pytest

import addon.balancer as balancer_mod
from addon.balancer import Balancer, Plan, normalize_algorithm
from addon.health import HealthBoard, HealthPolicy


@dataclass(frozen=True)
class T:
    id: str
    weight: int = 1
    priority: int = 1


class FakeClock:
    def __init__(self, t: float = 500.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def everyone(_t) -> bool:
    return True


def down(*ids: str):
    return lambda t: t.id not in ids


def ids(plan: Plan) -> list[str]:
    return [t.id for t in plan.order]


def picks(b: Balancer, n: int, **kw) -> list[str]:
    kw.setdefault("available", everyone)
    return [b.plan(**kw).order[0].id for _ in range(n)]


SWRR = ["round-robin", "weighted-round-robin"]
ALL = ["round-robin", "weighted-round-robin", "random", "least-connections", "latency-aware", "sticky"]


# -- construction --------------------------------------------------------------------------------------------

def test_algorithm_names():
    assert normalize_algorithm("least-conn") == "least-connections"
    assert Balancer("least-conn", [T("a")]).algorithm == "least-connections"
    with pytest.raises(ValueError, match="unknown load-balancing algorithm"):
        Balancer("fastest", [T("a")])


# -- smooth weighted round-robin -----------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", SWRR)
def test_swrr_equal_weights_is_plain_rotation(algorithm):
    b = Balancer(algorithm, [T("a"), T("b"), T("c")])
    assert picks(b, 7) == ["a", "b", "c", "a", "b", "c", "a"]


@pytest.mark.parametrize(("weights", "expected"), [((50, 50), (100, 100)), ((75, 25), (150, 50)),
                                                   ((3, 1), (150, 50)), ((1, 0), (200, 0))])
def test_swrr_exact_distribution(weights, expected):
    b = Balancer("weighted-round-robin", [T("a", weights[0]), T("b", weights[1])])
    got = Counter(picks(b, 200))
    assert (got["a"], got["b"]) == expected


def test_swrr_alternates_at_50_50():
    b = Balancer("round-robin", [T("a", 50), T("b", 50)])
    assert picks(b, 6) == ["a", "b"] * 3


def test_swrr_is_smooth_no_bursts():
    b = Balancer("weighted-round-robin", [T("a", 5), T("b", 1), T("c", 1)])
    seq = picks(b, 70)
    assert seq[:7] == ["a", "a", "b", "a", "c", "a", "a"]  # nginx's documented sequence
    assert Counter(seq) == {"a": 50, "b": 10, "c": 10}
    # every 7 consecutive picks hold exactly 5/1/1 (naive WRR sends a a a a a b c: a burst of 5)
    assert all(Counter(seq[i:i + 7]) == {"a": 5, "b": 1, "c": 1} for i in range(len(seq) - 6))
    assert max(len(list(run)) for _, run in groupby(seq)) < 5


def test_swrr_failover_tail_is_every_other_candidate_once_and_does_not_advance():
    b = Balancer("round-robin", [T("a"), T("b"), T("c")])
    plans = [ids(b.plan(available=everyone)) for _ in range(3)]
    assert plans == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]


def test_swrr_skips_unavailable_and_keeps_proportions_among_the_rest():
    b = Balancer("round-robin", [T("a", 2), T("b", 1), T("c", 1)])
    seq = picks(b, 300, available=down("a"))
    assert Counter(seq) == {"b": 150, "c": 150}
    assert ids(b.plan(available=down("a"))) in (["b", "c"], ["c", "b"])


# -- tiers, weight 0, fail-open (every algorithm) ------------------------------------------------------------

TIERED = [T("p1a", 1, 1), T("p1b", 1, 1), T("p2a", 1, 2), T("p2b", 1, 2), T("p3", 1, 3)]


@pytest.mark.parametrize("algorithm", ALL)
def test_better_tier_first_worse_tier_as_failover(algorithm):
    b = Balancer(algorithm, TIERED, rng=random.Random(1), clock=FakeClock())
    for _ in range(20):
        order = ids(b.plan(available=everyone, sticky_key="k"))
        assert sorted(order[:2]) == ["p1a", "p1b"]
        assert sorted(order[2:4]) == ["p2a", "p2b"]
        assert order[4] == "p3"


@pytest.mark.parametrize("algorithm", ALL)
def test_worse_tier_only_when_better_tier_exhausted(algorithm):
    b = Balancer(algorithm, TIERED, rng=random.Random(2), clock=FakeClock())
    assert {b.plan(available=down("p1a"), sticky_key="k").order[0].id for _ in range(20)} == {"p1b"}
    picked = {b.plan(available=down("p1a", "p1b"), sticky_key="k").order[0].id for _ in range(20)}
    assert picked <= {"p2a", "p2b"}
    plan = b.plan(available=down("p1a", "p1b", "p2a", "p2b"), sticky_key="k")
    assert ids(plan) == ["p3"] and not plan.fail_open


@pytest.mark.parametrize("algorithm", ALL)
def test_weight_zero_only_when_nothing_else_is_left(algorithm):
    targets = [T("zero", 0), T("a", 1), T("b", 3), T("backup", 1, 2)]
    b = Balancer(algorithm, targets, rng=random.Random(3), clock=FakeClock())
    for _ in range(50):
        order = ids(b.plan(available=everyone, sticky_key="k"))
        assert order[2:] == ["zero", "backup"] and set(order[:2]) == {"a", "b"}
    assert ids(b.plan(available=down("a", "b"), sticky_key="k")) == ["zero", "backup"]


@pytest.mark.parametrize("algorithm", ALL)
def test_fail_open_when_nothing_is_available(algorithm):
    targets = [T("b", 1, 2), T("a", 1, 1), T("z", 0, 1)]
    b = Balancer(algorithm, targets, rng=random.Random(4), clock=FakeClock())
    plan = b.plan(available=lambda t: False, sticky_key="k")
    assert plan.fail_open
    assert ids(plan) == ["a", "z", "b"]  # every target, by tier


@pytest.mark.parametrize("algorithm", ALL)
def test_available_is_asked_once_per_target(algorithm):
    asked = Counter()

    def available(t):
        asked[t.id] += 1
        return t.id != "p1a"

    Balancer(algorithm, TIERED, rng=random.Random(5), clock=FakeClock()).plan(available=available, sticky_key="k")
    assert asked == {t.id: 1 for t in TIERED}


def test_only_the_pick_tier_advances_rotation():
    targets = [T("a", 1, 1), T("x", 1, 2), T("y", 1, 2)]
    b = Balancer("round-robin", targets)
    for _ in range(5):  # tier 2 appears in every plan as failover, but is not rotated by it
        assert ids(b.plan(available=everyone)) == ["a", "x", "y"]
    assert picks(b, 4, available=down("a")) == ["x", "y", "x", "y"]


def test_all_weight_zero_tier_still_serves():
    b = Balancer("round-robin", [T("a", 0), T("b", 0)])
    plan = b.plan(available=everyone)
    assert ids(plan) == ["a", "b"] and not plan.fail_open


# -- random --------------------------------------------------------------------------------------------------

def test_random_is_weighted_and_deterministic_with_a_seed():
    targets = [T("a", 3), T("b", 1)]
    seq1 = picks(Balancer("random", targets, rng=random.Random(7)), 4000)
    seq2 = picks(Balancer("random", targets, rng=random.Random(7)), 4000)
    assert seq1 == seq2
    assert 0.72 < Counter(seq1)["a"] / 4000 < 0.78


def test_random_order_is_a_permutation_of_the_available():
    b = Balancer("random", [T(c, w) for c, w in zip("abcde", (5, 4, 3, 2, 1))], rng=random.Random(8))
    firsts = Counter()
    for _ in range(2000):
        order = ids(b.plan(available=down("c")))
        assert sorted(order) == ["a", "b", "d", "e"]
        firsts[order[0]] += 1
    assert firsts["a"] > firsts["b"] > firsts["d"] > firsts["e"] > 0


# -- least-connections ---------------------------------------------------------------------------------------

def test_least_connections_picks_fewest_in_flight():
    b = Balancer("least-connections", [T("a"), T("b"), T("c")])
    load = {"a": 4, "b": 1, "c": 2}
    assert ids(b.plan(available=everyone, in_flight=lambda t: load[t.id])) == ["b", "c", "a"]


def test_least_connections_divides_by_weight():
    b = Balancer("least-connections", [T("a", 4), T("b", 1)])
    load = {"a": 3, "b": 1}  # 0.75 vs 1.0 per unit of weight
    assert b.plan(available=everyone, in_flight=lambda t: load[t.id]).order[0].id == "a"


def test_least_connections_idle_spreads_by_weight():
    b = Balancer("least-connections", [T("a", 3), T("b", 1)])
    assert Counter(picks(b, 200)) == {"a": 150, "b": 50}


def test_least_connections_with_real_in_flight_counts():
    """Requests start and some never finish (slow target b): new requests drift to the free target."""
    board, policy = HealthBoard(clock=FakeClock()), HealthPolicy()
    b = Balancer("least-connections", [T("a"), T("b")])
    for _ in range(100):
        pick = b.plan(available=everyone, in_flight=lambda t: board.in_flight(t.id)).order[0]
        board.begin(pick.id, policy)
        if pick.id == "a":  # a answers at once, b hangs
            board.end("a")
    assert board.in_flight("b") == 1
    assert board.snapshot("a")["requests"] == 99


def test_least_connections_even_load_rotates():
    b = Balancer("least-connections", [T("a"), T("b"), T("c")])
    assert picks(b, 6, in_flight=lambda t: 2) == ["a", "b", "c", "a", "b", "c"]


# -- latency-aware (power of two choices) ----------------------------------------------------------------------

def test_p2c_prefers_the_faster_target():
    b = Balancer("latency-aware", [T("fast"), T("slow")], rng=random.Random(9))
    lat = {"fast": 0.1, "slow": 1.0}
    got = Counter(picks(b, 1000, ewma=lambda t: lat[t.id]))
    assert got["fast"] >= 800
    assert got["slow"] > 0  # still measured now and then, or its EWMA would never recover


def test_p2c_among_many_favours_fast_and_never_herds_onto_one():
    lat = {"a": 0.1, "b": 0.1, "c": 0.1, "d": 1.0, "e": 1.0}
    b = Balancer("latency-aware", [T(k) for k in lat], rng=random.Random(10))
    got = Counter(picks(b, 3000, ewma=lambda t: lat[t.id]))
    assert got["a"] + got["b"] + got["c"] > 0.8 * 3000
    assert min(got["a"], got["b"], got["c"]) > 600


def test_p2c_penalises_in_flight():
    b = Balancer("latency-aware", [T("fast"), T("slow")], rng=random.Random(11))
    lat, busy = {"fast": 0.1, "slow": 0.5}, {"fast": 9, "slow": 0}  # 0.1 × 10 = 1.0 > 0.5
    got = Counter(picks(b, 500, ewma=lambda t: lat[t.id], in_flight=lambda t: busy[t.id]))
    assert got["slow"] > 450


def test_p2c_unknown_latency_counts_as_tier_median():
    lat = {"fast": 0.1, "mid": 0.5, "slow": 2.0, "new": None}
    b = Balancer("latency-aware", [T(k) for k in lat], rng=random.Random(12))
    order = ids(b.plan(available=everyone, ewma=lambda t: lat[t.id]))
    assert order[1:] == [x for x in ["fast", "mid", "new", "slow"] if x != order[0]]
    got = Counter(picks(b, 2000, ewma=lambda t: lat[t.id]))
    assert got["new"] > got["slow"] and got["fast"] > got["new"]


def test_p2c_with_nothing_measured_spreads():
    b = Balancer("latency-aware", [T("a"), T("b"), T("c")], rng=random.Random(13))
    got = Counter(picks(b, 3000))
    assert min(got.values()) > 800


# -- sticky --------------------------------------------------------------------------------------------------

def sticky(targets, clock=None, **kw) -> Balancer:
    return Balancer("sticky", targets, clock=clock or FakeClock(), **kw)


FOUR = [T(f"t{i}") for i in range(4)]


def test_sticky_same_key_same_target():
    b = sticky(FOUR)
    for key in ("alice", "bob", "carol"):
        assert len(set(picks(b, 20, sticky_key=key))) == 1
    # a fresh balancer (another process) maps keys the same way
    assert picks(sticky(FOUR), 1, sticky_key="alice") == picks(b, 1, sticky_key="alice")


def test_sticky_spreads_keys_by_weight():
    b = sticky([T("a", 1), T("b", 1), T("c", 2)])
    got = Counter(b.plan(available=everyone, sticky_key=f"user-{i}").order[0].id for i in range(8000))
    assert 0.20 < got["a"] / 8000 < 0.30 and 0.20 < got["b"] / 8000 < 0.30 and 0.42 < got["c"] / 8000 < 0.58


def test_sticky_adding_a_target_moves_about_one_in_n_keys():
    keys = [f"session-{i}" for i in range(5000)]
    b4 = sticky(FOUR)
    before = {k: b4.plan(available=everyone, sticky_key=k).order[0].id for k in keys}
    b5 = sticky([*FOUR, T("t4")])
    after = {k: b5.plan(available=everyone, sticky_key=k).order[0].id for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert 0.13 < len(moved) / len(keys) < 0.27  # ideal 1/5
    assert {after[k] for k in moved} == {"t4"}  # keys only move to the new target


def test_sticky_failover_tail_is_ring_order_of_distinct_targets():
    b = sticky(FOUR)
    order = ids(b.plan(available=everyone, sticky_key="alice"))
    assert sorted(order) == ["t0", "t1", "t2", "t3"]
    # with the pick out, the next on the ring takes over: the old tail's head
    assert ids(sticky(FOUR).plan(available=down(order[0]), sticky_key="alice")) == order[1:]


def test_sticky_repins_on_failure_and_keeps_the_new_pin_until_ttl_expiry():
    clock = FakeClock()
    b = sticky(FOUR, clock=clock, sticky_ttl=300)
    home = picks(b, 1, sticky_key="alice")[0]
    moved = picks(b, 1, sticky_key="alice", available=down(home))[0]
    assert moved != home
    clock.t += 200
    assert picks(b, 1, sticky_key="alice") == [moved]  # home is back, but the session stays put
    clock.t += 299  # the TTL slides with use: still pinned 299 s after the last request
    assert picks(b, 1, sticky_key="alice") == [moved]
    clock.t += 301  # idle longer than the TTL: back to the ring's choice
    assert picks(b, 1, sticky_key="alice") == [home]


def test_sticky_pin_never_overrides_priority():
    targets = [T("p1a", 1, 1), T("p1b", 1, 1), T("p2", 1, 2)]
    b = sticky(targets)
    assert picks(b, 1, sticky_key="k", available=down("p1a", "p1b")) == ["p2"]
    assert picks(b, 1, sticky_key="k")[0] in {"p1a", "p1b"}


def test_sticky_pin_table_is_bounded(monkeypatch):
    monkeypatch.setattr(balancer_mod, "STICKY_MAX_PINS", 50)
    b = sticky(FOUR)
    for i in range(200):
        b.plan(available=everyone, sticky_key=f"k{i}")
    assert len(b._pins) == 50 and "k199" in b._pins and "k0" not in b._pins


def test_sticky_without_key_falls_back_to_swrr():
    b = sticky([T("a", 3), T("b", 1)])
    assert Counter(picks(b, 200)) == {"a": 150, "b": 50}
    assert b._pins == {}


# -- inherit -------------------------------------------------------------------------------------------------

def test_inherit_keeps_rotation_and_pins():
    clock = FakeClock()
    old = Balancer("sticky", FOUR, clock=clock)
    assert picks(old, 1) == ["t0"]  # SWRR without key
    home = picks(old, 1, sticky_key="alice")[0]  # rotation advanced to t1; alice pinned
    moved = picks(old, 1, sticky_key="alice", available=down(home))[0]
    new = Balancer("sticky", [*FOUR, T("t9")], clock=clock)
    new.inherit(old)
    assert picks(new, 1, sticky_key="alice") == [moved]
    fresh = Balancer("sticky", [*FOUR, T("t9")], clock=clock)
    assert picks(new, 1) != picks(fresh, 1)  # rotation continued instead of restarting at t0


def test_sticky_session_is_repinned_to_the_target_that_served_it_after_a_failover():
    from types import SimpleNamespace as NS

    from addon.balancer import Balancer

    targets = [NS(id=f"t{i}", weight=1, priority=1) for i in range(3)]
    b = Balancer("sticky", targets, clock=lambda: 0.0)
    first = b.plan(available=lambda t: True, sticky_key="s").order
    other = next(t for t in targets if t is not first[0])
    b.served("s", other)  # the pinned target failed; `other` answered
    assert b.plan(available=lambda t: True, sticky_key="s").order[0] is other
    b.served(None, first[0])  # no key: nothing to remember
    Balancer("round-robin", targets).served("s", other)  # other algorithms ignore it
