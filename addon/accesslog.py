"""The access log: one JSON object per line per finished request (fields: docs/observability.md).

`AccessLog.write(record)` runs on the event loop and only appends the record to a bounded in-memory queue (no
serialization, no I/O, no lock in the common case); a daemon writer thread turns what is queued into lines,
writes them in one batch and flushes. When the queue is full the record is dropped and counted (`dropped`):
the request path never waits on a slow disk or a blocked pipe. `close()` drains the queue.

What a line holds is the record's fields, which by construction name the key only by id and display prefix and
carry no header values, credentials or bodies. Prompt and completion bodies are logged only when the log was
opened with `include_bodies=True` (a debug option) and the caller passes them to `write`.

A file destination is opened for appending and created mode 0600; `reopen()` makes the writer reopen it before
its next batch (log rotation: call it from a SIGHUP handler installed with `loop.add_signal_handler`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

from addon.record import RequestRecord

__all__ = ["FIELDS", "AccessLog", "record_line"]

log = logging.getLogger("aigw.accesslog")

MAX_QUEUE = 10_000       # records waiting for the writer before new ones are dropped
MAX_TEXT = 256           # caller-influenced strings (path, requested model) are cut to this many characters
MAX_BODY = 64 * 1024     # bytes of each body kept when bodies are logged
BATCH_S = 0.05           # the writer wakes at most this often: lines reach the log within ~50 ms

#: Every field of a line, in order (docs/observability.md documents each).
FIELDS = ("time", "request_id", "method", "path", "ingress", "gateway", "gateway_id", "rule_id", "service_id",
          "key_id", "key_prefix", "requested_model", "served_model", "provider", "upstream", "upstream_id",
          "target", "status", "stream", "attempts", "attempt_count", "failovers", "fail_open", "ttft_ms",
          "duration_ms", "upstream_ms", "overhead_ms", "input_tokens", "output_tokens", "cached_tokens",
          "usage_reported", "cost", "error_class", "stream_error")


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode
_second: list = [None, ""]  # the last whole second formatted (only the writer thread formats times)


def _iso(epoch: float) -> str:
    """ISO-8601 UTC with milliseconds: 2025-01-31T12:00:00.123Z."""
    whole = int(epoch)
    if whole != _second[0]:
        _second[:] = [whole, datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")]
    return f"{_second[1]}.{min(int((epoch - whole) * 1000), 999):03d}Z"


def _ms(seconds: float | None) -> float | None:
    """Milliseconds with 3 decimals (µs resolution); int() + division is several times cheaper than round()."""
    return None if seconds is None else int(seconds * 1e6 + 0.5) / 1000


def _cut(text: str | None, limit: int = MAX_TEXT) -> str | None:
    return text if text is None or len(text) <= limit else text[:limit] + "…"


def _body(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8", errors="replace")
    text = data[:MAX_BODY].decode("utf-8", errors="replace")
    return text + "…" if len(data) > MAX_BODY else text


def record_line(record: RequestRecord, bodies: tuple[bytes, bytes] | None = None) -> str:
    """The JSON line (without its newline) of one finished request; `bodies` are added as given."""
    r = record
    usage = r.usage
    doc: dict[str, Any] = {
        "time": _iso(r.started), "request_id": r.request_id, "method": r.method, "path": _cut(r.path),
        "ingress": r.ingress, "gateway": r.gateway, "gateway_id": r.gateway_id, "rule_id": r.rule_id,
        "service_id": r.service_id, "key_id": r.key_id, "key_prefix": r.key_prefix,
        "requested_model": _cut(r.requested_model), "served_model": _cut(r.served_model),
        "provider": r.provider, "upstream": r.upstream, "upstream_id": r.upstream_id, "target": r.target_id,
        "status": r.status, "stream": r.stream,
        "attempts": [{"target": a.target_id, "provider": a.provider, "outcome": a.outcome, "status": a.status,
                      "ms": _ms(a.seconds)} for a in r.attempts],
        "attempt_count": len(r.attempts), "failovers": r.failovers, "fail_open": r.fail_open,
        "ttft_ms": _ms(r.ttft_s), "duration_ms": _ms(r.duration_s), "upstream_ms": _ms(r.upstream_s),
        "overhead_ms": _ms(r.overhead_s),
        "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
        "cached_tokens": usage.cached_tokens, "usage_reported": usage.reported,
        "cost": None if r.cost is None else round(r.cost, 10),
        "error_class": r.error_class, "stream_error": _cut(r.stream_error, 300),
    }
    if bodies is not None:
        doc["request_body"], doc["response_body"] = _body(bodies[0]), _body(bodies[1])
    return _ENCODE(doc)


class AccessLog:
    """Access-log lines to `destination`: "-" or "stdout", a file path (appended, created 0600), or an open
    text stream (tests). `include_bodies`: keep the bodies passed to `write` (debug only: they hold prompts).

    `write` is for the event loop (one thread); `reopen` and `close` may be called from anywhere."""

    def __init__(self, destination: str | IO[str], include_bodies: bool = False, *,
                 max_queue: int = MAX_QUEUE) -> None:
        self.destination = destination
        self.include_bodies = include_bodies
        self.max_queue = max_queue
        self.written = 0   # lines written (writer thread)
        self.dropped = 0   # records dropped because the queue was full (event loop)
        self.errors = 0    # lines lost to a serialization or write error (writer thread)
        self._queue: deque[tuple[RequestRecord, tuple[bytes, bytes] | None]] = deque()
        self._wake = threading.Event()
        self._closing = False
        self._reopen = False
        self._stream: IO[str] | None = None
        self._owned = False  # we opened the stream (a file): we close it
        self._failing = False
        self._open()  # a bad path fails here, at startup, not in the writer
        self._thread = threading.Thread(target=self._run, name="aigw-access-log", daemon=True)
        self._thread.start()

    # -- the request path ------------------------------------------------------------------------------------
    def write(self, record: RequestRecord, bodies: tuple[bytes, bytes] | None = None) -> None:
        """Queue one finished record (it must not change afterwards). Never blocks, never raises."""
        queue = self._queue
        if len(queue) >= self.max_queue or self._closing:
            self.dropped += 1
            return
        queue.append((record, bodies if self.include_bodies else None))
        if not self._wake.is_set():
            self._wake.set()

    # -- control -----------------------------------------------------------------------------------------------
    def reopen(self) -> None:
        """Reopen a file destination before the next batch (after log rotation moved it away)."""
        self._reopen = True
        self._wake.set()

    def close(self, timeout: float | None = 10.0) -> None:
        """Write everything queued, then stop the writer and close a file destination."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)

    def flush(self, timeout: float | None = 10.0) -> None:
        """Wait until every line queued so far is written (tests, shutdown paths that keep the log open)."""
        if not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.append((None, done))  # type: ignore[arg-type]  # a marker, not a record
        self._wake.set()
        done.wait(timeout)

    # -- the writer thread -------------------------------------------------------------------------------------
    def _open(self) -> None:
        dest = self.destination
        if not isinstance(dest, str):
            self._stream, self._owned = dest, False
        elif dest in ("-", "stdout"):
            self._stream, self._owned = sys.stdout, False
        else:
            fd = os.open(dest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._stream, self._owned = os.fdopen(fd, "a", encoding="utf-8", newline="\n"), True

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None and self._owned:
            stream.close()

    def _run(self) -> None:
        queue, wake = self._queue, self._wake
        while True:
            wake.wait()
            if not self._closing:
                # Let a batch gather: one wake-up (and one GIL hand-over) per BATCH_S, not one per request.
                time.sleep(BATCH_S)
            wake.clear()
            if self._reopen:
                self._reopen = False
                self._guard(lambda: (self._close_stream(), self._open()))
            lines: list[str] = []
            markers: list[threading.Event] = []
            while queue:
                record, extra = queue.popleft()
                if record is None:
                    markers.append(extra)  # type: ignore[arg-type]
                    continue
                try:
                    lines.append(record_line(record, extra))
                except Exception:  # noqa: BLE001  (a bad record costs its line, never the writer)
                    self.errors += 1
            if lines:
                self._emit(lines)
            for marker in markers:
                marker.set()
            if self._closing and not queue:
                self._guard(self._close_stream)
                return

    def _emit(self, lines: list[str]) -> None:
        stream = self._stream
        if stream is None:
            self._guard(self._open)
            stream = self._stream
        if stream is None or not self._guard(lambda: (stream.write("\n".join(lines) + "\n"), stream.flush())):
            self.errors += len(lines)
            return
        self.written += len(lines)

    def _guard(self, action: Callable[[], Any]) -> bool:
        """Run an I/O action; log the first failure of a run of failures (not one per line)."""
        try:
            action()
        except (OSError, ValueError) as exc:
            if not self._failing:
                log.warning("aigw: access log %s: %s", self.destination, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("aigw: access log %s is written again", self.destination)
        self._failing = False
        return True
