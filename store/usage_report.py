"""Reading the usage file the proxy writes (store/usage.py) and answering the admin API's questions about it:
one key's usage per day, and a gateway's usage grouped by key, target, model or day, over an inclusive range of
UTC days. Pure apart from reading the file; no Flask."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from .fields import format_rfc3339
from .usage import Days, Tally, decode_usage

log = logging.getLogger("aigw.usage")

GroupBy = Literal["key", "target", "model", "day"]
GROUP_BY: tuple[str, ...] = get_args(GroupBy)
#: Costs are sums of floats: shown rounded to a millionth of the currency unit (no 0.30000000000000004).
COST_DIGITS = 6


@dataclass(frozen=True)
class UsageData:
    """What a usage file held: when it was written (None: no file) and its rows per day."""

    written_at: float | None = None
    days: Days = field(default_factory=dict)


def load_usage(path: str | os.PathLike[str] | None) -> UsageData:
    """The usage file at ``path``; empty when there is none, or it is not a usage document (logged)."""
    if path is None:
        return UsageData()
    try:
        with open(os.fspath(path), "rb") as handle:
            return _parse(os.fspath(path), handle.read())
    except OSError:
        return UsageData()


def _parse(path: str, raw: bytes) -> UsageData:
    try:
        written_at, days = decode_usage(raw)
    except (ValueError, RecursionError) as exc:
        log.warning("aigw: the usage file %s is unreadable (%s); showing no usage", path, exc)
        return UsageData()
    return UsageData(written_at, days)


class UsageReader:
    """:func:`load_usage` that parses the file again only when it was replaced (the proxy rewrites it at most once
    a second; a year of rows is megabytes of JSON). Thread-safe."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = os.fspath(path) if path is not None else None
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, int, int], UsageData] | None = None

    def read(self) -> UsageData:
        if self.path is None:
            return UsageData()
        try:
            with open(self.path, "rb") as handle:
                stat = os.fstat(handle.fileno())  # of the file opened, even if it is replaced meanwhile
                signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
                with self._lock:
                    if self._cached is not None and self._cached[0] == signature:
                        return self._cached[1]
                data = _parse(self.path, handle.read())
        except OSError:
            return UsageData()
        with self._lock:
            self._cached = (signature, data)
        return data


# ----------------------------------------------------------------------------------------------------------------
# Report shapes (also the admin API's response schema)
# ----------------------------------------------------------------------------------------------------------------


class UsageCounts(BaseModel):
    requests: int = 0
    errors: int = Field(default=0, description="Answers with status >= 400, and streams that ended badly")
    input_tokens: int = Field(default=0, description="Everything the models read, cached tokens included")
    output_tokens: int = 0
    cached_tokens: int = Field(default=0, description="Of input_tokens, read from the provider's prompt cache")
    cost: float = Field(default=0.0, description="Estimated from the serving targets' pricing, in currency")
    unpriced_requests: int = Field(
        default=0, description="Requests with reported tokens whose target has no pricing: not in cost"
    )

    @classmethod
    def of(cls, tally: Tally) -> UsageCounts:
        return cls(requests=tally.requests, errors=tally.errors, input_tokens=tally.input_tokens,
                   output_tokens=tally.output_tokens, cached_tokens=tally.cached_tokens,
                   cost=round(tally.cost, COST_DIGITS), unpriced_requests=tally.unpriced_requests)


class UsageGroup(UsageCounts):
    group: str | None = Field(description="The key id, target id, model or day (YYYY-MM-DD) of this row; null "
                                          "when the requests had none (refused before a key or target was known)")


class UsageReport(BaseModel):
    """Usage over ``from``..``to`` (UTC days, inclusive): totals, and one row per group."""

    model_config = ConfigDict(populate_by_name=True)

    gateway_id: str
    key_id: str | None = Field(default=None, description="Set for a key's usage")
    group_by: GroupBy
    from_: str = Field(alias="from", description="First day, YYYY-MM-DD (UTC)")
    to: str = Field(description="Last day, YYYY-MM-DD (UTC), inclusive")
    currency: Literal["USD"] = "USD"
    as_of: str | None = Field(description="When the proxy last wrote its usage (RFC 3339); null: never")
    totals: UsageCounts
    groups: list[UsageGroup] = Field(description="Days in order; other groups by requests, most first")


# ----------------------------------------------------------------------------------------------------------------
# Queries
# ----------------------------------------------------------------------------------------------------------------


def gateway_usage(data: UsageData, gateway_id: str, group_by: GroupBy, start: date, end: date) -> UsageReport:
    """A gateway's usage over ``start``..``end`` (inclusive), grouped by ``group_by``."""
    return _report(data, gateway_id, None, group_by, start, end)


def key_usage(data: UsageData, gateway_id: str, key_id: str, start: date, end: date) -> UsageReport:
    """One key's usage over ``start``..``end`` (inclusive), per day."""
    return _report(data, gateway_id, key_id, "day", start, end)


def _report(data: UsageData, gateway_id: str, key_id: str | None, group_by: GroupBy, start: date,
            end: date) -> UsageReport:
    first, last = start.isoformat(), end.isoformat()
    totals = Tally()
    groups: dict[str | None, Tally] = {}
    for day, rows in data.days.items():
        if not first <= day <= last:
            continue
        for (row_gateway, row_key, row_target, row_model), tally in rows.items():
            if row_gateway != gateway_id or (key_id is not None and row_key != key_id):
                continue
            group = {"key": row_key, "target": row_target, "model": row_model, "day": day}[group_by]
            groups.setdefault(group, Tally()).merge(tally)
            totals.merge(tally)
    if group_by == "day":
        order = sorted(groups, key=lambda g: g or "")
    else:
        order = sorted(groups, key=lambda g: (-groups[g].requests, g is None, g or ""))
    as_of = format_rfc3339(datetime.fromtimestamp(data.written_at, timezone.utc)) if data.written_at else None
    return UsageReport(
        gateway_id=gateway_id, key_id=key_id, group_by=group_by, from_=first, to=last, as_of=as_of,
        totals=UsageCounts.of(totals),
        groups=[UsageGroup(group=g, **UsageCounts.of(groups[g]).model_dump()) for g in order],
    )
