"""Where limit counters live: this process's memory, or one Redis shared by every proxy process and machine.

Rate windows are the `limits` library's sliding-window counters, over its memory or Redis storage: O(1) per key
whatever the limit (a cost of thousands of tokens is one increment, not thousands of entries). Inside one window
"N per minute" is exactly N; across a boundary the previous window counts pro rata (the library's approximation of a
moving window, which would hold one entry per request: measured 30 % of a request's CPU at high limits).

In memory the library's synchronous storage is used: its calls are a few dict operations under an uncontended
lock, never I/O, so they run on the event loop directly (its asyncio twin creates a task per increment, measured
at several times the cost) — without the thread it starts every 10 ms under load to drop expired counters
(measured at a fifth of the proxy's throughput); expired counters are dropped when read, and swept once a minute. Two counters that library has no strategy
for are here too, on the same storage: budgets (calendar periods: the period is in the key name, so every process
agrees on when it starts) and concurrency slots (in Redis a sorted set of leases, so a process that dies without
releasing its slots frees them when the lease runs out).

Every Redis call is bounded (``timeout``) and never blocks the event loop (redis.asyncio). When Redis cannot be
reached the store says so by raising :class:`StorageDown`; the limiter applies the configured policy (fail open:
serve without the limit; fail closed: refuse with 503). The outage is logged once and counted (:class:`Outage`).

The store's client (``LimitStore.client``, made by :func:`connect`) is the process's one Redis connection pool:
addon/shared_state.py shares circuit states and sticky pins over it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import limits
from limits import storage as sync_storage
from limits import strategies as sync_strategies
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("aigw.limits")

T = TypeVar("T")

KEY_PREFIX = "aigw"
# A concurrency slot not released within this long (its process died, or a stream outlived it) is freed.
SLOT_LEASE_S = 900.0

# Take a slot unless `limit` live leases exist: drop expired leases, count, add ours. Atomic in Redis.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


SWEEP_EVERY_S = 60.0


class _AlwaysAlive:
    """Stands in for the storage's expiry timer, so that it never starts another one."""

    @staticmethod
    def is_alive() -> bool:
        return True

    @staticmethod
    def cancel() -> None:
        pass


class _LoopMemory(sync_storage.MemoryStorage):
    """The `limits` memory storage, used from one event loop, with its expiry swept by `sweep()` instead of a
    timer thread."""

    def __init__(self) -> None:
        super().__init__()
        self.timer.cancel()  # the one it started; it would only sweep once
        self.timer = _AlwaysAlive()  # type: ignore[assignment]
        self._next_sweep = time.monotonic() + SWEEP_EVERY_S

    def sweep_due(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY_S
            wall = time.time()
            for key in [k for k, at in self.expirations.items() if at <= wall]:
                self.get(key)  # drops the expired counter

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        self.sweep_due()
        return super().incr(key, expiry, amount)


class StorageDown(Exception):
    """The shared storage did not answer in time or at all."""


def redis_url(url: str) -> str:
    """What redis.asyncio reads: the `limits` library's ``async+redis://`` spelling is accepted too."""
    url = url.strip().removeprefix("async+")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"a Redis URL starts with redis://, rediss:// or unix://; got {url.split(':', 1)[0]!r}")
    return url


def mask_url(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def connect(url: str, timeout: float) -> aioredis.Redis:
    """A redis.asyncio client (and its connection pool) whose every socket operation is bounded by `timeout`."""
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(redis_url(url), socket_timeout=timeout, socket_connect_timeout=timeout,
                                   health_check_interval=30)


class Outage:
    """Whether a Redis answers, as its users saw it: every failed call is counted (`on_error`); the first of an
    outage is logged, and so is the first call that works again."""

    def __init__(self, what: str, url: str, consequence: str, on_error: Callable[[], None] | None = None,
                 logger: logging.Logger = log) -> None:
        self.what, self.url, self.consequence = what, mask_url(url), consequence
        self._on_error = on_error or (lambda: None)
        self._log = logger
        self.down = False

    def failed(self, why: str) -> None:
        self._on_error()
        if not self.down:
            self._log.warning("aigw: %s %s unreachable (%s); %s until it answers again", self.what, self.url, why,
                              self.consequence)
            self.down = True

    def answered(self) -> None:
        if self.down:
            self._log.info("aigw: %s %s answers again", self.what, self.url)
            self.down = False


class LimitStore:
    """Counters for the limiter. ``url`` None: in this process's memory."""

    def __init__(self, url: str | None = None, *, timeout: float = 0.25,
                 on_error: Callable[[], None] | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self._outage = Outage("limit storage", url or "", "applying the on-error policy", on_error)
        self._items: dict[tuple[int, int], limits.RateLimitItem] = {}
        self._slots: dict[str, int] = {}  # memory only
        self._redis: aioredis.Redis | None = None
        if url:
            self._redis = connect(url, timeout)
            self._storage = RedisStorage(
                "async+" + redis_url(url), implementation="redispy", wrap_exceptions=True,
                key_prefix=KEY_PREFIX, connection_pool=self._redis.connection_pool)
            self._acquire = self._redis.register_script(_ACQUIRE)
            self._windows = SlidingWindowCounterRateLimiter(self._storage)
            self._local = None
        else:
            self._memory = _LoopMemory()
            self._local = sync_strategies.SlidingWindowCounterRateLimiter(self._memory)

    @property
    def shared(self) -> bool:
        return self._redis is not None

    @property
    def client(self) -> aioredis.Redis | None:
        """The Redis client (None in memory): the one connection pool of this process's shared state too."""
        return self._redis

    async def check(self) -> bool:
        """Whether the storage answers (a PING); a failure is logged like any other."""
        if self._redis is None:
            return True
        try:
            # The library answers False (it does not raise) when the server cannot be reached.
            if await self._call(self._storage.check()):
                return True
            raise StorageDown("PING failed")
        except StorageDown:
            if not self._outage.down:  # _call has not said so yet
                self._outage.failed("PING failed")
            return False

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    # -- bounded calls ------------------------------------------------------------------------------------
    async def _call(self, call: Awaitable[T]) -> T:
        if self._redis is None:
            return await call
        try:
            result = await asyncio.wait_for(call, self.timeout)
        except (StorageError, OSError, asyncio.TimeoutError, Exception) as exc:  # noqa: B014 (documents what)
            # Whatever the client raises (connection refused, reset, timeout, a Redis error reply) means the same
            # here; CancelledError is a BaseException and goes through.
            self._outage.failed(type(exc).__name__)
            raise StorageDown(str(exc)) from None
        self._outage.answered()
        return result

    def item(self, limit: int, seconds: int) -> limits.RateLimitItem:
        """The `limits` item for N per window (cached: items are immutable)."""
        found = self._items.get((limit, seconds))
        if found is None:
            found = limits.RateLimitItemPerSecond(limit, seconds, namespace="rate")
            self._items[(limit, seconds)] = found
        return found

    # -- rate windows -------------------------------------------------------------------------------------
    async def hit(self, item: limits.RateLimitItem, key: str, cost: int = 1) -> bool:
        """Take `cost` from a window; False (and nothing taken) when it does not fit."""
        if self._local is not None:
            return self._local.hit(item, key, cost=cost)
        return await self._call(self._windows.hit(item, key, cost=cost))

    async def stats(self, item: limits.RateLimitItem, key: str) -> limits.WindowStats:
        """A window's reset time (epoch) and what is left."""
        if self._local is not None:
            return self._local.get_window_stats(item, key)
        return await self._call(self._windows.get_window_stats(item, key))

    async def debit(self, item: limits.RateLimitItem, key: str, cost: int) -> None:
        """Take `cost` from a window whatever is left (usage that was already spent): what fits, then the rest
        of the window, so it reads as empty until it slides."""
        if cost <= 0:
            return
        if await self.hit(item, key, cost):
            return
        left = (await self.stats(item, key)).remaining
        if left > 0:
            await self.hit(item, key, left)

    # -- budgets ------------------------------------------------------------------------------------------
    async def add(self, key: str, amount: int, expiry_s: int) -> int:
        if self._local is not None:
            return self._memory.incr(f"budget/{key}", expiry_s, amount)
        return await self._call(self._storage.incr(f"budget/{key}", expiry_s, amount))

    async def total(self, key: str) -> int:
        if self._local is not None:
            return self._memory.get(f"budget/{key}")
        return await self._call(self._storage.get(f"budget/{key}"))

    # -- concurrency slots ----------------------------------------------------------------------------------
    async def acquire_slot(self, key: str, limit: int, holder: str) -> bool:
        if self._redis is None:
            held = self._slots.get(key, 0)
            if held >= limit:
                return False
            self._slots[key] = held + 1
            return True
        now = time.time()
        name = f"{KEY_PREFIX}:slots:{key}"
        args = [now, now + SLOT_LEASE_S, limit, holder, int(SLOT_LEASE_S) + 60]
        return bool(await self._call(self._acquire(keys=[name], args=args)))

    async def release_slot(self, key: str, holder: str) -> None:
        if self._redis is None:
            held = self._slots.get(key, 0) - 1
            if held > 0:
                self._slots[key] = held
            else:
                self._slots.pop(key, None)
            return
        await self._call(self._redis.zrem(f"{KEY_PREFIX}:slots:{key}", holder))

    def slots_held(self, key: str) -> int | None:
        """This process's count (memory only; None with Redis, where it is shared)."""
        return None if self._redis is not None else self._slots.get(key, 0)
