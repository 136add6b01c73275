"""Anthropic Messages: request validation, answers, streams and the endpoint."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from . import thinking
from .common import ANTHROPIC, _BAD_JSON, _MISSING, Answer, StreamBody, _dumps, _rid, number_problem
from .errors import ApiError
from .plan import Plan, ToolChoice, _chunks, _ntokens, _text_len, choose_tools, make_plan

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
    elif t in ("thinking", "redacted_thinking"):
        thinking.check_block(p, b)


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
    """Raise ApiError(400) for a request the real Messages API rejects (thinking's rules: thinking.py); return the
    merged turns and tool names."""
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
    thinking.enabled(body, turns)
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


def anthropic_message(model: str, plan: Plan, thinks: bool = False) -> dict:
    content: list[dict] = [thinking.block()] if thinks else []
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


def anthropic_stream_events(model: str, plan: Plan, per_chunk: int, thinks: bool = False) -> list[bytes]:
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

    if thinks:
        block({"type": "thinking", "thinking": "", "signature": ""}, thinking.stream_deltas())
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


class AnthropicEndpoint:
    """``POST /v1/messages``.

    Mixed into MockProvider (server.py), which provides ``_serve``, ``_auth_ok``, ``_bearer``, ``_stream_flag``,
    ``_check_model``, ``_cached_tokens``, ``_pieces`` and ``tokens_per_chunk``.
    """

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
        thinks = (body.get("thinking") or {}).get("type") in ("enabled", "adaptive")
        if body.get("stream"):
            return StreamBody(anthropic_stream_events(model, plan, self.tokens_per_chunk, thinks),
                              ANTHROPIC_ERROR_EVENT, headers=headers)
        return web.Response(text=_dumps(anthropic_message(model, plan, thinks)), content_type="application/json",
                            headers=headers)
