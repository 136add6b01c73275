"""Limits on the request path: a key's rates, concurrency and budget before its first attempt, a target's rates
before each attempt, and what the answers used debited when they end.

- **Key** (its own limits over its gateway's defaults, ``KeyLimits.over``): requests are taken from their window
  before the first attempt; tokens and budgets are checked then (is anything left?) and debited with the usage
  the provider reported when the answer or stream ends; a concurrency slot is held until it ends. A denial is a
  429 in the caller's format (:class:`LimitExceeded`) — ``rate_limit_exceeded``, or ``insufficient_quota`` for a
  budget — with ``retry-after``/``retry-after-ms``, and every answer of a limited key carries OpenAI's
  ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers, so the SDKs back off by themselves.
- **Target** (its provider account's limits, or what its provider's own headers said, addon/quota.py): a target
  over its limit is skipped for the request like an open circuit and left out of the plans until its window
  resets; the caller sees a 429 only when every target is out. A denial is never a health failure.

Counters live in addon/limit_store.py (memory, or Redis for several processes). When the storage is down the
``on_error`` policy decides: ``open`` serves as if there were no limit, ``closed`` refuses with 503.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from addon.limit_store import LimitStore, StorageDown
from addon.quota import CONFIGURED, QuotaBoard, format_duration
from providers import GatewayError
from store.models import ApiKey, Gateway, KeyLimits, RateLimit, Target

log = logging.getLogger("aigw.limits")

ON_ERROR_POLICIES = ("open", "closed")
_PER = {"day": "daily", "month": "monthly"}
#: Budget costs are counted in millionths of the currency unit (the storage counts integers).
MICRO = 1_000_000

# (scope, limit) → counted: "key"/"target" × "requests"/"tokens"/"concurrent"/"budget".
Denied = Callable[[str, str], None]


def _ignore(scope: str, limit: str) -> None:
    pass


class LimitExceeded(GatewayError):
    """A 429 of the gateway's own, with the headers that tell the caller when to come back."""

    def __init__(self, what: str, message: str, retry_after_s: float, headers: dict[str, str],
                 *, quota: bool = False) -> None:
        wait = max(0.001, retry_after_s)
        super().__init__(429, "rate_limit", message,
                         code="insufficient_quota" if quota else "rate_limit_exceeded",
                         upstream_type="insufficient_quota" if quota else what,
                         retry_after=str(max(1, math.ceil(wait))))
        self.headers = {**headers, "retry-after-ms": str(max(1, math.ceil(wait * 1000)))}
        if quota:
            self.headers["x-should-retry"] = "false"  # a spent budget does not come back in a few seconds


@dataclass(slots=True)
class WindowView:
    """One window as the answer's headers report it."""
    limit: int
    remaining: int
    reset_s: float


@dataclass(slots=True)
class Ticket:
    """What one request took and must give back or debit when it ends (RequestRecord.ticket)."""
    key_id: str | None = None
    limits: KeyLimits | None = None
    holder: str = ""
    requests: WindowView | None = None
    tokens: WindowView | None = None
    slot: bool = False
    budget_key: str | None = None      # "<key id>/<period label>"
    budget_expiry_s: int = 0
    cheapest_first: bool = False       # the budget runs low: the plan goes cheapest first
    target_key: str | None = None      # the serving target, when its tokens are limited
    target_tokens: RateLimit | None = None
    settled: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    def answer_headers(self) -> dict[str, str]:
        out = dict(self.headers)
        for name, view in (("requests", self.requests), ("tokens", self.tokens)):
            if view is not None:
                out[f"x-ratelimit-limit-{name}"] = str(view.limit)
                out[f"x-ratelimit-remaining-{name}"] = str(max(0, view.remaining))
                out[f"x-ratelimit-reset-{name}"] = format_duration(view.reset_s)
        return out


def budget_period(period: str, now: float) -> tuple[str, float]:
    """The calendar period (UTC) `now` is in, as a key label, and the seconds until it ends."""
    day = datetime.fromtimestamp(now, UTC)
    if period == "day":
        end = calendar.timegm((day.year, day.month, day.day, 0, 0, 0)) + 86400
        return day.strftime("%Y-%m-%d"), end - now
    month_end = (day.year + (day.month == 12), day.month % 12 + 1, 1, 0, 0, 0)
    return day.strftime("%Y-%m"), calendar.timegm(month_end) - now


def _reset_in(stats, limit: int, now: float, window_s: int) -> float:
    """Seconds until a window frees some of what it counts. An empty window reports its reset as "now": what is
    taken from it now starts to slide out at the end of the current window."""
    if stats.remaining < limit and stats.reset_time > now:
        return stats.reset_time - now
    return window_s - now % window_s


class Limiter:
    def __init__(self, store: LimitStore, quotas: QuotaBoard, *, on_error: str = "open",
                 denied: Denied = _ignore, wall: Callable[[], float] = time.time) -> None:
        if on_error not in ON_ERROR_POLICIES:
            raise ValueError(f"on_error must be one of {ON_ERROR_POLICIES}")
        self.store = store
        self.quotas = quotas
        self.fail_open = on_error == "open"
        self._denied = denied
        self._wall = wall
        self._effective: dict[str, tuple[ApiKey, Gateway, KeyLimits | None]] = {}
        self._pending: set[asyncio.Task] = set()

    # -- a key, before the first attempt ----------------------------------------------------------------
    def key_limits(self, gateway: Gateway, key: ApiKey) -> KeyLimits | None:
        """The key's limits over its gateway's defaults; cached until either object changes (a reload)."""
        cached = self._effective.get(key.id)
        if cached is not None and cached[0] is key and cached[1] is gateway:
            return cached[2]
        own, defaults = key.limits, gateway.limits
        merged = own.over(defaults) if own is not None else defaults
        if merged is not None and merged.empty:
            merged = None
        if len(self._effective) > 100_000:
            self._effective.clear()
        self._effective[key.id] = (key, gateway, merged)
        return merged

    async def admit(self, gateway: Gateway, key: ApiKey, holder: str) -> Ticket | None:
        """Take what the request needs from its key's limits: a Ticket, None when the key has none; raises
        LimitExceeded (429) or, failing closed with the storage down, a 503."""
        lim = self.key_limits(gateway, key)
        if lim is None:
            return None
        try:
            return await self._admit(key.id, lim, holder)
        except StorageDown:
            if self.fail_open:
                return None
            raise GatewayError(503, "unavailable", "The rate-limit storage is unavailable; try again shortly.",
                               retry_after="1") from None

    async def _admit(self, key_id: str, lim: KeyLimits, holder: str) -> Ticket:
        store, now = self.store, self._wall()
        ticket = Ticket(key_id=key_id, limits=lim, holder=holder)
        req_item = store.item(lim.requests.limit, lim.requests.seconds) if lim.requests else None
        tok_item = store.item(lim.tokens.limit, lim.tokens.seconds) if lim.tokens else None
        budget = lim.budget
        # Round one, all at once: what is left of each window and of the budget.
        reads: list = []
        if req_item is not None:
            reads.append(store.stats(req_item, key_id))
        if tok_item is not None:
            reads.append(store.stats(tok_item, f"tokens/{key_id}"))
        if budget is not None:
            label, ends_in = budget_period(budget.period, now)
            ticket.budget_key, ticket.budget_expiry_s = f"{key_id}/{label}", int(ends_in) + 86400
            reads.append(store.total(f"{ticket.budget_key}/tokens"))
            reads.append(store.total(f"{ticket.budget_key}/micro"))
        results = await self._all(reads)
        req_stats = results.pop(0) if req_item is not None else None
        if tok_item is not None:
            stats = results.pop(0)
            ticket.tokens = WindowView(tok_item.amount, stats.remaining,
                                       _reset_in(stats, tok_item.amount, now, lim.tokens.seconds))
            if stats.remaining <= 0:
                self._deny("key", "tokens", ticket, "tokens",
                           f"Rate limit reached for tokens: {lim.tokens.limit} per {lim.tokens.window}.",
                           ticket.tokens.reset_s or float(lim.tokens.seconds))
        if budget is not None:
            self._check_budget(ticket, budget, results[0], results[1], ends_in)
        # Then a concurrency slot, and only with one a request from its window (a request refused as busy is not
        # counted against the key's rate); a refused request gives its slot back.
        if lim.concurrent is not None:
            ticket.slot = await store.acquire_slot(key_id, lim.concurrent, holder)
            if not ticket.slot:
                self._deny("key", "concurrent", ticket, "requests",
                           f"Too many requests in flight for this key: at most {lim.concurrent} at once.", 1.0)
        if req_item is not None:
            got_request = await store.hit(req_item, key_id)
            ticket.requests = WindowView(req_item.amount, req_stats.remaining - 1,
                                         _reset_in(req_stats, req_item.amount, now, lim.requests.seconds))
            if not got_request:
                if ticket.slot:
                    await store.release_slot(key_id, holder)
                    ticket.slot = False
                ticket.requests.remaining = 0
                self._deny("key", "requests", ticket, "requests",
                           f"Rate limit reached for requests: {lim.requests.limit} per {lim.requests.window}.",
                           ticket.requests.reset_s)
        return ticket

    async def _all(self, calls: list) -> list:
        """Await `calls`: at once against Redis (one round trip for all), one after the other in memory (where
        nothing waits and gather's tasks would be the dearest part)."""
        if not calls:
            return []
        if self.store.shared:
            return list(await asyncio.gather(*calls))
        return [await call for call in calls]

    def _check_budget(self, ticket: Ticket, budget, tokens_used: int, micro_used: int, ends_in: float) -> None:
        shares: list[float] = []
        if budget.tokens is not None:
            shares.append(1 - tokens_used / budget.tokens)
            if tokens_used >= budget.tokens:
                self._deny("key", "budget", ticket, "tokens",
                           f"This key's {_PER[budget.period]} token budget of {budget.tokens} is spent.", ends_in,
                           quota=True)
        if budget.cost is not None:
            shares.append(1 - micro_used / (budget.cost * MICRO))
            if micro_used >= budget.cost * MICRO:
                self._deny("key", "budget", ticket, "tokens",
                           f"This key's {_PER[budget.period]} budget of {budget.cost:g} USD is spent.", ends_in,
                           quota=True)
        threshold = budget.prefer_lowest_cost_below
        ticket.cheapest_first = threshold is not None and min(shares) < threshold

    def _deny(self, scope: str, limit: str, ticket: Ticket, what: str, message: str, wait: float,
              *, quota: bool = False) -> None:
        self._denied(scope, limit)
        raise LimitExceeded(what, message, wait, ticket.answer_headers(), quota=quota)

    # -- a target, before each attempt ------------------------------------------------------------------
    def target_open(self, key: str) -> bool:
        """Whether the plan may pick the target now (not out of learned or configured quota)."""
        return self.quotas.blocked_for(key) is None

    async def take_target(self, key: str, target: Target) -> float | None:
        """Take one request from the target's windows: None when it may be tried, else the seconds until it
        may (it is then left out of the plans until then)."""
        wait = self.quotas.blocked_for(key)
        if wait is not None:
            return wait
        lim = target.limits
        if lim is None or (lim.requests is None and lim.tokens is None):
            return None
        store, now = self.store, self._wall()
        try:
            if lim.tokens is not None:
                item = store.item(lim.tokens.limit, lim.tokens.seconds)
                stats = await store.stats(item, f"tokens/{key}")
                if stats.remaining <= 0:
                    return self._block_target(key, "tokens", stats.reset_time - now, lim.tokens.seconds)
            if lim.requests is not None:
                item = store.item(lim.requests.limit, lim.requests.seconds)
                if not await store.hit(item, key):
                    stats = await store.stats(item, key)
                    return self._block_target(key, "requests", stats.reset_time - now,
                                              lim.requests.seconds / lim.requests.limit)
        except StorageDown:
            return None if self.fail_open else 1.0
        return None

    def _block_target(self, key: str, limit: str, wait: float, fallback: float) -> float:
        wait = wait if wait > 0 else fallback
        self._denied("target", limit)
        self.quotas.block(key, wait, f"{CONFIGURED}{limit}")
        return wait

    def learn(self, key: str, headers: dict[str, str]) -> None:
        """A provider answer's quota headers (addon/quota.py)."""
        self.quotas.learn(key, headers)

    # -- when the answer or stream ends -----------------------------------------------------------------
    def settle(self, ticket: Ticket, tokens: int, cost: float | None) -> None:
        """Give back the slot and debit what was used; in the background, never on the caller's time."""
        if ticket.settled:
            return
        ticket.settled = True
        task = asyncio.get_running_loop().create_task(self._settle(ticket, tokens, cost))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle(self, ticket: Ticket, tokens: int, cost: float | None) -> None:
        store, lim = self.store, ticket.limits
        try:
            if ticket.slot and ticket.key_id is not None:
                await store.release_slot(ticket.key_id, ticket.holder)
            if tokens > 0 and lim is not None and lim.tokens is not None:
                await store.debit(store.item(lim.tokens.limit, lim.tokens.seconds), f"tokens/{ticket.key_id}",
                                  tokens)
            if tokens > 0 and ticket.target_tokens is not None:
                rate = ticket.target_tokens
                await store.debit(store.item(rate.limit, rate.seconds), f"tokens/{ticket.target_key}", tokens)
            if ticket.budget_key is not None and lim is not None and lim.budget is not None:
                if tokens > 0 and lim.budget.tokens is not None:
                    await store.add(f"{ticket.budget_key}/tokens", tokens, ticket.budget_expiry_s)
                if cost and lim.budget.cost is not None:
                    await store.add(f"{ticket.budget_key}/micro", round(cost * MICRO), ticket.budget_expiry_s)
        except StorageDown:
            pass  # logged and counted by the store; this request's usage is not counted against the limit
        except Exception:
            log.exception("aigw: settling a request's limits failed")

    async def drain(self) -> None:
        """Wait for the debits still in flight (shutdown, tests)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def export(self) -> dict[str, dict[str, object]]:
        return self.quotas.export()


__all__ = ["LimitExceeded", "Limiter", "Ticket", "budget_period", "ON_ERROR_POLICIES"]
