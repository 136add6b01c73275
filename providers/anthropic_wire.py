"""Anthropic Messages wire vocabulary, shared by the client side (anthropic_client.py), the backend side
(anthropic_backend.py) and the pass-through (anthropic_passthrough.py): finish reasons, tool ids, usage
objects and error objects."""
from __future__ import annotations

import re
from typing import Any

from .canonical import ThinkingPart, Usage, dumps, token_counts
from .errors import ANTHROPIC_TYPE, ANTHROPIC_TYPE_TO_KIND, DEFAULT_STATUS, GatewayError

# max_tokens when neither the client nor the target gives one: Anthropic requires the field.
DEFAULT_MAX_TOKENS = 4096

# Anthropic's smallest thinking budget_tokens.
MIN_THINKING_BUDGET = 1024
# The block types that carry a model's reasoning.
THINKING_BLOCKS = ("thinking", "redacted_thinking")

FINISH_IN = {"end_turn": "stop", "max_tokens": "length", "stop_sequence": "stop_sequence",
             "tool_use": "tool_calls", "pause_turn": "pause_turn", "refusal": "refusal",
             "model_context_window_exceeded": "context_exceeded"}
FINISH_OUT = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
              "content_filter": "refusal", "stop_sequence": "stop_sequence", "refusal": "refusal",
              "pause_turn": "pause_turn", "context_exceeded": "model_context_window_exceeded"}

_BAD_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


def safe_tool_id(tool_id: str) -> str:
    """Anthropic requires ^[a-zA-Z0-9_-]+$ (§4.7-9); rewriting is deterministic so a call and its
    result, translated separately, still match."""
    if not tool_id:
        return "toolu_empty"
    return _BAD_ID_CHARS.sub("_", tool_id)


def thinking_block(p: ThinkingPart) -> dict | None:
    """A ThinkingPart as the block Anthropic takes back: `redacted_thinking` with its data, `thinking` with its
    signature; None for reasoning without a signature (another family's), which Anthropic refuses."""
    if p.redacted is not None:
        return {"type": "redacted_thinking", "data": p.redacted}
    if p.signature:
        return {"type": "thinking", "thinking": p.text, "signature": p.signature}
    return None


def thinking_part(b: dict) -> ThinkingPart | None:
    """A `thinking` / `redacted_thinking` block of an answer → ThinkingPart; None for another block."""
    if b.get("type") == "thinking" and isinstance(b.get("thinking"), str):
        sig = b.get("signature")
        return ThinkingPart(b["thinking"], signature=sig if isinstance(sig, str) and sig else None)
    if b.get("type") == "redacted_thinking" and isinstance(b.get("data"), str):
        return ThinkingPart(redacted=b["data"])
    return None


_USAGE_KEYS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def usage_from(u: Any, prev: Usage | None = None) -> Usage | None:
    """A `usage` object → canonical, its counts merged over `prev` (a stream reports input tokens in
    message_start, output tokens in message_delta). `prev` (None: nothing reported) when `u` has no count or a
    malformed one."""
    counts = token_counts(u, _USAGE_KEYS) if isinstance(u, dict) else None
    if counts is None or counts == [None, None, None, None]:
        return prev
    inp, out, cr, cw = counts
    prev = prev or Usage()
    cache_read = prev.cache_read if cr is None else cr
    cache_write = prev.cache_write if cw is None else cw
    uncached = prev.uncached_input if inp is None else inp
    return Usage(prompt_tokens=uncached + cache_read + cache_write,
                 completion_tokens=prev.completion_tokens if out is None else out,
                 cache_read=cache_read, cache_write=cache_write)


def usage_obj(u: Usage) -> dict:
    out: dict[str, Any] = {"input_tokens": u.uncached_input, "output_tokens": u.completion_tokens}
    if u.cache_read:
        out["cache_read_input_tokens"] = u.cache_read
    if u.cache_write:
        out["cache_creation_input_tokens"] = u.cache_write
    return out


def error_obj(err: GatewayError) -> dict:
    return {"type": "error", "error": {"type": ANTHROPIC_TYPE[err.kind], "message": err.message}}


def error_event(err: GatewayError) -> bytes:
    """The stream's `error` event; nothing may follow it."""
    return b"event: error\ndata: " + dumps(error_obj(err)) + b"\n\n"


def event_error(obj: Any) -> GatewayError:
    """An `error` stream event → GatewayError."""
    err = obj.get("error") if isinstance(obj, dict) else None
    err = err if isinstance(err, dict) else {}
    etype = err.get("type") if isinstance(err.get("type"), str) else "api_error"
    kind = ANTHROPIC_TYPE_TO_KIND.get(etype, "api_error")
    return GatewayError(DEFAULT_STATUS[kind], kind, str(err.get("message") or "upstream stream error"),
                        upstream_type=etype)
