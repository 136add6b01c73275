"""In-process loopback relay that lets mitmproxy stream an answer the addon produced (docs/architecture.md).

A response set by an addon is always sent in one piece. So once a provider stream reached its commit point, the
addon parks it here (`Parked`: status, headers, pump) under a one-shot 128-bit token and points the flow at
``http://127.0.0.1:<relay port>/<token>``; mitmproxy connects and streams what the relay writes
(``flow.response.stream = True``) — event by event, never coalesced. The relay answers with the real status line
(and its reason phrase) and the caller's headers, so the flow's response is the caller's answer as it arrives.
It speaks just enough HTTP/1.1: one request at a time per connection, keep-alive, chunked bodies.
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


@dataclass(slots=True)
class Parked:
    status: int
    headers: list[tuple[str, str]]
    pump: Pump
    on_abandon: Callable[[], None]
    created: float = field(default_factory=time.monotonic)


def _head(parked: Parked) -> bytes:
    """Status line and headers of a parked answer; values encoded as mitmproxy encodes header strings."""
    lines = [f"HTTP/1.1 {parked.status} {REASON_PHRASES.get(parked.status, '')}\r\n"]
    lines.extend(f"{k}: {v}\r\n" for k, v in parked.headers)
    lines.append("transfer-encoding: chunked\r\n\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


class Relay:
    def __init__(self, *, unclaimed_ttl: float = 120.0) -> None:
        self._parked: dict[str, Parked] = {}
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
                    server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=65536)
                    # asyncio listens with a backlog of 100, which a burst of streams overflows (addon/capacity.py).
                    # Widened in place, not with start_server(backlog=): asyncio also takes that number as the
                    # accept() calls per wake-up, and out of file descriptors it logs an error for each one.
                    widen_backlog(server.sockets)
                    self.port = server.sockets[0].getsockname()[1]
                    self._janitor = asyncio.get_running_loop().create_task(self._sweep())
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
        for parked in self._parked.values():
            parked.on_abandon()
        self._parked.clear()

    def park(self, parked: Parked) -> str:
        token = secrets.token_urlsafe(16)
        self._parked[token] = parked
        return token

    async def _sweep(self) -> None:
        # mitmproxy claims a token within milliseconds, or tens of seconds when a burst of thousands of streams
        # saturates the event loop; one left longer than that means the client went away.
        while True:
            await asyncio.sleep(self._unclaimed_ttl / 3)
            cutoff = time.monotonic() - self._unclaimed_ttl
            for token in [t for t, p in self._parked.items() if p.created < cutoff]:
                parked = self._parked.pop(token)
                log.warning("relay: stream token not claimed in %.0f s, closing it", self._unclaimed_ttl)
                parked.on_abandon()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                request_line, _, header_block = head.decode("latin-1").partition("\r\n")
                parts = request_line.split(" ")
                length = 0
                for line in header_block.split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip() or 0)
                if length:
                    await reader.readexactly(length)
                token = parts[1].lstrip("/") if len(parts) >= 2 else ""
                parked = self._parked.pop(token, None)
                if parked is None:
                    writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    await writer.drain()
                    return
                writer.write(_head(parked))

                async def write(data: bytes) -> None:
                    if data:
                        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                        await writer.drain()

                try:
                    await parked.pump(write)
                finally:
                    # The terminator goes out even when the pump failed: the pump already wrote its error event.
                    if not writer.is_closing():
                        writer.write(b"0\r\n\r\n")
                        await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:  # never let one broken stream take the relay down
            log.exception("relay: stream failed")
        finally:
            writer.close()
