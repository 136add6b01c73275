"""OpenAI Responses API wire vocabulary, shared by the client side (responses_client.py), the stream side
(responses_stream.py) and the pass-through (responses_passthrough.py): usage objects, finish reasons ↔ status,
the `response` object every answer and lifecycle event carries, output items and the stream's events.

Field names and required fields follow the openai SDK's `openai.types.responses` models (the ground truth).
"""
from __future__ import annotations

from typing import Any

from .canonical import CanonicalRequest, Usage, dumps, token_counts
from .errors import GatewayError
from .openai_wire import error_obj

INGRESS = "openai-responses"

# Canonical finish reason → `incomplete_details.reason` of a response that stopped early (others are completed).
INCOMPLETE_REASON = {"length": "max_output_tokens", "context_exceeded": "max_output_tokens",
                     "content_filter": "content_filter"}
# `incomplete_details.reason` → canonical finish reason (reading a Responses answer).
FINISH_OF_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}

# The request fields a response object repeats back, with the API's defaults when the client sent none.
_ECHO_DEFAULTS: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0, "parallel_tool_calls": True,
                                  "tool_choice": "auto", "max_output_tokens": None, "user": None,
                                  "instructions": None}


def usage_obj(u: Usage) -> dict:
    """Canonical usage → a Responses `usage` object (every field `ResponseUsage` requires)."""
    return {"input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cache_read, "cache_write_tokens": u.cache_write},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": u.reasoning or 0},
            "total_tokens": u.total}


def usage_from(u: Any) -> Usage | None:
    """A Responses `usage` object → canonical; None when there is none or a count is malformed."""
    if not isinstance(u, dict):
        return None
    top = token_counts(u, ("input_tokens", "output_tokens"))
    itd, otd = u.get("input_tokens_details"), u.get("output_tokens_details")
    cached = token_counts(itd, ("cached_tokens", "cache_write_tokens")) if isinstance(itd, dict) else [None, None]
    reasoning = token_counts(otd, ("reasoning_tokens",)) if isinstance(otd, dict) else [None]
    if top is None or cached is None or reasoning is None or top == [None, None]:
        return None
    return Usage(prompt_tokens=top[0] or 0, completion_tokens=top[1] or 0, cache_read=cached[0] or 0,
                 cache_write=cached[1] or 0, reasoning=reasoning[0])


def status_of(finish: str) -> tuple[str, dict | None]:
    """(status, incomplete_details) of a response that ended for the canonical `finish` reason."""
    reason = INCOMPLETE_REASON.get(finish)
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def _echo_tools(raw: dict) -> list:
    """The request's tools as the response repeats them (function tools in the flat Responses form)."""
    out = []
    for t in raw.get("tools") or ():
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str):
            out.append({"type": "function", "name": t["name"], "description": t.get("description"),
                        "parameters": t.get("parameters") if isinstance(t.get("parameters"), dict) else None,
                        "strict": t.get("strict") if isinstance(t.get("strict"), bool) else None})
    return out


def response_object(req: CanonicalRequest, *, id: str, created_at: int, model: str, status: str,
                    output: list, usage: Usage | None, incomplete: dict | None = None) -> dict:
    """A complete `response` object (openai.types.responses.Response) for an answer made through the hub.
    The hub keeps no state, so `store` is false and `previous_response_id` null."""
    raw = req.raw
    echo = {k: raw.get(k, d) if raw.get(k) is not None else d for k, d in _ECHO_DEFAULTS.items()}
    text_cfg = raw.get("text") if isinstance(raw.get("text"), dict) else {}
    fmt = text_cfg.get("format") if isinstance(text_cfg.get("format"), dict) else {"type": "text"}
    reasoning = raw.get("reasoning") if isinstance(raw.get("reasoning"), dict) else {}
    tool_choice = echo["tool_choice"]
    if not isinstance(tool_choice, (str, dict)):
        tool_choice = "auto"
    out: dict[str, Any] = {
        "id": id, "object": "response", "created_at": created_at, "status": status, "background": False,
        "error": None, "incomplete_details": incomplete, "instructions": echo["instructions"],
        "max_output_tokens": echo["max_output_tokens"], "max_tool_calls": None, "model": model, "output": output,
        "parallel_tool_calls": echo["parallel_tool_calls"], "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "service_tier": "default", "store": False, "temperature": echo["temperature"],
        "text": {"format": fmt, "verbosity": text_cfg.get("verbosity") or "medium"},
        "tool_choice": tool_choice, "tools": _echo_tools(raw), "top_p": echo["top_p"], "truncation": "disabled",
        "usage": usage_obj(usage) if usage is not None else None, "user": echo["user"],
        "metadata": raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {},
    }
    return out


# ---------------------------------------------------------------- output items
def message_item(item_id: str, content: list, status: str = "completed") -> dict:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def text_content(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def refusal_content(text: str) -> dict:
    return {"type": "refusal", "refusal": text}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


# ---------------------------------------------------------------- events
def event(obj: dict) -> bytes:
    """One Responses stream event: the `event:` line names its type, as OpenAI sends it."""
    return b"event: " + obj["type"].encode() + b"\ndata: " + dumps(obj) + b"\n\n"


def error_event(err: GatewayError, sequence_number: int) -> bytes:
    """The stream's `error` event (ResponseErrorEvent): nothing follows it."""
    e = error_obj(err)
    return event({"type": "error", "code": e["code"] or e["type"], "message": e["message"], "param": e["param"],
                  "sequence_number": sequence_number})


def error_body(err: GatewayError) -> bytes:
    """An error answer in OpenAI's shape (the Responses API answers errors as Chat Completions does)."""
    return dumps({"error": error_obj(err)})
