"""OpenAI Chat Completions wire vocabulary, shared by the client side (openai_client.py), the backend side
(openai_backend.py) and the pass-through (openai_passthrough.py): finish reasons, usage objects, error objects
and the events of a stream."""
from __future__ import annotations

from typing import Any

from .canonical import Usage, dumps, token_counts
from .errors import ANTHROPIC_TYPE_TO_KIND, GatewayError

FINISH_LITERALS = frozenset(("stop", "length", "tool_calls", "content_filter", "function_call"))

# upstream finish_reason → canonical. Unknown values (DeepSeek "insufficient_system_resource", ...)
# mean the model was cut short by the server, which the client should see as truncation.
FINISH_IN = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls",
             "content_filter": "content_filter", "insufficient_system_resource": "length"}
FINISH_OUT = {"stop": "stop", "length": "length", "tool_calls": "tool_calls",
              "content_filter": "content_filter", "stop_sequence": "stop", "refusal": "content_filter",
              "pause_turn": "stop", "context_exceeded": "length"}

# OpenAI-format `type`/`code` for errors the gateway itself produces (or that arrive without a type).
OPENAI_TYPE = {
    "invalid_request": "invalid_request_error", "authentication": "authentication_error",
    "permission": "permission_error", "not_found": "invalid_request_error",
    "request_too_large": "invalid_request_error", "rate_limit": "rate_limit_error",
    "overloaded": "overloaded_error", "api_error": "server_error", "timeout": "timeout_error",
    "unavailable": "service_unavailable_error",
}
OPENAI_CODE = {"authentication": "invalid_api_key", "rate_limit": "rate_limit_exceeded"}


def error_obj(err: GatewayError) -> dict:
    etype = err.upstream_type if err.upstream_type and not err.upstream_type.isupper() else OPENAI_TYPE[err.kind]
    code = err.code or OPENAI_CODE.get(err.kind)
    if code is None and err.kind == "not_found" and "model" in err.message.lower():
        code = "model_not_found"  # what OpenAI itself answers; clients key on it
    return {"message": err.message, "type": etype, "param": err.param, "code": code}


def error_event(err: GatewayError) -> bytes:
    """The stream's error event. The openai SDK raises APIError for any data line whose JSON has a truthy
    `error` (§5.1); nothing may follow it, not even [DONE]."""
    return b"data: " + dumps({"error": error_obj(err)}) + b"\n\n"


def usage_from(u: Any) -> Usage | None:
    """A `usage` object → canonical; None when there is none, it has no token count, or a count is malformed."""
    if not isinstance(u, dict):
        return None
    ptd, ctd = u.get("prompt_tokens_details"), u.get("completion_tokens_details")
    top = token_counts(u, ("prompt_tokens", "completion_tokens"))
    cached = token_counts(ptd, ("cached_tokens", "cache_write_tokens")) if isinstance(ptd, dict) else [None, None]
    reasoning = token_counts(ctd, ("reasoning_tokens",)) if isinstance(ctd, dict) else [None]
    if top is None or cached is None or reasoning is None or top == [None, None]:
        return None
    return Usage(prompt_tokens=top[0] or 0, completion_tokens=top[1] or 0, cache_read=cached[0] or 0,
                 cache_write=cached[1] or 0, reasoning=reasoning[0])


def usage_obj(u: Usage) -> dict:
    out: dict[str, Any] = {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                           "total_tokens": u.total, "prompt_tokens_details": {"cached_tokens": u.cache_read}}
    if u.reasoning is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": u.reasoning}
    return out


def stream_error(err: Any) -> GatewayError:
    """The `error` of an upstream stream chunk → GatewayError."""
    if isinstance(err, dict):
        msg = err.get("message") if isinstance(err.get("message"), str) else "upstream stream error"
        etype = err.get("type") if isinstance(err.get("type"), str) else None
        kind = ANTHROPIC_TYPE_TO_KIND.get(etype or "", "api_error")
        if etype in ("server_error",):
            kind = "api_error"
        elif etype in ("rate_limit_exceeded", "requests", "tokens"):
            kind = "rate_limit"
        elif etype == "service_unavailable_error":
            kind = "unavailable"
        elif etype == "timeout_error":
            kind = "timeout"
        return GatewayError(None, kind, msg, code=err.get("code") if isinstance(err.get("code"), str) else None,
                            upstream_type=etype)
    return GatewayError(None, "api_error", str(err))
