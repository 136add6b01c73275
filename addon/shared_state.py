"""Circuit states and sticky pins shared by every proxy process through the Redis the limits use (`aigw_redis`).

What one process decides, the others apply within a pub/sub round trip (docs/shared-state.md):

- **Breaker transitions** (addon/health.py ``on_transition``): a circuit that opens here (with when it admits
  traffic again, as epoch seconds, and why), goes half-open or closes is published on ``aigw:health:<namespace>``;
  an open one is also kept in the hash ``aigw:health:<namespace>:open`` (field: the target key), so a process
  that starts or reconnects reads the circuits open right now. Received transitions go to
  ``HealthBoard.apply_shared``: an open circuit is out here too until its end, without counting as a failure
  here; a close closes it; nothing received is ever published again (no echo), and a process ignores its own
  messages (``identity``).
- **Sticky pins** (addon/balancer.py ``on_pin``): sticky key → target id under
  ``aigw:sticky:<namespace>:<upstream id>:<digest of the key>`` with the sticky TTL, written when a pin is made or
  moves and refreshed at most every third of the TTL; read (`recall`) only when this process has no pin for the
  key. The local map stays the fast path.

Nothing here blocks the request path: writes are fire-and-forget through a bounded queue drained by one task;
the one read (`recall`) is bounded by ``timeout`` and skipped while Redis is known to be down; every failure
falls back to this process's own state. An outage is logged once, and its end once (addon/limit_store.py
``Outage``); failed calls and dropped updates are counted (``aigw_shared_state_errors_total``). When Redis answers
again the listener re-subscribes and re-syncs: it re-reads the open circuits and re-publishes its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from hashlib import blake2b
from typing import TYPE_CHECKING, Any, TypeVar

from addon.balancer import STICKY_MAX_PINS
from addon.health import CLOSED, OPEN, RETRY_AFTER_MAX_S, STATES, HealthBoard, Transition
from addon.limit_store import KEY_PREFIX, Outage, StorageDown

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("aigw.shared")

T = TypeVar("T")
Spawn = Callable[..., asyncio.Task]

DEFAULT_NAMESPACE = "default"
MAX_QUEUE = 1000            # updates waiting for the writer; more are dropped (and counted)
MAX_MESSAGE = 4096          # bytes: a longer message (or hash entry) is not ours and is ignored
MAX_REASON = 300            # characters of an open circuit's reason that are shared
LISTEN_POLL_S = 1.0         # the listener's longest wait for a message (then it checks the outage flag)
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.25, 5.0
PIN_REFRESH = 1 / 3         # a pin still pointing at the same target is rewritten after this share of its TTL
OPEN_HASH_TTL_S = int(RETRY_AFTER_MAX_S) + 60  # outlives the longest cool-down an entry can hold


def process_identity(worker: str | None = None) -> str:
    """This process's name in what it publishes: host, pid and a random part (a restarted process is another
    one), after the worker id when there is one."""
    parts = [worker] if worker else []
    return ":".join([*parts, socket.gethostname(), str(os.getpid()), secrets.token_hex(4)])


@dataclass(frozen=True, slots=True)
class Message:
    """One transition as processes exchange it (pub/sub payload and open-hash value)."""

    origin: str
    change: Transition

    def encode(self) -> str:
        c = self.change
        reason = None if c.reason is None else c.reason[:MAX_REASON]
        return json.dumps({"o": self.origin, "k": c.key, "s": c.state, "u": c.until, "r": reason},
                          separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> Message | None:
        """The message, or None when `raw` is not one (anything else on the channel is ignored)."""
        if len(raw) > MAX_MESSAGE:
            return None
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(doc, dict):
            return None
        origin, key, state, until, reason = (doc.get(f) for f in ("o", "k", "s", "u", "r"))
        if not (isinstance(origin, str) and origin and isinstance(key, str) and key and state in STATES):
            return None
        if until is not None and not (isinstance(until, (int, float)) and math.isfinite(until)):
            return None
        if state == OPEN and until is None:
            return None
        if reason is not None and not isinstance(reason, str):
            reason = None
        return cls(origin, Transition(key, state, None if until is None else float(until), reason))


@dataclass(frozen=True, slots=True)
class _PinWrite:
    name: str
    target_id: str
    ttl_ms: int


class SharedState:
    """This process's side of the shared circuit states and sticky pins (see the module docstring)."""

    def __init__(self, client: aioredis.Redis, board: HealthBoard, *, timeout: float = 0.25,
                 namespace: str = DEFAULT_NAMESPACE, identity: str | None = None, url: str = "",
                 known: Callable[[str], bool] | None = None, on_error: Callable[[], None] | None = None) -> None:
        self._client = client
        self.board = board
        self.timeout = timeout
        self.identity = identity or process_identity()
        self.channel = f"{KEY_PREFIX}:health:{namespace}"
        self.open_hash = f"{self.channel}:open"
        self._pin_prefix = f"{KEY_PREFIX}:sticky:{namespace}:"
        self._known = known or (lambda key: True)
        self._on_error = on_error or (lambda: None)
        self._outage = Outage("shared state", url, "each process uses its own circuit states and sticky pins",
                              on_error, log)
        self._queue: asyncio.Queue[Transition | _PinWrite] = asyncio.Queue(MAX_QUEUE)
        self._pin_writes: OrderedDict[str, tuple[str, float]] = OrderedDict()  # name → (target id, written at)
        self._tasks: list[asyncio.Task] = []
        self.connected = asyncio.Event()  # set while subscribed (tests wait on it)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self, spawn: Spawn) -> None:
        """Listen to the others and publish this process's transitions (idempotent)."""
        if self._tasks:
            return
        self.board.on_transition = self.transition
        self._tasks = [spawn(self._listen(), name="aigw-shared-listen"),
                       spawn(self._drain(), name="aigw-shared-publish")]

    def stop(self) -> None:
        if self.board.on_transition == self.transition:
            self.board.on_transition = None
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    @property
    def down(self) -> bool:
        return self._outage.down

    # -- from the request path (synchronous, never blocking) --------------------------------------------
    def transition(self, change: Transition) -> None:
        """The board's listener: publish one of this process's own transitions."""
        self._enqueue(change)

    def pinned(self, upstream_id: str, sticky_key: str, target_id: Any, ttl_s: float) -> None:
        """The balancer pinned `sticky_key` to `target_id`: written when new or moved, else refreshed at most
        every third of the TTL."""
        name = self._pin_name(upstream_id, sticky_key)
        target, now = str(target_id), time.monotonic()
        last = self._pin_writes.get(name)
        if last is not None and last[0] == target and now - last[1] < ttl_s * PIN_REFRESH:
            return
        self._pin_writes[name] = (target, now)
        self._pin_writes.move_to_end(name)
        if len(self._pin_writes) > STICKY_MAX_PINS:
            self._pin_writes.popitem(last=False)
        self._enqueue(_PinWrite(name, target, max(1, int(ttl_s * 1000))))

    async def recall(self, upstream_id: str, sticky_key: str) -> str | None:
        """The target another process pinned `sticky_key` to; None when there is none, or Redis does not answer
        within ``timeout`` (or is known to be down: then at once)."""
        if self._outage.down:
            return None
        try:
            value = await self._call(self._client.get(self._pin_name(upstream_id, sticky_key)))
        except StorageDown:
            return None
        if value is None:
            return None
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    def _enqueue(self, item: Transition | _PinWrite) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._on_error()  # dropped; a re-sync re-publishes what is still open

    def _pin_name(self, upstream_id: str, sticky_key: str) -> str:
        digest = blake2b(sticky_key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
        return f"{self._pin_prefix}{upstream_id}:{digest}"

    # -- bounded Redis calls -------------------------------------------------------------------------------
    async def _bounded(self, call: Awaitable[T]) -> T:
        return await asyncio.wait_for(call, self.timeout)

    async def _call(self, call: Awaitable[T]) -> T:
        """One bounded call; StorageDown (counted, the outage logged once) when it fails."""
        try:
            result = await self._bounded(call)
        except Exception as exc:  # connection refused, reset, timeout, an error reply: all mean "not now"
            self._outage.failed(type(exc).__name__)
            raise StorageDown(str(exc)) from None
        self._outage.answered()
        return result

    # -- the writer -------------------------------------------------------------------------------------
    async def _drain(self) -> None:
        while True:
            item = await self._queue.get()
            if self._outage.down:
                continue  # the listener re-syncs when Redis is back: own open circuits are published again
            try:
                await self._call(self._write(item))
            except StorageDown:
                pass

    def _write(self, item: Transition | _PinWrite) -> Coroutine[Any, Any, Any]:
        if isinstance(item, _PinWrite):
            return self._client.set(item.name, item.target_id, px=item.ttl_ms)
        message = Message(self.identity, item).encode()
        pipe = self._client.pipeline(transaction=True)
        if item.state == OPEN:
            pipe.hset(self.open_hash, item.key, message)
            pipe.expire(self.open_hash, OPEN_HASH_TTL_S)
        elif item.state == CLOSED:
            pipe.hdel(self.open_hash, item.key)
        pipe.publish(self.channel, message)
        return pipe.execute()

    # -- the listener -----------------------------------------------------------------------------------
    async def _listen(self) -> None:
        delay = RECONNECT_MIN_S
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await self._bounded(pubsub.subscribe(self.channel))
                await self._resync()  # after subscribing: nothing published in between is missed
                self._outage.answered()
                self.connected.set()
                delay = RECONNECT_MIN_S
                while True:
                    message = await pubsub.get_message(timeout=LISTEN_POLL_S)
                    if message is not None and message.get("type") == "message":
                        self.received(message["data"])
                    if self._outage.down:  # a call elsewhere failed while this connection lives: re-sync
                        await self._resync()
                        self._outage.answered()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._outage.failed(type(exc).__name__)
            finally:
                self.connected.clear()
                try:
                    await self._bounded(pubsub.aclose())
                except Exception:  # noqa: S110 (the connection is gone either way)
                    pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    def received(self, raw: bytes | str) -> bool:
        """Apply one message from the channel; True when it changed this process's board."""
        message = Message.decode(raw)
        if message is None or message.origin == self.identity or not self._known(message.change.key):
            return False
        return self.board.apply_shared(message.change, message.origin)

    async def _resync(self) -> None:
        """Take the circuits other processes hold open; publish this one's own again, and drop entries of its
        own that an outage kept from being withdrawn (publishing their close when the circuit is closed here)."""
        entries: dict[Any, Any] = await self._bounded(self._client.hgetall(self.open_hash))
        own = {t.key: t for t in self.board.own_open()}
        wall = time.time()
        pipe = self._client.pipeline(transaction=False)
        for field, raw in entries.items():
            message = Message.decode(raw)
            if message is None or message.change.until is None or message.change.until <= wall:
                pipe.hdel(self.open_hash, field)  # over, or not ours
            elif message.origin == self.identity:
                key = message.change.key
                if key not in own:
                    pipe.hdel(self.open_hash, field)
                    if self.board.state(key) == CLOSED:
                        pipe.publish(self.channel, Message(self.identity, Transition(key, CLOSED)).encode())
            elif self._known(message.change.key):
                self.board.apply_shared(message.change, message.origin)
        for change in own.values():
            encoded = Message(self.identity, change).encode()
            pipe.hset(self.open_hash, change.key, encoded)
            pipe.publish(self.channel, encoded)
        if own:
            pipe.expire(self.open_hash, OPEN_HASH_TTL_S)
        if len(pipe):
            await self._bounded(pipe.execute())
