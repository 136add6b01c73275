"""Gemini generateContent / streamGenerateContent: request validation, answers, streams and the endpoint."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from .common import GEMINI, _BAD_JSON, Answer, StreamBody, _dumps, _rid, number_problem
from .embeddings import GEMINI_EMBED_METHODS
from .errors import ApiError
from .plan import _WORD, Plan, ToolChoice, _chunks, _ntokens, _text_len, choose_tools, make_plan

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


_GM_THINKING_KEYS = (("thinkingBudget", "thinking_budget"), ("includeThoughts", "include_thoughts"),
                     ("thinkingLevel", "thinking_level"))
_GM_THINKING_LEVELS = ("THINKING_LEVEL_UNSPECIFIED", "MINIMAL", "LOW", "MEDIUM", "HIGH")
_GM_MAX_BUDGET = 32768  # Gemini 2.5 Pro's largest; -1 lets the model decide
_GM_THOUGHT = "Thinking about the request."


def _gm_thinking(tc: Any) -> None:
    """generationConfig.thinkingConfig: known fields of the right types, a budget in range, budget or level."""
    if tc is None:
        return
    where = "generation_config.thinking_config"
    if not isinstance(tc, dict):
        raise _gm_invalid(f"Invalid JSON payload received. Invalid value at '{where}'", where)
    known = {name for pair in _GM_THINKING_KEYS for name in pair}
    for k in tc:
        if k not in known:
            raise _gm_invalid(f'Invalid JSON payload received. Unknown name "{k}" at \'{where}\': Cannot find field.',
                              where)
    budget, include, level = (_g(tc, camel, snake) for camel, snake in _GM_THINKING_KEYS)
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise _gm_invalid(f"Invalid JSON payload received. Invalid value at '{where}.thinking_budget' "
                              f"({_dumps(budget)})", f"{where}.thinking_budget")
        if budget != -1 and not 0 <= budget <= _GM_MAX_BUDGET:
            raise _gm_invalid("Unable to submit request because thinking_budget is out of range; supported values "
                              f"are integers from 0 to {_GM_MAX_BUDGET}.")
    if include is not None and not isinstance(include, bool):
        raise _gm_invalid(f"Invalid JSON payload received. Invalid value at '{where}.include_thoughts' "
                          f"({_dumps(include)})", f"{where}.include_thoughts")
    if level is not None:
        if level not in _GM_THINKING_LEVELS:
            raise _gm_invalid(f"Invalid JSON payload received. Invalid value at '{where}.thinking_level' "
                              f"({_dumps(level)})", f"{where}.thinking_level")
        if budget is not None:
            raise _gm_invalid("You can only set only one of thinking budget and thinking level.")


def _gm_thoughts(cfg: dict, responses: list[dict]) -> None:
    """With includeThoughts (and thinking not off), the answer opens with a thought summary part and its usage
    counts thoughtsTokenCount."""
    tc = _g(cfg, "thinkingConfig", "thinking_config") or {}
    if not _g(tc, "includeThoughts", "include_thoughts") or _g(tc, "thinkingBudget", "thinking_budget") == 0:
        return
    responses[0]["candidates"][0]["content"]["parts"].insert(0, {"text": _GM_THOUGHT, "thought": True})
    n = _ntokens(len(_GM_THOUGHT))
    for r in responses:
        r["usageMetadata"]["thoughtsTokenCount"] = n
        r["usageMetadata"]["totalTokenCount"] += n


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
        _gm_thinking(_g(cfg, "thinkingConfig", "thinking_config"))
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


class GeminiEndpoint:
    """``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent``.

    Mixed into MockProvider (server.py), which provides ``_serve``, ``_auth_ok``, ``_bearer``, ``_stream_flag``,
    ``_check_model``, ``_cached_tokens``, ``_pieces`` and ``tokens_per_chunk``.
    """

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].partition(":")
        if method in GEMINI_EMBED_METHODS:
            return await self._gemini_embed(request)  # aigw/mock/embeddings.py
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
            answer = gemini_response(model, plans)
            _gm_thoughts(cfg, [answer])
            return web.Response(text=_dumps(answer), content_type="application/json")
        objs = gemini_stream_chunks(model, plans, self.tokens_per_chunk)
        _gm_thoughts(cfg, objs)
        chunks = [_dumps(c) for c in objs]
        if request.query.get("alt") == "sse":
            events = [f"data: {c}\r\n\r\n".encode() for c in chunks]
            return StreamBody(events, f"data: {_dumps(GEMINI_ERROR_CHUNK)}\r\n\r\n".encode(),
                              content_type="text/event-stream")
        # Without alt=sse: one JSON array, element by element; the closing bracket is the terminal event.
        events = [("[" if i == 0 else ",\r\n").encode() + c.encode() for i, c in enumerate(chunks)] + [b"]"]
        return StreamBody(events, b",\r\n" + _dumps(GEMINI_ERROR_CHUNK).encode() + b"]",
                          content_type="application/json; charset=UTF-8")
