"""``/api/v1/gateways/{gid}/usage`` (grouped by key, target, model or day) and ``…/keys/{kid}/usage`` (per day):
tokens and estimated cost, from the usage file the proxy writes (store/usage.py; it may run in another process),
or the sum of every worker's file under ``aigw up --workers N`` (:class:`MergedUsageReader`).

Ranges are UTC days, ``from`` and ``to`` inclusive: by default the last 30 days up to today; ``from`` alone runs to
today, ``to`` alone covers the 30 days ending on it; at most 366 days.
"""

from __future__ import annotations

import os
import threading
from datetime import date, datetime, timedelta, timezone
from typing import cast

from flask import Blueprint, Response, current_app, jsonify, request

from store.usage import merge_days, parse_day, usage_files
from store.usage_report import GROUP_BY, GroupBy, UsageData, UsageReader, UsageReport, gateway_usage, key_usage

from .crud import API_PREFIX
from .errors import ApiError
from .inputs import get_store

USAGE_PATH_CONFIG = "AIGW_USAGE_PATH"
_READER_EXTENSION = "aigw.usage_reader"
DEFAULT_RANGE_DAYS = 30
MAX_RANGE_DAYS = 366
DEFAULT_GROUP_BY: GroupBy = "key"
GATEWAY_USAGE_RULE = "/gateways/<gateway_id>/usage"
KEY_USAGE_RULE = "/gateways/<gateway_id>/keys/<key_id>/usage"

bp = Blueprint("usage", __name__, url_prefix=API_PREFIX)


@bp.get(GATEWAY_USAGE_RULE)
def gateway_usage_view(gateway_id: str) -> Response:
    get_store().get("gateways", gateway_id)
    group_by = _group_by()
    start, end = day_range()
    return _answer(gateway_usage(_reader().read(), gateway_id, group_by, start, end))


@bp.get(KEY_USAGE_RULE)
def key_usage_view(gateway_id: str, key_id: str) -> Response:
    get_store().get("keys", key_id, gateway_id=gateway_id)  # 404 for an unknown gateway, too
    start, end = day_range()
    return _answer(key_usage(_reader().read(), gateway_id, key_id, start, end))


def _answer(report: UsageReport) -> Response:
    return jsonify(report.model_dump(mode="json", by_alias=True))


class MergedUsageReader:
    """The single-process usage file and every worker's (store/usage.py ``usage_files``), summed. Each file is
    parsed again only when it was replaced (``UsageReader``), and the sum only when one of them was. Thread-safe."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = os.fspath(path) if path is not None else None
        self._lock = threading.Lock()
        self._readers: dict[str, UsageReader] = {}
        self._merged: tuple[list[UsageData], UsageData] | None = None  # (the parts summed, their sum)

    def read(self) -> UsageData:
        if self.path is None:
            return UsageData()
        with self._lock:
            readers = [self._readers.setdefault(file, UsageReader(file)) for file in usage_files(self.path)]
        parts = [reader.read() for reader in readers]  # the same object again until its file changes
        with self._lock:
            cached = self._merged
            if cached is not None and len(cached[0]) == len(parts) and all(
                    a is b for a, b in zip(cached[0], parts)):
                return cached[1]
        written = [part.written_at for part in parts if part.written_at is not None]
        if len(parts) == 1:
            data = parts[0]
        else:
            data = UsageData(max(written) if written else None, merge_days(part.days for part in parts))
        with self._lock:
            self._merged = (parts, data)
        return data


def _reader() -> MergedUsageReader:
    """One reader per app (it caches the parsed files): made on first use, over the configured path."""
    reader = current_app.extensions.get(_READER_EXTENSION)
    if reader is None:
        reader = current_app.extensions.setdefault(
            _READER_EXTENSION, MergedUsageReader(current_app.config.get(USAGE_PATH_CONFIG))
        )
    return cast(MergedUsageReader, reader)


def _bad_query(name: str, message: str) -> ApiError:
    return ApiError(400, message, [{"loc": f"query.{name}", "msg": message}])


def _group_by() -> GroupBy:
    raw = request.args.get("group_by", DEFAULT_GROUP_BY)
    if raw not in GROUP_BY:
        raise _bad_query("group_by", f"group_by must be one of {', '.join(GROUP_BY)}")
    return cast(GroupBy, raw)


def _day_arg(name: str) -> date | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return parse_day(raw)
    except ValueError:
        raise _bad_query(name, f"{name} must be a UTC day YYYY-MM-DD, e.g. 2026-01-31") from None


def day_range(today: date | None = None) -> tuple[date, date]:
    """The request's ``from``/``to`` with the defaults applied; 400 naming the parameter when they are wrong."""
    start, end = _day_arg("from"), _day_arg("to")
    if end is None:
        end = today or datetime.now(timezone.utc).date()
    if start is None:
        start = end - timedelta(days=DEFAULT_RANGE_DAYS - 1)
    if start > end:
        raise _bad_query("from", f"from ({start}) is after to ({end})")
    if (end - start).days + 1 > MAX_RANGE_DAYS:
        raise _bad_query("to", f"from..to spans {(end - start).days + 1} days; at most {MAX_RANGE_DAYS}")
    return start, end
