"""OpenAI chat completions (and Azure OpenAI): request validation, answers, streams and the endpoint."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from .common import OPENAI, Answer, StreamBody, _dumps, _json_type, _rid, number_problem
from .errors import OVERLOADED_STATUS, ApiError, _openai_error_body, status_error
from .plan import Plan, ToolCall, ToolChoice, _chunks, _ntokens, _text_len, choose_tools, make_plan

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
_OA_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


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
            raise _oa_supported(f"{pp}.type", t, allowed)
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


def _oa_supported(param: str, value: Any, allowed: tuple[str, ...]) -> ApiError:
    """OpenAI's 400 for a value outside an enumeration."""
    vals = ", ".join(f"'{a}'" for a in allowed)
    return _oa_invalid(param, f"Invalid value: '{value}'. Supported values are: {vals}.")


def _oa_function(where: str, fn: dict) -> str:
    """A function declaration's `name` and `parameters` as OpenAI checks them (`where`: the object's path; Chat
    Completions nests it in `function`, the Responses API does not); its name."""
    name = fn.get("name")
    if not isinstance(name, str):
        raise _oa_missing(f"{where}.name")
    if not _OA_TOOL_NAME.match(name):
        raise _oa_invalid(f"{where}.name", f"Invalid '{where}.name': string does not match pattern. Expected a "
                                           "string that matches the pattern '^[a-zA-Z0-9_-]+$'.")
    params = fn.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise _oa_type(f"{where}.parameters", "an object", params)
    return name


def _oa_objects(param: str, value: Any) -> Iterator[tuple[str, dict]]:
    """(path, object) for each element of the array `param`, as OpenAI checks an array of objects."""
    if not isinstance(value, list):
        raise _oa_type(param, "an array", value)
    for i, item in enumerate(value):
        p = f"{param}[{i}]"
        if not isinstance(item, dict):
            raise _oa_type(p, "an object", item)
        yield p, item


def _oa_tools(body: dict) -> list[str]:
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        for p, t in _oa_objects("tools", tools):
            if t.get("type") == "custom":
                continue
            if t.get("type") != "function":
                raise _oa_invalid(f"{p}.type", f"Invalid value: '{t.get('type')}'. Supported values are: "
                                               "'function' and 'custom'.")
            fn = t.get("function")
            if not isinstance(fn, dict):
                raise _oa_missing(f"{p}.function")
            names.append(_oa_function(f"{p}.function", fn))
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
    effort = body.get("reasoning_effort")
    if effort is not None and effort not in _OA_EFFORTS:
        raise _oa_supported("reasoning_effort", effort, _OA_EFFORTS)
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


class OpenAIEndpoint:
    """``POST …/chat/completions`` (OpenAI and Azure).

    Mixed into MockProvider (server.py), which provides ``_serve``, ``_auth_ok``, ``_bearer``, ``_stream_flag``,
    ``_check_model``, ``_cached_tokens``, ``_pieces`` and ``tokens_per_chunk``.
    """

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
