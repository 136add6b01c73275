"""OpenAI Responses API: `POST /v1/responses` (validation as strict as the real API, answers and streams like it),
`GET` and `DELETE /v1/responses/{id}` over the responses this mock made (stored unless `store: false`).

A `previous_response_id` must name a response this mock made (else 404, as OpenAI answers); a
`function_call_output` must answer a `function_call` of the input or of the stored conversation. Tools are called
as the chat mock calls them (plan.choose_tools: the last user message mentions the weather, or the choice forces).
"""

from __future__ import annotations

import collections
import time
from typing import Any

from aiohttp import web

from .common import OPENAI, Answer, StreamBody, _dumps, _rid
from .errors import OVERLOADED_STATUS, ApiError, status_error
from .openai import _oa_function, _oa_invalid, _oa_objects, _oa_supported, _oa_missing, _oa_number, _oa_type
from .plan import Plan, ToolChoice, _chunks, _ntokens, choose_tools, make_plan

_RS_FIELDS = frozenset({
    "background", "conversation", "include", "input", "instructions", "max_output_tokens", "max_tool_calls",
    "metadata", "model", "parallel_tool_calls", "previous_response_id", "prompt", "prompt_cache_key",
    "prompt_cache_retention", "reasoning", "safety_identifier", "service_tier", "store", "stream", "stream_options",
    "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p", "truncation", "user",
})
_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning", "item_reference")
_ROLES = ("user", "assistant", "system", "developer")
_PART_TYPES = {"user": ("input_text", "input_image", "input_file", "input_audio"),
               "system": ("input_text",), "developer": ("input_text",), "assistant": ("output_text", "refusal")}
_HOSTED_TOOLS = ("web_search", "web_search_preview", "file_search", "code_interpreter", "image_generation",
                 "computer_use_preview", "mcp", "local_shell", "custom", "shell", "apply_patch")
_FORMATS = ("text", "json_object", "json_schema")
_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
_BOOLS = ("stream", "store", "parallel_tool_calls", "background")
_STRINGS = ("instructions", "user", "previous_response_id", "safety_identifier", "prompt_cache_key")
MAX_STORED = 1000  # responses kept for previous_response_id / GET (oldest forgotten first)


def _check_content(p: str, role: str, content: Any) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _oa_type(p, "one of a string or array of input items", content)
    for j, part in enumerate(content):
        pp = f"{p}[{j}]"
        if not isinstance(part, dict):
            raise _oa_type(pp, "an object", part)
        t = part.get("type")
        if t not in _PART_TYPES[role]:
            raise _oa_supported(f"{pp}.type", t, _PART_TYPES[role])
        if t in ("input_text", "output_text") and not isinstance(part.get("text"), str):
            raise _oa_missing(f"{pp}.text")
        if t == "refusal" and not isinstance(part.get("refusal"), str):
            raise _oa_missing(f"{pp}.refusal")
        if t == "input_image" and not isinstance(part.get("image_url"), str) and not isinstance(part.get("file_id"), str):
            raise _oa_missing(f"{pp}.image_url")


def _check_input(items: Any, known_calls: set[str]) -> None:
    """The input items; `known_calls` (call ids of the stored conversation) grows with the input's own calls."""
    if isinstance(items, str):
        return
    if not isinstance(items, list):
        raise _oa_type("input", "one of a string or array of input items", items)
    for i, item in enumerate(items):
        p = f"input[{i}]"
        if not isinstance(item, dict):
            raise _oa_type(p, "an object", item)
        t = item.get("type", "message" if "role" in item else None)
        if t not in _ITEM_TYPES:
            raise _oa_supported(f"{p}.type", t, _ITEM_TYPES)
        if t == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise _oa_supported(f"{p}.role", role, _ROLES)
            if "content" not in item:
                raise _oa_missing(f"{p}.content")
            _check_content(f"{p}.content", role, item["content"])
        elif t == "function_call":
            for k in ("call_id", "name", "arguments"):
                if not isinstance(item.get(k), str):
                    raise _oa_missing(f"{p}.{k}") if k not in item else _oa_type(f"{p}.{k}", "a string", item[k])
            known_calls.add(item["call_id"])
        elif t == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _oa_missing(f"{p}.call_id")
            if "output" not in item:
                raise _oa_missing(f"{p}.output")
            if not isinstance(item["output"], (str, list)):
                raise _oa_type(f"{p}.output", "one of a string or array of content items", item["output"])
            if item["call_id"] not in known_calls:
                raise _oa_invalid("input", f"No tool call found for function call output with call_id "
                                           f"{item['call_id']}.", None)
        elif t == "reasoning" and not isinstance(item.get("summary"), list):
            raise _oa_missing(f"{p}.summary")
        elif t == "item_reference" and not isinstance(item.get("id"), str):
            raise _oa_missing(f"{p}.id")


def _check_tools(body: dict) -> list[str]:
    tools, names = body.get("tools"), []
    if tools is not None:
        for p, t in _oa_objects("tools", tools):
            if t.get("type") in _HOSTED_TOOLS:
                continue
            if t.get("type") != "function":
                raise _oa_supported(f"{p}.type", t.get("type"), ("function", *_HOSTED_TOOLS))
            names.append(_oa_function(p, t))
    tc = body.get("tool_choice")
    if isinstance(tc, str):
        if tc not in ("none", "auto", "required"):
            raise _oa_supported("tool_choice", tc, ("none", "auto", "required"))
    elif isinstance(tc, dict):
        if tc.get("type") == "function" and not isinstance(tc.get("name"), str):
            raise _oa_missing("tool_choice.name")
    elif tc is not None:
        raise _oa_type("tool_choice", "one of a string or object", tc)
    return names


def _check_text_and_reasoning(body: dict) -> None:
    text = body.get("text")
    if text is not None:
        if not isinstance(text, dict):
            raise _oa_type("text", "an object", text)
        fmt = text.get("format")
        if fmt is not None:
            if not isinstance(fmt, dict):
                raise _oa_type("text.format", "an object", fmt)
            if fmt.get("type") not in _FORMATS:
                raise _oa_supported("text.format.type", fmt.get("type"), _FORMATS)
            if fmt["type"] == "json_schema":
                if not isinstance(fmt.get("name"), str):
                    raise _oa_missing("text.format.name")
                if not isinstance(fmt.get("schema"), dict):
                    raise _oa_missing("text.format.schema")
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise _oa_type("reasoning", "an object", reasoning)
        if reasoning.get("effort") is not None and reasoning["effort"] not in _EFFORTS:
            raise _oa_supported("reasoning.effort", reasoning["effort"], _EFFORTS)


def validate_responses(body: Any) -> list[str]:
    """Raise ApiError(400) for a body the real Responses API rejects (the stored-state checks are the endpoint's);
    return the function tool names."""
    if not isinstance(body, dict):
        raise ApiError(400, "We could not parse the JSON body of your request. The OpenAI API expects a JSON "
                            "payload.", etype="invalid_request_error")
    for k in body:
        if k not in _RS_FIELDS:
            raise _oa_invalid(k, f"Unknown parameter: '{k}'.", "unknown_parameter")
    if body.get("model") is None:
        raise _oa_missing("model")
    if not isinstance(body["model"], str):
        raise _oa_type("model", "a string", body["model"])
    if body.get("input") is None and body.get("previous_response_id") is None and body.get("prompt") is None:
        raise _oa_missing("input")
    for k in _BOOLS:
        if body.get(k) is not None and not isinstance(body[k], bool):
            raise _oa_type(k, "a boolean", body[k])
    for k in _STRINGS:
        if body.get(k) is not None and not isinstance(body[k], str):
            raise _oa_type(k, "a string", body[k])
    meta = body.get("metadata")
    if meta is not None and (not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values())):
        raise _oa_type("metadata", "an object with string values", meta)
    _oa_number(body, "temperature", 0, 2)
    _oa_number(body, "top_p", 0, 1)
    _oa_number(body, "max_output_tokens", 16, None, integer=True)
    _oa_number(body, "top_logprobs", 0, 20, integer=True)
    _check_text_and_reasoning(body)
    return _check_tools(body)


def _last_user_text(items: Any) -> str | None:
    if isinstance(items, str):
        return items
    last = items[-1] if isinstance(items, list) and items else None
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    c = last.get("content")
    return c if isinstance(c, str) else " ".join(p.get("text", "") for p in c if p.get("type") == "input_text")


def _prompt_chars(body: dict) -> int:
    n = len(body.get("instructions") or "")
    items = body.get("input")
    if isinstance(items, str):
        return n + len(items)
    for item in items or ():
        c = item.get("content", item.get("output", item.get("arguments")))
        if isinstance(c, str):
            n += len(c)
        elif isinstance(c, list):
            n += sum(len(p.get("text", "")) for p in c if isinstance(p, dict))
    return n


def _tool_choice(body: dict) -> ToolChoice:
    tc, parallel = body.get("tool_choice"), body.get("parallel_tool_calls") is not False
    if tc == "none":
        return ToolChoice("none")
    if tc == "required":
        return ToolChoice("any", None, parallel)
    if isinstance(tc, dict) and tc.get("type") == "function":
        return ToolChoice("any", tc["name"], parallel)
    return ToolChoice("auto", None, parallel)


def _usage(plan: Plan) -> dict:
    return {"input_tokens": plan.prompt_tokens,
            "input_tokens_details": {"cached_tokens": plan.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": plan.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": plan.prompt_tokens + plan.completion_tokens}


def _response(body: dict, rid: str, model: str, plan: Plan | None, output: list, status: str) -> dict:
    tools = [t for t in body.get("tools") or () if isinstance(t, dict)]
    text = body.get("text") or {}
    return {"id": rid, "object": "response", "created_at": int(time.time()), "status": status,
            "background": bool(body.get("background")), "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None, "model": model, "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
            "service_tier": "default", "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": text.get("format") or {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": [{"type": "function", "description": None, "parameters": None, "strict": True, **t}
                      if t.get("type") == "function" else t for t in tools],
            "top_p": body.get("top_p", 1.0), "truncation": body.get("truncation", "disabled"),
            "usage": _usage(plan) if plan is not None else None, "user": body.get("user"),
            "metadata": body.get("metadata") or {}}


def _output(plan: Plan) -> list[dict]:
    if plan.tool_calls:
        return [{"id": "fc_" + _rid(), "type": "function_call", "status": "completed", "arguments": tc.args_json,
                 "call_id": tc.id, "name": tc.name} for tc in plan.tool_calls]
    return [{"id": "msg_" + _rid(), "type": "message", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": plan.text, "annotations": [], "logprobs": []}]}]


def _stream_events(final: dict, plan: Plan, per_chunk: int) -> list[bytes]:
    events: list[bytes] = []

    def ev(obj: dict) -> None:
        obj["sequence_number"] = len(events)
        events.append(f"event: {obj['type']}\ndata: {_dumps(obj)}\n\n".encode())

    start = {**final, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
    ev({"type": "response.created", "response": start})
    ev({"type": "response.in_progress", "response": start})
    for i, item in enumerate(final["output"]):
        if item["type"] == "function_call":
            ev({"type": "response.output_item.added", "output_index": i,
                "item": {**item, "arguments": "", "status": "in_progress"}})
            call = next(tc for tc in plan.tool_calls if tc.id == item["call_id"])
            for frag in call.fragments():
                ev({"type": "response.function_call_arguments.delta", "item_id": item["id"], "output_index": i,
                    "delta": frag})
            ev({"type": "response.function_call_arguments.done", "item_id": item["id"], "output_index": i,
                "arguments": item["arguments"]})
        else:
            ev({"type": "response.output_item.added", "output_index": i,
                "item": {**item, "status": "in_progress", "content": []}})
            where = {"item_id": item["id"], "output_index": i, "content_index": 0}
            part = item["content"][0]
            ev({"type": "response.content_part.added", **where, "part": {**part, "text": ""}})
            for text in _chunks(plan.pieces, per_chunk):
                ev({"type": "response.output_text.delta", **where, "delta": text, "logprobs": []})
            ev({"type": "response.output_text.done", **where, "text": part["text"], "logprobs": []})
            ev({"type": "response.content_part.done", **where, "part": part})
        ev({"type": "response.output_item.done", "output_index": i, "item": item})
    ev({"type": "response." + ("completed" if final["status"] == "completed" else "incomplete"), "response": final})
    return events


class ResponsesApi:
    """The Responses endpoints of one MockProvider (server.py), whose ``_serve`` (recording, faults, streaming),
    ``_auth_ok``, ``_bearer``, ``_stream_flag``, ``_check_model``, ``_cached_tokens``, ``_pieces`` and
    ``tokens_per_chunk`` it uses. It keeps the responses it made (at most MAX_STORED, oldest forgotten first)."""

    def __init__(self, mock: Any) -> None:
        self.mock = mock
        self.stored: collections.OrderedDict[str, dict] = collections.OrderedDict()  # id → response, call ids

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/responses", self.create)
        router.add_get("/v1/responses/{response_id}", self.lookup)
        router.add_delete("/v1/responses/{response_id}", self.lookup)

    def _auth(self, request: web.Request) -> None:
        key = self.mock._bearer(request)
        if self.mock._auth_ok(key):
            return
        if key is None:
            raise ApiError(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                           etype="invalid_request_error")
        raise ApiError(401, "Incorrect API key provided.", etype="invalid_request_error", code="invalid_api_key")

    async def create(self, request: web.Request) -> web.StreamResponse:
        return await self.mock._serve(request, OPENAI, self.mock._stream_flag, self._answer)

    async def lookup(self, request: web.Request) -> web.StreamResponse:
        return await self.mock._serve(request, OPENAI, lambda _b: False, self._lookup)

    async def _lookup(self, request: web.Request, body: Any, rec: dict) -> Answer:
        self._auth(request)
        rid = request.match_info["response_id"]
        entry = self.stored.get(rid)
        if entry is None:
            raise ApiError(404, f"Response with id '{rid}' not found.", etype="invalid_request_error")
        if request.method == "DELETE":
            del self.stored[rid]
            return web.json_response({"id": rid, "object": "response", "deleted": True})
        return web.Response(text=_dumps(entry["response"]), content_type="application/json")

    async def _answer(self, request: web.Request, body: Any, rec: dict) -> Answer:
        mock = self.mock
        self._auth(request)
        names = validate_responses(body)
        model = body["model"]
        if not mock._check_model(model):
            raise ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                           etype="invalid_request_error", code="model_not_found")
        calls: set[str] = set()
        prev = body.get("previous_response_id")
        if prev is not None:
            entry = self.stored.get(prev)
            if entry is None:
                raise ApiError(404, f"Previous response with id '{prev}' not found.", etype="invalid_request_error",
                               param="previous_response_id", code="previous_response_not_found")
            calls |= entry["calls"]
        _check_input(body.get("input"), calls)
        prompt = _ntokens(_prompt_chars(body))
        plan = make_plan(mock._pieces, prompt_tokens=prompt, max_tokens=body.get("max_output_tokens"), stops=(),
                         tools=choose_tools(names, _last_user_text(body.get("input")), _tool_choice(body)),
                         tool_prefix="call_")
        plan.cached_tokens = mock._cached_tokens(OPENAI, [body.get("instructions"), body.get("input")], prompt)
        final = _response(body, "resp_" + _rid(24), model, plan, _output(plan),
                          "incomplete" if plan.finish == "length" else "completed")
        if body.get("store") is not False:
            self.stored[final["id"]] = {"response": final, "calls": calls | {tc.id for tc in plan.tool_calls}}
            while len(self.stored) > MAX_STORED:
                self.stored.popitem(last=False)
        headers = {"x-request-id": "req_" + _rid(), "openai-processing-ms": "1"}
        if body.get("stream"):
            events = _stream_events(final, plan, mock.tokens_per_chunk)
            return StreamBody(events, _error_event(len(events)), headers=headers)
        return web.Response(text=_dumps(final), content_type="application/json", headers=headers)


def _error_event(sequence_number: int) -> bytes:
    """The in-stream error (fault rules' error_event_after): OpenAI's overloaded error as a Responses `error`. Its
    sequence_number is the stream's full length (the fault decides later where the stream is cut)."""
    e = status_error(OPENAI, OVERLOADED_STATUS[OPENAI])
    obj = {"type": "error", "code": e.code, "message": e.message, "param": None, "sequence_number": sequence_number}
    return f"event: error\ndata: {_dumps(obj)}\n\n".encode()
