"""The lowest-cost algorithm (addon/balancer.py): a tier cheapest first for the request's expected tokens, unpriced
targets last, equal prices sharing by weight, priority tiers first; and cheapest_first / expected_cost."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import pytest

from addon.balancer import DEFAULT_EXPECTED, Balancer, cheapest_first, expected_cost
from store.models import Pricing


@dataclass(frozen=True)
class T:
    id: str
    price_in: float | None = None
    price_out: float | None = None
    weight: int = 1
    priority: int = 1

    @property
    def pricing(self) -> Pricing | None:
        if self.price_in is None:
            return None
        return Pricing(input_per_million=self.price_in, output_per_million=self.price_out)


def ids(order) -> list[str]:
    return [t.id for t in order]


def plan(balancer: Balancer, expected=None, down=()) -> list[str]:
    return ids(balancer.plan(available=lambda t: t.id not in down, expected=expected).order)


def firsts(balancer: Balancer, n: int, expected=None) -> Counter:
    return Counter(plan(balancer, expected)[0] for _ in range(n))


# ------------------------------------------------------------------------------------------------ expected_cost
def test_expected_cost_unpriced_is_infinite():
    assert expected_cost(T("x"), (10, 10)) == math.inf
    assert expected_cost(object(), None) == math.inf  # no pricing attribute at all


def test_expected_cost_is_linear_in_the_tokens_and_prices():
    t = T("x", 2.0, 4.0)
    assert expected_cost(t, (0, 0)) == 0
    assert expected_cost(t, (1000, 0)) * 2 == expected_cost(t, (2000, 0))
    assert expected_cost(t, (1000, 0)) == expected_cost(t, (0, 500))       # 1000 × 2 == 500 × 4
    assert expected_cost(T("y", 4.0, 8.0), (300, 70)) == 2 * expected_cost(t, (300, 70))


def test_expected_cost_defaults_when_nothing_is_known():
    t = T("x", 1.5, 6.0)
    assert DEFAULT_EXPECTED == (1000, 500)
    assert expected_cost(t, None) == expected_cost(t, DEFAULT_EXPECTED)


# ------------------------------------------------------------------------------------------------- lowest-cost
def test_cheapest_first_for_the_expected_tokens_every_time():
    b = Balancer("lowest-cost", [T("mid", 2, 2), T("dear", 3, 15), T("cheap", 0.5, 1.5)])
    for _ in range(20):
        assert plan(b) == ["cheap", "mid", "dear"]


def test_the_order_depends_on_the_expected_tokens():
    # "prompt" is cheap on input and dear on output; "writer" the reverse.
    b = Balancer("lowest-cost", [T("prompt", 0.1, 10), T("writer", 10, 0.1)])
    assert plan(b, (100_000, 10)) == ["prompt", "writer"]
    assert plan(b, (10, 100_000)) == ["writer", "prompt"]
    assert plan(b, (100_000, 10)) == ["prompt", "writer"]


def test_unpriced_targets_come_after_every_priced_one():
    b = Balancer("lowest-cost", [T("free?"), T("dear", 100, 100), T("cheap", 1, 1), T("unknown")])
    for _ in range(6):
        order = plan(b)
        assert order[:2] == ["cheap", "dear"] and set(order[2:]) == {"free?", "unknown"}


def test_unavailable_targets_are_left_out_and_the_next_cheapest_leads():
    b = Balancer("lowest-cost", [T("a", 1, 1), T("b", 2, 2), T("c", 3, 3)])
    assert plan(b, down={"a"}) == ["b", "c"]
    assert plan(b, down={"a", "b"}) == ["c"]


def test_equal_prices_share_by_weight():
    b = Balancer("lowest-cost", [T("a", 1, 1, weight=3), T("b", 1, 1, weight=1)])
    orders = [plan(b) for _ in range(400)]
    assert Counter(o[0] for o in orders) == {"a": 300, "b": 100}
    assert all(sorted(o) == ["a", "b"] for o in orders)
    # SWRR's interleaving, not runs: 3,1 → a a b a (the nginx sequence) repeated.
    assert [o[0] for o in orders[:8]] == ["a", "a", "b", "a", "a", "a", "b", "a"]


def test_equal_prices_share_by_weight_before_a_dearer_failover():
    b = Balancer("lowest-cost", [T("a", 1, 1, weight=1), T("b", 1, 1, weight=1), T("z", 9, 9, weight=2)])
    orders = [plan(b) for _ in range(300)]
    assert all(o[2] == "z" for o in orders)  # never first while a cheaper one is up
    picks = Counter(o[0] for o in orders)
    assert set(picks) == {"a", "b"} and sum(picks.values()) == 300


def test_equal_prices_share_evenly_despite_a_dearer_target_in_the_tier():
    b = Balancer("lowest-cost", [T("a", 1, 1), T("b", 1, 1), T("z", 9, 9)])
    assert firsts(b, 300) == {"a": 150, "b": 150}


def test_priority_tiers_still_come_first():
    b = Balancer("lowest-cost", [T("dear-primary", 50, 50, priority=1), T("cheap-backup", 1, 1, priority=2),
                                 T("mid-primary", 10, 10, priority=1)])
    for _ in range(5):
        assert plan(b) == ["mid-primary", "dear-primary", "cheap-backup"]
    assert plan(b, down={"dear-primary", "mid-primary"}) == ["cheap-backup"]


def test_failover_tail_by_price_within_each_tier():
    b = Balancer("lowest-cost", [T("t1-c", 3, 3), T("t1-a", 1, 1), T("t1-b", 2, 2),
                                 T("t2-y", 5, 5, priority=2), T("t2-x", 4, 4, priority=2), T("t2-n", priority=2)])
    for _ in range(4):
        assert plan(b) == ["t1-a", "t1-b", "t1-c", "t2-x", "t2-y", "t2-n"]


def test_weight_zero_targets_follow_the_weighted_ones():
    b = Balancer("lowest-cost", [T("cheap-standby", 0.1, 0.1, weight=0), T("dear", 9, 9)])
    assert plan(b) == ["dear", "cheap-standby"]
    assert plan(b, down={"dear"}) == ["cheap-standby"]


def test_nothing_available_is_fail_open_with_every_target():
    b = Balancer("lowest-cost", [T("a", 1, 1), T("b", 2, 2)])
    p = b.plan(available=lambda t: False)
    assert p.fail_open and ids(p.order) == ["a", "b"]


# ------------------------------------------------------------------------------------------------ cheapest_first
def test_cheapest_first_reorders_a_plan():
    order = [T("dear", 9, 9), T("none"), T("cheap", 1, 1), T("mid", 5, 5)]
    assert ids(cheapest_first(order, None)) == ["cheap", "mid", "dear", "none"]
    assert ids(order) == ["dear", "none", "cheap", "mid"]  # a new list: the plan itself is untouched


def test_cheapest_first_is_stable_for_equal_prices():
    order = [T("b", 2, 2), T("x"), T("a1", 1, 1), T("y"), T("a2", 1, 1), T("a3", 1, 1)]
    assert ids(cheapest_first(order, (100, 100))) == ["a1", "a2", "a3", "b", "x", "y"]
    reversed_order = list(reversed(order))
    assert ids(cheapest_first(reversed_order, (100, 100))) == ["a3", "a2", "a1", "b", "y", "x"]


def test_cheapest_first_uses_the_expected_tokens():
    order = [T("prompt", 0.1, 10), T("writer", 10, 0.1)]
    assert ids(cheapest_first(order, (10, 100_000))) == ["writer", "prompt"]
    assert ids(cheapest_first(order, (100_000, 10))) == ["prompt", "writer"]


def test_cheapest_first_of_nothing():
    assert cheapest_first([], None) == []
