"""The proxy's published health: how the admin API (maybe another process) learns what the data plane sees.

The proxy keeps health in memory and, twice a second, writes the whole picture to ``<data>.health.json`` with an
atomic replace; the admin API reads it on demand. Document shape (see docs/CONTRACTS.md)::

    {"written_at": <epoch float>, "pid": int,
     "targets": {"<upstream_id>/<target_id>": {"state": "closed" | "open" | "half_open",
                 "consecutive_failures": int, "last_error": str | None, "last_error_at": rfc3339 | None,
                 "cooldown_remaining_s": float, "ewma_ttfb_ms": float | None, "in_flight": int,
                 "requests": int, "failures": int}}}
"""

from __future__ import annotations

import json
import os
from typing import Any

from .atomic import atomic_write_bytes

HEALTH_SUFFIX = ".health.json"


def health_path_for(store_path: str | os.PathLike[str]) -> str:
    """Where the proxy publishes health for the store at ``store_path`` (``db.json`` -> ``db.json.health.json``)."""
    return os.fspath(store_path) + HEALTH_SUFFIX


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
