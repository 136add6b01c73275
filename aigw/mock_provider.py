"""Mock AI provider: one loopback HTTP server speaking OpenAI, Anthropic and Gemini, with fault injection.

Used by the end-to-end tests, the demo and the benchmark. Each endpoint validates requests as strictly as the
real provider does (so gateway translation bugs show up as 400s) and answers with byte-shapes copied from real
recordings (tests/fixtures/*), so the real SDKs accept them under ``_strict_response_validation``.

Endpoints (one port serves all of them):

* OpenAI    ``POST /v1/chat/completions`` and any path ending in ``/chat/completions``; Azure
  ``/openai/deployments/{d}/chat/completions?api-version=…`` (``api-key`` header; 404 without api-version;
  answers carry Azure's ``prompt_filter_results``/``content_filter_results``, and streams open with the
  prompt-filter chunk: ``choices: []`` and empty ``id``/``model``/``object``).
* Anthropic ``POST /v1/messages`` (``x-api-key`` or ``Authorization: Bearer``; ``anthropic-version`` required).
* Gemini    ``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent`` (``?alt=sse`` → SSE,
  otherwise one streamed JSON array); key in ``x-goog-api-key`` or ``?key=``.
* ``GET /v1/models`` (OpenAI shape, Anthropic shape when ``anthropic-version`` is sent), ``GET /v1beta/models``,
  ``GET /healthz`` (never faulted, no auth).
* Control: ``GET /_mock/requests``, ``POST /_mock/reset``, ``GET|POST /_mock/faults``, ``GET /_mock/stats``.

Behaviour: the reply text is fixed per server (``reply``, default ``"Hello from <name>"``); its words are the
completion tokens (``max_tokens`` truncates at a word, ``stop``/``stop_sequences`` cut before the match), prompt
tokens are ``ceil(chars of prompt text / 4)``. OpenAI and Gemini cache prompts automatically: the same prompt
(messages/contents and tools) of at least 1024 tokens sent again reports its tokens, rounded down to a multiple of
128, as cached (``prompt_tokens_details.cached_tokens`` / ``cachedContentTokenCount``). A tool call is answered when tools are given and either the tool
choice forces one, or the last turn is a plain user turn whose text mentions "weather"; "parallel" in that text
gives two calls. Arguments are ``{"city": "Paris"}`` (second call ``{"city": "Rome"}``).

Fault rules (``set_faults([...])`` / ``POST /_mock/faults``), checked in order; the first live matching rule is
used and, when it has ``times``, one use is consumed::

    {"match": {"path_contains": str, "stream": bool, "provider": "openai"|"anthropic"|"gemini", "model": str},
     "times": int,                        # default: forever
     # actions (at least one; they combine in this order):
     "delay": seconds,                    # wait before anything is sent (large = hang)
     "close": true,                       # drop the TCP connection without a response
     "status": int, "retry_after": "7", "body": dict|str, "headers": {...},   # provider-shaped error
     "first_token_delay": seconds,        # headers now, first event (JSON: the body) after the wait
     "stall_after": k, "stall": seconds,  # k events, silence, then the rest (JSON: half the body, silence, rest)
     "cut_after": k,                      # k events, then drop the connection, never the terminal event
                                          #   (JSON: headers and half the body, then drop)
     "error_event_after": k,              # k events, then the provider's in-stream error, then end
     "trickle_after": k,                  # streams: k events, then bytes without any newline: `trickle_chunk`
     "trickle_chunk": n, "trickle_interval": s, "trickle_bytes": n}  # bytes (default 1) every s seconds
                                          #   (default 1), `trickle_bytes` in all (default: until the client
                                          #   leaves), then the connection is dropped
                                          #   (JSON: the provider's overloaded status error instead)

An event is one SSE message (``message_start``, ``ping`` and ``[DONE]`` count). Faults apply to the provider
endpoints and ``/v1/models``, never to ``/healthz`` or ``/_mock/``; they take effect before authentication
and validation.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import json
import math
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Sequence

from aiohttp import web

__all__ = ["MockProvider", "MockProviderThread", "FaultRule", "parse_faults", "main"]

OPENAI, ANTHROPIC, GEMINI = "openai", "anthropic", "gemini"
PROVIDERS = (OPENAI, ANTHROPIC, GEMINI)
MAX_BODY = 32 * 1024 * 1024  # Anthropic's request limit
_MISSING = object()
_BAD_JSON = object()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _rid(n: int = 12) -> str:
    return os.urandom(n).hex()


# --------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """A provider error; rendered into the body format of the provider that raised it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        etype: str | None = None,
        param: str | None = None,
        code: str | None = None,
        details: list | None = None,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.etype = etype
        self.param = param
        self.code = code
        self.details = details
        self.headers = headers or {}
        self.body = body  # explicit body override (fault rules)


_OPENAI_STATUS = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory",
          "Country, region, or territory not supported"),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    408: ("invalid_request_error", None, "Request timed out."),
    409: ("invalid_request_error", None, "Conflict."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("service_unavailable_error", "server_is_overloaded", "The server is overloaded or not ready yet."),
    504: ("server_error", None, "Gateway timeout."),
    529: ("server_error", "server_is_overloaded", "The server is overloaded or not ready yet."),
}
_ANTHROPIC_STATUS = {
    400: ("invalid_request_error", "Bad request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timeout"),
    529: ("overloaded_error", "Overloaded"),
}
_GEMINI_STATUS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    409: ("ABORTED", "The operation was aborted."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    499: ("CANCELLED", "The operation was cancelled."),
    500: ("INTERNAL", "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
    529: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
}


# The status a provider uses for "overloaded" (also the error carried by in-stream error events).
OVERLOADED_STATUS = {OPENAI: 503, ANTHROPIC: 529, GEMINI: 503}
# Automatic prompt caching (OpenAI, Gemini): from 1024 prompt tokens, in 128-token steps.
CACHE_MIN_TOKENS, CACHE_STEP = 1024, 128


def status_error(provider: str, status: int, message: str | None = None) -> ApiError:
    """The error a provider would send for ``status`` (used by fault rules)."""
    if provider == ANTHROPIC:
        etype, msg = _ANTHROPIC_STATUS.get(status, ("api_error" if status >= 500 else "invalid_request_error",
                                                    "Error"))
        return ApiError(status, message or msg, etype=etype)
    if provider == GEMINI:
        etype, msg = _GEMINI_STATUS.get(status, ("INTERNAL" if status >= 500 else "FAILED_PRECONDITION", "Error"))
        return ApiError(status, message or msg, etype=etype)
    etype, code, msg = _OPENAI_STATUS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, "Error."))
    return ApiError(status, message or msg, etype=etype, code=code)


def _openai_error_body(e: ApiError) -> dict:
    return {"error": {"message": e.message, "type": e.etype or "invalid_request_error", "param": e.param,
                      "code": e.code}}


def _anthropic_error_body(e: ApiError) -> dict:
    return {"type": "error", "error": {"type": e.etype or "invalid_request_error", "message": e.message},
            "request_id": "req_" + _rid()}


def _gemini_error_body(e: ApiError) -> dict:
    err: dict[str, Any] = {"code": e.status, "message": e.message,
                           "status": e.etype or _GEMINI_STATUS.get(e.status, ("UNKNOWN",))[0]}
    if e.details:
        err["details"] = e.details
    return {"error": err}


_ERROR_BODY = {OPENAI: _openai_error_body, ANTHROPIC: _anthropic_error_body, GEMINI: _gemini_error_body}


def error_response(provider: str, e: ApiError) -> web.Response:
    if e.body is not None:
        text = e.body if isinstance(e.body, str) else _dumps(e.body)
    else:
        text = _dumps(_ERROR_BODY[provider](e))
    headers = {"content-type": "application/json"}
    headers.update(e.headers)
    return web.Response(status=e.status, text=text, headers=headers)


# --------------------------------------------------------------------------------------------------------------
# Fault rules
# --------------------------------------------------------------------------------------------------------------

_RULE_KEYS = {"match", "times", "status", "retry_after", "body", "headers", "close", "delay", "first_token_delay",
              "cut_after", "stall_after", "stall", "error_event_after", "trickle_after", "trickle_chunk",
              "trickle_interval", "trickle_bytes"}
_MATCH_KEYS = {"path_contains", "stream", "provider", "model"}


@dataclass(slots=True)
class FaultRule:
    path_contains: str | None = None
    stream: bool | None = None
    provider: str | None = None
    model: str | None = None
    times: int | None = None  # remaining uses; None = forever
    status: int | None = None
    retry_after: str | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False
    delay: float = 0.0
    first_token_delay: float = 0.0
    cut_after: int | None = None
    stall_after: int | None = None
    stall: float = 0.0
    error_event_after: int | None = None
    trickle_after: int | None = None
    trickle_chunk: int = 1
    trickle_interval: float = 1.0
    trickle_bytes: int | None = None

    def matches(self, provider: str, path: str, stream: bool, model: Any) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.path_contains is not None and self.path_contains not in path:
            return False
        if self.provider is not None and self.provider != provider:
            return False
        if self.model is not None and self.model != model:
            return False
        return self.stream is None or self.stream == stream

    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        match = {k: getattr(self, k) for k in _MATCH_KEYS if getattr(self, k) is not None}
        if match:
            out["match"] = match
        for k in ("times", "status", "retry_after", "body", "cut_after", "stall_after", "error_event_after",
                  "trickle_after", "trickle_bytes"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        for k in ("delay", "first_token_delay", "stall"):
            if getattr(self, k):
                out[k] = getattr(self, k)
        if self.close:
            out["close"] = True
        if self.headers:
            out["headers"] = dict(self.headers)
        return out


def _nonneg(rule: dict, key: str, kind: type) -> Any:
    v = rule.get(key)
    if v is None:
        return None
    ok = isinstance(v, (int, float)) if kind is float else isinstance(v, int)
    if isinstance(v, bool) or not ok or v < 0:
        raise ValueError(f"fault rule: {key!r} must be a non-negative {kind.__name__}, got {v!r}")
    return kind(v)


def parse_fault(rule: Any) -> FaultRule:
    """Validate one fault rule (see the module docstring) and return it as a FaultRule."""
    if not isinstance(rule, dict):
        raise ValueError(f"fault rule must be an object, got {type(rule).__name__}")
    unknown = set(rule) - _RULE_KEYS
    if unknown:
        raise ValueError(f"fault rule: unknown keys {sorted(unknown)}")
    match = rule.get("match") or {}
    if not isinstance(match, dict) or set(match) - _MATCH_KEYS:
        raise ValueError(f"fault rule: 'match' must be an object with keys among {sorted(_MATCH_KEYS)}")
    if match.get("provider") not in (None, *PROVIDERS):
        raise ValueError(f"fault rule: match.provider must be one of {PROVIDERS}")
    if match.get("stream") not in (None, True, False):
        raise ValueError("fault rule: match.stream must be a boolean")
    status = rule.get("status")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599):
        raise ValueError(f"fault rule: 'status' must be an HTTP status code, got {status!r}")
    headers = rule.get("headers") or {}
    if not isinstance(headers, dict):
        raise ValueError("fault rule: 'headers' must be an object")
    if rule.get("close") not in (None, True, False):
        raise ValueError("fault rule: 'close' must be a boolean")
    fr = FaultRule(
        path_contains=match.get("path_contains"), stream=match.get("stream"), provider=match.get("provider"),
        model=match.get("model"), times=_nonneg(rule, "times", int), status=status,
        retry_after=None if rule.get("retry_after") is None else str(rule["retry_after"]),
        body=rule.get("body"), headers={str(k): str(v) for k, v in headers.items()}, close=bool(rule.get("close")),
        delay=_nonneg(rule, "delay", float) or 0.0, first_token_delay=_nonneg(rule, "first_token_delay", float) or 0.0,
        cut_after=_nonneg(rule, "cut_after", int), stall_after=_nonneg(rule, "stall_after", int),
        stall=_nonneg(rule, "stall", float) or 0.0, error_event_after=_nonneg(rule, "error_event_after", int),
        trickle_after=_nonneg(rule, "trickle_after", int), trickle_chunk=_nonneg(rule, "trickle_chunk", int) or 1,
        trickle_interval=_nonneg(rule, "trickle_interval", float) if "trickle_interval" in rule else 1.0,
        trickle_bytes=_nonneg(rule, "trickle_bytes", int),
    )
    if not (fr.status or fr.close or fr.delay or fr.first_token_delay or fr.cut_after is not None
            or fr.stall_after is not None or fr.error_event_after is not None or fr.trickle_after is not None):
        raise ValueError("fault rule: needs an action (status, close, delay, first_token_delay, cut_after, "
                         "stall_after, error_event_after)")
    if fr.stall_after is not None and not fr.stall:
        raise ValueError("fault rule: 'stall_after' needs 'stall' (seconds)")
    return fr


def parse_faults(rules: Iterable[Any]) -> list[FaultRule]:
    if isinstance(rules, dict) or not isinstance(rules, (list, tuple)):
        raise ValueError("faults must be a JSON list of rules")
    return [parse_fault(r) for r in rules]


# --------------------------------------------------------------------------------------------------------------
# Reply planning (shared by the three providers)
# --------------------------------------------------------------------------------------------------------------

_WORD = re.compile(r"\s*\S+")
_TOOL_ARGS = ({"city": "Paris"}, {"city": "Rome"})


def _ntokens(chars: int) -> int:
    return max(1, math.ceil(chars / 4))


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    args: dict
    args_json: str

    @classmethod
    def make(cls, prefix: str, name: str, i: int) -> "ToolCall":
        args = _TOOL_ARGS[i % len(_TOOL_ARGS)]
        return cls(prefix + _rid(12), name, args, json.dumps(args))

    def fragments(self) -> list[str]:
        """The argument JSON cut into a few pieces, as real streams deliver it."""
        s = self.args_json
        step = max(1, math.ceil(len(s) / 4))
        return [s[i:i + step] for i in range(0, len(s), step)]


@dataclass(slots=True)
class Plan:
    """What the mock answers: text pieces (one token each), tool calls, why it stopped, token counts."""

    pieces: list[str]
    tool_calls: list[ToolCall]
    finish: str  # "stop" | "length" | "stop_sequence" | "tool"
    stop_sequence: str | None
    prompt_tokens: int
    cached_tokens: int = 0  # part of prompt_tokens served from the provider's prompt cache

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces) + sum(_ntokens(len(tc.name) + len(tc.args_json)) for tc in self.tool_calls)


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """A request's tool choice in common terms: mode auto | none | any, an optional required tool name, and
    whether several calls may be returned at once."""

    mode: str = "auto"
    forced: str | None = None
    parallel: bool = True


def choose_tools(tool_names: Sequence[str], last_user_text: str | None, choice: ToolChoice) -> list[str]:
    """Names of the tools to call: when tools are given and the choice forces one, or the last plain user turn
    mentions the weather; "parallel" in that text asks for two calls (unless parallel calls are disabled)."""
    if not tool_names or choice.mode == "none":
        return []
    text = (last_user_text or "").lower()
    if choice.forced or choice.mode == "any" or "weather" in text:
        name = choice.forced or tool_names[0]
        return [name, name] if "parallel" in text and choice.parallel else [name]
    return []


def make_plan(reply_pieces: list[str], *, prompt_tokens: int, max_tokens: int | None, stops: Sequence[str],
              tools: list[str], tool_prefix: str) -> Plan:
    pieces, finish, matched = reply_pieces, "stop", None
    if stops:
        text = "".join(pieces)
        hits = [(text.find(s), s) for s in stops if s and s in text]
        if hits:
            pos, matched = min(hits)
            pieces, finish = _WORD.findall(text[:pos]), "stop_sequence"
    if max_tokens is not None and len(pieces) > max_tokens:
        return Plan(pieces[:max_tokens], [], "length", None, prompt_tokens)
    if tools:
        calls = [ToolCall.make(tool_prefix, name, i) for i, name in enumerate(tools)]
        return Plan(pieces, calls, "tool", None, prompt_tokens)
    return Plan(pieces, [], finish, matched, prompt_tokens)


def _text_len(content: Any) -> int:
    """Characters of prompt text in a message content (string, or blocks/parts with ``text``)."""
    if isinstance(content, str):
        return len(content)
    n = 0
    if isinstance(content, list):
        for b in content:
            if isinstance(b, dict):
                t = b.get("text")
                if isinstance(t, str):
                    n += len(t)
                elif "content" in b:  # anthropic tool_result
                    n += _text_len(b["content"])
    return n


def _chunks(pieces: list[str], per_chunk: int) -> list[str]:
    return ["".join(pieces[i:i + per_chunk]) for i in range(0, len(pieces), per_chunk)]


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


# --------------------------------------------------------------------------------------------------------------
# OpenAI chat completions
# --------------------------------------------------------------------------------------------------------------

_OA_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_OA_FIELDS = frozenset({
    "model", "messages", "max_completion_tokens", "max_tokens", "temperature", "top_p", "stop", "n", "stream",
    "stream_options", "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
    "response_format", "seed", "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs",
    "user", "metadata", "audio", "modalities", "prediction", "reasoning_effort", "service_tier", "store",
    "verbosity", "web_search_options", "prompt_cache_key", "prompt_cache_retention", "safety_identifier",
    "moderation", "data_sources",  # Azure "on your data"
})
_OA_PART_TYPES = {
    "system": ("text",), "developer": ("text",), "tool": ("text",), "function": ("text",),
    "assistant": ("text", "refusal"), "user": ("text", "image_url", "input_audio", "file"),
}
_OA_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _oa_invalid(param: str, message: str, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, etype="invalid_request_error", param=param, code=code)


def _oa_missing(param: str) -> ApiError:
    return _oa_invalid(param, f"Missing required parameter: '{param}'.", "missing_required_parameter")


def _oa_type(param: str, expected: str, v: Any) -> ApiError:
    return _oa_invalid(param, f"Invalid type for '{param}': expected {expected}, but got {_json_type(v)} "
                              "instead.", "invalid_type")


def _oa_number(body: dict, name: str, lo: float | None, hi: float | None, integer: bool = False) -> None:
    v = body.get(name)
    if v is None:
        return
    kind = "integer" if integer else "decimal"
    problem = number_problem(v, lo, hi, integer)
    if problem == "type":
        raise _oa_type(name, f"an {kind}" if integer else "a decimal", v)
    if problem == "min":
        raise _oa_invalid(name, f"Invalid '{name}': {kind} below minimum value. Expected a value >= {lo:g}, but "
                                f"got {v} instead.", f"{kind}_below_min_value")
    if problem == "max":
        raise _oa_invalid(name, f"Invalid '{name}': {kind} above maximum value. Expected a value <= {hi:g}, but "
                                f"got {v} instead.", f"{kind}_above_max_value")


def _oa_content(p: str, role: str, content: Any) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _oa_type(p, "one of a string or array of objects", content)
    if not content:
        raise _oa_invalid(p, f"Invalid '{p}': empty array. Expected an array with minimum length 1, but got an "
                             "empty array instead.", "empty_array")
    allowed = _OA_PART_TYPES[role]
    for j, part in enumerate(content):
        pp = f"{p}[{j}]"
        if not isinstance(part, dict):
            raise _oa_type(pp, "an object", part)
        t = part.get("type")
        if t not in allowed:
            vals = ", ".join(f"'{a}'" for a in allowed)
            raise _oa_invalid(f"{pp}.type", f"Invalid value: '{t}'. Supported values are: {vals}.")
        if t == "text" and not isinstance(part.get("text"), str):
            raise _oa_missing(f"{pp}.text")
        if t == "image_url" and not isinstance((part.get("image_url") or {}).get("url"), str):
            raise _oa_missing(f"{pp}.image_url.url")


def _oa_tool_calls(p: str, calls: Any) -> list[str]:
    if not isinstance(calls, list):
        raise _oa_type(f"{p}.tool_calls", "an array", calls)
    ids = []
    for k, tc in enumerate(calls):
        tp = f"{p}.tool_calls[{k}]"
        if not isinstance(tc, dict):
            raise _oa_type(tp, "an object", tc)
        if not isinstance(tc.get("id"), str):
            raise _oa_missing(f"{tp}.id")
        fn = tc.get("function")
        if not isinstance(fn, dict):
            raise _oa_missing(f"{tp}.function")
        if not isinstance(fn.get("name"), str):
            raise _oa_missing(f"{tp}.function.name")
        if "arguments" not in fn:
            raise _oa_missing(f"{tp}.function.arguments")
        if not isinstance(fn["arguments"], str):
            raise _oa_type(f"{tp}.function.arguments", "a string", fn["arguments"])
        ids.append(tc["id"])
    return ids


def _oa_messages(msgs: Any) -> None:
    if msgs is None:
        raise _oa_missing("messages")
    if not isinstance(msgs, list):
        raise _oa_type("messages", "an array", msgs)
    if not msgs:
        raise _oa_invalid("messages", "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                                      "but got an empty array instead.", "empty_array")
    pending: set[str] | None = None  # tool_call ids of the last assistant turn still waiting for tool messages
    for i, m in enumerate(msgs):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _oa_type(p, "an object", m)
        role = m.get("role")
        if role is None:
            raise _oa_missing(f"{p}.role")
        if role not in _OA_ROLES:
            raise _oa_invalid(f"{p}.role", f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', "
                                           "'user', 'function', 'tool', and 'developer'.")
        if role == "tool":
            tcid = m.get("tool_call_id")
            if tcid is None:
                raise _oa_missing(f"{p}.tool_call_id")
            if pending is None or tcid not in pending:
                raise _oa_invalid(f"{p}.role", "Invalid parameter: messages with role 'tool' must be a response to a "
                                               "preceeding message with 'tool_calls'.", None)
            pending.discard(tcid)
        elif pending:
            raise _oa_invalid(f"{p}.role", "An assistant message with 'tool_calls' must be followed by tool messages "
                                           "responding to each 'tool_call_id'. The following tool_call_ids did not "
                                           f"have response messages: {', '.join(sorted(pending))}", None)
        else:
            pending = None
        content = m.get("content")
        if role == "assistant":
            has_calls = m.get("tool_calls") is not None or m.get("function_call") is not None
            if content is None and not has_calls:
                raise _oa_invalid(f"{p}.content", f"Invalid value for '{p}.content': expected a string, got null.",
                                  None)
            if content is not None:
                _oa_content(f"{p}.content", role, content)
            if m.get("tool_calls") is not None:
                pending = set(_oa_tool_calls(p, m["tool_calls"]))
        else:
            if "content" not in m:
                raise _oa_missing(f"{p}.content")
            if content is None and role != "function":
                raise _oa_type(f"{p}.content", "one of a string or array of objects", content)
            if content is not None:
                _oa_content(f"{p}.content", role, content)
            if role == "function" and not isinstance(m.get("name"), str):
                raise _oa_missing(f"{p}.name")
    if pending:
        raise _oa_invalid(f"messages[{len(msgs) - 1}].role",
                          "An assistant message with 'tool_calls' must be followed by tool messages responding to "
                          "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                          f"{', '.join(sorted(pending))}", None)


def _oa_tools(body: dict) -> list[str]:
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise _oa_type("tools", "an array", tools)
        for i, t in enumerate(tools):
            p = f"tools[{i}]"
            if not isinstance(t, dict):
                raise _oa_type(p, "an object", t)
            if t.get("type") == "custom":
                continue
            if t.get("type") != "function":
                raise _oa_invalid(f"{p}.type", f"Invalid value: '{t.get('type')}'. Supported values are: "
                                               "'function' and 'custom'.")
            fn = t.get("function")
            if not isinstance(fn, dict):
                raise _oa_missing(f"{p}.function")
            name = fn.get("name")
            if not isinstance(name, str):
                raise _oa_missing(f"{p}.function.name")
            if not _OA_TOOL_NAME.match(name):
                raise _oa_invalid(f"{p}.function.name", f"Invalid '{p}.function.name': string does not match "
                                                        "pattern. Expected a string that matches the pattern "
                                                        "'^[a-zA-Z0-9_-]+$'.")
            params = fn.get("parameters")
            if params is not None and not isinstance(params, dict):
                raise _oa_type(f"{p}.function.parameters", "an object", params)
            names.append(name)
    tc = body.get("tool_choice")
    if tc is not None:
        if not tools and tc != "none":
            raise _oa_invalid("tool_choice", "Invalid value for 'tool_choice': 'tool_choice' is only allowed when "
                                             "'tools' are specified.", None)
        if isinstance(tc, str):
            if tc not in ("none", "auto", "required"):
                raise _oa_invalid("tool_choice", f"Invalid value: '{tc}'. Supported values are: 'none', 'auto', "
                                                 "and 'required'.")
        elif isinstance(tc, dict):
            if tc.get("type") == "function" and not isinstance((tc.get("function") or {}).get("name"), str):
                raise _oa_missing("tool_choice.function.name")
        else:
            raise _oa_type("tool_choice", "one of a string or object", tc)
    return names


def validate_openai(body: Any, *, require_model: bool = True) -> list[str]:
    """Raise ApiError(400) for a request the real chat completions API rejects; return the function tool names."""
    if not isinstance(body, dict):
        raise ApiError(400, "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                            "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
                            "sent was not valid JSON. If you have trouble figuring out how to fix this, please "
                            "contact us through our help center at help.openai.com.)", etype="invalid_request_error")
    for k in body:
        if k not in _OA_FIELDS:
            raise _oa_invalid(k, f"Unrecognized request argument supplied: {k}", None)
    model = body.get("model")
    if model is None and require_model:
        raise _oa_invalid("model", "you must provide a model parameter", None)
    if model is not None and not isinstance(model, str):
        raise _oa_type("model", "a string", model)
    _oa_messages(body.get("messages"))
    _oa_number(body, "n", 1, 128, integer=True)
    _oa_number(body, "temperature", 0, 2)
    _oa_number(body, "top_p", 0, 1)
    _oa_number(body, "max_tokens", 1, None, integer=True)
    _oa_number(body, "max_completion_tokens", 1, None, integer=True)
    _oa_number(body, "presence_penalty", -2, 2)
    _oa_number(body, "frequency_penalty", -2, 2)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _oa_type("stream", "a boolean", stream)
    so = body.get("stream_options")
    if so is not None:
        if not stream:
            raise _oa_invalid("stream_options", "The 'stream_options' parameter is only allowed when 'stream' is "
                                                "enabled.", None)
        if not isinstance(so, dict):
            raise _oa_type("stream_options", "an object", so)
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, list):
            if len(stop) > 4 or not all(isinstance(s, str) for s in stop):
                raise _oa_invalid("stop", "Invalid 'stop': expected a string or an array of at most 4 strings.",
                                  "invalid_value")
        elif not isinstance(stop, str):
            raise _oa_type("stop", "one of a string or array of strings", stop)
    return _oa_tools(body)


def _oa_tool_choice(body: dict) -> ToolChoice:
    tc, parallel = body.get("tool_choice"), body.get("parallel_tool_calls") is not False
    if tc == "none":
        return ToolChoice("none")
    if tc == "required":
        return ToolChoice("any", None, parallel)
    if isinstance(tc, dict) and tc.get("type") == "function":
        return ToolChoice("any", tc["function"]["name"], parallel)
    return ToolChoice("auto", None, parallel)


def _oa_last_user_text(msgs: list) -> str | None:
    last = msgs[-1]
    if last.get("role") != "user":
        return None
    c = last.get("content")
    if isinstance(c, str):
        return c
    return " ".join(p.get("text", "") for p in c if p.get("type") == "text")


_OA_FINISH = {"stop": "stop", "length": "length", "stop_sequence": "stop", "tool": "tool_calls"}


def _oa_usage(prompt: int, completion: int, cached: int = 0) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def _oa_tool_call_json(tc: ToolCall) -> dict:
    return {"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": tc.args_json}}


def openai_completion(model: str, plans: list[Plan]) -> dict:
    choices = []
    for i, plan in enumerate(plans):
        msg: dict[str, Any] = {"role": "assistant", "content": None if plan.tool_calls else plan.text,
                               "refusal": None, "annotations": []}
        if plan.tool_calls:
            msg["tool_calls"] = [_oa_tool_call_json(tc) for tc in plan.tool_calls]
        choices.append({"index": i, "message": msg, "logprobs": None, "finish_reason": _OA_FINISH[plan.finish]})
    return {"id": "chatcmpl-" + _rid(14), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices,
            "usage": _oa_usage(plans[0].prompt_tokens, sum(p.completion_tokens for p in plans),
                               plans[0].cached_tokens),
            "service_tier": "default", "system_fingerprint": "fp_mock"}


def openai_stream_events(model: str, plans: list[Plan], per_chunk: int, include_usage: bool) -> list[bytes]:
    head = _dumps({"id": "chatcmpl-" + _rid(14), "object": "chat.completion.chunk", "created": int(time.time()),
                   "model": model, "service_tier": "default", "system_fingerprint": "fp_mock"})[:-1]

    def ev(choices: list, extra: str = "") -> bytes:
        return f'data: {head},"choices":{_dumps(choices)}{extra}}}\n\n'.encode()

    def choice(i: int, delta: dict, finish: str | None = None) -> list:
        return [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}]

    events: list[bytes] = []
    for i, plan in enumerate(plans):  # one choice after the other (the n>1 recordings interleave; both are valid)
        if plan.tool_calls:
            for k, tc in enumerate(plan.tool_calls):
                call = {"index": k, "id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": ""}}
                delta = {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None} if k == 0 \
                    else {"tool_calls": [call]}
                events.append(ev(choice(i, delta)))
                for frag in tc.fragments():
                    events.append(ev(choice(i, {"tool_calls": [{"index": k, "function": {"arguments": frag}}]})))
        else:
            events.append(ev(choice(i, {"role": "assistant", "content": "", "refusal": None})))
            for text in _chunks(plan.pieces, per_chunk):
                events.append(ev(choice(i, {"content": text})))
        events.append(ev(choice(i, {}, _OA_FINISH[plan.finish])))
    if include_usage:
        usage = _oa_usage(plans[0].prompt_tokens, sum(p.completion_tokens for p in plans), plans[0].cached_tokens)
        events.append(ev([], ',"usage":' + _dumps(usage)))
    events.append(b"data: [DONE]\n\n")
    return events


_AZURE_FILTERS = {k: {"filtered": False, "severity": "safe"} for k in ("hate", "self_harm", "sexual", "violence")}
# Azure streams open with the prompt-filter results: no choices, empty id/model/object, created 0.
AZURE_PROMPT_FILTER_CHUNK = ("data: " + _dumps({
    "choices": [], "created": 0, "id": "", "model": "", "object": "",
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _AZURE_FILTERS}]}) + "\n\n").encode()


# --------------------------------------------------------------------------------------------------------------
# Anthropic Messages
# --------------------------------------------------------------------------------------------------------------

_AN_FIELDS = frozenset({
    "model", "messages", "max_tokens", "system", "stop_sequences", "temperature", "top_p", "top_k", "stream",
    "metadata", "tools", "tool_choice", "thinking", "service_tier", "container", "mcp_servers", "context_management",
    "cache_control", "diagnostics", "inference_geo", "output_config", "output_format", "speed", "user_profile_id",
    "workspace_id",
})
_AN_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_AN_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_AN_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_AN_USER_BLOCKS = {"text", "image", "document", "tool_result", "search_result", "container_upload"}
_AN_ASSISTANT_BLOCKS = {"text", "tool_use", "thinking", "redacted_thinking", "server_tool_use",
                        "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
                        "mcp_tool_use", "mcp_tool_result", "container_upload", "image", "document"}


def _an_invalid(message: str) -> ApiError:
    return ApiError(400, message, etype="invalid_request_error")


def _an_number(body: dict, name: str, lo: float | None, hi: float | None, integer: bool = False) -> None:
    v = body.get(name)
    if v is None:
        return
    problem = number_problem(v, lo, hi, integer)
    if problem == "type":
        raise _an_invalid(f"{name}: Input should be a valid {'integer' if integer else 'number'}")
    if problem == "min":
        raise _an_invalid(f"{name}: Input should be greater than or equal to {lo:g}")
    if problem == "max":
        raise _an_invalid(f"{name}: Input should be less than or equal to {hi:g}")


def _an_text_ok(p: str, text: Any) -> None:
    if not isinstance(text, str):
        raise _an_invalid(f"{p}.text: Input should be a valid string")
    if not text.strip():
        raise _an_invalid("messages: text content blocks must contain non-whitespace text" if text else
                          "messages: text content blocks must be non-empty")


def _an_source(p: str, b: dict, kinds: dict[str, tuple[str, ...]]) -> None:
    src = b.get("source")
    if not isinstance(src, dict):
        raise _an_invalid(f"{p}.source: Field required")
    st = src.get("type")
    if st not in kinds:
        raise _an_invalid(f"{p}.source: Input tag '{st}' found using 'type' does not match any of the expected "
                          f"tags: {', '.join(repr(k) for k in kinds)}")
    for key in kinds[st]:
        if not isinstance(src.get(key), str):
            raise _an_invalid(f"{p}.source.{st}.{key}: Field required")
    if b["type"] == "image" and st == "base64" and src["media_type"] not in _AN_IMAGE_TYPES:
        raise _an_invalid(f"{p}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or "
                          "'image/webp'")


def _an_block(p: str, b: Any, role: str) -> None:
    if not isinstance(b, dict):
        raise _an_invalid(f"{p}: Input should be a valid dictionary or object to extract fields from")
    t = b.get("type")
    allowed = _AN_USER_BLOCKS if role == "user" else _AN_ASSISTANT_BLOCKS
    if t not in _AN_USER_BLOCKS | _AN_ASSISTANT_BLOCKS:
        raise _an_invalid(f"{p}: Input tag '{t}' found using 'type' does not match any of the expected tags")
    if t not in allowed:
        raise _an_invalid(f"{p}.type: '{t}' blocks are not allowed in {role} messages")
    if t == "text":
        _an_text_ok(p, b.get("text"))
    elif t == "image":
        _an_source(p, b, {"base64": ("media_type", "data"), "url": ("url",), "file": ("file_id",)})
    elif t == "document":
        _an_source(p, b, {"base64": ("media_type", "data"), "text": ("media_type", "data"), "url": ("url",),
                          "content": (), "file": ("file_id",)})
    elif t == "tool_use":
        if not isinstance(b.get("id"), str) or not _AN_ID.match(b["id"]):
            raise _an_invalid(f"{p}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        if not isinstance(b.get("name"), str):
            raise _an_invalid(f"{p}.name: Field required")
        if not isinstance(b.get("input"), dict):
            raise _an_invalid(f"{p}.input: Input should be a valid dictionary")
    elif t == "tool_result":
        if not isinstance(b.get("tool_use_id"), str) or not _AN_ID.match(b["tool_use_id"]):
            raise _an_invalid(f"{p}.tool_use_id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        c = b.get("content")
        if c is not None and not isinstance(c, str):
            if not isinstance(c, list):
                raise _an_invalid(f"{p}.content: Input should be a valid string or list")
            for j, inner in enumerate(c):
                if not isinstance(inner, dict) or inner.get("type") not in ("text", "image", "document",
                                                                            "search_result"):
                    raise _an_invalid(f"{p}.content.{j}: Input tag found using 'type' does not match any of the "
                                      "expected tags: 'text', 'image', 'document', 'search_result'")
                _an_block(f"{p}.content.{j}", inner, "user")
    elif t == "thinking":
        if not isinstance(b.get("thinking"), str) or not isinstance(b.get("signature"), str):
            raise _an_invalid(f"{p}.signature: Field required")


def _an_messages(msgs: Any) -> list[tuple[str, list[tuple[int, dict]]]]:
    """Validate messages; return the turns (consecutive same-role messages merged) as (role, [(msg_idx, block)])."""
    if msgs is None:
        raise _an_invalid("messages: Field required")
    if not isinstance(msgs, list):
        raise _an_invalid("messages: Input should be a valid list")
    if not msgs:
        raise _an_invalid("messages: at least one message is required")
    turns: list[tuple[str, list[tuple[int, dict]]]] = []
    last = len(msgs) - 1
    for i, m in enumerate(msgs):
        p = f"messages.{i}"
        if not isinstance(m, dict):
            raise _an_invalid(f"{p}: Input should be a valid dictionary")
        for k in m:
            if k not in ("role", "content"):
                raise _an_invalid(f"{p}.{k}: Extra inputs are not permitted")
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise _an_invalid(f"{p}.role: Input should be 'user' or 'assistant'")
        content = m.get("content", _MISSING)
        if content is _MISSING:
            raise _an_invalid(f"{p}.content: Field required")
        if isinstance(content, str):
            if not content and not (i == last and role == "assistant"):
                raise _an_invalid(f"{p}: all messages must have non-empty content except for the optional final "
                                  "assistant message")
            blocks = [{"type": "text", "text": content}] if content else []
        elif isinstance(content, list):
            if not content and not (i == last and role == "assistant"):
                raise _an_invalid(f"{p}: all messages must have non-empty content except for the optional final "
                                  "assistant message")
            for j, b in enumerate(content):
                _an_block(f"{p}.content.{j}", b, role)
            blocks = content
        else:
            raise _an_invalid(f"{p}.content: Input should be a valid string or list")
        if turns and turns[-1][0] == role:
            turns[-1][1].extend((i, b) for b in blocks)
        else:
            turns.append((role, [(i, b) for b in blocks]))
    if turns[0][0] != "user":
        raise _an_invalid('messages: first message must use the "user" role')
    role, blocks = turns[-1]
    if role == "assistant" and blocks and blocks[-1][1].get("type") == "text" \
            and blocks[-1][1]["text"] != blocks[-1][1]["text"].rstrip():
        raise _an_invalid("messages: final assistant content cannot end with trailing whitespace")
    _an_tool_pairing(turns)
    return turns


def _an_tool_pairing(turns: list[tuple[str, list[tuple[int, dict]]]]) -> None:
    for t, (role, blocks) in enumerate(turns):
        if role == "assistant":
            ids = [b["id"] for _, b in blocks if b.get("type") == "tool_use"]
            if not ids:
                continue
            nxt = turns[t + 1][1] if t + 1 < len(turns) else []
            results = {b.get("tool_use_id") for _, b in nxt if b.get("type") == "tool_result"}
            missing = [x for x in ids if x not in results]
            if missing:
                raise _an_invalid(f"messages.{blocks[0][0]}: `tool_use` ids were found without `tool_result` blocks "
                                  f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                                  "corresponding `tool_result` block in the next message.")
            continue
        prev_ids = set()
        if t > 0:
            prev_ids = {b.get("id") for _, b in turns[t - 1][1] if b.get("type") == "tool_use"}
        seen_other = False
        for j, (i, b) in enumerate(blocks):
            if b.get("type") != "tool_result":
                seen_other = True
                continue
            if b["tool_use_id"] not in prev_ids:
                raise _an_invalid(f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` "
                                  f"blocks: {b['tool_use_id']}. Each `tool_result` block must have a corresponding "
                                  "`tool_use` block in the previous message.")
            if seen_other:
                raise _an_invalid(f"messages.{i}.content.{j}: `tool_result` blocks must come before any other "
                                  "content in the user message that follows a `tool_use` turn.")


def _an_tools(body: dict) -> list[str]:
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise _an_invalid("tools: Input should be a valid list")
        for i, t in enumerate(tools):
            if not isinstance(t, dict):
                raise _an_invalid(f"tools.{i}: Input should be a valid dictionary")
            typ = t.get("type")
            name = t.get("name")
            if typ in (None, "custom"):
                if not isinstance(name, str) or not _AN_TOOL_NAME.match(name):
                    raise _an_invalid(f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
                schema = t.get("input_schema")
                if not isinstance(schema, dict):
                    raise _an_invalid(f"tools.{i}.custom.input_schema: Field required")
                if schema.get("type") != "object":
                    raise _an_invalid(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
                names.append(name)
            elif not isinstance(name, str):
                raise _an_invalid(f"tools.{i}.{typ}.name: Field required")
        if len(set(names)) != len(names):
            raise _an_invalid("tools: Tool names must be unique.")
    tc = body.get("tool_choice")
    if tc is not None:
        if not isinstance(tc, dict) or tc.get("type") not in ("auto", "any", "none", "tool"):
            raise _an_invalid("tool_choice: Input tag found using 'type' does not match any of the expected tags: "
                              "'auto', 'any', 'tool', 'none'")
        if tc["type"] == "tool" and not isinstance(tc.get("name"), str):
            raise _an_invalid("tool_choice.tool.name: Field required")
        if tc["type"] != "none" and not tools:
            raise _an_invalid("tool_choice: tool_choice may only be specified while providing tools.")
    return names


def validate_anthropic(body: Any) -> tuple[list[tuple[str, list[tuple[int, dict]]]], list[str]]:
    """Raise ApiError(400) for a request the real Messages API rejects; return the merged turns and tool names."""
    if not isinstance(body, dict):
        raise _an_invalid("Input should be a valid dictionary or object to extract fields from")
    for k in body:
        if k not in _AN_FIELDS:
            raise _an_invalid(f"{k}: Extra inputs are not permitted")
    if "model" not in body:
        raise _an_invalid("model: Field required")
    if not isinstance(body["model"], str):
        raise _an_invalid("model: Input should be a valid string")
    if "max_tokens" not in body:
        raise _an_invalid("max_tokens: Field required")
    _an_number(body, "max_tokens", 1, None, integer=True)
    turns = _an_messages(body.get("messages"))
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list):
            raise _an_invalid("system: Input should be a valid string or list")
        for j, b in enumerate(system):
            if not isinstance(b, dict) or b.get("type") != "text":
                raise _an_invalid(f"system.{j}.type: Input should be 'text'")
            _an_text_ok(f"system.{j}", b.get("text"))
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _an_invalid("stop_sequences: Input should be a valid list of strings")
        if any(not s.strip() for s in stops):
            raise _an_invalid("stop_sequences: each stop sequence must contain non-whitespace")
    _an_number(body, "temperature", 0, 1)
    _an_number(body, "top_p", 0, 1)
    _an_number(body, "top_k", 0, None, integer=True)
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise _an_invalid("stream: Input should be a valid boolean")
    md = body.get("metadata")
    if md is not None:
        if not isinstance(md, dict):
            raise _an_invalid("metadata: Input should be a valid dictionary")
        for k in md:
            if k != "user_id":
                raise _an_invalid(f"metadata.{k}: Extra inputs are not permitted")
    names = _an_tools(body)
    th = body.get("thinking")
    if th is not None:
        if not isinstance(th, dict) or th.get("type") not in ("enabled", "disabled", "adaptive"):
            raise _an_invalid("thinking: Input tag found using 'type' does not match any of the expected tags: "
                              "'enabled', 'disabled', 'adaptive'")
        if th["type"] == "enabled":
            bt = th.get("budget_tokens")
            if number_problem(bt, 1024, None, True):
                raise _an_invalid("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
            if bt >= body["max_tokens"]:
                raise _an_invalid("`max_tokens` must be greater than `thinking.budget_tokens`.")
    return turns, names


def _an_tool_choice(body: dict) -> ToolChoice:
    tc = body.get("tool_choice") or {}
    typ, parallel = tc.get("type", "auto"), not tc.get("disable_parallel_tool_use")
    if typ == "tool":
        return ToolChoice("any", tc["name"], parallel)
    return ToolChoice(typ, None, parallel)


def _an_last_user_text(turns: list[tuple[str, list[tuple[int, dict]]]]) -> str | None:
    role, blocks = turns[-1]
    if role != "user" or any(b.get("type") == "tool_result" for _, b in blocks):
        return None
    return " ".join(b.get("text", "") for _, b in blocks if b.get("type") == "text")


def _an_prompt_chars(body: dict) -> int:
    n = _text_len(body.get("system"))
    for m in body["messages"]:
        n += _text_len(m.get("content"))
    return n


_AN_STOP = {"stop": "end_turn", "length": "max_tokens", "stop_sequence": "stop_sequence", "tool": "tool_use"}


def _an_usage(plan: Plan, output_tokens: int) -> dict:
    return {"input_tokens": plan.prompt_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "output_tokens": output_tokens, "service_tier": "standard"}


def anthropic_message(model: str, plan: Plan) -> dict:
    content: list[dict] = []
    if plan.pieces:
        content.append({"type": "text", "text": plan.text})
    content.extend({"type": "tool_use", "id": tc.id, "name": tc.name, "input": tc.args} for tc in plan.tool_calls)
    return {"id": "msg_" + _rid(12), "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": _AN_STOP[plan.finish], "stop_sequence": plan.stop_sequence,
            "usage": _an_usage(plan, plan.completion_tokens)}


def _an_event(etype: str, data: dict) -> bytes:
    return f"event: {etype}\ndata: {_dumps(data)}\n\n".encode()


ANTHROPIC_ERROR_EVENT = _an_event("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                      "message": "Overloaded"}})


def anthropic_stream_events(model: str, plan: Plan, per_chunk: int) -> list[bytes]:
    start = {"id": "msg_" + _rid(12), "type": "message", "role": "assistant", "model": model, "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": _an_usage(plan, 1)}
    events = [_an_event("message_start", {"type": "message_start", "message": start})]
    index = 0

    def block(cb: dict, deltas: list[dict]) -> None:
        nonlocal index
        events.append(_an_event("content_block_start", {"type": "content_block_start", "index": index,
                                                        "content_block": cb}))
        if index == 0:
            events.append(b'event: ping\ndata: {"type": "ping"}\n\n')
        for d in deltas:
            events.append(_an_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                            "delta": d}))
        events.append(_an_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1

    if plan.pieces:
        block({"type": "text", "text": ""},
              [{"type": "text_delta", "text": t} for t in _chunks(plan.pieces, per_chunk)])
    for tc in plan.tool_calls:
        block({"type": "tool_use", "id": tc.id, "name": tc.name, "input": {}},
              [{"type": "input_json_delta", "partial_json": f} for f in ["", *tc.fragments()]])
    events.append(_an_event("message_delta", {"type": "message_delta", "delta": {
        "stop_reason": _AN_STOP[plan.finish], "stop_sequence": plan.stop_sequence},
        "usage": {"output_tokens": plan.completion_tokens}}))
    events.append(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    return events


# --------------------------------------------------------------------------------------------------------------
# Gemini generateContent
# --------------------------------------------------------------------------------------------------------------

_GM_FIELDS = frozenset({
    "contents", "systemInstruction", "system_instruction", "tools", "toolConfig", "tool_config", "safetySettings",
    "safety_settings", "generationConfig", "generation_config", "cachedContent", "cached_content", "labels",
})
_GM_DATA = (("text", "text"), ("inlineData", "inline_data"), ("fileData", "file_data"),
            ("functionCall", "function_call"), ("functionResponse", "function_response"),
            ("executableCode", "executable_code"), ("codeExecutionResult", "code_execution_result"))


def _g(d: dict, camel: str, snake: str) -> Any:
    """Gemini's JSON accepts both lowerCamelCase and snake_case field names."""
    v = d.get(camel)
    return d.get(snake) if v is None else v


def _gm_invalid(message: str, field_path: str | None = None) -> ApiError:
    details = None
    if field_path is not None:
        details = [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": field_path, "description": message}]}]
    return ApiError(400, message, etype="INVALID_ARGUMENT", details=details)


def _gm_part_kind(p: str, part: Any) -> str:
    if not isinstance(part, dict):
        raise _gm_invalid(f"Invalid JSON payload received. Invalid value at '{p}'", p)
    kinds = [camel for camel, snake in _GM_DATA if camel in part or snake in part]
    if len(kinds) != 1:
        raise _gm_invalid(f"* GenerateContentRequest.{p}.data: required oneof field 'data' must have one "
                          "initialized field\n")
    return kinds[0]


def _gm_contents(contents: Any) -> list[list[str]]:
    if not contents:
        raise _gm_invalid("* GenerateContentRequest.contents: contents is not specified\n")
    if not isinstance(contents, list):
        raise _gm_invalid("Invalid JSON payload received. Invalid value at 'contents'", "contents")
    kinds_per_turn: list[list[str]] = []
    prev_role, prev_calls = None, 0
    for i, c in enumerate(contents):
        p = f"contents[{i}]"
        if not isinstance(c, dict):
            raise _gm_invalid(f"Invalid JSON payload received. Invalid value at '{p}'", p)
        role = c.get("role", "user")
        if role not in ("user", "model"):
            raise _gm_invalid("Please use a valid role: user, model.")
        parts = c.get("parts")
        if not parts or not isinstance(parts, list):
            raise _gm_invalid(f"* GenerateContentRequest.{p}.parts: contents.parts must not be empty.\n")
        kinds = [_gm_part_kind(f"{p}.parts[{j}]", part) for j, part in enumerate(parts)]
        calls, responses = kinds.count("functionCall"), kinds.count("functionResponse")
        if responses:
            if prev_role != "model" or not prev_calls:
                raise _gm_invalid("Please ensure that function response turn comes immediately after a function "
                                  "call turn.")
            if responses != prev_calls:
                raise _gm_invalid("Please ensure that the number of function response parts is equal to the number "
                                  "of function call parts of the function call turn.")
        if calls:
            if role != "model" or (prev_role != "user" and prev_role is not None):
                raise _gm_invalid("Please ensure that function call turn comes immediately after a user turn or "
                                  "after a function response turn.")
        prev_role, prev_calls = role, calls
        kinds_per_turn.append(kinds)
    return kinds_per_turn


def _gm_number(cfg: dict, camel: str, snake: str, lo: float | None, hi: float | None, integer: bool) -> None:
    v = _g(cfg, camel, snake)
    if v is None:
        return
    problem = number_problem(v, lo, hi, integer)
    if problem == "type":
        raise _gm_invalid(f"Invalid JSON payload received. Invalid value at 'generation_config.{snake}'",
                          f"generation_config.{snake}")
    if problem:
        raise _gm_invalid(f"* GenerateContentRequest.generation_config.{snake}: {snake} must be in the range "
                          f"[{lo:g}, {hi if hi is not None else 'inf'}]\n")


def _gm_tools(body: dict) -> list[str]:
    names: list[str] = []
    tools = body.get("tools")
    if tools is None:
        return names
    if not isinstance(tools, list):
        raise _gm_invalid("Invalid JSON payload received. Invalid value at 'tools'", "tools")
    for i, t in enumerate(tools):
        if not isinstance(t, dict):
            raise _gm_invalid(f"Invalid JSON payload received. Invalid value at 'tools[{i}]'", f"tools[{i}]")
        for j, fd in enumerate(_g(t, "functionDeclarations", "function_declarations") or []):
            if not isinstance(fd, dict) or not isinstance(fd.get("name"), str) or not fd["name"]:
                raise _gm_invalid(f"* GenerateContentRequest.tools[{i}].function_declarations[{j}].name: Name cannot "
                                  "be empty.\n")
            if not _GM_FN_NAME.match(fd["name"]):
                raise _gm_invalid(f"* GenerateContentRequest.tools[{i}].function_declarations[{j}].name: Invalid "
                                  "function name. Must start with a letter or an underscore. Must be alphameric "
                                  "(a-z, A-Z, 0-9), underscores (_), dots (.), colons (:) or dashes (-), with a "
                                  "maximum length of 64.\n")
            if fd.get("parameters") is not None:
                _gm_schema(f"tools[{i}].function_declarations[{j}].parameters", fd["parameters"])
            names.append(fd["name"])
    return names


# Gemini's Schema object (an OpenAPI 3.0 subset): any other keyword ($ref, $defs, additionalProperties, const...)
# is an unknown field and the request is refused.
_GM_SCHEMA_KEYS = frozenset((
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties", "required",
    "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example", "anyOf", "propertyOrdering",
    "default", "items", "minimum", "maximum", "max_items", "min_items", "min_properties", "max_properties",
    "min_length", "max_length", "any_of", "property_ordering",
))
_GM_FN_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}$")
_GM_TYPES = frozenset(("STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"))


def _gm_schema(where: str, schema: Any) -> None:
    if not isinstance(schema, dict):
        raise _gm_invalid(f"Invalid JSON payload received. Invalid value at '{where}'", where)
    for k, v in schema.items():
        if k not in _GM_SCHEMA_KEYS:
            raise _gm_invalid(f'Invalid JSON payload received. Unknown name "{k}" at \'{where}\': Cannot find field.',
                              where)
        if k == "type" and (not isinstance(v, str) or v.upper() not in _GM_TYPES):
            raise _gm_invalid(f"Invalid JSON payload received. Invalid value at '{where}.type' ({_dumps(v)})", where)
        if k == "properties":
            if not isinstance(v, dict):
                raise _gm_invalid(f"Invalid JSON payload received. Invalid value at '{where}.properties'", where)
            for name, sub in v.items():
                _gm_schema(f"{where}.properties[{name}].value", sub)
        elif k == "items":
            _gm_schema(f"{where}.items", v)
        elif k in ("anyOf", "any_of"):
            if not isinstance(v, list):
                raise _gm_invalid(f"Invalid JSON payload received. Invalid value at '{where}.any_of'", where)
            for i, sub in enumerate(v):
                _gm_schema(f"{where}.any_of[{i}]", sub)
    if str(schema.get("type", "")).upper() == "OBJECT" and "properties" in schema and not schema["properties"]:
        raise _gm_invalid(f"* GenerateContentRequest.{where}.properties: should be non-empty for OBJECT type\n", where)


def validate_gemini(body: Any) -> tuple[list[list[str]], list[str]]:
    """Raise ApiError(400) for a request generateContent rejects; return the part kinds of each turn and the
    declared function names."""
    if not isinstance(body, dict):
        raise _gm_invalid("Invalid JSON payload received. Expected an object.")
    for k in body:
        if k not in _GM_FIELDS:
            raise _gm_invalid(f'Invalid JSON payload received. Unknown name "{k}": Cannot find field.', k)
    kinds = _gm_contents(body.get("contents"))
    cfg = _g(body, "generationConfig", "generation_config")
    if cfg is not None:
        if not isinstance(cfg, dict):
            raise _gm_invalid("Invalid JSON payload received. Invalid value at 'generation_config'",
                              "generation_config")
        _gm_number(cfg, "temperature", "temperature", 0, 2, False)
        _gm_number(cfg, "topP", "top_p", 0, 1, False)
        _gm_number(cfg, "maxOutputTokens", "max_output_tokens", 1, None, True)
        _gm_number(cfg, "candidateCount", "candidate_count", 1, 8, True)
        rs = _g(cfg, "responseSchema", "response_schema")
        if rs is not None:
            _gm_schema("generation_config.response_schema", rs)
        stops = _g(cfg, "stopSequences", "stop_sequences")
        if stops is not None and (not isinstance(stops, list) or len(stops) > 5):
            raise _gm_invalid("* GenerateContentRequest.generation_config.stop_sequences: at most 5 stop sequences "
                              "are allowed\n")
    si = _g(body, "systemInstruction", "system_instruction")
    if si is not None and (not isinstance(si, dict) or not isinstance(si.get("parts"), list)):
        raise _gm_invalid("Invalid JSON payload received. Invalid value at 'system_instruction'",
                          "system_instruction")
    return kinds, _gm_tools(body)


def _gm_tool_choice(body: dict) -> ToolChoice:
    fcc = _g(_g(body, "toolConfig", "tool_config") or {}, "functionCallingConfig", "function_calling_config") or {}
    mode = str(fcc.get("mode", "AUTO")).upper()
    allowed = _g(fcc, "allowedFunctionNames", "allowed_function_names") or []
    if mode == "NONE":
        return ToolChoice("none")
    if mode in ("ANY", "VALIDATED"):
        return ToolChoice("any", allowed[0] if allowed else None)
    return ToolChoice()


def _gm_last_user_text(body: dict, kinds: list[list[str]]) -> str | None:
    last = body["contents"][-1]
    if last.get("role", "user") != "user" or "functionResponse" in kinds[-1]:
        return None
    return " ".join(p["text"] for p in last["parts"] if isinstance(p.get("text"), str))


def _gm_prompt_chars(body: dict) -> int:
    n = _text_len((_g(body, "systemInstruction", "system_instruction") or {}).get("parts"))
    for c in body["contents"]:
        n += _text_len(c.get("parts"))
    return n


_GM_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "stop_sequence": "STOP", "tool": "STOP"}


def _gm_usage(prompt: int, completion: int, cached: int = 0) -> dict:
    if cached:
        return {"promptTokenCount": prompt, "candidatesTokenCount": completion, "totalTokenCount": prompt + completion,
                "cachedContentTokenCount": cached,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
                "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": cached}]}
    return {"promptTokenCount": prompt, "candidatesTokenCount": completion, "totalTokenCount": prompt + completion,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}


def _gm_parts(text: str, plan: Plan) -> list[dict]:
    if plan.tool_calls:
        return [{"functionCall": {"name": tc.name, "args": tc.args}} for tc in plan.tool_calls]
    return [{"text": text}]


def gemini_response(model: str, plans: list[Plan]) -> dict:
    cands = [{"content": {"parts": _gm_parts(p.text, p), "role": "model"}, "finishReason": _GM_FINISH[p.finish],
              "index": i} for i, p in enumerate(plans)]
    return {"candidates": cands,
            "usageMetadata": _gm_usage(plans[0].prompt_tokens, sum(p.completion_tokens for p in plans),
                                       plans[0].cached_tokens),
            "modelVersion": model, "responseId": _rid(11)}


def gemini_stream_chunks(model: str, plans: list[Plan], per_chunk: int) -> list[dict]:
    """The GenerateContentResponse objects of a stream: new parts only; the last has finishReason + full usage."""
    rid, prompt = _rid(11), plans[0].prompt_tokens
    plan = plans[0]
    steps = [None] if plan.tool_calls or not plan.pieces else _chunks(plan.pieces, per_chunk)
    out, done = [], 0
    for k, text in enumerate(steps):
        last = k == len(steps) - 1
        cands = []
        for i, p in enumerate(plans):
            cand: dict[str, Any] = {"content": {"parts": _gm_parts(text or "", p), "role": "model"}, "index": i}
            if last:
                cand["finishReason"] = _GM_FINISH[p.finish]
            cands.append(cand)
        done += 0 if text is None else len(_WORD.findall(text))
        completion = sum(p.completion_tokens for p in plans) if last else done * len(plans)
        out.append({"candidates": cands, "usageMetadata": _gm_usage(prompt, completion, plan.cached_tokens),
                    "modelVersion": model,
                    "responseId": rid})
    return out


GEMINI_ERROR_CHUNK = {"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                                "status": "UNAVAILABLE"}}


# --------------------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class StreamBody:
    """A streamed answer: its events (the last one is the terminal event) and the in-stream error event."""

    events: list[bytes]
    error_event: bytes
    content_type: str = "text/event-stream; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


Answer = web.StreamResponse | StreamBody


class MockProvider:
    """The mock provider server (asyncio). ``await start()`` → port; ``await stop()``."""

    def __init__(self, *, api_key: str | None = None, name: str = "mock", reply: str | None = None,
                 tokens_per_chunk: int = 1, chunk_delay: float = 0.0, models: Sequence[str] | None = None,
                 max_records: int = 1000) -> None:
        reply = f"Hello from {name}" if reply is None else reply
        if not reply.strip():
            raise ValueError("reply must contain non-whitespace text")
        if tokens_per_chunk < 1:
            raise ValueError("tokens_per_chunk must be >= 1")
        self.api_key = api_key
        self.name = name
        self.reply = reply
        self.tokens_per_chunk = tokens_per_chunk
        self.chunk_delay = chunk_delay
        self.models = list(models) if models else None
        self._pieces = _WORD.findall(reply)
        self._records: collections.deque[dict] = collections.deque(maxlen=max_records)
        self._seq = 0
        self._status_counts: collections.Counter[str] = collections.Counter()
        self._faults: list[FaultRule] = []
        self._prompts_seen: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.host = "127.0.0.1"

    # ---- lifecycle ------------------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        r = app.router
        r.add_post("/v1/chat/completions", self._openai)
        r.add_post("/v1/messages", self._anthropic)
        r.add_post("/v1beta/models/{target}", self._gemini)
        r.add_post("/v1/models/{target}", self._gemini)
        r.add_get("/v1/models", self._models)
        r.add_get("/v1beta/models", self._gemini_models)
        r.add_get("/healthz", self._healthz)
        r.add_get("/_mock/requests", self._ctl_requests)
        r.add_post("/_mock/reset", self._ctl_reset)
        r.add_get("/_mock/faults", self._ctl_get_faults)
        r.add_post("/_mock/faults", self._ctl_set_faults)
        r.add_get("/_mock/stats", self._ctl_stats)
        r.add_route("*", "/{tail:.*}", self._fallback)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        if self._runner is not None:
            raise RuntimeError("already started")
        runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        self._runner = runner
        self.host = host
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> "MockProvider":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- control (call from the server's loop; MockProviderThread wraps these thread-safely) ----------------

    def set_faults(self, rules: Iterable[Any]) -> None:
        """Replace the fault rules (dicts as in the module docstring, or FaultRule objects)."""
        self._faults = [r if isinstance(r, FaultRule) else parse_fault(r) for r in rules] \
            if isinstance(rules, (list, tuple)) else parse_faults(rules)

    def faults(self) -> list[dict]:
        return [f.to_dict() for f in self._faults]

    def requests(self, path_contains: str | None = None) -> list[dict]:
        """The recorded requests, oldest first (at most ``max_records``): seq, time, method, path, query,
        headers (lower-case names), body (parsed JSON; ``raw`` text when it was not JSON), provider, status
        (int, or "closed"), and ``outcome`` ("cut", "error_event", "client_closed") when a stream ended early."""
        return [dict(r) for r in self._records if path_contains is None or path_contains in r["path"]]

    def stats(self) -> dict:
        return {"total": self._seq, "by_status": dict(self._status_counts)}

    def reset(self) -> None:
        """Forget recorded requests, counters, fault rules and the prompt cache."""
        self._prompts_seen.clear()
        self._records.clear()
        self._status_counts.clear()
        self._seq = 0
        self._faults = []

    # ---- plumbing -------------------------------------------------------------------------------------------

    def _record(self, request: web.Request, provider: str, body: Any, raw: bytes) -> dict:
        self._seq += 1
        rec = {"seq": self._seq, "time": time.time(), "method": request.method, "path": request.path,
               "query": dict(request.query), "headers": {k.lower(): v for k, v in request.headers.items()},
               "body": None if body is _BAD_JSON else body, "provider": provider, "status": None}
        if body is _BAD_JSON:
            rec["raw"] = raw.decode("utf-8", "replace")
        self._records.append(rec)
        return rec

    def _finish(self, rec: dict, status: int | str) -> None:
        rec["status"] = status
        self._status_counts[str(status)] += 1

    def _take_fault(self, provider: str, path: str, stream: bool, model: Any) -> FaultRule | None:
        for rule in self._faults:
            if rule.matches(provider, path, stream, model):
                if rule.times is not None:
                    rule.times -= 1
                return rule
        return None

    @staticmethod
    def _drop(request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.close()

    def _cached_tokens(self, provider: str, prompt: Any, prompt_tokens: int) -> int:
        """Automatic prompt caching as OpenAI and Gemini (2.5, implicit) do it: a prompt of at least 1024 tokens
        sent again is served from the cache in 128-token steps (the answer's usage reports them)."""
        if prompt_tokens < CACHE_MIN_TOKENS:
            return 0
        key = provider + _dumps(prompt)
        if key not in self._prompts_seen:
            self._prompts_seen.add(key)
            return 0
        return prompt_tokens - prompt_tokens % CACHE_STEP

    def _check_model(self, model: Any) -> bool:
        return self.models is None or model in self.models

    async def _serve(self, request: web.Request, provider: str, stream_of: Callable[[Any], bool],
                     answer: Callable[[web.Request, Any, dict], Awaitable[Answer]]) -> web.StreamResponse:
        """Common path of every provider endpoint: read, record, faults, answer, stream (with stream faults)."""
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = _BAD_JSON
        rec = self._record(request, provider, body, raw)
        stream = stream_of(body)
        fault = self._take_fault(provider, request.path, stream, body.get("model") if isinstance(body, dict)
                                 else None) if self._faults else None
        try:
            if fault is not None:
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.close:
                    self._finish(rec, "closed")
                    self._drop(request)
                    return web.Response(status=499)  # never reaches the client
                if fault.status:
                    err = status_error(provider, fault.status)
                    err.body = fault.body
                    err.headers = dict(fault.headers)
                    if fault.retry_after is not None:
                        err.headers["retry-after"] = fault.retry_after
                    raise err
                if fault.error_event_after is not None and not stream:
                    raise status_error(provider, OVERLOADED_STATUS[provider])
            result = await answer(request, body, rec)
        except ApiError as e:
            self._finish(rec, e.status)
            return error_response(provider, e)
        if isinstance(result, StreamBody):
            return await self._send_stream(request, rec, result, fault)
        if fault is not None and result.status == 200 and (
                fault.first_token_delay or fault.cut_after is not None or fault.stall_after is not None):
            return await self._send_body(request, rec, result, fault)
        self._finish(rec, result.status)
        return result

    async def _send_body(self, request: web.Request, rec: dict, result: web.Response,
                         fault: FaultRule) -> web.StreamResponse:
        """A JSON answer under a stream fault: slow start, a stall in the middle, or a cut in the middle."""
        body = result.body if isinstance(result.body, bytes) else b""
        resp = web.StreamResponse(status=200, headers={k: v for k, v in result.headers.items()
                                                       if k.lower() != "content-length"})
        resp.content_length = len(body)
        self._finish(rec, 200)
        await resp.prepare(request)
        if fault.first_token_delay:
            await asyncio.sleep(fault.first_token_delay)
        half = len(body) // 2
        if fault.cut_after is not None:
            await resp.write(body[:half])
            rec["outcome"] = "cut"
            self._drop(request)
            return resp
        if fault.stall_after is not None:
            await resp.write(body[:half])
            await asyncio.sleep(fault.stall)
            body = body[half:]
        await resp.write(body)
        await resp.write_eof()
        return resp

    async def _send_stream(self, request: web.Request, rec: dict, sb: StreamBody,
                           fault: FaultRule | None) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"content-type": sb.content_type, "cache-control": "no-cache",
                                                       **sb.headers})
        self._finish(rec, 200)
        await resp.prepare(request)
        events = sb.events
        limit, ending = len(events), "eof"
        stall_at = stall = None
        if fault is not None:
            if fault.cut_after is not None:
                limit, ending = min(fault.cut_after, len(events) - 1), "cut"
            elif fault.error_event_after is not None:
                limit, ending = min(fault.error_event_after, len(events) - 1), "error"
            elif fault.trickle_after is not None:
                limit, ending = min(fault.trickle_after, len(events) - 1), "trickle"
            stall_at, stall = fault.stall_after, fault.stall
            if fault.first_token_delay:
                await asyncio.sleep(fault.first_token_delay)
        delay = self.chunk_delay
        try:
            for i in range(limit):
                if i == stall_at:
                    await asyncio.sleep(stall)
                elif i and delay:
                    await asyncio.sleep(delay)
                if request.transport is None or request.transport.is_closing():
                    raise ConnectionResetError  # aiohttp drops writes to a closed peer silently
                await resp.write(events[i])
            if ending == "trickle":
                await self._trickle(request, resp, fault)
                rec["outcome"] = "trickle"
                self._drop(request)
                return resp
        except ConnectionError:  # the client went away mid-stream
            rec["outcome"] = "client_closed"
            return resp
        except asyncio.CancelledError:  # aiohttp cancels the handler when the peer disconnects
            rec["outcome"] = "client_closed"
            raise
        if ending == "cut":
            rec["outcome"] = "cut"
            self._drop(request)
            return resp
        if ending == "error":
            rec["outcome"] = "error_event"
            await resp.write(sb.error_event)
        await resp.write_eof()
        return resp

    @staticmethod
    async def _trickle(request: web.Request, resp: web.StreamResponse, fault: FaultRule) -> None:
        """Bytes that never complete an SSE line: a stream that is alive on the wire yet says nothing."""
        chunk = b"x" * fault.trickle_chunk
        sent = 0
        while fault.trickle_bytes is None or sent < fault.trickle_bytes:
            if request.transport is None or request.transport.is_closing():
                raise ConnectionResetError
            await resp.write(chunk)
            sent += len(chunk)
            if fault.trickle_interval:
                await asyncio.sleep(fault.trickle_interval)

    def _auth_ok(self, *candidates: str | None) -> bool:
        return self.api_key is None or self.api_key in candidates

    # ---- OpenAI ---------------------------------------------------------------------------------------------

    @staticmethod
    def _bearer(request: web.Request) -> str | None:
        auth = request.headers.get("authorization")
        if auth and auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return None

    @staticmethod
    def _stream_flag(body: Any) -> bool:
        return isinstance(body, dict) and body.get("stream") is True

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, OPENAI, self._stream_flag, self._openai_answer)

    async def _openai_answer(self, request: web.Request, body: Any, rec: dict) -> Answer:
        azure = request.path.startswith("/openai/deployments/")
        if azure and "api-version" not in request.query:
            return web.json_response({"error": {"code": "404", "message": "Resource not found"}}, status=404)
        key = self._bearer(request)
        if not self._auth_ok(key, request.headers.get("api-key") if azure else None):
            if azure:
                return web.json_response({"error": {"code": "401", "message": (
                    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
                    "valid key for an active subscription and use a correct regional API endpoint for your "
                    "resource.")}}, status=401)
            if key is None:
                raise ApiError(401, "You didn't provide an API key. You need to provide your API key in an "
                                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
                                    "or as the password field (with blank username) if you're accessing the API "
                                    "from your browser and are prompted for a username.",
                               etype="invalid_request_error")
            masked = key[:3] + "*" * 4 + key[-4:] if len(key) > 8 else "*" * 4
            raise ApiError(401, f"Incorrect API key provided: {masked}. You can find your API key at "
                                "https://platform.openai.com/account/api-keys.", etype="invalid_request_error",
                           code="invalid_api_key")
        names = validate_openai(body, require_model=not azure)
        model = body.get("model") or request.path.split("/")[3]
        if not self._check_model(model):
            raise ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                           etype="invalid_request_error", code="model_not_found")
        msgs = body["messages"]
        stop = body.get("stop")
        prompt = _ntokens(sum(_text_len(m.get("content")) for m in msgs))
        plan_args = dict(prompt_tokens=prompt, max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
                         stops=[stop] if isinstance(stop, str) else stop or (),
                         tools=choose_tools(names, _oa_last_user_text(msgs), _oa_tool_choice(body)),
                         tool_prefix="call_")
        plans = [make_plan(self._pieces, **plan_args) for _ in range(body.get("n") or 1)]
        cached = self._cached_tokens(OPENAI, [msgs, body.get("tools")], prompt)
        for p in plans:
            p.cached_tokens = cached
        headers = {"x-request-id": "req_" + _rid(), "openai-processing-ms": "1"}
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = openai_stream_events(model, plans, self.tokens_per_chunk, include_usage)
            if azure:
                events.insert(0, AZURE_PROMPT_FILTER_CHUNK)
            err = b"data: " + _dumps(_openai_error_body(status_error(OPENAI, OVERLOADED_STATUS[OPENAI]))).encode() \
                + b"\n\n"
            return StreamBody(events, err, headers=headers)
        completion = openai_completion(model, plans)
        if azure:  # Azure's content-filter annotations (protocols.md §3.2)
            completion["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": _AZURE_FILTERS}]
            for c in completion["choices"]:
                c["content_filter_results"] = _AZURE_FILTERS
        return web.Response(text=_dumps(completion), content_type="application/json", headers=headers)

    # ---- Anthropic ------------------------------------------------------------------------------------------

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, ANTHROPIC, self._stream_flag, self._anthropic_answer)

    def _anthropic_auth(self, request: web.Request) -> None:
        if not self._auth_ok(request.headers.get("x-api-key"), self._bearer(request)):
            has_key = "x-api-key" in request.headers or "authorization" in request.headers
            raise ApiError(401, "invalid x-api-key" if has_key else "x-api-key header is required",
                           etype="authentication_error")
        if "anthropic-version" not in request.headers:
            raise _an_invalid("anthropic-version: header is required")

    async def _anthropic_answer(self, request: web.Request, body: Any, rec: dict) -> Answer:
        self._anthropic_auth(request)
        if body is _BAD_JSON:
            raise _an_invalid("There was an error parsing the body of your request. Please check that the JSON is "
                              "valid.")
        turns, names = validate_anthropic(body)
        model = body["model"]
        if not self._check_model(model):
            raise ApiError(404, f"model: {model}", etype="not_found_error")
        plan = make_plan(self._pieces, prompt_tokens=_ntokens(_an_prompt_chars(body)), max_tokens=body["max_tokens"],
                         stops=body.get("stop_sequences") or (),
                         tools=choose_tools(names, _an_last_user_text(turns), _an_tool_choice(body)),
                         tool_prefix="toolu_")
        headers = {"request-id": "req_" + _rid()}
        if body.get("stream"):
            return StreamBody(anthropic_stream_events(model, plan, self.tokens_per_chunk), ANTHROPIC_ERROR_EVENT,
                              headers=headers)
        return web.Response(text=_dumps(anthropic_message(model, plan)), content_type="application/json",
                            headers=headers)

    # ---- Gemini ---------------------------------------------------------------------------------------------

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].partition(":")
        if method not in ("generateContent", "streamGenerateContent"):
            return await self._fallback(request)
        return await self._serve(request, GEMINI, lambda _b: method == "streamGenerateContent",
                                 self._gemini_answer)

    def _gemini_auth(self, request: web.Request) -> None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if self._auth_ok(key):
            return
        if key is None:
            raise ApiError(403, "Method doesn't allow unregistered callers (callers without established identity). "
                                "Please use API Key or other form of API consumer identity to call this API.",
                           etype="PERMISSION_DENIED")
        raise ApiError(400, "API key not valid. Please pass a valid API key.", etype="INVALID_ARGUMENT", details=[
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
             "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
             "message": "API key not valid. Please pass a valid API key."}])

    async def _gemini_answer(self, request: web.Request, body: Any, rec: dict) -> Answer:
        self._gemini_auth(request)
        if body is _BAD_JSON:
            raise _gm_invalid("Invalid JSON payload received. Unexpected token.")
        kinds, names = validate_gemini(body)
        model, _, method = request.match_info["target"].partition(":")
        if not self._check_model(model):
            raise ApiError(404, f"models/{model} is not found for API version v1beta, or is not supported for "
                                f"{method}. Call ListModels to see the list of available models and their supported "
                                "methods.", etype="NOT_FOUND")
        cfg = _g(body, "generationConfig", "generation_config") or {}
        plan_args = dict(prompt_tokens=_ntokens(_gm_prompt_chars(body)),
                         max_tokens=_g(cfg, "maxOutputTokens", "max_output_tokens"),
                         stops=_g(cfg, "stopSequences", "stop_sequences") or (),
                         tools=choose_tools(names, _gm_last_user_text(body, kinds), _gm_tool_choice(body)),
                         tool_prefix="")
        plans = [make_plan(self._pieces, **plan_args) for _ in range(_g(cfg, "candidateCount", "candidate_count") or 1)]
        cached = self._cached_tokens(GEMINI, [body.get("systemInstruction"), body.get("contents"), body.get("tools")],
                                     plan_args["prompt_tokens"])
        for p in plans:
            p.cached_tokens = cached
        if method == "generateContent":
            return web.Response(text=_dumps(gemini_response(model, plans)), content_type="application/json")
        chunks = [_dumps(c) for c in gemini_stream_chunks(model, plans, self.tokens_per_chunk)]
        if request.query.get("alt") == "sse":
            events = [f"data: {c}\r\n\r\n".encode() for c in chunks]
            return StreamBody(events, f"data: {_dumps(GEMINI_ERROR_CHUNK)}\r\n\r\n".encode(),
                              content_type="text/event-stream")
        # Without alt=sse: one JSON array, element by element; the closing bracket is the terminal event.
        events = [("[" if i == 0 else ",\r\n").encode() + c.encode() for i, c in enumerate(chunks)] + [b"]"]
        return StreamBody(events, b",\r\n" + _dumps(GEMINI_ERROR_CHUNK).encode() + b"]",
                          content_type="application/json; charset=UTF-8")

    # ---- model lists, health, fallback ----------------------------------------------------------------------

    def _model_names(self) -> list[str]:
        return self.models or ["mock-model"]

    async def _models(self, request: web.Request) -> web.StreamResponse:
        provider = ANTHROPIC if "anthropic-version" in request.headers else OPENAI
        return await self._serve(request, provider, lambda _b: False, self._models_answer)

    async def _models_answer(self, request: web.Request, body: Any, rec: dict) -> Answer:
        if rec["provider"] == ANTHROPIC:
            self._anthropic_auth(request)
            data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z",
                     "lifecycle": "active"}
                    for m in self._model_names()]
            return web.json_response({"data": data, "has_more": False, "first_id": data[0]["id"],
                                      "last_id": data[-1]["id"]})
        if not self._auth_ok(self._bearer(request)):
            raise ApiError(401, "Incorrect API key provided.", etype="invalid_request_error", code="invalid_api_key")
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1735689600, "owned_by": self.name} for m in self._model_names()]})

    async def _gemini_models(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, GEMINI, lambda _b: False, self._gemini_models_answer)

    async def _gemini_models_answer(self, request: web.Request, body: Any, rec: dict) -> Answer:
        self._gemini_auth(request)
        return web.json_response({"models": [
            {"name": f"models/{m}", "displayName": m, "supportedGenerationMethods": ["generateContent",
                                                                                     "streamGenerateContent"]}
            for m in self._model_names()]})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "name": self.name})

    async def _fallback(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and request.path.endswith("/chat/completions"):
            return await self._openai(request)
        # Recorded too, so a test can see where a misrouted request went.
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = _BAD_JSON
        self._finish(self._record(request, "unknown", body, raw), 404)
        return web.json_response({"error": {"message": f"Invalid URL ({request.method} {request.path})",
                                            "type": "invalid_request_error", "param": None, "code": None}},
                                 status=404)

    # ---- control endpoints ----------------------------------------------------------------------------------

    async def _ctl_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests(request.query.get("path_contains")))

    async def _ctl_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _ctl_get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults())

    async def _ctl_set_faults(self, request: web.Request) -> web.Response:
        try:
            self.set_faults(parse_faults(await request.json()))
        except ValueError as e:  # includes JSONDecodeError
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response({"ok": True, "faults": self.faults()})

    async def _ctl_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())


# --------------------------------------------------------------------------------------------------------------
# Thread wrapper (sync tests, scripts)
# --------------------------------------------------------------------------------------------------------------


class MockProviderThread:
    """Runs a MockProvider on its own event loop in a daemon thread. Methods are thread-safe."""

    def __init__(self, **kwargs: Any) -> None:
        self.provider = MockProvider(**kwargs)
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        if self._thread is not None:
            raise RuntimeError("already started")
        loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                ready.set_result(loop.run_until_complete(self.provider.start(host, port)))
            except BaseException as e:  # surface bind errors to the caller
                ready.set_exception(e)
                loop.close()
                return
            loop.run_forever()
            loop.run_until_complete(self.provider.stop())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"mock-provider-{self.provider.name}", daemon=True)
        self._thread.start()
        try:
            self.port = ready.result(timeout=10)
        except BaseException:
            self._thread.join(timeout=10)
            self._thread = self._loop = None
            raise
        return self.port

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._loop is None or self._thread is None:
            return fn(*args)

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def set_faults(self, rules: Iterable[Any]) -> None:
        parsed = parse_faults(rules)  # raise ValueError in the caller's thread
        self._call(self.provider.set_faults, parsed)

    def faults(self) -> list[dict]:
        return self._call(self.provider.faults)

    def requests(self, path_contains: str | None = None) -> list[dict]:
        return self._call(self.provider.requests, path_contains)

    def stats(self) -> dict:
        return self._call(self.provider.stats)

    def reset(self) -> None:
        self._call(self.provider.reset)

    @property
    def base_url(self) -> str:
        return self.provider.base_url

    def __enter__(self) -> "MockProviderThread":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------


def _load_faults(arg: str | None) -> list[FaultRule]:
    if not arg:
        return []
    text = open(arg[1:], encoding="utf-8").read() if arg.startswith("@") else arg
    return parse_faults(json.loads(text))


async def _serve_forever(args: argparse.Namespace) -> None:
    mp = MockProvider(api_key=args.api_key, name=args.name, reply=args.reply, tokens_per_chunk=args.tokens_per_chunk,
                      chunk_delay=args.chunk_delay, models=args.models)
    mp.set_faults(_load_faults(args.faults))
    port = await mp.start(args.host, args.port)
    print(port, flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    try:
        await done.wait()
    finally:
        await mp.stop()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m aigw.mock_provider",
                                 description="Mock OpenAI/Anthropic/Gemini provider (prints the bound port).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port")
    ap.add_argument("--api-key", default=None, help="required credential (default: accept any)")
    ap.add_argument("--name", default="mock")
    ap.add_argument("--reply", default=None, help='reply text (default "Hello from <name>")')
    ap.add_argument("--tokens-per-chunk", type=int, default=1)
    ap.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between stream events")
    ap.add_argument("--models", nargs="*", default=None, help="known models (default: accept any)")
    ap.add_argument("--faults", default=None, help="JSON list of fault rules, or @file")
    args = ap.parse_args(argv)
    try:
        asyncio.run(_serve_forever(args))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
