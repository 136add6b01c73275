"""In-process loopback relay that lets mitmproxy stream an answer the addon produced (docs/architecture.md).

A response set by an addon is always sent in one piece. So once a provider stream reached its commit point, the
addon parks it here (`Parked`: status, headers, pump) under a one-shot 128-bit token and points the flow at
``http://127.0.0.1:<relay port>/<token>``; mitmproxy connects and streams what the relay writes
(``flow.response.stream = True``) — event by event, never coalesced. The relay answers with the real status line
(and its reason phrase) and the caller's headers, so the flow's response is the caller's answer as it arrives.
It speaks just enough HTTP/1.1: one request at a time per connection, keep-alive, chunked bodies.

Every held stream holds one relay connection, so a connection is kept lean (measured with scripts/bench_streams.py
at 5,000 streams): a bare `asyncio.Protocol` (`_Hop`) with one small buffer, a pump task only while it answers, and
a flow-control future only while the transport's write buffer is full — no StreamReader/StreamWriter pair, and a
parked answer keeps its head already encoded (`_Claim`), not its header list. The relay connection closing (the
caller went away and mitmproxy dropped the hop) cancels the pump: the provider stream is closed at once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from http.client import responses as REASON_PHRASES
from typing import Awaitable, Callable

from addon.capacity import widen_backlog

log = logging.getLogger("aigw.relay")

# pump(write) streams the body: it awaits write(bytes) for every piece and returns when the body is complete.
Pump = Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]]

MAX_HEAD = 65536  # a request head (and body) from mitmproxy larger than this is refused
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_TERMINATOR = b"0\r\n\r\n"


@dataclass(slots=True)
class Parked:
    status: int
    headers: list[tuple[str, str]]
    pump: Pump
    on_abandon: Callable[[], None]
    created: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _Claim:
    """What the relay keeps of a parked answer until its token is claimed: the encoded head, not the headers."""
    head: bytes
    pump: Pump
    on_abandon: Callable[[], None]
    created: float


def _head(parked: Parked) -> bytes:
    """Status line and headers of a parked answer; values encoded as mitmproxy encodes header strings."""
    lines = [f"HTTP/1.1 {parked.status} {REASON_PHRASES.get(parked.status, '')}\r\n"]
    lines.extend(f"{k}: {v}\r\n" for k, v in parked.headers)
    lines.append("transfer-encoding: chunked\r\n\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


def _request(head: bytes) -> tuple[str, int] | None:
    """The token (the path without its slash) and the content length of a request head; None when malformed."""
    request_line, _, header_block = head.decode("latin-1").partition("\r\n")
    parts = request_line.split(" ")
    length = 0
    for line in header_block.split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            try:
                length = int(value.strip() or 0)
            except ValueError:
                return None
    if length < 0:
        return None
    return (parts[1].lstrip("/") if len(parts) >= 2 else ""), length


class Relay:
    def __init__(self, *, unclaimed_ttl: float = 120.0) -> None:
        self._parked: dict[str, _Claim] = {}
        self._server: asyncio.AbstractServer | None = None
        self._janitor: asyncio.Task | None = None
        self._unclaimed_ttl = unclaimed_ttl
        self._starting = asyncio.Lock()
        self.port = 0

    async def start(self) -> int:
        """Listen (once; concurrent callers wait for the same start) and return the port."""
        if self._server is None:
            async with self._starting:
                if self._server is None:
                    loop = asyncio.get_running_loop()
                    server = await loop.create_server(lambda: _Hop(self), "127.0.0.1", 0)
                    # asyncio listens with a backlog of 100, which a burst of streams overflows (addon/capacity.py).
                    # Widened in place, not with create_server(backlog=): asyncio also takes that number as the
                    # accept() calls per wake-up, and out of file descriptors it logs an error for each one.
                    widen_backlog(server.sockets)
                    self.port = server.sockets[0].getsockname()[1]
                    self._janitor = loop.create_task(self._sweep())
                    self._server = server
        return self.port

    async def stop(self) -> None:
        if self._janitor:
            self._janitor.cancel()
            self._janitor = None
        if self._server:
            self._server.close()
            self._server = None
            self.port = 0
        for claim in self._parked.values():
            claim.on_abandon()
        self._parked.clear()

    def park(self, parked: Parked) -> str:
        token = secrets.token_urlsafe(16)
        self._parked[token] = _Claim(_head(parked), parked.pump, parked.on_abandon, parked.created)
        return token

    def claim(self, token: str) -> _Claim | None:
        """The parked answer of a token, once (None when unknown or already claimed)."""
        return self._parked.pop(token, None)

    async def _sweep(self) -> None:
        # mitmproxy claims a token within milliseconds, or tens of seconds when a burst of thousands of streams
        # saturates the event loop; one left longer than that means the client went away.
        while True:
            await asyncio.sleep(self._unclaimed_ttl / 3)
            cutoff = time.monotonic() - self._unclaimed_ttl
            for token in [t for t, p in self._parked.items() if p.created < cutoff]:
                claim = self._parked.pop(token)
                log.warning("relay: stream token not claimed in %.0f s, closing it", self._unclaimed_ttl)
                claim.on_abandon()


class _Hop(asyncio.Protocol):
    """One connection from mitmproxy: reads a request head, answers it with the claimed stream (a chunk per
    write, the pump running in a task of its own), then waits for the next request (keep-alive)."""

    __slots__ = ("_relay", "_transport", "_buffer", "_pump", "_drained", "_paused", "_lost")

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._pump: asyncio.Task[None] | None = None
        self._drained: asyncio.Future[None] | None = None  # set while the transport's write buffer is full
        self._paused = False
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._pump is None:
            self._next_request()
        elif len(self._buffer) > MAX_HEAD and self._transport is not None:
            self._transport.close()  # not HTTP/1.1 as mitmproxy speaks it: it sends nothing while answered

    def eof_received(self) -> bool:
        return False  # mitmproxy closed its end: the transport closes, and connection_lost stops the pump

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._wake(ConnectionResetError("relay connection lost"))
        if self._pump is not None:
            self._pump.cancel()  # nobody reads this stream any more: the pump closes the provider stream

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake(None)

    def _wake(self, exc: Exception | None) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            if exc is None:
                drained.set_result(None)
            else:
                drained.set_exception(exc)

    def _next_request(self) -> None:
        """Answer the request in the buffer once it is complete (head and body)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                self._refuse(_BAD_REQUEST)
            return
        request = _request(self._buffer[:end])
        if request is None or request[1] > MAX_HEAD:
            self._refuse(_BAD_REQUEST)
            return
        token, length = request
        if len(self._buffer) < end + 4 + length:
            return  # the body is still arriving (it is read and ignored)
        self._buffer = self._buffer[end + 4 + length:]
        claim = self._relay.claim(token)
        if claim is None:
            self._refuse(_NOT_FOUND)
            return
        transport.write(claim.head)
        # mitmproxy's loop starts tasks eagerly: an answer that is already whole runs to its end inside
        # create_task (and may have taken the next request already). Only a task still running is the pump.
        task = asyncio.get_running_loop().create_task(self._answer(claim.pump))
        if not task.done():
            self._pump = task

    def _refuse(self, answer: bytes) -> None:
        assert self._transport is not None
        self._transport.write(answer)
        self._transport.close()

    async def _write(self, data: bytes) -> None:
        """One chunk of the answer; waits while the transport's buffer is full (flow control)."""
        if self._lost:
            raise ConnectionResetError("relay connection lost")
        if data:
            assert self._transport is not None
            self._transport.write(b"%x\r\n%s\r\n" % (len(data), data))
            if self._paused:
                self._drained = drained = asyncio.get_running_loop().create_future()
                await drained

    async def _answer(self, pump: Pump) -> None:
        transport = self._transport
        assert transport is not None
        keep = False
        try:
            await pump(self._write)
            keep = True
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # never let one broken stream take the relay down
            log.exception("relay: stream failed")
        finally:
            # The terminator goes out even when the pump failed: the pump already wrote its error event.
            if not self._lost and not transport.is_closing():
                transport.write(_TERMINATOR)
            self._pump = None
        if keep and not self._lost and not transport.is_closing():
            self._next_request()
        elif not self._lost:
            transport.close()
