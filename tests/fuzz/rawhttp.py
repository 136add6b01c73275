"""A raw HTTP/1.x client for the fuzz run: sends exactly the bytes it is given (no normalisation of the method,
target, header names/values or framing, as urllib/http.client would do) and reads one answer, all under one
deadline. It writes and reads at the same time, so an early answer (413 before the body, 431, 400) is seen even
when the proxy stops reading."""

from __future__ import annotations

import selectors
import socket
import time
from dataclasses import dataclass, field


@dataclass
class RawResult:
    status: int | None                     # None: no (complete) status line
    reason: str = ""                       # "ok" | "closed" (EOF, no answer) | "timeout" | "reset" | "incomplete"
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    elapsed: float = 0.0
    sent_all: bool = True

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


def _parse_head(buf: bytes) -> tuple[int, list[tuple[str, str]], int] | None:
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        status = -1
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers.append((k.decode("latin-1").strip(), v.decode("latin-1").strip()))
    return status, headers, end + 4


def _chunked_complete(data: bytes) -> tuple[bool, bytes]:
    """Whether a chunked body is complete; the decoded body so far."""
    out = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return False, bytes(out)
        try:
            size = int(data[pos:eol].split(b";", 1)[0].strip() or b"x", 16)
        except ValueError:
            return True, bytes(out)  # garbage framing: stop here, the caller sees what arrived
        if size == 0:
            return data.find(b"\r\n", eol + 2) >= 0 or data.endswith(b"\r\n"), bytes(out)
        start = eol + 2
        if len(data) < start + size + 2:
            out += data[start:]
            return False, bytes(out)
        out += data[start:start + size]
        pos = start + size + 2


def exchange(port: int, data: bytes, *, timeout: float, head_request: bool = False, host: str = "127.0.0.1",
             pace: tuple[int, float] | None = None) -> RawResult:
    """Send ``data`` on a fresh connection and read one answer (1xx answers are skipped).

    pace=(n, seconds): send n bytes at a time with a pause between (a slow client).
    """
    t0 = time.monotonic()
    deadline = t0 + timeout
    try:
        sock = socket.create_connection((host, port), timeout=min(timeout, 5.0))
    except OSError:
        return RawResult(None, "connect", elapsed=time.monotonic() - t0, sent_all=False)
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    out = memoryview(data)
    buf = bytearray()
    next_send = 0.0
    result: RawResult | None = None
    write_open = True
    registered = 0
    try:
        while result is None:
            now = time.monotonic()
            if now >= deadline:
                result = RawResult(None, "timeout")
                break
            want_write = bool(out) and write_open and (pace is None or now >= next_send)
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            if not registered:
                sel.register(sock, mask)
            elif mask != registered:
                sel.modify(sock, mask)
            registered = mask
            wait = deadline - now
            if pace is not None and out and write_open and now < next_send:
                wait = min(wait, next_send - now)
            for _key, ev in sel.select(max(wait, 0.0)):
                if ev & selectors.EVENT_WRITE:
                    try:
                        n = sock.send(out[: pace[0]] if pace else out[: 1 << 20])
                        out = out[n:]
                        if pace is not None:
                            next_send = time.monotonic() + pace[1]
                    except BlockingIOError:
                        pass
                    except OSError:
                        write_open = False  # the proxy stopped reading (answered early, or closed)
                if ev & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(1 << 16)
                    except BlockingIOError:
                        continue
                    except OSError:
                        result = _finish(buf, head_request, eof=True) or RawResult(None, "reset")
                        break
                    if not chunk:
                        result = _finish(buf, head_request, eof=True) or RawResult(None, "closed")
                        break
                    buf += chunk
                    result = _finish(buf, head_request, eof=False)
    finally:
        sel.close()
        sock.close()
    result.elapsed = time.monotonic() - t0
    result.sent_all = not out
    return result


def _finish(buf: bytearray, head_request: bool, *, eof: bool) -> RawResult | None:
    """A complete answer in buf, or None when more must be read (on EOF: what arrived, marked incomplete)."""
    data = bytes(buf)
    while True:
        parsed = _parse_head(data)
        if parsed is None:
            return RawResult(None, "incomplete", body=data) if eof and data else None
        status, headers, start = parsed
        if 100 <= status < 200 and status != 101:
            data = data[start:]
            continue
        break
    body = data[start:]
    lower = {k.lower(): v for k, v in headers}
    if head_request or status in (204, 304) or status == 101:
        return RawResult(status, "ok", headers, b"")
    if "chunked" in lower.get("transfer-encoding", "").lower():
        done, decoded = _chunked_complete(body)
        if done:
            return RawResult(status, "ok", headers, decoded)
        return RawResult(status, "incomplete", headers, decoded) if eof else None
    if "content-length" in lower:
        try:
            n = int(lower["content-length"])
        except ValueError:
            n = -1
        if 0 <= n <= len(body):
            return RawResult(status, "ok", headers, body[:n])
        return RawResult(status, "incomplete", headers, body) if eof else None
    return RawResult(status, "ok", headers, body) if eof else None
