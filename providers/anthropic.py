"""Anthropic Messages family: ingress parsing, request encoding, responses, stream source and sink."""
from __future__ import annotations

import json
import re
from typing import Any

from .canonical import (
    NUM, CanonicalRequest, CanonicalResponse, IdFactory, MediaPart, Message, RefusalPart, TextPart,
    Tool, ToolCallPart, ToolChoice, ToolResultPart, Usage, dumps, fill_tool_result_names,
    merge_messages, want,
)
from .errors import DEFAULT_STATUS, GatewayError, ANTHROPIC_TYPE_TO_KIND, anthropic_error_obj, invalid
from .sse import SSEEvent
from .streaming import Sink, Source

DEFAULT_MAX_TOKENS = 4096

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


# =============================================================== ingress parsing
def _blocks(content: Any, where: str, role: str) -> list:
    if isinstance(content, str):
        return [TextPart(content)]
    if not isinstance(content, list):
        raise invalid(f"'{where}.content' must be a string or an array of content blocks", param="messages")
    parts: list = []
    for j, b in enumerate(content):
        w = f"{where}.content[{j}]"
        if not isinstance(b, dict):
            raise invalid(f"'{w}' must be an object", param="messages")
        t = b.get("type")
        if t == "text":
            if not isinstance(b.get("text"), str):
                raise invalid(f"'{w}.text' must be a string", param="messages")
            parts.append(TextPart(b["text"]))
        elif t in ("image", "document"):
            parts.append(_media(b, w))
        elif t == "tool_use":
            if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str):
                raise invalid(f"'{w}' needs a string id and name", param="messages")
            inp = b.get("input")
            parts.append(ToolCallPart(b["id"], b["name"], arguments_obj=inp if isinstance(inp, dict) else {}))
        elif t == "tool_result":
            if not isinstance(b.get("tool_use_id"), str):
                raise invalid(f"'{w}.tool_use_id' must be a string", param="messages")
            c = b.get("content")
            inner = [] if c is None else [p for p in _blocks(c, w, role) if isinstance(p, (TextPart, MediaPart))]
            parts.append(ToolResultPart(b["tool_use_id"], inner, is_error=bool(b.get("is_error")),
                                        text_form=not isinstance(c, list)))
        elif t in ("thinking", "redacted_thinking"):
            continue  # only meaningful to Anthropic itself, which is served from the raw body
        else:
            parts.append(("opaque", str(t)))
    return parts


def _media(b: dict, where: str) -> Any:
    src = b.get("source")
    if not isinstance(src, dict):
        raise invalid(f"'{where}.source' must be an object", param="messages")
    st = src.get("type")
    kind = b["type"]
    if st == "base64":
        return MediaPart(kind, src.get("media_type"), data=src.get("data"))
    if st == "url":
        return MediaPart(kind, None, url=src.get("url"))
    if st == "text" and kind == "document":
        return TextPart(str(src.get("data") or ""))
    return ("opaque", f"{kind} source {st}")


def parse_request(obj: dict) -> CanonicalRequest:
    model = want(obj, "model", (str,), "a string", required=True)
    raw_messages = want(obj, "messages", (list,), "an array", required=True)
    req = CanonicalRequest(ingress="anthropic", model=model, raw=obj)
    req.stream = bool(want(obj, "stream", (bool,), "a boolean"))
    # max_tokens is required by Anthropic; the gateway fills the target's default instead of
    # refusing, so a lenient client still works against every target.
    req.max_tokens = want(obj, "max_tokens", (int,), "an integer")
    system = obj.get("system")
    if isinstance(system, str):
        if system:
            req.system.append(system)
    elif isinstance(system, list):
        for j, b in enumerate(system):
            if not isinstance(b, dict) or not isinstance(b.get("text"), str):
                raise invalid(f"'system[{j}]' must be a text block", param="system")
            req.system.append(b["text"])
    elif system is not None:
        raise invalid("'system' must be a string or an array of text blocks", param="system")
    messages = []
    for i, m in enumerate(raw_messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(f"'{where}' must be an object", param="messages")
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise invalid(f"'{where}.role' must be 'user' or 'assistant'", param="messages")
        if "content" not in m:
            raise invalid(f"'{where}.content' is a required property", param="messages")
        messages.append(Message(role, _blocks(m["content"], where, role), isinstance(m["content"], str)))
    req.messages = merge_messages(messages)
    fill_tool_result_names(req.messages)
    req.temperature = want(obj, "temperature", NUM, "a number")
    req.top_p = want(obj, "top_p", NUM, "a number")
    req.top_k = want(obj, "top_k", (int,), "an integer")
    stops = want(obj, "stop_sequences", (list,), "an array")
    if stops:
        if not all(isinstance(s, str) for s in stops):
            raise invalid("'stop_sequences' must be an array of strings", param="stop_sequences")
        req.stop = list(stops)
    md = want(obj, "metadata", (dict,), "an object")
    if md and isinstance(md.get("user_id"), str):
        req.user = md["user_id"]
    tools = want(obj, "tools", (list,), "an array")
    for k, t in enumerate(tools or []):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise invalid(f"'tools[{k}].name' must be a string", param="tools")
        if t.get("type") not in (None, "custom"):
            continue  # server tools (web_search, code_execution...) exist only on Anthropic
        req.tools.append(Tool(t["name"], t.get("description"), t.get("input_schema")))
    tc = want(obj, "tool_choice", (dict,), "an object")
    if tc:
        mode = {"auto": "auto", "any": "required", "none": "none", "tool": "tool"}.get(tc.get("type"))
        if mode is None:
            raise invalid("'tool_choice.type' must be auto, any, tool or none", param="tool_choice")
        if mode == "tool" and not isinstance(tc.get("name"), str):
            raise invalid("'tool_choice.name' must be a string", param="tool_choice")
        req.tool_choice = ToolChoice(mode, tc.get("name"))
        if tc.get("disable_parallel_tool_use"):
            req.parallel_tool_calls = False
    # Anthropic streams always carry usage; an OpenAI-family upstream is asked for it explicitly.
    req.include_usage = True
    return req


# =============================================================== request encoding
def build_body(req: CanonicalRequest, model: str, max_tokens_default: int | None) -> dict:
    default_max = max_tokens_default or DEFAULT_MAX_TOKENS
    if req.ingress == "anthropic":
        body = dict(req.raw)
        body["model"] = model
        if not isinstance(body.get("max_tokens"), int):
            body["max_tokens"] = default_max
        return body
    if req.n is not None and req.n > 1:
        raise invalid("n > 1 is not supported by the anthropic target", param="n")
    body: dict[str, Any] = {"model": model,
                            "max_tokens": req.max_tokens if req.max_tokens is not None else default_max}
    system = [t for t in req.system if t]
    hint = _json_hint(req.response_format)
    if hint:
        system.append(hint)
    if system:
        body["system"] = [{"type": "text", "text": t} for t in system]
    messages: list[dict] = []
    for m in req.messages:
        blocks = [b for b in (_block(p) for p in m.parts) if b is not None]
        if not blocks:
            continue  # e.g. an assistant turn with content "" — Anthropic rejects empty content
        if messages and messages[-1]["role"] == m.role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": m.role, "content": blocks})
    if not messages or messages[0]["role"] != "user":
        # Anthropic wants the conversation to open with a user turn (OpenAI clients may open with an
        # assistant greeting, or send only a system message): a minimal placeholder turn, as LiteLLM does.
        messages.insert(0, {"role": "user", "content": [{"type": "text", "text": "."}]})
    if messages[-1]["role"] == "assistant":
        last = messages[-1]["content"][-1]
        if last.get("type") == "text":  # a prefill must not end in whitespace
            last["text"] = last["text"].rstrip() or "."
    body["messages"] = messages
    if req.temperature is not None:
        body["temperature"] = min(max(req.temperature, 0), 1)
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.top_k is not None:
        body["top_k"] = req.top_k
    stops = [s for s in req.stop if s.strip()]
    if stops:
        body["stop_sequences"] = stops
    if req.user:
        body["metadata"] = {"user_id": req.user}
    if req.tools:
        body["tools"] = [_tool(t) for t in req.tools]
        tc = req.tool_choice
        choice: dict[str, Any] | None = None
        if tc is not None:
            choice = ({"type": "tool", "name": tc.name} if tc.mode == "tool"
                      else {"type": {"auto": "auto", "required": "any", "none": "none"}[tc.mode]})
        if req.parallel_tool_calls is False and (choice is None or choice["type"] != "none"):
            choice = choice or {"type": "auto"}
            choice["disable_parallel_tool_use"] = True
        if choice is not None:
            body["tool_choice"] = choice
    if req.stream:
        body["stream"] = True
    return body


def _json_hint(rf: dict | None) -> str | None:
    """Anthropic has no JSON mode: response_format is emulated with a system instruction (the answer
    stays plain text, so no response/stream reshaping is needed). Documented in docs/translation.md."""
    if not rf or rf.get("type") not in ("json_object", "json_schema"):
        return None
    if rf["type"] == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        return ("Respond only with a single JSON object that conforms to this JSON schema, with no other text: "
                + json.dumps(schema, ensure_ascii=False, separators=(",", ":")))
    return "Respond only with a single valid JSON object, with no other text."


def _tool(t: Tool) -> dict:
    out: dict[str, Any] = {"name": t.name}
    if t.description:
        out["description"] = t.description
    schema = t.parameters if isinstance(t.parameters, dict) and t.parameters else {"type": "object", "properties": {}}
    if schema.get("type") != "object":
        schema = {**schema, "type": "object"}
    out["input_schema"] = schema
    return out


def _block(p: Any) -> dict | None:
    if isinstance(p, (TextPart, RefusalPart)):
        return {"type": "text", "text": p.text} if p.text else None
    if isinstance(p, MediaPart):
        src = ({"type": "url", "url": p.url} if p.url
               else {"type": "base64", "media_type": p.media_type, "data": p.data})
        return {"type": p.kind, "source": src}
    if isinstance(p, ToolCallPart):
        return {"type": "tool_use", "id": safe_tool_id(p.id), "name": p.name, "input": p.input}
    if isinstance(p, ToolResultPart):
        out: dict[str, Any] = {"type": "tool_result", "tool_use_id": safe_tool_id(p.tool_call_id)}
        if p.text_form and all(isinstance(c, TextPart) for c in p.content):
            out["content"] = p.text
        else:
            out["content"] = [b for b in (_block(c) for c in p.content) if b is not None]
        if p.is_error:
            out["is_error"] = True
        return out
    if isinstance(p, tuple):
        raise invalid(f"content of type '{p[1]}' cannot be sent to an anthropic target", param="messages")
    return None


# =============================================================== responses
def usage_from(u: Any, prev: Usage | None = None) -> Usage:
    u = u if isinstance(u, dict) else {}
    prev = prev or Usage()
    cr = u.get("cache_read_input_tokens")
    cw = u.get("cache_creation_input_tokens")
    cache_read = int(cr) if isinstance(cr, int) else prev.cache_read
    cache_write = int(cw) if isinstance(cw, int) else prev.cache_write
    inp = u.get("input_tokens")
    uncached = int(inp) if isinstance(inp, int) else prev.uncached_input
    out = u.get("output_tokens")
    return Usage(prompt_tokens=uncached + cache_read + cache_write,
                 completion_tokens=int(out) if isinstance(out, int) else prev.completion_tokens,
                 cache_read=cache_read, cache_write=cache_write)


def usage_obj(u: Usage, delta: bool = False) -> dict:
    out: dict[str, Any] = {"input_tokens": u.uncached_input, "output_tokens": u.completion_tokens}
    if u.cache_read:
        out["cache_read_input_tokens"] = u.cache_read
    if u.cache_write:
        out["cache_creation_input_tokens"] = u.cache_write
    return out


def parse_response(obj: Any) -> CanonicalResponse:
    if not isinstance(obj, dict) or not isinstance(obj.get("content"), list):
        raise GatewayError(502, "api_error", "upstream returned a malformed message")
    parts: list = []
    for b in obj["content"]:
        if not isinstance(b, dict):
            continue
        if b.get("type") == "text" and isinstance(b.get("text"), str):
            parts.append(TextPart(b["text"]))
        elif b.get("type") == "tool_use":
            inp = b.get("input")
            parts.append(ToolCallPart(str(b.get("id") or ""), str(b.get("name") or ""),
                                      arguments_obj=inp if isinstance(inp, dict) else {}))
    return CanonicalResponse(id=str(obj.get("id") or ""), model=str(obj.get("model") or ""), parts=parts,
                             finish=FINISH_IN.get(obj.get("stop_reason") or "end_turn", "stop"),
                             stop_sequence=obj.get("stop_sequence"), usage=usage_from(obj.get("usage")))


def message_id(upstream_id: str, new_id: IdFactory) -> str:
    if not upstream_id:
        return new_id("msg")
    return upstream_id if upstream_id.startswith("msg_") else "msg_" + safe_tool_id(upstream_id)


def render_response(resp: CanonicalResponse, new_id: IdFactory) -> dict:
    content: list[dict] = []
    for p in resp.parts:
        if isinstance(p, (TextPart, RefusalPart)):
            if p.text:
                if content and content[-1]["type"] == "text":
                    content[-1]["text"] += p.text
                else:
                    content.append({"type": "text", "text": p.text})
        elif isinstance(p, ToolCallPart):
            content.append({"type": "tool_use", "id": safe_tool_id(p.id), "name": p.name, "input": p.input})
    reason = FINISH_OUT.get(resp.finish, "end_turn")
    return {"id": message_id(resp.id, new_id), "type": "message", "role": "assistant", "model": resp.model,
            "content": content, "stop_reason": reason,
            "stop_sequence": resp.stop_sequence if reason == "stop_sequence" else None,
            "usage": usage_obj(resp.usage or Usage())}


# =============================================================== stream: sink (ingress side)
class AnthropicSink(Sink):
    """Canonical stream calls → Anthropic events (§2.4, §4.5): lazily opened content blocks with
    indices 0..n-1, a new block per kind change or tool call, message_delta held for real usage."""

    def __init__(self, new_id: IdFactory) -> None:
        super().__init__()
        self._new_id = new_id
        self._started = False
        self._index = -1
        self._open: str | None = None          # kind of the open block: "text" | "tool" | None
        self._tool_blocks: dict[int, int] = {}  # tool ordinal → block index
        self._reason: str | None = None
        self._stop_sequence: str | None = None
        self._usage: Usage | None = None
        self._model = ""

    def _ev(self, name: str, obj: dict) -> None:
        self.out.append(b"event: " + name.encode() + b"\ndata: " + dumps(obj) + b"\n\n")

    def start(self, id: str, model: str) -> None:
        if self._started:
            return
        self._started = True
        self._model = model
        self._ev("message_start", {"type": "message_start", "message": {
            "id": message_id(id, self._new_id), "type": "message", "role": "assistant", "content": [],
            "model": model, "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0}}})

    def _ensure_started(self) -> None:
        if not self._started:
            self.start("", "")

    def _close_block(self) -> None:
        if self._open is not None:
            self._ev("content_block_stop", {"type": "content_block_stop", "index": self._index})
            self._open = None

    def _open_block(self, kind: str, block: dict) -> None:
        self._close_block()
        self._index += 1
        self._open = kind
        self._ev("content_block_start", {"type": "content_block_start", "index": self._index, "content_block": block})

    def text(self, s: str) -> None:
        if not s or self._reason is not None:
            return
        self._ensure_started()
        if self._open != "text":
            self._open_block("text", {"type": "text", "text": ""})
        self.committed = True
        self._ev("content_block_delta", {"type": "content_block_delta", "index": self._index,
                                         "delta": {"type": "text_delta", "text": s}})

    def refusal(self, s: str) -> None:
        # Anthropic has no refusal block: the refusal text is the answer, stop_reason says "refusal".
        self.text(s)

    def tool_start(self, index: int, id: str, name: str) -> None:
        if self._reason is not None:
            return
        self._ensure_started()
        self._open_block("tool", {"type": "tool_use", "id": safe_tool_id(id), "name": name, "input": {}})
        self._tool_blocks[index] = self._index
        self.committed = True

    def tool_args(self, index: int, fragment: str) -> None:
        block = self._tool_blocks.get(index)
        # Fragments for a block already closed (interleaved parallel calls) cannot be expressed in
        # Anthropic's strictly sequential blocks; no known upstream interleaves.
        if not fragment or block is None or block != self._index or self._open != "tool":
            return
        self._ev("content_block_delta", {"type": "content_block_delta", "index": block,
                                         "delta": {"type": "input_json_delta", "partial_json": fragment}})

    def usage(self, u: Usage) -> None:
        self._usage = u
        if self._reason is not None and not self.closed:
            self._final()

    def finish(self, reason: str, stop_sequence: str | None = None) -> None:
        if self._reason is not None or self.closed:
            return
        self._ensure_started()
        self._close_block()
        self._reason = reason
        self._stop_sequence = stop_sequence
        if self._usage is not None:
            self._final()

    def end(self) -> None:
        if self.closed:
            return
        if self._reason is None:
            self.finish("stop")
        if not self.closed:
            self._final()

    def _final(self) -> None:
        reason = FINISH_OUT.get(self._reason or "stop", "end_turn")
        self._ev("message_delta", {"type": "message_delta",
                                   "delta": {"stop_reason": reason,
                                             "stop_sequence": self._stop_sequence if reason == "stop_sequence" else None},
                                   "usage": usage_obj(self._usage or Usage())})
        self._ev("message_stop", {"type": "message_stop"})
        self.closed = True

    def error(self, err: GatewayError) -> None:
        if self.closed:
            return
        self._ev("error", anthropic_error_obj(err))
        self.closed = True


# =============================================================== stream: source (upstream side)
def _event_error(obj: Any) -> GatewayError:
    err = obj.get("error") if isinstance(obj, dict) else None
    err = err if isinstance(err, dict) else {}
    etype = err.get("type") if isinstance(err.get("type"), str) else "api_error"
    kind = ANTHROPIC_TYPE_TO_KIND.get(etype, "api_error")
    return GatewayError(DEFAULT_STATUS[kind], kind, str(err.get("message") or "upstream stream error"),
                        upstream_type=etype)


class AnthropicSource(Source):
    """Anthropic events → canonical calls (§4.3)."""

    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        self._blocks: dict[int, list] = {}   # block index → [tool ordinal, got_args]
        self._tools = 0
        self._usage: Usage | None = None

    def on_event(self, ev: SSEEvent) -> None:
        if ev.data[:6] == "[DONE]":
            return  # some Anthropic-compatible proxies append OpenAI's sentinel; it means nothing here
        try:
            obj = json.loads(ev.data)
        except ValueError:
            self.invalid_event()
            return
        if not isinstance(obj, dict):
            return
        t = obj.get("type") or ev.event
        sink = self.sink
        if t == "content_block_delta":
            d = obj.get("delta") or {}
            dt = d.get("type")
            if dt == "text_delta":
                sink.text(d.get("text") or "")
            elif dt == "input_json_delta":
                blk = self._blocks.get(obj.get("index"))
                frag = d.get("partial_json") or ""
                if blk is not None and frag:
                    blk[1] = True
                    sink.tool_args(blk[0], frag)
        elif t == "content_block_start":
            cb = obj.get("content_block") or {}
            if cb.get("type") == "tool_use":
                self._blocks[obj.get("index")] = [self._tools, False]
                sink.tool_start(self._tools, str(cb.get("id") or ""), str(cb.get("name") or ""))
                self._tools += 1
            elif cb.get("type") == "text" and cb.get("text"):
                sink.text(cb["text"])
        elif t == "content_block_stop":
            blk = self._blocks.get(obj.get("index"))
            if blk is not None and not blk[1]:
                # a tool with no argument deltas: OpenAI clients json.loads(arguments), "" would fail
                blk[1] = True
                sink.tool_args(blk[0], "{}")
        elif t == "message_start":
            m = obj.get("message") or {}
            self._usage = usage_from(m.get("usage"))
            sink.start(str(m.get("id") or ""), str(m.get("model") or ""))
        elif t == "message_delta":
            d = obj.get("delta") or {}
            self._usage = usage_from(obj.get("usage"), self._usage)
            sink.usage(self._usage)
            sink.finish(FINISH_IN.get(d.get("stop_reason") or "end_turn", "stop"), d.get("stop_sequence"))
        elif t == "message_stop":
            self.done = True
            sink.end()
        elif t == "error":
            self.fail(_event_error(obj))
        # ping and unknown future events carry nothing to translate


# =============================================================== stream: passthrough
class AnthropicPassthrough(Source, Sink):
    """Anthropic upstream → Anthropic client: events re-framed (always with an `event:` line) with
    their JSON bytes unchanged; only commit/terminal/error state is tracked."""

    def __init__(self) -> None:
        Sink.__init__(self)
        Source.__init__(self, self)

    def on_event(self, ev: SSEEvent) -> None:
        data = ev.data
        if data[:6] == "[DONE]":
            return
        try:
            obj = json.loads(data)
        except ValueError:
            self.invalid_event()
            return
        t = (obj.get("type") if isinstance(obj, dict) else None) or ev.event
        if not t:
            return
        if not self.committed:
            if t == "content_block_delta":
                d = obj.get("delta") or {}
                if d.get("text") or d.get("partial_json") or d.get("thinking"):
                    self.committed = True
            elif t == "content_block_start" and (obj.get("content_block") or {}).get("type") != "text":
                self.committed = True
        self.out.append(b"event: " + t.encode() + b"\ndata: " + data.encode() + b"\n\n")
        if t == "message_stop":
            self.done = True
            self.closed = True
        elif t == "error":
            self.upstream_error = _event_error(obj)
            self.closed = True

    def error(self, err: GatewayError) -> None:
        if self.closed:
            return
        self.out.append(b"event: error\ndata: " + dumps(anthropic_error_obj(err)) + b"\n\n")
        self.closed = True
