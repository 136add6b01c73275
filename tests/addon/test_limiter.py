"""The limiter (addon/limiter.py) over the real memory LimitStore: a key's requests, tokens, concurrency and
budgets; a target's own limits and what its provider said; the storage-down policy; the metric callbacks; and,
through a Dispatcher with a fake upstream client, the 429s and headers a caller sees."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from calendar import timegm
from collections import Counter
from dataclasses import dataclass

import pytest
from yarl import URL

from addon.dispatch import Dispatcher, Reply, Settings
from addon.health import HealthBoard
from addon.limit_store import LimitStore, StorageDown
from addon.limiter import MICRO, LimitExceeded, Limiter, Ticket, budget_period
from addon.live import LiveConfig
from addon.metrics import Metrics
from addon.quota import QuotaBoard, parse_duration
from providers import GatewayError
from store import Store
from store.health_file import target_key
from store.keys import hash_key
from store.models import ApiKey, Gateway, KeyLimits, RateLimit, Rule, Service, Target, Upstream


def utc(*parts: int) -> float:
    """Epoch seconds of a UTC (year, month, day[, hour, minute, second])."""
    return float(timegm((*parts, *(0,) * (6 - len(parts)))))


class Wall:
    """An injectable wall clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Mono:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def gateway(limits: dict | None = None) -> Gateway:
    return Gateway.from_payload({"name": "g", "subdomain": "alpha", "limits": limits})


def api_key(limits: dict | None = None, name: str = "k") -> ApiKey:
    return ApiKey.model_validate({"name": name, "key_hash": "0" * 64, "key_prefix": "aigw-abcd", "limits": limits})


def target(limits: dict | None = None, **extra) -> Target:
    return Target.model_validate({"id": "t1", "provider": "openai", "credentials": {"api_key": "sk-test-0123456789"},
                                  "limits": limits, **extra})


@dataclass
class Rig:
    limiter: Limiter
    store: LimitStore
    quotas: QuotaBoard
    denied: list[tuple[str, str]]
    mono: Mono


@pytest.fixture
def rig():
    def make(*, wall=time.time, on_error: str = "open", store: LimitStore | None = None) -> Rig:
        store = store if store is not None else LimitStore()
        mono = Mono()
        quotas = QuotaBoard(clock=mono, wall=time.time)
        denied: list[tuple[str, str]] = []
        limiter = Limiter(store, quotas, on_error=on_error, wall=wall,
                          denied=lambda scope, limit: denied.append((scope, limit)))
        return Rig(limiter, store, quotas, denied, mono)
    return make


async def settle(limiter: Limiter, ticket: Ticket, tokens: int, cost: float | None = None) -> None:
    limiter.settle(ticket, tokens, cost)
    await limiter.drain()


# ---------------------------------------------------------------------------------------------------- basics
def test_on_error_policy_is_checked():
    with pytest.raises(ValueError, match="on_error must be one of"):
        Limiter(LimitStore(), QuotaBoard(), on_error="maybe")


async def test_a_key_without_limits_gets_no_ticket(rig):
    r = rig()
    assert await r.limiter.admit(gateway(), api_key(), "req-1") is None
    assert await r.limiter.admit(gateway({}), api_key({}), "req-1") is None  # empty limits are none
    assert r.denied == []


def test_limit_exceeded_shape():
    err = LimitExceeded("tokens", "no", 2.2, {"x-ratelimit-limit-tokens": "5"})
    assert (err.status, err.kind, err.code, err.upstream_type, err.retry_after) == \
        (429, "rate_limit", "rate_limit_exceeded", "tokens", "3")
    assert err.headers == {"x-ratelimit-limit-tokens": "5", "retry-after-ms": "2200"}
    quota = LimitExceeded("tokens", "spent", 0.0, {}, quota=True)
    assert (quota.code, quota.upstream_type, quota.retry_after) == ("insufficient_quota", "insufficient_quota", "1")
    assert quota.headers == {"retry-after-ms": "1", "x-should-retry": "false"}


# -------------------------------------------------------------------------------------------------- requests
async def test_exactly_n_requests_then_429_with_headers(rig):
    r = rig()
    gw, key = gateway(), api_key({"requests": "3/hour"})
    tickets = [await r.limiter.admit(gw, key, f"req-{i}") for i in range(3)]
    headers = [t.answer_headers() for t in tickets]
    assert [h["x-ratelimit-remaining-requests"] for h in headers] == ["2", "1", "0"]
    assert all(h["x-ratelimit-limit-requests"] == "3" for h in headers)
    for h in headers[1:]:
        assert 0 < parse_duration(h["x-ratelimit-reset-requests"]) <= 3601
    assert all("x-ratelimit-limit-tokens" not in h for h in headers)
    with pytest.raises(LimitExceeded) as caught:
        await r.limiter.admit(gw, key, "req-4")
    err = caught.value
    assert (err.status, err.code, err.upstream_type) == (429, "rate_limit_exceeded", "requests")
    assert err.message == "Rate limit reached for requests: 3 per hour."
    wait_ms = int(err.headers["retry-after-ms"])
    assert 0 < wait_ms <= 3600_000
    assert int(err.retry_after) == max(1, -(-wait_ms // 1000))  # whole seconds, rounded up
    assert err.headers["x-ratelimit-limit-requests"] == "3"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert parse_duration(err.headers["x-ratelimit-reset-requests"]) == pytest.approx(wait_ms / 1000, abs=1.0)
    assert r.denied == [("key", "requests")]
    # Still refused: a refusal does not take from the window, nor give back.
    with pytest.raises(LimitExceeded):
        await r.limiter.admit(gw, key, "req-5")
    assert r.denied == [("key", "requests")] * 2


async def test_each_key_counts_on_its_own_under_gateway_defaults(rig):
    r = rig()
    gw = gateway({"requests": "1/hour"})
    a, b = api_key(name="a"), api_key(name="b")
    assert (await r.limiter.admit(gw, a, "1")).requests.remaining == 0
    assert (await r.limiter.admit(gw, b, "2")).requests.remaining == 0
    for key in (a, b):
        with pytest.raises(LimitExceeded):
            await r.limiter.admit(gw, key, "3")
    assert r.denied == [("key", "requests")] * 2


async def test_the_first_answers_reset_is_the_windows(rig):
    r = rig()
    ticket = await r.limiter.admit(gateway(), api_key({"requests": "3/hour"}), "1")
    assert parse_duration(ticket.answer_headers()["x-ratelimit-reset-requests"]) > 1.0


async def _fresh_second() -> None:
    """Sleep to just after the start of a wall-clock second (the `limits` windows are aligned to them)."""
    await asyncio.sleep(1 - time.time() % 1 + 0.01)


async def test_requests_window_reopens_after_a_second(rig):
    r = rig()
    gw, key = gateway(), api_key({"requests": "2/second"})
    await _fresh_second()
    await r.limiter.admit(gw, key, "1")
    await r.limiter.admit(gw, key, "2")
    with pytest.raises(LimitExceeded) as caught:
        await r.limiter.admit(gw, key, "3")
    wait = int(caught.value.headers["retry-after-ms"]) / 1000
    assert 0 < wait <= 1.0
    await asyncio.sleep(wait + 0.05)  # a real `limits` moving window: bounded by its one second
    assert (await r.limiter.admit(gw, key, "4")).requests.remaining >= 0


# ---------------------------------------------------------------------------------------------------- tokens
async def test_tokens_checked_before_and_debited_after(rig):
    r = rig()
    gw, key = gateway(), api_key({"tokens": {"limit": 100, "window": "day"}})
    t1 = await r.limiter.admit(gw, key, "1")
    assert t1.tokens.limit == 100 and t1.tokens.remaining == 100
    assert t1.answer_headers()["x-ratelimit-remaining-tokens"] == "100"
    await settle(r.limiter, t1, 60)
    t2 = await r.limiter.admit(gw, key, "2")
    assert t2.tokens.remaining == 40  # what was left is enough to start: tokens are not known in advance
    await settle(r.limiter, t2, 60)   # 120 of 100: the debit over the limit empties the window
    item = r.store.item(100, 86400)
    assert (await r.store.stats(item, f"tokens/{key.id}")).remaining == 0
    with pytest.raises(LimitExceeded) as caught:
        await r.limiter.admit(gw, key, "3")
    err = caught.value
    assert (err.code, err.upstream_type) == ("rate_limit_exceeded", "tokens")
    assert err.message == "Rate limit reached for tokens: 100 per day."
    assert err.headers["x-ratelimit-remaining-tokens"] == "0"
    assert err.headers["x-ratelimit-limit-tokens"] == "100"
    assert int(err.retry_after) >= 1
    assert r.denied == [("key", "tokens")]


async def test_a_token_denial_takes_no_request_from_the_window(rig):
    r = rig()
    gw, key = gateway(), api_key({"tokens": "10/day", "requests": "5/hour"})
    await settle(r.limiter, await r.limiter.admit(gw, key, "1"), 10)
    with pytest.raises(LimitExceeded):
        await r.limiter.admit(gw, key, "2")
    stats = await r.store.stats(r.store.item(5, 3600), key.id)
    assert stats.remaining == 4  # only the served request


async def test_settle_is_once_and_zero_tokens_debit_nothing(rig):
    r = rig()
    gw, key = gateway(), api_key({"tokens": "50/day"})
    ticket = await r.limiter.admit(gw, key, "1")
    await settle(r.limiter, ticket, 20)
    await settle(r.limiter, ticket, 20)  # settled already: ignored
    await settle(r.limiter, await r.limiter.admit(gw, key, "2"), 0)
    assert (await r.limiter.admit(gw, key, "3")).tokens.remaining == 30


async def test_debit_over_a_window_is_capped_at_the_window(rig):
    r = rig()
    item = r.store.item(10, 86400)
    await r.store.debit(item, "tokens/x", 25)
    assert (await r.store.stats(item, "tokens/x")).remaining == 0
    await r.store.debit(item, "tokens/x", 3)  # an empty window stays empty, no error
    assert (await r.store.stats(item, "tokens/x")).remaining == 0
    await r.store.debit(item, "tokens/y", 0)
    await r.store.debit(item, "tokens/y", -4)
    assert (await r.store.stats(item, "tokens/y")).remaining == 10


# ----------------------------------------------------------------------------------------------- concurrency
async def test_concurrency_slots_taken_and_given_back(rig):
    r = rig()
    gw, key = gateway(), api_key({"concurrent": 2})
    t1 = await r.limiter.admit(gw, key, "1")
    t2 = await r.limiter.admit(gw, key, "2")
    assert t1.slot and t2.slot and r.store.slots_held(key.id) == 2
    with pytest.raises(LimitExceeded) as caught:
        await r.limiter.admit(gw, key, "3")
    assert caught.value.message == "Too many requests in flight for this key: at most 2 at once."
    assert (caught.value.code, caught.value.upstream_type, caught.value.retry_after) == \
        ("rate_limit_exceeded", "requests", "1")
    assert r.store.slots_held(key.id) == 2
    await settle(r.limiter, t1, 0)
    assert r.store.slots_held(key.id) == 1
    t3 = await r.limiter.admit(gw, key, "3")
    assert t3.slot and r.store.slots_held(key.id) == 2
    await settle(r.limiter, t2, 5)
    await settle(r.limiter, t3, 5)
    await settle(r.limiter, t3, 5)  # twice: the slot is given back once
    assert r.store.slots_held(key.id) == 0
    assert r.denied == [("key", "concurrent")]


async def test_a_request_denial_gives_the_slot_back(rig):
    r = rig()
    gw, key = gateway(), api_key({"concurrent": 5, "requests": "1/hour"})
    await r.limiter.admit(gw, key, "1")
    with pytest.raises(LimitExceeded) as caught:
        await r.limiter.admit(gw, key, "2")
    assert caught.value.upstream_type == "requests"
    assert r.store.slots_held(key.id) == 1
    assert r.denied == [("key", "requests")]


async def test_a_concurrency_denial_takes_no_request_from_the_window(rig):
    r = rig()
    gw, key = gateway(), api_key({"concurrent": 1, "requests": "5/hour"})
    await r.limiter.admit(gw, key, "1")
    for i in range(3):
        with pytest.raises(LimitExceeded):
            await r.limiter.admit(gw, key, f"busy-{i}")
    stats = await r.store.stats(r.store.item(5, 3600), key.id)
    assert stats.remaining == 4


# --------------------------------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("now, label, left", [
    (utc(2026, 3, 31, 23, 59), "2026-03-31", 60.0),
    (utc(2026, 4, 1), "2026-04-01", 86400.0),
    (utc(2026, 12, 31, 12), "2026-12-31", 43200.0),
    (utc(2028, 2, 29, 6), "2028-02-29", 18 * 3600.0),
])
def test_budget_period_day(now, label, left):
    assert budget_period("day", now) == (label, left)


@pytest.mark.parametrize("now, label, end", [
    (utc(2026, 12, 31, 23, 0), "2026-12", utc(2027, 1, 1)),
    (utc(2026, 12, 1), "2026-12", utc(2027, 1, 1)),
    (utc(2026, 1, 15, 12), "2026-01", utc(2026, 2, 1)),
    (utc(2026, 11, 30, 23, 59, 59), "2026-11", utc(2026, 12, 1)),
    (utc(2028, 2, 10), "2028-02", utc(2028, 3, 1)),
])
def test_budget_period_month_including_december(now, label, end):
    got_label, left = budget_period("month", now)
    assert got_label == label and left == end - now


def test_budget_period_fractional_second():
    assert budget_period("day", utc(2026, 5, 5, 23, 59, 59) + 0.25) == ("2026-05-05", 0.75)


async def test_daily_token_budget_spent_then_reset_the_next_day(rig):
    wall = Wall(utc(2026, 3, 31, 23, 59))
    r = rig(wall=wall)
    gw, key = gateway(), api_key({"budget": {"period": "day", "tokens": 100}})
    ticket = await r.limiter.admit(gw, key, "1")
    assert ticket.budget_key == f"{key.id}/2026-03-31"
    assert ticket.budget_expiry_s == 60 + 86400
    await settle(r.limiter, ticket, 99)
    await settle(r.limiter, await r.limiter.admit(gw, key, "2"), 1)  # 100 of 100
    with pytest.raises(LimitExceeded) as caught:
        await r.limiter.admit(gw, key, "3")
    err = caught.value
    assert (err.status, err.code, err.upstream_type) == (429, "insufficient_quota", "insufficient_quota")
    assert err.message == "This key's daily token budget of 100 is spent."
    assert err.retry_after == "60" and err.headers["retry-after-ms"] == "60000"
    assert err.headers["x-should-retry"] == "false"
    assert r.denied == [("key", "budget")]
    wall.now += 61  # 2026-04-01T00:00:01Z: a new day, a new budget
    fresh = await r.limiter.admit(gw, key, "4")
    assert fresh.budget_key == f"{key.id}/2026-04-01"
    assert await r.store.total(f"{key.id}/2026-04-01/tokens") == 0
    assert await r.store.total(f"{key.id}/2026-03-31/tokens") == 100


async def test_monthly_cost_budget_crossing_december_to_january(rig):
    wall = Wall(utc(2026, 12, 31, 23))
    r = rig(wall=wall)
    gw, key = gateway(), api_key({"budget": {"cost": 0.3}})  # month by default
    for i in range(3):
        ticket = await r.limiter.admit(gw, key, str(i))
        assert ticket.budget_key == f"{key.id}/2026-12"
        await settle(r.limiter, ticket, 1000, 0.1)
    assert await r.store.total(f"{key.id}/2026-12/micro") == 300_000 == round(0.3 * MICRO)
    assert await r.store.total(f"{key.id}/2026-12/tokens") == 0  # no token budget: tokens not counted
    with pytest.raises(LimitExceeded) as caught:
        await r.limiter.admit(gw, key, "x")
    assert caught.value.message == "This key's monthly budget of 0.3 USD is spent."
    assert caught.value.retry_after == "3600" and caught.value.code == "insufficient_quota"
    wall.now = utc(2027, 1, 1, 0, 0, 1)
    ticket = await r.limiter.admit(gw, key, "y")
    assert ticket.budget_key == f"{key.id}/2027-01"


async def test_a_request_without_cost_spends_no_cost_budget(rig):
    r = rig(wall=Wall(utc(2026, 6, 1, 12)))
    gw, key = gateway(), api_key({"budget": {"cost": 1.0, "tokens": 1000}})
    await settle(r.limiter, await r.limiter.admit(gw, key, "1"), 10, None)   # an unpriced target
    await settle(r.limiter, await r.limiter.admit(gw, key, "2"), 10, 0.0)
    assert await r.store.total(f"{key.id}/2026-06/micro") == 0
    assert await r.store.total(f"{key.id}/2026-06/tokens") == 20


@pytest.mark.parametrize("used, cheapest", [(0, False), (40, False), (50, False), (51, True), (99, True)])
async def test_cheapest_first_when_the_budget_runs_low(rig, used, cheapest):
    r = rig(wall=Wall(utc(2026, 6, 1, 12)))
    gw, key = gateway(), api_key({"budget": {"period": "day", "tokens": 100, "prefer_lowest_cost_below": 0.5}})
    if used:
        await settle(r.limiter, await r.limiter.admit(gw, key, "0"), used)
    assert (await r.limiter.admit(gw, key, "1")).cheapest_first is cheapest


async def test_cheapest_first_takes_the_lowest_share_of_tokens_and_cost(rig):
    r = rig(wall=Wall(utc(2026, 6, 1, 12)))
    gw = gateway()
    key = api_key({"budget": {"tokens": 1000, "cost": 1.0, "prefer_lowest_cost_below": 0.25}})
    await settle(r.limiter, await r.limiter.admit(gw, key, "0"), 10, 0.8)  # 99 % of tokens, 20 % of cost left
    assert (await r.limiter.admit(gw, key, "1")).cheapest_first is True


async def test_no_preference_means_never_cheapest_first(rig):
    r = rig(wall=Wall(utc(2026, 6, 1, 12)))
    gw, key = gateway(), api_key({"budget": {"tokens": 100}})
    await settle(r.limiter, await r.limiter.admit(gw, key, "0"), 99)
    assert (await r.limiter.admit(gw, key, "1")).cheapest_first is False


# ------------------------------------------------------------------------------------ own limits over defaults
def test_key_limits_over_gateway_defaults_and_cached(rig):
    r = rig()
    gw = gateway({"requests": "100/minute", "concurrent": 3})
    key = api_key({"requests": "5/second", "budget": {"tokens": 10}})
    merged = r.limiter.key_limits(gw, key)
    assert merged == KeyLimits.model_validate({"requests": "5/second", "concurrent": 3, "budget": {"tokens": 10}})
    assert r.limiter.key_limits(gw, key) is merged  # cached while both objects are the same


def test_key_limits_cache_invalidated_when_the_key_or_gateway_changes(rig):
    r = rig()
    gw = gateway({"requests": "100/minute"})
    key = api_key({"concurrent": 1})
    first = r.limiter.key_limits(gw, key)
    assert first.concurrent == 1 and first.requests == RateLimit(limit=100, window="minute")
    edited = key.model_copy(update={"limits": KeyLimits(concurrent=7)})  # same id, a new object (a reload)
    assert edited.id == key.id
    assert r.limiter.key_limits(gw, edited).concurrent == 7
    removed = edited.model_copy(update={"limits": None})
    assert r.limiter.key_limits(gw, removed) == KeyLimits(requests=RateLimit(limit=100))
    gw2 = gw.model_copy(update={"limits": None})
    assert r.limiter.key_limits(gw2, removed) is None


async def test_a_key_inherits_the_gateway_limit_and_overrides_it(rig):
    r = rig()
    gw = gateway({"requests": "1/hour"})
    plain, own = api_key(name="plain"), api_key({"requests": "2/hour"}, name="own")
    assert (await r.limiter.admit(gw, plain, "1")).requests.limit == 1
    with pytest.raises(LimitExceeded):
        await r.limiter.admit(gw, plain, "2")
    assert (await r.limiter.admit(gw, own, "3")).requests.remaining == 1
    assert (await r.limiter.admit(gw, own, "4")).requests.remaining == 0
    with pytest.raises(LimitExceeded):
        await r.limiter.admit(gw, own, "5")


# ----------------------------------------------------------------------------------------------------- targets
async def test_target_without_limits_is_always_open(rig):
    r = rig()
    for _ in range(5):
        assert await r.limiter.take_target("u/t1", target()) is None
    assert r.limiter.target_open("u/t1") and r.denied == []


async def test_target_rate_limit_blocks_it_until_the_window_resets(rig):
    r = rig()
    t = target({"requests": "2/hour"})
    assert await r.limiter.take_target("u/t1", t) is None
    assert await r.limiter.take_target("u/t1", t) is None
    wait = await r.limiter.take_target("u/t1", t)
    assert 0 < wait <= 3600
    assert r.denied == [("target", "requests")]
    assert not r.limiter.target_open("u/t1") and r.limiter.target_open("u/other")
    assert r.limiter.export() == {"u/t1": {"until": pytest.approx(time.time() + wait, abs=5),
                                           "why": "limits.requests"}}
    # While blocked the board answers (no store call, no second denial counted).
    again = await r.limiter.take_target("u/t1", t)
    assert again == pytest.approx(wait) and r.denied == [("target", "requests")]
    # The board's clock reaches the reset: open again for the plans.
    r.mono.now += wait
    assert r.limiter.target_open("u/t1") and r.limiter.export() == {}


async def test_target_one_second_window_reopens(rig):
    r = rig()
    r.quotas._clock = time.monotonic  # the real clock, as the `limits` window is real
    t = target({"requests": "1/second"})
    await _fresh_second()
    assert await r.limiter.take_target("u/t1", t) is None
    wait = await r.limiter.take_target("u/t1", t)
    assert 0 < wait <= 1.0 and not r.limiter.target_open("u/t1")
    await asyncio.sleep(wait + 0.05)
    assert r.limiter.target_open("u/t1")
    assert await r.limiter.take_target("u/t1", t) is None


async def test_target_token_limit_debited_then_blocks(rig):
    r = rig()
    t = target({"tokens": "100/day"})
    assert await r.limiter.take_target("u/t1", t) is None
    ticket = Ticket(target_key="u/t1", target_tokens=t.limits.tokens)
    await settle(r.limiter, ticket, 150)
    wait = await r.limiter.take_target("u/t1", t)
    assert wait is not None and wait > 0
    assert r.denied == [("target", "tokens")]
    assert r.limiter.export()["u/t1"]["why"] == "limits.tokens"


async def test_target_tokens_do_not_touch_the_key_window(rig):
    r = rig()
    gw, key = gateway(), api_key({"tokens": "1000/day"})
    ticket = await r.limiter.admit(gw, key, "1")
    ticket.target_key, ticket.target_tokens = "u/t1", RateLimit(limit=100, window="day")
    await settle(r.limiter, ticket, 30)
    assert (await r.store.stats(r.store.item(100, 86400), "tokens/u/t1")).remaining == 70
    assert (await r.limiter.admit(gw, key, "2")).tokens.remaining == 970


async def test_learned_quota_blocks_the_target(rig):
    r = rig()
    r.limiter.learn("u/t1", {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"})
    assert not r.limiter.target_open("u/t1")
    assert await r.limiter.take_target("u/t1", target()) == 2.0
    assert r.limiter.export()["u/t1"]["why"] == "x-ratelimit-remaining-requests"
    assert r.denied == []  # learned, not refused by a configured limit
    r.limiter.learn("u/t1", {"x-ratelimit-remaining-requests": "10"})
    assert r.limiter.target_open("u/t1") and await r.limiter.take_target("u/t1", target()) is None


# --------------------------------------------------------------------------------------- storage down: policy
class _Refused:
    """An awaitable that fails as an unreachable Redis does when awaited (and, unlike a coroutine, leaves no
    'never awaited' warning when the limiter gives up on a round after the first failure)."""

    def __init__(self, store: DownStore) -> None:
        self.store = store

    def __await__(self):
        self.store.failures += 1
        raise StorageDown("connection refused")
        yield  # noqa: unreachable (makes this a generator)


class DownStore(LimitStore):
    """A memory store whose every storage call fails."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    def hit(self, *args, **kwargs):
        return _Refused(self)

    stats = add = total = acquire_slot = release_slot = hit


@pytest.mark.parametrize("limits", [{"requests": "1/hour"}, {"tokens": "5/day"}, {"budget": {"tokens": 5}}])
async def test_fail_open_serves_without_the_limit(rig, limits):
    store = DownStore()
    r = rig(store=store)
    for i in range(3):
        assert await r.limiter.admit(gateway(), api_key(limits), str(i)) is None
    assert store.failures >= 3 and r.denied == []


@pytest.mark.parametrize("limits", [{"requests": "1/hour"}, {"tokens": "5/day"}, {"budget": {"tokens": 5}}])
async def test_fail_closed_refuses_with_503(rig, limits):
    r = rig(store=DownStore(), on_error="closed")
    with pytest.raises(GatewayError) as caught:
        await r.limiter.admit(gateway(), api_key(limits), "1")
    err = caught.value
    assert not isinstance(err, LimitExceeded)
    assert (err.status, err.kind, err.retry_after) == (503, "unavailable", "1")
    assert err.message == "The rate-limit storage is unavailable; try again shortly."


async def test_target_limits_with_the_storage_down(rig):
    t = target({"requests": "1/hour", "tokens": "10/day"})
    assert await rig(store=DownStore()).limiter.take_target("u/t1", t) is None
    closed = rig(store=DownStore(), on_error="closed")
    assert await closed.limiter.take_target("u/t1", t) == 1.0
    assert closed.denied == []


async def test_settle_with_the_storage_down_does_not_raise(rig):
    store = DownStore()
    r = rig(store=store)
    ticket = Ticket(key_id="k", limits=KeyLimits.model_validate({"tokens": "5/day"}), target_key="u/t1",
                    target_tokens=RateLimit(limit=5, window="day"))
    await settle(r.limiter, ticket, 10)
    assert ticket.settled and store.failures == 1  # the first debit failed; the rest was given up


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("on_error", ["open", "closed"])
async def test_real_unreachable_redis_applies_the_policy_and_counts(rig, on_error):
    errors = []
    store = LimitStore(f"redis://127.0.0.1:{_closed_port()}/0", timeout=0.2, on_error=lambda: errors.append(1))
    try:
        assert store.shared and store.slots_held("x") is None
        r = rig(store=store, on_error=on_error)
        if on_error == "open":
            assert await r.limiter.admit(gateway(), api_key({"requests": "1/hour"}), "1") is None
            assert await r.limiter.take_target("u/t1", target({"requests": "1/hour"})) is None
        else:
            with pytest.raises(GatewayError) as caught:
                await r.limiter.admit(gateway(), api_key({"requests": "1/hour"}), "1")
            assert caught.value.status == 503
            assert await r.limiter.take_target("u/t1", target({"requests": "1/hour"})) == 1.0
        assert len(errors) == 2 and r.denied == []  # one failed call each, counted
    finally:
        await store.close()


async def test_check_of_an_unreachable_redis_is_counted():
    errors = []
    store = LimitStore(f"redis://127.0.0.1:{_closed_port()}/0", timeout=0.2, on_error=lambda: errors.append(1))
    try:
        assert await store.check() is False
        assert errors == [1]
    finally:
        await store.close()


# ------------------------------------------------------------------------------------------------ the metrics
def _rate_limited(metrics: Metrics) -> dict[tuple[str, str], float]:
    family = next(f for f in metrics.collect() if f.name == "aigw_rate_limited")
    return {(s.labels["scope"], s.labels["limit"]): s.value for s in family.samples if s.name.endswith("_total")}


async def test_denials_reach_the_metrics_with_their_labels():
    metrics = Metrics(process=False)
    limiter = Limiter(LimitStore(), QuotaBoard(), denied=metrics.limit_denied)
    gw = gateway()
    key = api_key({"requests": "1/hour", "concurrent": 5})
    await limiter.admit(gw, key, "1")
    for _ in range(2):
        with pytest.raises(LimitExceeded):
            await limiter.admit(gw, key, "2")
    t = target({"requests": "1/hour"})
    await limiter.take_target("u/t1", t)
    await limiter.take_target("u/t1", t)
    assert _rate_limited(metrics) == {("key", "requests"): 2.0, ("target", "requests"): 1.0}
    metrics.limit_denied("elsewhere", "whatever")
    assert _rate_limited(metrics)[("other", "other")] == 1.0


def test_storage_errors_are_counted():
    metrics = Metrics(process=False)
    metrics.limit_storage_error()
    metrics.limit_storage_error()
    family = next(f for f in metrics.collect() if f.name == "aigw_limit_storage_errors")
    assert [s.value for s in family.samples] == [2]


# ========================================================================================= through a Dispatcher
KEY = "aigw-limiter-test-key"
PORTS = {"a": 9101, "b": 9102}
CHAT = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class FakeContent:
    def __init__(self, data: bytes) -> None:
        self.items = [data]

    async def readany(self) -> bytes:
        return self.items.pop(0) if self.items else b""

    def at_eof(self) -> bool:  # aiohttp: the end arrived and every byte was read
        return not self.items

    def read_nowait(self) -> bytes:
        return self.items.pop(0) if self.items else b""


class FakeResponse:
    def __init__(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.status, self.headers, self.content = status, headers, FakeContent(data)

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeClient:
    """Every target answers a chat completion (with `headers` per port, when given)."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.headers: dict[int, dict[str, str]] = {}

    async def send(self, call):
        port = URL(call.url).port
        self.ports.append(port)
        return FakeResponse(200, {"content-type": "application/json", **self.headers.get(port, {})},
                            json.dumps(CHAT).encode())


class CountingBoard(HealthBoard):
    def __init__(self) -> None:
        super().__init__()
        self.begins: Counter = Counter()

    def begin(self, key, policy):
        self.begins[key] += 1
        super().begin(key, policy)


@dataclass
class World:
    d: Dispatcher
    limiter: Limiter
    client: FakeClient
    board: CountingBoard
    scope: str
    key_id: str

    def key(self, name: str) -> str:
        return target_key(self.scope, name)

    async def chat(self) -> Reply:
        body = json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}).encode()
        reply = await self.d.handle(method="POST", path="/v1/chat/completions", host="alpha.example.com",
                                    headers={"x-api-key": KEY, "content-type": "application/json"}, body=body)
        await self.limiter.drain()
        return reply

    async def messages(self) -> Reply:
        body = json.dumps({"model": "claude-3", "max_tokens": 8,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        reply = await self.d.handle(method="POST", path="/v1/messages", host="alpha.example.com",
                                    headers={"x-api-key": KEY, "content-type": "application/json",
                                             "anthropic-version": "2023-06-01"}, body=body)
        await self.limiter.drain()
        return reply


def dtarget(name: str, priority: int = 1, **extra) -> dict:
    return {"id": name, "provider": "openai", "host": "127.0.0.1", "port": PORTS[name], "protocol": "http",
            "priority": priority, "credentials": {"api_key": "sk-test"}, **extra}


@pytest.fixture
def world(tmp_path):
    def make(targets, *, key_limits=None, gateway_limits=None) -> World:
        store = Store(tmp_path / "aigw.json")
        gw = store.create("gateways", Gateway.from_payload({"name": "g", "subdomain": "alpha",
                                                            "limits": gateway_limits}))
        up = store.create("upstreams", Upstream.from_payload({"name": "u", "targets": list(targets),
                                                              "health_checks": {"threshold": 1}}), gateway_id=gw.id)
        svc = store.create("services", Service.from_payload({"name": "s", "upstream_id": up.id}), gateway_id=gw.id)
        store.create("rules", Rule.from_payload({"path": "/v1", "service_id": svc.id}), gateway_id=gw.id)
        api = store.create("keys", ApiKey.model_validate({"name": "k", "key_hash": hash_key(KEY),
                                                          "key_prefix": "aigw-", "limits": key_limits}),
                           gateway_id=gw.id)
        live = LiveConfig(str(store.path))
        live.health = board = CountingBoard()
        limiter = Limiter(LimitStore(), live.quotas)
        client = FakeClient()
        return World(Dispatcher(live, client, object(), Settings(), limiter=limiter), limiter, client, board, up.id,
                     api.id)
    return make


async def test_dispatch_a_limited_key_gets_openai_429s(world):
    w = world([dtarget("a")], key_limits={"requests": "2/hour"})
    served = [await w.chat() for _ in range(2)]
    assert [r.status for r in served] == [200, 200]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in served] == ["1", "0"]
    assert all(r.headers["x-ratelimit-limit-requests"] == "2" for r in served)
    refused = await w.chat()
    assert refused.status == 429
    error = json.loads(refused.body)["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert error["message"] == "Rate limit reached for requests: 2 per hour."
    assert 1 <= int(refused.headers["retry-after"]) <= 3600
    assert int(refused.headers["retry-after"]) == max(1, -(-int(refused.headers["retry-after-ms"]) // 1000))
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert w.client.ports == [PORTS["a"]] * 2  # nothing over the limit reached the provider
    assert w.board.begins == {w.key("a"): 2}


async def test_dispatch_a_limited_key_gets_anthropic_429s(world):
    w = world([dtarget("a")], key_limits={"requests": "1/hour"})
    assert (await w.messages()).status == 200
    refused = await w.messages()
    assert refused.status == 429
    body = json.loads(refused.body)
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert body["error"]["message"] == "Rate limit reached for requests: 1 per hour."
    assert int(refused.headers["retry-after"]) >= 1


async def test_dispatch_token_limit_after_reported_usage(world):
    w = world([dtarget("a")], gateway_limits={"tokens": "3/day"})  # the gateway's default for its keys
    first = await w.chat()
    assert first.status == 200 and first.headers["x-ratelimit-remaining-tokens"] == "3"
    second = await w.chat()  # 2 of 3 used: 1 left, enough to start
    assert second.status == 200 and second.headers["x-ratelimit-remaining-tokens"] == "1"
    refused = await w.chat()
    error = json.loads(refused.body)["error"]
    assert refused.status == 429 and (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert len(w.client.ports) == 2


async def test_dispatch_a_spent_budget_is_insufficient_quota(world):
    pricing = {"input_per_million": 1_000_000, "output_per_million": 1_000_000}  # one USD per token
    w = world([dtarget("a", pricing=pricing)], key_limits={"budget": {"period": "day", "cost": 2}})
    assert (await w.chat()).status == 200  # 2 tokens: 2 USD
    refused = await w.chat()
    error = json.loads(refused.body)["error"]
    assert refused.status == 429
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert refused.headers["x-should-retry"] == "false"
    anthropic = json.loads((await w.messages()).body)
    assert anthropic["error"]["type"] == "rate_limit_error"


async def test_dispatch_a_limited_target_is_skipped_without_a_health_failure(world):
    w = world([dtarget("a", 1, limits={"requests": "1/hour"}), dtarget("b", 2)])
    first = await w.chat()
    assert first.status == 200 and first.headers["X-Gateway-Attempts"] == "openai:200"
    assert first.headers["X-Selected-Target"] == "a"
    second = await w.chat()
    assert second.status == 200 and second.headers["X-Gateway-Attempts"] == "openai:limited,openai:200"
    assert second.headers["X-Selected-Target"] == "b"
    assert [a.outcome for a in second.record.attempts] == ["limited", "ok"]
    snap = w.board.snapshot(w.key("a"))
    assert snap["failures"] == 0 and snap["state"] == "closed"
    third = await w.chat()  # blocked on the quota board: left out of the plan altogether
    assert third.headers["X-Gateway-Attempts"] == "openai:200" and third.headers["X-Selected-Target"] == "b"
    assert w.client.ports == [PORTS["a"], PORTS["b"], PORTS["b"]]
    assert w.limiter.export()[w.key("a")]["why"] == "limits.requests"
    assert "x-ratelimit-remaining-requests" not in third.headers  # the key itself is not limited


async def test_dispatch_every_target_limited_is_a_429(world):
    w = world([dtarget("a", limits={"requests": "1/hour"})])
    assert (await w.chat()).status == 200
    refused = await w.chat()
    assert refused.status == 429 and refused.headers["X-Gateway-Attempts"] == "openai:limited"
    assert json.loads(refused.body)["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert w.board.snapshot(w.key("a"))["failures"] == 0
    assert w.client.ports == [PORTS["a"]]


async def test_dispatch_learns_the_providers_remaining_quota(world):
    w = world([dtarget("a", 1), dtarget("b", 2)])
    w.client.headers[PORTS["a"]] = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s"}
    assert (await w.chat()).headers["X-Selected-Target"] == "a"
    after = [await w.chat() for _ in range(3)]
    assert [r.headers["X-Selected-Target"] for r in after] == ["b"] * 3
    assert [r.headers["X-Gateway-Attempts"] for r in after] == ["openai:200"] * 3
    assert w.client.ports == [PORTS["a"]] + [PORTS["b"]] * 3
    assert w.limiter.export()[w.key("a")]["why"] == "x-ratelimit-remaining-requests"


async def test_dispatch_concurrency_slot_given_back_when_the_answer_ends(world):
    w = world([dtarget("a")], key_limits={"concurrent": 1})
    for _ in range(3):
        assert (await w.chat()).status == 200
    assert w.limiter.store.slots_held(w.key_id) == 0


async def test_dispatch_low_budget_goes_cheapest_first(world):
    dear = {"input_per_million": 100, "output_per_million": 100}
    cheap = {"input_per_million": 1, "output_per_million": 1}
    w = world([dtarget("a", 1, pricing=dear), dtarget("b", 2, pricing=cheap)],
              key_limits={"budget": {"period": "day", "tokens": 4, "prefer_lowest_cost_below": 0.75}})
    assert (await w.chat()).headers["X-Selected-Target"] == "a"    # 4 of 4 left: the plan's own order
    assert (await w.chat()).headers["X-Selected-Target"] == "b"    # 2 of 4 left: cheapest first
