"""OpenAI Chat Completions family: OpenAI, Azure OpenAI and OpenAI-compatible servers.

Ingress parsing, request encoding, response parsing/rendering and the stream source/sink. OpenAI
ingress to an OpenAI-family target is served from the client's own body (with the few edits the
target needs) and its answers pass through near-verbatim: translating through the hub would only lose
fields (logprobs, n>1, audio, ...).
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from .canonical import (
    NUM, CanonicalRequest, CanonicalResponse, IdFactory, MediaPart, Message, RefusalPart, TextPart,
    Tool, ToolCallPart, ToolChoice, ToolResultPart, Usage, dumps, fill_tool_result_names,
    media_kind, merge_messages, split_data_url, want,
)
from .errors import ANTHROPIC_TYPE_TO_KIND, GatewayError, invalid, openai_error_obj
from .sse import SSEEvent
from .streaming import Sink, Source

FAMILY = ("openai", "azure", "openai-compatible")
FINISH_LITERALS = frozenset(("stop", "length", "tool_calls", "content_filter", "function_call"))

# upstream finish_reason → canonical. Unknown values (DeepSeek "insufficient_system_resource", ...)
# mean the model was cut short by the server, which the client should see as truncation.
FINISH_IN = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls",
             "content_filter": "content_filter", "insufficient_system_resource": "length"}
FINISH_OUT = {"stop": "stop", "length": "length", "tool_calls": "tool_calls",
              "content_filter": "content_filter", "stop_sequence": "stop", "refusal": "content_filter",
              "pause_turn": "stop", "context_exceeded": "length"}

# Top-level fields essentially every OpenAI-compatible server accepts (Groq, vLLM, DeepSeek, Together,
# Mistral, Ollama...). Anything else (logprobs, logit_bias, store, metadata, audio...) is rejected by
# at least one of them (§3.2).
COMPAT_FIELDS = frozenset((
    "model", "messages", "max_tokens", "temperature", "top_p", "stop", "stream", "stream_options",
    "tools", "tool_choice", "parallel_tool_calls", "n", "seed", "presence_penalty", "frequency_penalty",
    "response_format", "user",
))
_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


# =============================================================== ingress parsing
def _text_of(content: Any, where: str, allowed=("text",)) -> list[str]:
    """System/developer/tool content: a string or an array of text parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise invalid(f"'{where}.content' must be a string or an array of content parts", param=where)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in allowed:
            raise invalid(f"'{where}.content[{j}]' must be a text content part", param=where)
        t = part.get("text", part.get("refusal"))
        if not isinstance(t, str):
            raise invalid(f"'{where}.content[{j}].text' must be a string", param=where)
        texts.append(t)
    return texts


def _user_parts(content: Any, where: str) -> list:
    if isinstance(content, str):
        return [TextPart(content)]
    if not isinstance(content, list):
        raise invalid(f"'{where}.content' must be a string or an array of content parts", param=where)
    parts: list = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise invalid(f"'{where}.content[{j}]' must be an object", param=where)
        ptype = part.get("type")
        if ptype == "text":
            if not isinstance(part.get("text"), str):
                raise invalid(f"'{where}.content[{j}].text' must be a string", param=where)
            parts.append(TextPart(part["text"]))
        elif ptype == "image_url":
            img = part.get("image_url")
            url = img.get("url") if isinstance(img, dict) else img if isinstance(img, str) else None
            if not isinstance(url, str):
                raise invalid(f"'{where}.content[{j}].image_url.url' must be a string", param=where)
            parts.append(_media_from_url(url))
        elif ptype == "file" and isinstance(part.get("file"), dict):
            f = part["file"]
            data = f.get("file_data")
            if isinstance(data, str):
                parts.append(_media_from_url(data, default_type="application/pdf"))
            else:
                parts.append(("opaque", "file (file_id)"))
        else:
            # input_audio and future part types: fine for OpenAI targets (served from the raw body),
            # refused with a 400 by encoders of families that cannot carry them.
            parts.append(("opaque", str(ptype)))
    return parts


def _media_from_url(url: str, default_type: str = "image/jpeg") -> MediaPart:
    split = split_data_url(url)
    if split:
        mt, data = split
        return MediaPart(media_kind(mt), mt, data=data)
    if url.startswith(("http://", "https://", "gs://")):
        return MediaPart("image" if default_type.startswith("image/") else "document", None, url=url)
    # Bare base64 (some clients send file_data without the data: prefix).
    return MediaPart(media_kind(default_type), default_type, data=url)


def parse_request(obj: dict) -> CanonicalRequest:
    model = want(obj, "model", (str,), "a string", required=True)
    raw_messages = want(obj, "messages", (list,), "an array", required=True)
    if not raw_messages:
        raise invalid("'messages' must contain at least one message", param="messages")
    req = CanonicalRequest(ingress="openai", model=model, raw=obj)
    req.stream = bool(want(obj, "stream", (bool,), "a boolean"))
    so = want(obj, "stream_options", (dict,), "an object")
    req.include_usage = bool(so and so.get("include_usage"))

    # TrustGate's guide sends Anthropic-style top-level `system` with OpenAI messages.
    top_system = obj.get("system")
    if top_system is not None:
        if isinstance(top_system, str):
            req.system.append(top_system)
        elif isinstance(top_system, list):
            req.system.extend(_text_of(top_system, "system"))
        else:
            raise invalid("'system' must be a string or an array of text blocks", param="system")

    legacy_ids: dict[str, str] = {}
    messages: list[Message] = []
    for i, m in enumerate(raw_messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(f"'{where}' must be an object", param="messages")
        role = m.get("role")
        if role not in _ROLES:
            raise invalid(f"'{where}.role' must be one of {', '.join(_ROLES)}", param="messages")
        content = m.get("content")
        if role in ("system", "developer"):
            req.system.extend(_text_of(content, where))
        elif role == "user":
            if content is None:
                raise invalid(f"'{where}.content' is required for user messages", param="messages")
            messages.append(Message("user", _user_parts(content, where), isinstance(content, str)))
        elif role == "assistant":
            parts: list = [TextPart(t) for t in _text_of(content, where, ("text", "refusal")) if t]
            if isinstance(m.get("refusal"), str) and m["refusal"]:
                parts.append(RefusalPart(m["refusal"]))
            calls = m.get("tool_calls")
            if calls is not None:
                if not isinstance(calls, list):
                    raise invalid(f"'{where}.tool_calls' must be an array", param="messages")
                for k, tc in enumerate(calls):
                    fn = tc.get("function") if isinstance(tc, dict) else None
                    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(tc.get("id"), str):
                        raise invalid(f"'{where}.tool_calls[{k}]' needs an id and function.name", param="messages")
                    args = fn.get("arguments")
                    parts.append(ToolCallPart(tc["id"], fn["name"],
                                              arguments_json=args if isinstance(args, str) else None,
                                              arguments_obj=args if isinstance(args, dict) else None))
            fc = m.get("function_call")
            if isinstance(fc, dict) and isinstance(fc.get("name"), str):
                fid = f"call_fn{len(legacy_ids)}"
                legacy_ids[fc["name"]] = fid
                args = fc.get("arguments")
                parts.append(ToolCallPart(fid, fc["name"], arguments_json=args if isinstance(args, str) else None))
            messages.append(Message("assistant", parts, isinstance(content, str)))
        elif role == "tool":
            tcid = m.get("tool_call_id")
            if not isinstance(tcid, str):
                raise invalid(f"'{where}.tool_call_id' must be a string", param="messages")
            texts = _text_of(content, where)
            messages.append(Message("user", [ToolResultPart(tcid, [TextPart("\n".join(texts))],
                                                            text_form=True)]))
        else:  # legacy "function" role answers the last function_call of that name
            name = m.get("name")
            if not isinstance(name, str):
                raise invalid(f"'{where}.name' must be a string", param="messages")
            texts = _text_of(content, where)
            messages.append(Message("user", [ToolResultPart(legacy_ids.get(name, f"call_{name}"),
                                                            [TextPart("\n".join(texts))], name=name)]))
    req.messages = merge_messages(messages)
    fill_tool_result_names(req.messages)

    mct = want(obj, "max_completion_tokens", (int,), "an integer")
    req.max_tokens = mct if mct is not None else want(obj, "max_tokens", (int,), "an integer")
    req.temperature = want(obj, "temperature", NUM, "a number")
    req.top_p = want(obj, "top_p", NUM, "a number")
    req.top_k = want(obj, "top_k", (int,), "an integer")
    stop = obj.get("stop")
    if isinstance(stop, str):
        req.stop = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        req.stop = list(stop)
    elif stop is not None:
        raise invalid("'stop' must be a string or an array of strings", param="stop")
    req.n = want(obj, "n", (int,), "an integer")
    req.seed = want(obj, "seed", (int,), "an integer")
    req.presence_penalty = want(obj, "presence_penalty", NUM, "a number")
    req.frequency_penalty = want(obj, "frequency_penalty", NUM, "a number")
    req.user = want(obj, "user", (str,), "a string")
    req.response_format = want(obj, "response_format", (dict,), "an object")
    req.parallel_tool_calls = want(obj, "parallel_tool_calls", (bool,), "a boolean")

    tools = want(obj, "tools", (list,), "an array")
    for k, t in enumerate(tools or []):
        if not isinstance(t, dict):
            raise invalid(f"'tools[{k}]' must be an object", param="tools")
        if t.get("type", "function") != "function":
            continue  # custom tools only exist on OpenAI itself, which is served from the raw body
        fn = t.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise invalid(f"'tools[{k}].function.name' must be a string", param="tools")
        req.tools.append(Tool(fn["name"], fn.get("description"), fn.get("parameters")))
    functions = want(obj, "functions", (list,), "an array")
    for k, fn in enumerate(functions or []):
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise invalid(f"'functions[{k}].name' must be a string", param="functions")
        req.tools.append(Tool(fn["name"], fn.get("description"), fn.get("parameters")))
        req.legacy_functions = True

    tc = obj.get("tool_choice", obj.get("function_call"))
    if isinstance(tc, str):
        if tc not in ("auto", "none", "required"):
            raise invalid("'tool_choice' must be 'auto', 'none', 'required' or a function choice", param="tool_choice")
        req.tool_choice = ToolChoice(tc)
    elif isinstance(tc, dict):
        name = (tc.get("function") or {}).get("name") if isinstance(tc.get("function"), dict) else tc.get("name")
        if isinstance(name, str):
            req.tool_choice = ToolChoice("tool", name)
        elif tc.get("type") == "allowed_tools":
            req.tool_choice = ToolChoice("required" if (tc.get("allowed_tools") or {}).get("mode") == "required" else "auto")
        else:
            raise invalid("'tool_choice.function.name' must be a string", param="tool_choice")
    elif tc is not None:
        raise invalid("'tool_choice' must be a string or an object", param="tool_choice")
    return req


# =============================================================== request encoding
_FN_NAME_OK = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def short_name(name: str, names: dict) -> str:
    """OpenAI function names are limited to ^[a-zA-Z0-9_-]{1,64}$ while Anthropic allows 128
    characters (§4.7-10): longer/odd names become a stable prefix + hash, recorded in `names`
    (short → original) so answers can carry the original name back to the client."""
    if _FN_NAME_OK.match(name):
        return name
    short = re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:55] + "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    names[short] = name
    return short


def build_body(req: CanonicalRequest, provider: str, model: str) -> dict:
    if req.ingress == "openai":
        return _from_openai_body(req, provider, model)
    body: dict[str, Any] = {"model": model}
    messages: list[dict] = []
    if req.system:
        messages.append({"role": "system", "content": "\n".join(req.system)})
    for m in req.messages:
        if m.role == "user":
            rest = []
            for p in m.parts:
                if isinstance(p, ToolResultPart):
                    # OpenAI tool messages hold text only; images inside a tool result are dropped.
                    messages.append({"role": "tool", "tool_call_id": p.tool_call_id, "content": p.text})
                else:
                    rest.append(p)
            if rest:
                messages.append({"role": "user", "content": _user_content(rest, m.text_form, provider)})
        else:
            text = "".join(p.text for p in m.parts if isinstance(p, (TextPart, RefusalPart)))
            calls = [{"id": p.id, "type": "function",
                      "function": {"name": short_name(p.name, req.tool_names), "arguments": p.arguments}}
                     for p in m.parts if isinstance(p, ToolCallPart)]
            msg: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
            if calls:
                msg["tool_calls"] = calls
            messages.append(msg)
    body["messages"] = messages
    if req.max_tokens is not None:
        # Only api.openai.com is known to accept max_completion_tokens everywhere (and its reasoning
        # models reject max_tokens); Azure/compat servers universally take max_tokens.
        body["max_completion_tokens" if provider == "openai" else "max_tokens"] = req.max_tokens
    if req.temperature is not None:
        body["temperature"] = min(max(req.temperature, 0), 2)
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop:
        body["stop"] = req.stop[:4]
    for key in ("seed", "presence_penalty", "frequency_penalty", "user", "response_format"):
        val = getattr(req, key)
        if val is not None:
            body[key] = val
    if req.tools:
        body["tools"] = [{"type": "function", "function": _tool_fn(t, req.tool_names)} for t in req.tools]
        tc = req.tool_choice
        if tc is not None:
            body["tool_choice"] = (tc.mode if tc.mode != "tool"
                                   else {"type": "function", "function": {"name": short_name(tc.name or "", req.tool_names)}})
        if req.parallel_tool_calls is False:
            body["parallel_tool_calls"] = False
    if req.stream:
        body["stream"] = True
        # The Anthropic-format answer needs real usage in message_delta (§4.5).
        body["stream_options"] = {"include_usage": True}
    return body


def _tool_fn(t: Tool, names: dict) -> dict:
    fn: dict[str, Any] = {"name": short_name(t.name, names)}
    if t.description:
        fn["description"] = t.description
    fn["parameters"] = t.parameters if t.parameters else {"type": "object", "properties": {}}
    return fn


def _user_content(parts: list, text_form: bool, provider: str) -> Any:
    if text_form and len(parts) == 1 and isinstance(parts[0], TextPart):
        return parts[0].text
    out = []
    for p in parts:
        if isinstance(p, TextPart):
            out.append({"type": "text", "text": p.text})
        elif isinstance(p, MediaPart):
            url = p.url if p.url else f"data:{p.media_type};base64,{p.data}"
            if p.kind == "image":
                out.append({"type": "image_url", "image_url": {"url": url}})
            elif p.data is not None:
                out.append({"type": "file", "file": {"file_data": url, "filename": "document.pdf"}})
            else:
                raise invalid(f"a document URL cannot be sent to a {provider} target", param="messages")
        elif isinstance(p, tuple):
            raise invalid(f"content of type '{p[1]}' cannot be sent to a {provider} target", param="messages")
    return out


def _from_openai_body(req: CanonicalRequest, provider: str, model: str) -> dict:
    body = dict(req.raw)
    body["model"] = model
    system = body.pop("system", None)
    if system is not None:  # the mixed TrustGate body: OpenAI rejects a top-level `system`
        body["messages"] = [{"role": "system", "content": "\n".join(req.system[:_n_top_system(system)])}] + list(body["messages"])
    if provider == "openai-compatible":
        if "max_tokens" not in body and "max_completion_tokens" in body:
            body["max_tokens"] = body["max_completion_tokens"]
        body = {k: v for k, v in body.items() if k in COMPAT_FIELDS}
        # Groq rejects messages[].name; nobody needs it to answer.
        body["messages"] = [{k: v for k, v in m.items() if k != "name"} if isinstance(m, dict) and "name" in m else m
                            for m in body["messages"]]
    if req.stream:
        so = dict(body.get("stream_options") or {})
        if provider != "openai-compatible" or req.include_usage:
            # Ask for usage even when the client did not, so the gateway can account; the stream
            # translator strips the extra chunk again.
            so["include_usage"] = True
        if so:
            body["stream_options"] = so
    else:
        body.pop("stream_options", None)
    return body


def _n_top_system(system: Any) -> int:
    return 1 if isinstance(system, str) else len(system)


# =============================================================== responses
def usage_from(u: Any) -> Usage | None:
    if not isinstance(u, dict):
        return None
    ptd = u.get("prompt_tokens_details") or {}
    ctd = u.get("completion_tokens_details") or {}
    return Usage(prompt_tokens=int(u.get("prompt_tokens") or 0),
                 completion_tokens=int(u.get("completion_tokens") or 0),
                 cache_read=int(ptd.get("cached_tokens") or 0) if isinstance(ptd, dict) else 0,
                 cache_write=int(ptd.get("cache_write_tokens") or 0) if isinstance(ptd, dict) else 0,
                 reasoning=ctd.get("reasoning_tokens") if isinstance(ctd, dict) else None)


def usage_obj(u: Usage) -> dict:
    out: dict[str, Any] = {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                           "total_tokens": u.total, "prompt_tokens_details": {"cached_tokens": u.cache_read}}
    if u.reasoning is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": u.reasoning}
    return out


def parse_response(obj: Any, new_id: IdFactory, names: dict | None = None) -> CanonicalResponse:
    names = names or {}
    if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
        raise GatewayError(502, "api_error", "upstream returned a malformed chat completion")
    choice = next((c for c in obj["choices"] if isinstance(c, dict) and c.get("index", 0) == 0), None)
    parts: list = []
    finish = "stop"
    if choice:
        msg = choice.get("message") or {}
        content = msg.get("content")
        if isinstance(content, str) and content:
            parts.append(TextPart(content))
        elif isinstance(content, list):
            parts.extend(TextPart(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        if isinstance(msg.get("refusal"), str) and msg["refusal"]:
            parts.append(RefusalPart(msg["refusal"]))
        for tc in msg.get("tool_calls") or []:
            fn = tc.get("function") or {}
            args = fn.get("arguments")
            name = fn.get("name") or ""
            parts.append(ToolCallPart(tc.get("id") or new_id("call"), names.get(name, name),
                                      arguments_json=args if isinstance(args, str) else None,
                                      arguments_obj=args if isinstance(args, dict) else None))
        fc = msg.get("function_call")
        if isinstance(fc, dict):
            name = fc.get("name") or ""
            parts.append(ToolCallPart(new_id("call"), names.get(name, name), arguments_json=fc.get("arguments")))
        finish = FINISH_IN.get(choice.get("finish_reason") or "stop", "stop")
        if finish == "stop" and any(isinstance(p, RefusalPart) for p in parts):
            finish = "refusal"
    return CanonicalResponse(id=str(obj.get("id") or new_id("chatcmpl")), model=str(obj.get("model") or ""),
                             parts=parts, finish=finish, usage=usage_from(obj.get("usage")))


def render_response(resp: CanonicalResponse, req: CanonicalRequest, created: int) -> dict:
    text = "".join(p.text for p in resp.parts if isinstance(p, TextPart))
    refusal = "".join(p.text for p in resp.parts if isinstance(p, RefusalPart))
    calls = [p for p in resp.parts if isinstance(p, ToolCallPart)]
    msg: dict[str, Any] = {"role": "assistant", "content": text if text or not (calls or refusal) else None}
    if refusal:
        msg["refusal"] = refusal
    finish = FINISH_OUT.get(resp.finish, "stop")
    if calls:
        if req.legacy_functions:
            msg["function_call"] = {"name": calls[0].name, "arguments": calls[0].arguments}
            finish = "function_call" if finish == "tool_calls" else finish
        else:
            msg["tool_calls"] = [{"id": p.id, "type": "function",
                                  "function": {"name": p.name, "arguments": p.arguments}} for p in calls]
    out: dict[str, Any] = {"id": resp.id, "object": "chat.completion", "created": created, "model": resp.model,
                           "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": finish}]}
    if resp.usage is not None:
        out["usage"] = usage_obj(resp.usage)
    return out


def normalize_response(obj: Any, created: int) -> bool:
    """OpenAI-family answer to an OpenAI client: fix only what strict SDK validation rejects.
    Returns True when something was changed."""
    if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
        raise GatewayError(502, "api_error", "upstream returned a malformed chat completion")
    changed = False
    if not isinstance(obj.get("created"), int) or isinstance(obj.get("created"), bool):
        obj["created"] = int(obj["created"]) if isinstance(obj.get("created"), float) else created
        changed = True
    for key in ("id", "model"):
        if not isinstance(obj.get(key), str):
            obj[key] = "" if obj.get(key) is None else str(obj[key])
            changed = True
    for c in obj["choices"]:
        if isinstance(c, dict) and c.get("finish_reason") not in FINISH_LITERALS:
            c["finish_reason"] = FINISH_OUT[FINISH_IN.get(c.get("finish_reason") or "stop", "stop")]
            changed = True
    if obj.get("object") != "chat.completion":
        obj["object"] = "chat.completion"
        changed = True
    return changed


# =============================================================== stream: sink (ingress side)
class OpenAISink(Sink):
    """Canonical stream calls → `chat.completion.chunk` events (§1.5, pitfalls §4.7)."""

    def __init__(self, req: CanonicalRequest, created: int, new_id: IdFactory) -> None:
        super().__init__()
        self._include_usage = req.include_usage
        self._legacy = req.legacy_functions
        self._created = created
        self._new_id = new_id
        self._head = b""
        self._usage: Usage | None = None
        self._started = False
        self._finished = False
        self._done_sent = False

    def start(self, id: str, model: str) -> None:
        if self._started:
            return
        self._started = True
        if not id.startswith(("chatcmpl", "msg_")):
            id = "chatcmpl-" + id  # Gemini responseIds etc.: keep the recognisable OpenAI prefix
        self._id, self._model = id, model
        # Everything before the delta is constant for the stream: render it once.
        self._head = (b'{"id":' + dumps(id) + b',"object":"chat.completion.chunk","created":'
                      + str(self._created).encode() + b',"model":' + dumps(model)
                      + b',"choices":[{"index":0,"delta":')
        self._delta({"role": "assistant", "content": ""})

    def _delta(self, delta: dict, finish: str | None = None) -> None:
        if self.closed:
            return
        tail = b',"logprobs":null,"finish_reason":null}]}' if finish is None else (
            b',"logprobs":null,"finish_reason":"' + finish.encode() + b'"}]}')
        self.out.append(b"data: " + self._head + dumps(delta) + tail + b"\n\n")

    def _ensure_started(self) -> None:
        if not self._started:
            self.start(self._new_id("chatcmpl"), "")

    def text(self, s: str) -> None:
        if s:
            self._ensure_started()
            self.committed = True
            self._delta({"content": s})

    def refusal(self, s: str) -> None:
        if s:
            self._ensure_started()
            self.committed = True
            self._delta({"refusal": s})

    def tool_start(self, index: int, id: str, name: str) -> None:
        self._ensure_started()
        self.committed = True
        if self._legacy:
            self._delta({"function_call": {"name": name, "arguments": ""}})
        else:
            self._delta({"tool_calls": [{"index": index, "id": id, "type": "function",
                                         "function": {"name": name, "arguments": ""}}]})

    def tool_args(self, index: int, fragment: str) -> None:
        if fragment:
            self._ensure_started()
            self.committed = True
            if self._legacy:
                self._delta({"function_call": {"arguments": fragment}})
            else:
                self._delta({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})

    def usage(self, u: Usage) -> None:
        self._usage = u

    def finish(self, reason: str, stop_sequence: str | None = None) -> None:
        if self._finished:
            return
        self._ensure_started()
        self._finished = True
        fr = FINISH_OUT.get(reason, "stop")
        if self._legacy and fr == "tool_calls":
            fr = "function_call"
        self._delta({}, fr)

    def end(self) -> None:
        if self.closed:
            return
        if not self._finished:
            self.finish("stop")
        if self._include_usage:
            u = self._usage or Usage()
            self.out.append(b"data: " + self._head[:self._head.index(b'"choices":')] + b'"choices":[],"usage":'
                            + dumps(usage_obj(u)) + b"}\n\n")
        self.trailer()
        self.closed = True

    def trailer(self) -> None:
        if not self._done_sent:
            self._done_sent = True
            self.out.append(b"data: [DONE]\n\n")

    def error(self, err: GatewayError) -> None:
        if self.closed:
            return
        # The openai SDK raises APIError for any data line whose JSON has a truthy `error` (§5.1).
        self.out.append(b"data: " + dumps({"error": openai_error_obj(err)}) + b"\n\n")
        self._done_sent = True  # never follow an error with [DONE]
        self.closed = True


# =============================================================== stream: source (upstream side)
def _chunk_of(source: Source, data: str) -> dict | None:
    """The JSON object of one `data:` line; None for anything else (invalid JSON is reported as such)."""
    try:
        chunk = json.loads(data)
    except ValueError:
        source.invalid_event()
        return None
    return chunk if isinstance(chunk, dict) else None


class OpenAISource(Source):
    """OpenAI-family chunks → canonical calls (used when the client is not OpenAI-format)."""

    def __init__(self, sink: Sink, new_id: IdFactory, names: dict | None = None) -> None:
        super().__init__(sink)
        self._new_id = new_id
        self._names = names or {}
        self._started = False
        self._tools: set[int] = set()
        self._refusal = False
        self._finish: str | None = None

    def on_event(self, ev: SSEEvent) -> None:
        data = ev.data
        if data[:6] == "[DONE]":
            self.done = True
            if self._finish is None:
                self.sink.finish("stop")
            self.sink.end()
            return
        chunk = _chunk_of(self, data)
        if chunk is None:
            return
        if chunk.get("error"):
            self.fail(_stream_error(chunk["error"]))
            return
        sink = self.sink
        choices = chunk.get("choices") or []
        if not self._started and (choices or chunk.get("id")):
            self._started = True
            sink.start(str(chunk.get("id") or ""), str(chunk.get("model") or ""))
        for ch in choices:
            if not isinstance(ch, dict) or ch.get("index", 0) != 0:
                continue  # only one answer can be expressed in a non-OpenAI format
            delta = ch.get("delta") or {}
            content = delta.get("content")
            if content:
                sink.text(content)
            refusal = delta.get("refusal")
            if refusal:
                self._refusal = True
                sink.refusal(refusal)
            for k, tc in enumerate(delta.get("tool_calls") or ()):
                idx = tc.get("index")
                if not isinstance(idx, int):
                    idx = k
                fn = tc.get("function") or {}
                if idx not in self._tools:
                    self._tools.add(idx)
                    name = fn.get("name") or ""
                    sink.tool_start(idx, tc.get("id") or self._new_id("call"), self._names.get(name, name))
                args = fn.get("arguments")
                if args:
                    sink.tool_args(idx, args)
            fc = delta.get("function_call")
            if isinstance(fc, dict):
                if 0 not in self._tools:
                    self._tools.add(0)
                    name = fc.get("name") or ""
                    sink.tool_start(0, self._new_id("call"), self._names.get(name, name))
                if fc.get("arguments"):
                    sink.tool_args(0, fc["arguments"])
            fr = ch.get("finish_reason")
            if fr and self._finish is None:
                reason = FINISH_IN.get(fr, "stop")
                if reason == "stop" and self._refusal:
                    reason = "refusal"
                self._finish = reason
                sink.finish(reason)
        u = chunk.get("usage")
        if isinstance(u, dict):
            sink.usage(usage_from(u))


def _stream_error(err: Any) -> GatewayError:
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


# =============================================================== stream: passthrough
class OpenAIPassthrough(Source, Sink):
    """OpenAI-family upstream → OpenAI client. Events are re-framed, their JSON bytes kept unless an
    edit is needed: strip the usage chunk the gateway asked for on its own behalf, drop Azure's
    prompt-filter chunk (`choices: []`, empty id), and normalise off-list finish reasons."""

    def __init__(self, req: CanonicalRequest) -> None:
        Sink.__init__(self)
        Source.__init__(self, self)
        self._include_usage = req.include_usage
        self._usage_seen = False
        self._last: tuple | None = None
        self._roles: set = set()
        self._calls: set = set()

    def on_event(self, ev: SSEEvent) -> None:
        data = ev.data
        if data[:6] == "[DONE]":
            self.done = True
            if self._include_usage and not self._usage_seen and self._last is not None:
                # The client was promised a usage chunk; some compatible servers ignore stream_options.
                cid, created, model = self._last
                self.out.append(b"data: " + dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                                   "model": model, "choices": [], "usage": usage_obj(Usage())}) + b"\n\n")
            self.out.append(b"data: [DONE]\n\n")
            self.closed = True
            return
        chunk = _chunk_of(self, data)
        if chunk is None:
            return
        if chunk.get("error"):
            self.upstream_error = _stream_error(chunk["error"])
            self.out.append(b"data: " + data.encode() + b"\n\n")
            self.closed = True
            return
        edited = False
        choices = chunk.get("choices")
        if chunk.get("usage") is not None:
            self._usage_seen = True
        if not choices:
            if chunk.get("usage") is None or not self._include_usage:
                return  # Azure prompt-filter results, or usage the client did not ask for
        else:
            if self._last is None:
                self._last = (chunk.get("id"), chunk.get("created"), chunk.get("model"))
            if chunk.get("usage") is not None and not self._include_usage:
                del chunk["usage"]
                edited = True
            for ch in choices:
                if not isinstance(ch, dict):
                    continue
                d = ch.get("delta")
                if isinstance(d, dict) and (d.get("role") or d.get("tool_calls")) and self._dedupe(ch.get("index", 0), d):
                    edited = True
                fr = ch.get("finish_reason")
                if fr is not None and fr not in FINISH_LITERALS:
                    ch["finish_reason"] = FINISH_OUT[FINISH_IN.get(fr, "stop")]
                    edited = True
                if not self.committed:
                    d = ch.get("delta") or {}
                    if d.get("content") or d.get("tool_calls") or d.get("refusal") or d.get("function_call"):
                        self.committed = True
        self.out.append(b"data: " + (dumps(chunk) if edited else data.encode()) + b"\n\n")

    def _dedupe(self, ci: int, d: dict) -> bool:
        """Some compatible servers repeat role, or a tool call's id/name, in every delta, or omit the
        tool-call index; the SDK accumulator concatenates repeated strings ("assistantassistant") and
        raises on a missing index (§4.7-3/4). Returns True when the delta was edited."""
        edited = False
        if d.get("role"):
            if ci in self._roles:
                del d["role"]
                edited = True
            else:
                self._roles.add(ci)
        for k, tc in enumerate(d.get("tool_calls") or ()):
            if not isinstance(tc, dict):
                continue
            if not isinstance(tc.get("index"), int):
                tc["index"] = k
                edited = True
            key = (ci, tc["index"])
            if key in self._calls:
                if "id" in tc:
                    del tc["id"]
                    edited = True
                fn = tc.get("function")
                if isinstance(fn, dict) and "name" in fn:
                    del fn["name"]
                    edited = True
            else:
                self._calls.add(key)
        return edited

    def error(self, err: GatewayError) -> None:
        if self.closed:
            return
        self.out.append(b"data: " + dumps({"error": openai_error_obj(err)}) + b"\n\n")
        self.closed = True
