"""The proxy's published health: how the admin API (maybe another process) learns what the data plane sees.

The proxy keeps health in memory and, twice a second, writes the whole picture to ``<data>.health.json`` with an
atomic replace; the admin API reads it on demand. Document shape (see docs/CONTRACTS.md)::

    {"written_at": <epoch float>, "pid": int,
     "targets": {"<upstream_id>/<target_id>": {"state": "closed" | "open" | "half_open",
                 "consecutive_failures": int, "last_error": str | None, "last_error_at": rfc3339 | None,
                 "cooldown_remaining_s": float, "ewma_ttfb_ms": float | None, "in_flight": int,
                 "requests": int, "failures": int}}}

With several proxy worker processes (``aigw up --workers N``) worker ``<id>`` writes ``<data>.health.<id>.json``
(store/workers.py); :func:`read_all_health` reads them all and :func:`merge_health` makes the one picture the admin
API shows: per target the worst state (open > half_open > closed) across the fresh documents, counters summed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from .atomic import atomic_write_bytes
from .workers import side_files, side_path

HEALTH_SUFFIX = ".health.json"


def health_path_for(store_path: str | os.PathLike[str], worker: str | None = None) -> str:
    """Where the proxy publishes health for the store at ``store_path`` (``db.json`` -> ``db.json.health.json``;
    worker ``w1`` of several: ``db.json.health.w1.json``)."""
    return side_path(os.fspath(store_path) + HEALTH_SUFFIX, worker)


def target_key(upstream_id: str, target_id: str) -> str:
    """Key of one target in ``doc["targets"]``."""
    return f"{upstream_id}/{target_id}"


def write_health(path: str | os.PathLike[str], doc: dict[str, Any]) -> None:
    """Publish ``doc`` atomically. Not fsynced: it is rewritten twice a second and worthless after a crash."""
    atomic_write_bytes(os.fspath(path), json.dumps(doc, separators=(",", ":")).encode("utf-8"), durable=False)


def read_health(path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The last published document, or ``None`` when there is none or it is not a health document."""
    if path is None:
        return None
    try:
        with open(os.fspath(path), "rb") as handle:
            doc = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("targets"), dict):
        return None
    if not isinstance(doc.get("written_at"), (int, float)):
        return None
    return doc


def read_all_health(path: str | os.PathLike[str] | None) -> dict[str | None, dict[str, Any]]:
    """The health documents of the single-process file ``path`` (key None) and of every worker (key: its id)."""
    if path is None:
        return {}
    docs = {worker: read_health(file) for worker, file in side_files(path).items()}
    return {worker: doc for worker, doc in docs.items() if doc is not None}


#: How bad a circuit state is, for the merge: the worst one across workers is shown.
STATE_RANK = {"closed": 0, "half_open": 1, "open": 2}
#: Per-target counters that add up across workers (each counts its own requests).
SUMMED_FIELDS = ("in_flight", "requests", "failures")


def merge_health(docs: Sequence[dict[str, Any]], *, fresh_within: float) -> dict[str, Any] | None:
    """One health document from several processes' (``read_health`` results), None when there are none.

    Documents written more than ``fresh_within`` seconds before the newest one are left out (a retired worker's
    or an earlier single-process run's file). Per target: the entry with the worst state (ties: the newest
    document's), its ``SUMMED_FIELDS`` summed over the workers, and the most recent ``last_error``."""
    if not docs:
        return None
    newest = max(doc["written_at"] for doc in docs)
    fresh = sorted((doc for doc in docs if newest - doc["written_at"] <= fresh_within),
                   key=lambda doc: doc["written_at"], reverse=True)
    targets: dict[str, dict[str, Any]] = {}
    for key in dict.fromkeys(key for doc in fresh for key in doc["targets"]):
        entries = [doc["targets"][key] for doc in fresh
                   if key in doc["targets"] and isinstance(doc["targets"][key], dict)]
        if not entries:
            continue
        merged = dict(max(entries, key=lambda e: STATE_RANK.get(e.get("state"), -1)))  # max keeps the first tie
        for name in SUMMED_FIELDS:
            values = [e[name] for e in entries if type(e.get(name)) is int]
            if values:
                merged[name] = sum(values)
        errors = [e for e in entries if isinstance(e.get("last_error_at"), str)]
        if errors:
            latest = max(errors, key=lambda e: e["last_error_at"])  # RFC 3339 UTC: text order is time order
            merged["last_error"], merged["last_error_at"] = latest.get("last_error"), latest["last_error_at"]
        targets[key] = merged
    return {"written_at": newest, "pid": fresh[0].get("pid"), "workers": len(fresh), "targets": targets}
