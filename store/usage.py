"""Token usage and cost: counted in memory by the proxy, persisted to a file the admin API reads.

The proxy hands every finished :class:`~addon.record.RequestRecord` to :meth:`UsageBook.add` (O(1), no I/O: it
runs on the event loop), which sums it into one row per (UTC day of the request's start, gateway, key, target,
model). A daemon thread writes the whole book to ``<store>.usage.json`` with the store's atomic replace once a
second when something changed; a restart loads the file and continues the counts. Periodic writes are not
fsynced: after a ``kill -9`` what was renamed into place is still in the OS page cache, so at most the last second
is lost, and an fsync a second would cost disk time for nothing. The file is fsynced at most once a minute and on
:meth:`UsageBook.stop` (a clean stop loses nothing; a power cut about a minute). One proxy process owns the file,
like the health file; the admin API only reads it (store/usage_report.py). With several proxy worker processes
(``aigw up --workers N``) worker ``<id>`` owns ``<store>.usage.<id>.json`` (store/workers.py) and the admin API sums
every file (:func:`usage_files`, :func:`merge_days`).

Bounded: days older than ``retain_days`` (default 400: more than the admin API's longest range, 366 days) are
dropped; past ``max_rows_per_day`` rows in a day, models not yet counted that day are counted as ``"(other)"``
(the model is the one dimension a client chooses; gateways, keys and targets are configuration); model names are
cut at 200 characters. Document (version 1)::

    {"version": 1, "written_at": <epoch float>, "columns": ["gateway_id", "key_id", "target_id", "model",
     "requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "cost", "unpriced_requests"],
     "days": {"YYYY-MM-DD": [[<one value per column>], ...], ...}}
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING

from .atomic import atomic_write_bytes, temp_prefix
from .upstream import Pricing
from .workers import side_files, side_path

if TYPE_CHECKING:  # the record is the data plane's type; store/ never imports addon/ at run time
    from addon.record import RequestRecord, TokenUsage

log = logging.getLogger("aigw.usage")

USAGE_SUFFIX = ".usage.json"
FORMAT_VERSION = 1
DEFAULT_FLUSH_INTERVAL_S = 1.0
DEFAULT_DURABLE_INTERVAL_S = 60.0
DEFAULT_RETAIN_DAYS = 400
MAX_ROWS_PER_DAY = 10_000
MAX_MODEL_LENGTH = 200
OTHER_MODEL = "(other)"

KEY_COLUMNS: tuple[str, ...] = ("gateway_id", "key_id", "target_id", "model")
COUNT_COLUMNS: tuple[str, ...] = (
    "requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "cost", "unpriced_requests",
)
COLUMNS: tuple[str, ...] = KEY_COLUMNS + COUNT_COLUMNS

#: (gateway_id, key_id, target_id, model): None where the request never got that far (no key, no target).
RowKey = tuple[str, str | None, str | None, str | None]

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def usage_path_for(store_path: str | os.PathLike[str], worker: str | None = None) -> str:
    """Where the proxy keeps usage for the store at ``store_path`` (``db.json`` -> ``db.json.usage.json``; worker
    ``w1`` of several: ``db.json.usage.w1.json``)."""
    return side_path(os.fspath(store_path) + USAGE_SUFFIX, worker)


def usage_files(path: str | os.PathLike[str]) -> list[str]:
    """The single-process usage file ``path`` and every worker's, those that exist."""
    return list(side_files(path).values())


_last_day: tuple[int, str] = (-1, "")  # (days since the epoch, its YYYY-MM-DD): one datetime per day, not per call


def utc_day(epoch: float) -> str:
    """The UTC day of an epoch time, ``YYYY-MM-DD``."""
    global _last_day
    n = int(epoch // 86400)
    if n != _last_day[0]:
        _last_day = (n, datetime.fromtimestamp(n * 86400, timezone.utc).date().isoformat())
    return _last_day[1]


def parse_day(text: str) -> date:
    """``YYYY-MM-DD`` exactly (``date.fromisoformat`` alone also takes ``20260102`` and week dates), or ValueError."""
    if not isinstance(text, str) or not _DAY.fullmatch(text):
        raise ValueError(f"not a day YYYY-MM-DD: {text!r}")
    return date.fromisoformat(text)


def cost(usage: TokenUsage, pricing: Pricing | None) -> float | None:
    """The estimated cost of one answer: cached input tokens at the cached price, the rest of the input at the
    input price, output at the output price. None without pricing (unknown, not free)."""
    if pricing is None:
        return None
    input_tokens = max(usage.input_tokens, 0)
    cached = min(max(usage.cached_tokens, 0), input_tokens)
    return ((input_tokens - cached) * pricing.input_per_million + cached * pricing.cached_rate
            + max(usage.output_tokens, 0) * pricing.output_per_million) / 1_000_000


@dataclass(slots=True)
class Tally:
    """The counts of one row (or of a sum of rows). ``cost`` sums the known costs only; ``unpriced_requests``
    counts the requests with reported usage but no cost (their target has no pricing), so a reader can tell."""

    requests: int = 0
    errors: int = 0  # answers with status >= 400, and committed streams that ended badly
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
    unpriced_requests: int = 0

    def merge(self, other: Tally) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cached_tokens += other.cached_tokens
        self.cost += other.cost
        self.unpriced_requests += other.unpriced_requests

    @classmethod
    def of(cls, record: RequestRecord) -> Tally:
        """One request's counts."""
        usage = record.usage
        return cls(
            requests=1,
            errors=int(record.status >= 400 or record.stream_error is not None),
            input_tokens=_count(usage.input_tokens),
            output_tokens=_count(usage.output_tokens),
            cached_tokens=_count(usage.cached_tokens),
            cost=record.cost if record.cost is not None and math.isfinite(record.cost) else 0.0,
            unpriced_requests=int(record.cost is None and usage.reported),
        )

    @classmethod
    def from_values(cls, values: list[object]) -> Tally:
        """Counts as stored (``COUNT_COLUMNS`` order); ValueError unless non-negative finite numbers."""
        *ints, cost_value, unpriced = values
        counts = [*ints, unpriced]
        if any(type(v) is not int or v < 0 for v in counts):
            raise ValueError("counts must be non-negative integers")
        if type(cost_value) not in (int, float) or not 0 <= cost_value < math.inf:  # type: ignore[operator]
            raise ValueError("cost must be a non-negative finite number")
        return cls(*ints, float(cost_value), unpriced)  # type: ignore[arg-type]


Days = dict[str, dict[RowKey, Tally]]


def merge_days(parts: Iterable[Days]) -> Days:
    """The sum of several processes' counts (new tallies: the parts are left as they are)."""
    total: Days = {}
    for days in parts:
        for day, rows in days.items():
            into = total.setdefault(day, {})
            for key, tally in rows.items():
                row = into.get(key)
                if row is None:
                    into[key] = replace(tally)
                else:
                    row.merge(tally)
    return total


def decode_usage(raw: bytes) -> tuple[float, Days]:
    """``(written_at, days)`` of a usage document; ValueError when it is not one."""
    doc = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION or doc.get("columns") != list(COLUMNS):
        raise ValueError(f"not a version {FORMAT_VERSION} usage document")
    written_at, stored_days = doc.get("written_at"), doc.get("days")
    if type(written_at) not in (int, float) or not isinstance(stored_days, dict):
        raise ValueError("written_at or days missing")
    days: Days = {}
    for day, rows in stored_days.items():
        parse_day(day)
        if not isinstance(rows, list):
            raise ValueError(f"rows of {day} are not a list")
        decoded: dict[RowKey, Tally] = {}
        for row in rows:
            if not isinstance(row, list) or len(row) != len(COLUMNS):
                raise ValueError(f"a row of {day} does not have {len(COLUMNS)} columns")
            gateway_id, key_id, target_id, model = row[:len(KEY_COLUMNS)]
            if not isinstance(gateway_id, str) or not all(v is None or isinstance(v, str)
                                                          for v in (key_id, target_id, model)):
                raise ValueError(f"a row of {day} has a non-string id")
            decoded[(gateway_id, key_id, target_id, model)] = Tally.from_values(row[len(KEY_COLUMNS):])
        days[day] = decoded
    return float(written_at), days


def _encode_rows(rows: Iterable[list[object]]) -> bytes:
    return json.dumps(list(rows), separators=(",", ":"), allow_nan=False).encode("utf-8")


def _row(key: RowKey, tally: Tally) -> list[object]:
    return [*key, tally.requests, tally.errors, tally.input_tokens, tally.output_tokens, tally.cached_tokens,
            tally.cost, tally.unpriced_requests]


def _count(value: int) -> int:
    """A reported token count as stored: anything but a positive int (a provider-layer bug) counts as 0, so the
    file always stays loadable."""
    return value if type(value) is int and value > 0 else 0


def _model_label(model: str | None) -> str | None:
    return model[:MAX_MODEL_LENGTH] if isinstance(model, str) else None


class UsageBook:
    """The proxy's usage counts: ``add`` from the event loop, ``start``/``stop`` the flusher thread.

    Thread-safe: ``add`` holds a lock for a dict update; ``flush`` holds it only to copy the days changed since the
    last flush (encoded days are cached, so a flush encodes today's rows, not the whole history).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        interval: float = DEFAULT_FLUSH_INTERVAL_S,
        durable_interval: float = DEFAULT_DURABLE_INTERVAL_S,
        retain_days: int = DEFAULT_RETAIN_DAYS,
        max_rows_per_day: int = MAX_ROWS_PER_DAY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval <= 0 or durable_interval <= 0 or retain_days < 1 or max_rows_per_day < 1:
            raise ValueError("interval and durable_interval must be > 0, retain_days and max_rows_per_day >= 1")
        self.path = os.fspath(path)
        self.interval = interval
        self.durable_interval = durable_interval
        self.retain_days = retain_days
        self.max_rows_per_day = max_rows_per_day
        self._clock = clock
        self._lock = threading.Lock()  # guards _days and _dirty
        self._flush_lock = threading.Lock()  # one flush at a time; guards _encoded and _unsynced
        self._days: Days = {}
        self._dirty: set[str] = set()  # days changed (or dropped) since the last flush
        self._encoded: dict[str, bytes] = {}  # the last flushed rows of each day, as JSON
        self._unsynced = False  # the file on disk was written without fsync
        self._last_durable = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._load()

    # -- the request path ---------------------------------------------------------------------------------------
    def add(self, record: RequestRecord) -> None:
        """Count one finished request (ignored without a gateway: nobody to bill). Never does I/O."""
        if record.gateway_id is None:
            return
        try:
            day = utc_day(record.started)
        except (ValueError, OverflowError, OSError):  # a nonsensical start time: count it on the current day
            day = utc_day(self._clock())
        tally = Tally.of(record)
        key: RowKey = (record.gateway_id, record.key_id, record.target_id,
                       _model_label(record.served_model or record.requested_model))
        with self._lock:
            rows = self._days.setdefault(day, {})
            row = rows.get(key)
            if row is None and len(rows) >= self.max_rows_per_day:
                key = (*key[:3], OTHER_MODEL)
                row = rows.get(key)
            if row is None:
                row = rows[key] = Tally()
            row.merge(tally)
            self._dirty.add(day)

    def totals(self) -> Days:
        """A copy of the counts (for tests and diagnostics)."""
        with self._lock:
            return {day: {key: replace(t) for key, t in rows.items()} for day, rows in self._days.items()}

    # -- persistence --------------------------------------------------------------------------------------------
    def flush(self, *, durable: bool = False) -> bool:
        """Write the book if anything changed since the last flush (``durable``: also when the last write was not
        fsynced, and fsync this one). Returns whether it wrote. Raises OSError; the changes stay pending then."""
        with self._flush_lock:
            with self._lock:
                self._prune_locked()
                changed = {day: [_row(k, t) for k, t in self._days[day].items()] if day in self._days else None
                           for day in self._dirty}
                self._dirty.clear()
            if not changed and not (durable and self._unsynced):
                return False
            encoded = {day: rows for day, rows in self._encoded.items() if day not in changed}
            encoded.update((day, _encode_rows(rows)) for day, rows in changed.items() if rows is not None)
            try:
                atomic_write_bytes(self.path, self._document(encoded), durable=durable)
            except BaseException:
                with self._lock:
                    self._dirty.update(changed)  # the next flush retries these days
                raise
            self._encoded = encoded
            self._unsynced = not durable
            if durable:
                self._last_durable = self._clock()
            return True

    def _document(self, encoded: dict[str, bytes]) -> bytes:
        head = json.dumps({"version": FORMAT_VERSION, "written_at": self._clock(), "columns": list(COLUMNS)},
                          separators=(",", ":"))
        days = b",".join(json.dumps(day).encode("ascii") + b":" + rows for day, rows in sorted(encoded.items()))
        return head[:-1].encode("utf-8") + b',"days":{' + days + b"}}"

    def _prune_locked(self) -> None:
        oldest = (datetime.fromtimestamp(self._clock(), timezone.utc).date()
                  - timedelta(days=self.retain_days - 1)).isoformat()
        for day in [day for day in self._days if day < oldest]:
            del self._days[day]
            self._dirty.add(day)

    def _load(self) -> None:
        self._remove_orphans()
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            log.info("aigw: no usage file at %s yet; counting from zero", self.path)
            return
        except OSError as exc:
            log.warning("aigw: cannot read the usage file %s (%s); counting from zero", self.path, exc)
            return
        try:
            _, self._days = decode_usage(raw)
        except (ValueError, RecursionError) as exc:
            kept = self.path + ".corrupt"
            try:
                os.replace(self.path, kept)  # keep it for a person to look at; the next flush starts afresh
            except OSError:
                kept = "not kept"
            log.warning("aigw: the usage file %s is unreadable (%s; %s); counting from zero", self.path, exc, kept)
            return
        self._encoded = {day: _encode_rows(_row(k, t) for k, t in rows.items()) for day, rows in self._days.items()}
        with self._lock:
            self._prune_locked()

    def _remove_orphans(self) -> None:
        """Delete temp files of a flush killed mid-write (this book is the file's only writer)."""
        directory, prefix = os.path.dirname(os.path.abspath(self.path)), temp_prefix(self.path)
        with contextlib.suppress(OSError):  # no directory (yet): nothing to clean
            for name in [name for name in os.listdir(directory) if name.startswith(prefix)]:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))

    # -- the flusher thread -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Flush every ``interval`` seconds from a daemon thread (idempotent)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="aigw-usage-flush", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and write what is pending, fsynced (a clean stop loses nothing). Never raises."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=10)
        self._flush_logged(durable=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._flush_logged(durable=self._clock() - self._last_durable >= self.durable_interval)

    def _flush_logged(self, *, durable: bool) -> None:
        try:
            self.flush(durable=durable)
        except Exception as exc:
            if not self._failing:  # once per outage, not once a second
                log.warning("aigw: cannot write usage to %s: %s (counts are kept in memory)", self.path, exc)
            self._failing = True
        else:
            if self._failing:
                log.info("aigw: writing usage to %s again", self.path)
            self._failing = False
