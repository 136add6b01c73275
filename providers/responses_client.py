"""OpenAI Responses API, client side (`POST …/responses`): parse a client's request into canonical, render canonical
answers as `response` objects, make the stream sink (responses_stream.py) and render errors in OpenAI's shape.

OpenAI targets serve these clients by pass-through (responses_passthrough.py); every other target through the hub.
What the hub cannot carry (built-in tools, stored state, file ids, ...) is refused per target by
`check_translatable`, with a 400 naming the field, so that an OpenAI target of the same plan may still serve.
"""
from __future__ import annotations

from typing import Any

from .canonical import (
    NUM, REASONING_EFFORTS, CanonicalRequest, CanonicalResponse, Clock, IdFactory, Message, Reasoning, RefusalPart,
    TextPart, Tool, ToolCallPart, ToolChoice, ToolResultPart, fill_tool_result_names, merge_messages, want,
)
from .errors import GatewayError, invalid
from .interface import Client
from .openai_client import _media_from_url
from .responses_stream import ResponsesSink
from .responses_wire import (
    INGRESS, error_body, function_call_item, message_item, refusal_content, response_object, status_of,
    text_content,
)
from .streaming import Sink

_ROLES = ("user", "assistant", "system", "developer")
# Efforts OpenAI accepts beyond the canonical ones, and what they mean elsewhere.
_EFFORT_ALIASES = {"xhigh": "high", "max": "high"}
# Input item types the hub understands; any other (item_reference, web_search_call, ...) needs OpenAI's state.
_HUB_ITEMS = ("message", "function_call", "function_call_output", "reasoning")
# Top-level fields whose meaning lives in OpenAI's stored state or hosted features: a non-OpenAI target cannot
# honour them (a 400 naming the field). `store` is not among them: it is ignored (nothing is stored).
_STATEFUL_FIELDS = ("previous_response_id", "conversation", "prompt")


def _texts(content: Any, where: str) -> list[str]:
    """System/developer content: a string or input_text parts."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise invalid(f"'{where}.content' must be a string or an array of content parts", param="input")
    out = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "text") \
                or not isinstance(part.get("text"), str):
            raise invalid(f"'{where}.content[{j}]' must be an input_text part", param="input")
        out.append(part["text"])
    return out


def _input_part(part: Any, where: str) -> Any:
    """One user content part → a canonical part (or an opaque marker that encoders refuse with a 400)."""
    if not isinstance(part, dict):
        raise invalid(f"'{where}' must be an object", param="input")
    ptype = part.get("type")
    if ptype == "input_text":
        if not isinstance(part.get("text"), str):
            raise invalid(f"'{where}.text' must be a string", param="input")
        return TextPart(part["text"])
    if ptype == "input_image":
        url = part.get("image_url")
        if isinstance(url, str):
            return _media_from_url(url)
        if isinstance(part.get("file_id"), str):
            return ("opaque", "input_image (file_id)")
        raise invalid(f"'{where}.image_url' must be a string", param="input")
    if ptype == "input_file":
        if isinstance(part.get("file_data"), str):
            return _media_from_url(part["file_data"], default_type="application/pdf")
        if isinstance(part.get("file_url"), str):
            return _media_from_url(part["file_url"], default_type="application/pdf")
        return ("opaque", "input_file (file_id)")
    return ("opaque", str(ptype))


def _assistant_parts(content: Any, where: str) -> list:
    if isinstance(content, str):
        return [TextPart(content)] if content else []
    if not isinstance(content, list):
        raise invalid(f"'{where}.content' must be a string or an array of content parts", param="input")
    parts: list = []
    for j, part in enumerate(content):
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype in ("output_text", "input_text", "text") and isinstance(part.get("text"), str):
            if part["text"]:
                parts.append(TextPart(part["text"]))
        elif ptype == "refusal" and isinstance(part.get("refusal"), str):
            parts.append(RefusalPart(part["refusal"]))
        else:
            raise invalid(f"'{where}.content[{j}]' must be an output_text or refusal part", param="input")
    return parts


def _tool_output(output: Any, where: str) -> tuple[list, bool]:
    """function_call_output.output: a string, or input_text/input_image/input_file parts."""
    if isinstance(output, str):
        return [TextPart(output)], True
    if isinstance(output, list):
        return [_input_part(p, f"{where}.output[{j}]") for j, p in enumerate(output)], False
    raise invalid(f"'{where}.output' must be a string or an array of content parts", param="input")


def _items(req: CanonicalRequest, items: list) -> list[Message]:
    messages: list[Message] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"'{where}' must be an object", param="input")
        itype = item.get("type", "message" if "role" in item else None)
        if itype == "message":
            role, content = item.get("role"), item.get("content")
            if role not in _ROLES:
                raise invalid(f"'{where}.role' must be one of {', '.join(_ROLES)}", param="input")
            if role in ("system", "developer"):
                req.system.extend(_texts(content, where))
            elif role == "user":
                if isinstance(content, str):
                    messages.append(Message("user", [TextPart(content)], True))
                elif isinstance(content, list):
                    messages.append(Message("user", [_input_part(p, f"{where}.content[{j}]")
                                                     for j, p in enumerate(content)]))
                else:
                    raise invalid(f"'{where}.content' must be a string or an array of content parts", param="input")
            else:
                messages.append(Message("assistant", _assistant_parts(content, where), isinstance(content, str)))
        elif itype == "function_call":
            call_id, name, args = item.get("call_id"), item.get("name"), item.get("arguments")
            if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(args, str):
                raise invalid(f"'{where}' needs call_id, name and arguments strings", param="input")
            messages.append(Message("assistant", [ToolCallPart(call_id, name, arguments_json=args)]))
        elif itype == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise invalid(f"'{where}.call_id' must be a string", param="input")
            content, text_form = _tool_output(item.get("output"), where)
            messages.append(Message("user", [ToolResultPart(call_id, content, text_form=text_form)]))
        elif itype == "reasoning":
            continue  # OpenAI's own (often encrypted) reasoning: only an OpenAI target can take it back
        elif not isinstance(itype, str):
            raise invalid(f"'{where}.type' must be a string", param="input")
        # other item types (item_reference, hosted tool calls): check_translatable refuses them per target
    return messages


def _reasoning(obj: dict) -> Reasoning | None:
    r = want(obj, "reasoning", (dict,), "an object")
    if r is None:
        return None
    effort = r.get("effort")
    if effort is not None:
        if not isinstance(effort, str) or effort not in (*REASONING_EFFORTS, "none", *_EFFORT_ALIASES):
            raise invalid(f"'reasoning.effort' must be one of {', '.join((*REASONING_EFFORTS, 'none'))}",
                          param="reasoning.effort")
        effort = _EFFORT_ALIASES.get(effort, effort)
    summary = r.get("summary", r.get("generate_summary"))
    return Reasoning(effort=effort, include=summary is not None)


def _text_format(obj: dict) -> dict | None:
    """`text.format` → the canonical response_format (the Chat Completions shape the backends read)."""
    text = want(obj, "text", (dict,), "an object")
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise invalid("'text.format' must be an object", param="text.format")
    ftype = fmt.get("type")
    if ftype == "text":
        return None
    if ftype == "json_object":
        return {"type": "json_object"}
    if ftype == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise invalid("'text.format' of type json_schema needs a name and a schema object", param="text.format")
        schema: dict[str, Any] = {"name": fmt["name"], "schema": fmt["schema"]}
        for k in ("strict", "description"):
            if fmt.get(k) is not None:
                schema[k] = fmt[k]
        return {"type": "json_schema", "json_schema": schema}
    raise invalid("'text.format.type' must be 'text', 'json_object' or 'json_schema'", param="text.format")


def _tools(req: CanonicalRequest, obj: dict) -> None:
    for k, t in enumerate(want(obj, "tools", (list,), "an array") or ()):
        if not isinstance(t, dict) or not isinstance(t.get("type"), str):
            raise invalid(f"'tools[{k}]' must be an object with a type", param="tools")
        if t["type"] != "function":
            continue  # hosted tools: check_translatable refuses them on non-OpenAI targets
        if not isinstance(t.get("name"), str):
            raise invalid(f"'tools[{k}].name' must be a string", param="tools")
        params = t.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise invalid(f"'tools[{k}].parameters' must be an object", param="tools")
        req.tools.append(Tool(t["name"], t.get("description"), params))
    tc = obj.get("tool_choice")
    if isinstance(tc, str):
        if tc not in ("auto", "none", "required"):
            raise invalid("'tool_choice' must be 'auto', 'none', 'required' or a function choice", param="tool_choice")
        req.tool_choice = ToolChoice(tc)
    elif isinstance(tc, dict):
        if tc.get("type") == "function" and isinstance(tc.get("name"), str):
            req.tool_choice = ToolChoice("tool", tc["name"])
        elif tc.get("type") == "allowed_tools":
            req.tool_choice = ToolChoice("required" if tc.get("mode") == "required" else "auto")
        elif not isinstance(tc.get("type"), str):
            raise invalid("'tool_choice.type' must be a string", param="tool_choice")
    elif tc is not None:
        raise invalid("'tool_choice' must be a string or an object", param="tool_choice")


def parse_request(obj: dict) -> CanonicalRequest:
    model = want(obj, "model", (str,), "a string", required=True)
    req = CanonicalRequest(ingress=INGRESS, model=model, raw=obj)
    req.stream = bool(want(obj, "stream", (bool,), "a boolean"))
    req.include_usage = True  # usage is part of every Responses answer
    instructions = want(obj, "instructions", (str,), "a string")
    if instructions:
        req.system.append(instructions)
    raw_input = obj.get("input")
    if isinstance(raw_input, str):
        messages = [Message("user", [TextPart(raw_input)], True)]
    elif isinstance(raw_input, list):
        messages = _items(req, raw_input)
    elif raw_input is None:
        if not any(obj.get(k) is not None for k in _STATEFUL_FIELDS):
            raise invalid("'input' is a required property", param="input")
        messages = []
    else:
        raise invalid("'input' must be a string or an array of input items", param="input")
    req.messages = merge_messages(messages)
    fill_tool_result_names(req.messages)
    req.max_tokens = want(obj, "max_output_tokens", (int,), "an integer")
    req.temperature = want(obj, "temperature", NUM, "a number")
    req.top_p = want(obj, "top_p", NUM, "a number")
    req.user = want(obj, "user", (str,), "a string")
    want(obj, "metadata", (dict,), "an object")
    want(obj, "store", (bool,), "a boolean")
    want(obj, "previous_response_id", (str,), "a string")
    req.parallel_tool_calls = want(obj, "parallel_tool_calls", (bool,), "a boolean")
    req.response_format = _text_format(obj)
    req.reasoning = _reasoning(obj)
    _tools(req, obj)
    return req


def check_translatable(req: CanonicalRequest, provider: str) -> None:
    """GatewayError(400) naming what a Responses request asks that a `provider` target (served through the hub)
    cannot do: stored state, hosted tools and tool choices, input items only OpenAI knows."""
    raw = req.raw
    for field in _STATEFUL_FIELDS:
        if raw.get(field) is not None:
            raise invalid(f"'{field}' needs an OpenAI target (stored state); a {provider} target cannot honour it",
                          param=field)
    if raw.get("background"):
        raise invalid(f"'background' mode needs an OpenAI target; a {provider} target cannot run it", param="background")
    for k, t in enumerate(raw.get("tools") or ()):
        if t.get("type") != "function":
            raise invalid(f"tool '{t.get('type')}' (tools[{k}]) is built into OpenAI; a {provider} target has no "
                          "such tool", param="tools")
    tc = raw.get("tool_choice")
    if isinstance(tc, dict) and tc.get("type") not in ("function", "allowed_tools"):
        raise invalid(f"tool_choice '{tc.get('type')}' needs an OpenAI target; a {provider} target has no such tool",
                      param="tool_choice")
    items = raw.get("input")
    for i, item in enumerate(items if isinstance(items, list) else ()):
        itype = item.get("type", "message")
        if itype not in _HUB_ITEMS:
            raise invalid(f"input item of type '{itype}' (input[{i}]) needs an OpenAI target; a {provider} target "
                          "cannot take it", param="input")


# =============================================================== responses
def render_response(resp: CanonicalResponse, req: CanonicalRequest, created: int, new_id: IdFactory) -> dict:
    """A canonical answer → a `response` object: consecutive text (and refusal) parts make one message item,
    every tool call a function_call item, in answer order."""
    output: list[dict] = []
    content: list[dict] = []

    def close_message() -> None:
        if content:
            output.append(message_item(new_id("msg"), list(content)))
            content.clear()

    for p in resp.parts:
        if isinstance(p, TextPart):
            if content and content[-1]["type"] == "output_text":
                content[-1]["text"] += p.text
            else:
                content.append(text_content(p.text))
        elif isinstance(p, RefusalPart):
            content.append(refusal_content(p.text))
        elif isinstance(p, ToolCallPart):
            close_message()
            output.append(function_call_item(new_id("fc"), p.id, p.name, p.arguments))
    close_message()
    status, incomplete = status_of(resp.finish)
    return response_object(req, id=new_id("resp"), created_at=created, model=resp.model, status=status,
                           output=output, usage=resp.usage, incomplete=incomplete)


class ResponsesClient(Client):
    """Clients of the OpenAI Responses API (`POST …/responses`)."""

    name = INGRESS
    path_suffix = "/responses"

    def parse_request(self, obj: dict) -> CanonicalRequest:
        return parse_request(obj)

    def check_translatable(self, req: CanonicalRequest, provider: str) -> None:
        check_translatable(req, provider)

    def render_response(self, resp: CanonicalResponse, req: CanonicalRequest, now: Clock,
                        new_id: IdFactory) -> dict:
        return render_response(resp, req, int(now()), new_id)

    def stream_sink(self, req: CanonicalRequest, now: Clock, new_id: IdFactory) -> Sink:
        return ResponsesSink(req, int(now()), new_id)

    def error_body(self, err: GatewayError) -> bytes:
        return error_body(err)
