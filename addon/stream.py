"""A committed stream on its way to the caller, and the health lease every attempt holds on its target.

`Lease`: one attempt's in-flight slot on its target's circuit (`HealthBoard.begin` … `end`). It is taken before
the attempt, gets at most one verdict (`success` / `failure`) and is ended exactly once — by the dispatcher's
`with` block, or, once a stream committed, by the `RelayedStream` it was moved to (`transfer`).

`RelayedStream`: the relay's pump for one committed stream (addon/relay.py calls `pump`, or `abandon` when the
token is never claimed; the addon calls `caller_hung_up`). It stays bounded after the commit point:
`idle_timeout` counts from the last event the caller got (a trickle of bytes that never completes an event is
idle), `total_timeout` from the request's start (`deadline`, monotonic); either ends it with an error event in the
caller's format, and so does a provider that cuts the connection. Reading stops at the terminal or error event.
The verdict: a clean end is a success; a bound, a cut or a missing terminal event is a failure; a caller that
went away is no fault of the provider (success). See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp

from addon.attempt import Opened
from addon.health import HealthBoard, HealthPolicy
from addon.record import RequestRecord, TokenUsage
from addon.upstream import read_some

Write = Callable[[bytes], Awaitable[None]]

_SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache"}


class Lease:
    """An attempt's slot on `key`'s circuit. Without a policy (an endpoint service: no health) it does nothing.
    Once ended (or transferred), it ignores every further call: the slot is released exactly once."""

    __slots__ = ("_board", "_key", "_policy", "_held")

    def __init__(self, board: HealthBoard, key: str, policy: HealthPolicy | None) -> None:
        self._board, self._key, self._policy = board, key, policy
        self._held = policy is not None
        if policy is not None:
            board.begin(key, policy)

    @classmethod
    def take(cls, board: HealthBoard, key: str, policy: HealthPolicy | None, *, recheck: bool) -> Lease | None:
        """Begin an attempt on `key`; None when `recheck` finds the circuit no longer admits one.

        The balancer's plan checked availability before the first attempt. A later candidate is checked again
        (`recheck`) because earlier attempts awaited in between: a recovering (half-open) target's single trial
        slot may have been taken by another request meanwhile. A fail-open plan tries every target regardless."""
        if recheck and policy is not None and not board.is_available(key, policy):
            return None
        return cls(board, key, policy)

    def success(self, ttfb_s: float | None) -> None:
        if self._held:
            self._board.success(self._key, self._policy, ttfb_s)

    def failure(self, why: str, *, retry_after_s: float | None = None, health: bool = True) -> None:
        if self._held:
            self._board.failure(self._key, self._policy, why, retry_after_s=retry_after_s, health=health)

    def end(self) -> None:
        """Release the slot; only the first call counts."""
        if self._held:
            self._held = False
            self._board.end(self._key)

    def transfer(self) -> Lease:
        """Move the slot to a new owner (a committed stream): this lease is then released without ending it."""
        moved = Lease(self._board, self._key, None)
        moved._policy, moved._held = self._policy, self._held
        self._held = False
        return moved

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()


class RelayedStream:
    """One committed stream: its pump for the relay, the lease it ends exactly once, and the request's record,
    which it closes (`on_end`) exactly once, with the stream's usage and time to first token."""

    def __init__(self, opened: Opened, lease: Lease, deadline: float, record: RequestRecord | None = None,
                 on_end: Callable[[RequestRecord], None] | None = None) -> None:
        self.status = opened.status
        # A translated stream is the caller's event format; an untranslated one keeps the provider's headers.
        self.headers = dict(_SSE_HEADERS if opened.translator is not None else opened.headers)
        self._opened = opened
        self._lease = lease
        self._deadline = deadline
        self._caller_gone = False
        self._record, self._on_end = record, on_end

    def _settle(self, ok: bool, why: str = "") -> None:
        """The stream's verdict and the end of its lease (which ignores whatever comes after its end)."""
        if ok:
            self._lease.success(self._opened.ttfb)
        elif why:
            self._lease.failure(why)
        self._lease.end()
        if self._opened.wire is not None:
            if not ok and why:
                self._opened.wire.failed(why)
            self._opened.wire.close()
        record, self._record = self._record, None
        if record is not None:
            translator = self._opened.translator
            if translator is not None:
                record.usage, record.served_model = TokenUsage.of(translator.usage), translator.model
            if not ok and why:
                record.stream_error = why
            if self._on_end is not None:
                self._on_end(record)

    def _first_content(self) -> None:
        """The caller gets its first content now: the request's time to first token."""
        if self._record is not None and self._record.ttft_s is None:
            self._record.ttft_s = time.perf_counter() - self._record.started_mono

    async def pump(self, write: Write) -> None:
        """Relay the stream to the caller (the relay's `Parked.pump`)."""
        # Parked: the status line and headers are the relay's now. A held stream keeps only what it reads with
        # (thousands are held at once: scripts/bench_streams.py).
        self.headers, self._opened.headers = {}, {}
        ok, why = False, ""
        try:
            ok, why = await self._relay(write)
        except (ConnectionError, asyncio.CancelledError):
            ok = True  # the caller went away; the provider did nothing wrong
            raise
        finally:
            self._opened.response.close()
            self._settle(ok, why)

    def abandon(self) -> None:
        """The relay token was never claimed (or the relay stopped): close the provider stream."""
        self._opened.response.close()
        self._settle(True)

    def caller_hung_up(self) -> None:
        """Stop reading (and paying for) a stream nobody will receive."""
        self._caller_gone = True
        self._opened.response.close()

    async def _relay(self, write: Write) -> tuple[bool, str]:
        """Pump until the stream ends; (clean end, why not)."""
        opened, deadline = self._opened, self._deadline
        translator, content, idle = opened.translator, opened.response.content, opened.idle_timeout
        wire = opened.wire
        if opened.buffered:
            buffered, opened.buffered = opened.buffered, b""
            self._first_content()
            await write(buffered)
            del buffered
        progress = time.monotonic()  # when the caller last got something
        while True:
            now = time.monotonic()
            if now >= deadline:
                return await self._abort(write, "stream total timeout after commit",
                                         "The answer took longer than the upstream's total_timeout.", "timeout")
            if now - progress >= idle:
                return await self._abort(write, "stream idle timeout after commit",
                                         "The provider stopped sending mid-stream.", "timeout")
            try:
                chunk = await read_some(content, min(deadline, progress + idle) - now)
                if wire is not None:
                    wire.received(chunk)
            except TimeoutError:
                continue  # the checks above say which bound was reached
            except aiohttp.ClientError:
                if self._caller_gone:
                    return True, ""  # we closed it: the caller hung up; the provider did nothing wrong
                return await self._abort(write, "stream cut after commit",
                                         "The provider connection was lost mid-stream.")
            if translator is None:
                if not chunk:
                    return True, ""
                self._first_content()
                await write(chunk)
                progress = time.monotonic()
                continue
            if not chunk:
                await write(translator.finish())
                if translator.done and translator.upstream_error is None:
                    return True, ""
                return False, "stream ended without its terminal event"
            out = translator.feed(chunk)
            if out:
                await write(out)
                progress = time.monotonic()
            if translator.done or translator.upstream_error is not None:
                # Terminal or error event seen: nothing more is delivered, so stop reading now.
                await write(translator.finish())
                if translator.done and translator.upstream_error is None:
                    return True, ""
                return False, f"stream error after commit: {translator.upstream_error.message}"[:300]

    async def _abort(self, write: Write, why: str, message: str, kind: str = "api_error") -> tuple[bool, str]:
        """End the stream early: an error event in the caller's format (a translated stream only)."""
        if self._opened.translator is not None:
            await write(self._opened.translator.abort(message, kind))
        return False, why
