"""Incremental server-sent-events decoder and encoder (WHATWG event-stream rules).

The decoder accepts bytes cut anywhere: inside a line, between `\\r` and `\\n`, inside a multi-byte
UTF-8 character. Lines are only decoded once complete (CR and LF bytes never occur inside a UTF-8
sequence), so a split character is simply reassembled in the line buffer. It works line-wise with
`bytes.split`, never byte by byte.
"""
from __future__ import annotations

from dataclasses import dataclass

# The largest SSE line or event the decoder holds (an event's data lines together). Real provider events are a
# few KB; the largest seen are Gemini's inline images, a few MB. Beyond this a stream is broken or hostile.
MAX_EVENT_BYTES = 16 * 1024 * 1024


class SSEOverflow(ValueError):
    """An SSE line or event exceeded the decoder's bound."""


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: str


class SSEDecoder:
    __slots__ = ("_buf", "_skip_lf", "_event", "_data", "_size", "max_bytes")

    def __init__(self, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buf = bytearray()  # an incomplete line (never contains CR or LF)
        self._skip_lf = False    # the previous chunk ended in CR: a leading LF belongs to that CRLF
        self._event: str | None = None
        self._data: list[str] = []
        self._size = 0           # bytes in _data
        self.max_bytes = max_bytes

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
                if not chunk:
                    return []
        if b"\n" not in chunk and b"\r" not in chunk:
            # Still inside one line: append in amortised O(1) (a long line arriving in small pieces must not be
            # copied again for every piece), bounded.
            self._buf += chunk
            if len(self._buf) + self._size > self.max_bytes:
                self._overflow()
            return []
        buf = bytes(self._buf) + chunk if self._buf else chunk
        if b"\r" in buf:
            # Normalise CRLF and lone CR to LF. A trailing CR ends its line now (so the event is not
            # delayed); if the next chunk starts with LF it is the second half of this CRLF.
            if buf.endswith(b"\r"):
                self._skip_lf = True
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._buf = bytearray(lines.pop())
        out: list[SSEEvent] = []
        for line in lines:
            self._line(line, out)
        if len(self._buf) + self._size > self.max_bytes:
            self._overflow()
        return out

    def _overflow(self) -> None:
        self._buf = bytearray()
        self._data = []
        self._size = 0
        raise SSEOverflow(f"a stream event is larger than {self.max_bytes} bytes")

    def finish(self) -> list[SSEEvent]:
        """End of stream. A last event without its blank line is still delivered: recorded Anthropic
        streams end that way and a strict reading would drop their terminal `message_stop`."""
        out: list[SSEEvent] = []
        if self._buf:
            self._line(bytes(self._buf), out)
            self._buf = bytearray()
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                out.append(SSEEvent(self._event, "\n".join(self._data)))
            self._event = None
            self._data = []
            self._size = 0
            return
        if line[:1] == b":":
            return  # comment / keep-alive
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._size += len(value) + 1
            if self._size > self.max_bytes:
                self._overflow()
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace") or None
        # "id" and "retry" carry nothing a translator needs; unknown fields are ignored by the spec.


def encode(data: bytes | str, event: str | None = None) -> bytes:
    """One SSE event. JSON from json.dumps never contains raw newlines, so one data line suffices."""
    if isinstance(data, str):
        data = data.encode()
    if b"\n" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\ndata: ")
    if event:
        return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
    return b"data: " + data + b"\n\n"
