"""What the mock's modules share: provider names, JSON helpers, the streamed-answer type, number checks."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

OPENAI, ANTHROPIC, GEMINI = "openai", "anthropic", "gemini"
PROVIDERS = (OPENAI, ANTHROPIC, GEMINI)
MAX_BODY = 32 * 1024 * 1024  # Anthropic's request limit
_MISSING = object()
_BAD_JSON = object()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _rid(n: int = 12) -> str:
    return os.urandom(n).hex()


@dataclass(slots=True)
class StreamBody:
    """A streamed answer: its events (the last one is the terminal event) and the in-stream error event."""

    events: list[bytes]
    error_event: bytes
    content_type: str = "text/event-stream; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


Answer = web.StreamResponse | StreamBody


# --------------------------------------------------------------------------------------------------------------
# Shared validation helpers
# --------------------------------------------------------------------------------------------------------------


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "decimal"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def number_problem(v: Any, lo: float | None, hi: float | None, integer: bool) -> str | None:
    """None when ``v`` is a valid number in [lo, hi]; else "type", "min" or "max"."""
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
        return "type"
    if lo is not None and v < lo:
        return "min"
    if hi is not None and v > hi:
        return "max"
    return None
