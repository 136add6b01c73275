"""Anthropic Messages, backend side: encode canonical requests for Anthropic, decode its answers and streams.
Anthropic clients are served by anthropic_passthrough.py."""
from __future__ import annotations

import json
from typing import Any

from .canonical import (
    DYNAMIC_BUDGET, EFFORT_BUDGETS, CanonicalRequest, CanonicalResponse, IdFactory, MediaPart, RefusalPart,
    TextPart, ThinkingPart, Tool, ToolCallPart, ToolResultPart, Usage, put_settings,
)
from .errors import GatewayError, invalid
from .interface import Backend, Passthrough, TargetSpec
from .anthropic_wire import (
    DEFAULT_MAX_TOKENS, FINISH_IN, MIN_THINKING_BUDGET, THINKING_BLOCKS, event_error, safe_tool_id, thinking_block,
    thinking_part, usage_from,
)
from .sse import SSEEvent
from .streaming import Sink, Source

# =============================================================== request encoding
def encode(req: CanonicalRequest, model: str, max_tokens_default: int | None) -> dict:
    """A canonical request (from a client of another family) → a Messages body."""
    default_max = max_tokens_default or DEFAULT_MAX_TOKENS
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
    put_settings(body, req, {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k"}, temperature_max=1)
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
    _thinking(body, req)
    if req.stream:
        body["stream"] = True
    return body


def _thinking(body: dict, req: CanonicalRequest) -> None:
    """The caller's reasoning as `thinking`, with what Anthropic demands of a thinking request (docs/translation.md,
    Reasoning): budget_tokens ≥ 1024 and below max_tokens (raised to budget + max_tokens when it is not above the
    budget), temperature and top_k unset, top_p ≥ 0.95. Thinking stays off where Anthropic refuses it: a forced
    tool_choice, an assistant prefill, or a tool-use turn that does not open with a signed thinking block."""
    budget = req.reasoning.tokens if req.reasoning is not None else None
    if budget is None:
        return
    if budget == 0:
        body["thinking"] = {"type": "disabled"}
        return
    if budget == DYNAMIC_BUDGET:
        budget = EFFORT_BUDGETS["medium"]
    if (body.get("tool_choice") or {}).get("type") in ("any", "tool") or not _may_think(body["messages"]):
        return
    budget = max(budget, MIN_THINKING_BUDGET)
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if body["max_tokens"] <= budget:
        body["max_tokens"] += budget
    body.pop("temperature", None)
    body.pop("top_k", None)
    if "top_p" in body:
        body["top_p"] = max(body["top_p"], 0.95)


def _may_think(messages: list[dict]) -> bool:
    """Whether Anthropic takes thinking for this conversation: not after an assistant prefill, and the last
    assistant turn, when it called tools, must open with a thinking block."""
    if messages[-1]["role"] == "assistant":
        return False
    last = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), None)
    if last is None or not any(b["type"] == "tool_use" for b in last):
        return True
    return last[0]["type"] in THINKING_BLOCKS


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
    if isinstance(p, ThinkingPart):
        return thinking_block(p)
    if isinstance(p, tuple):
        raise invalid(f"content of type '{p[1]}' cannot be sent to an anthropic target", param="messages")
    return None


# =============================================================== responses
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
        elif b.get("type") in THINKING_BLOCKS:
            thought = thinking_part(b)
            if thought is not None:
                parts.append(thought)
    return CanonicalResponse(id=str(obj.get("id") or ""), model=str(obj.get("model") or ""), parts=parts,
                             finish=FINISH_IN.get(obj.get("stop_reason") or "end_turn", "stop"),
                             stop_sequence=obj.get("stop_sequence"), usage=usage_from(obj.get("usage")))


# =============================================================== stream source
class AnthropicSource(Source):
    """Anthropic events → canonical calls (§4.3)."""

    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        self._blocks: dict[int, list] = {}   # block index → [tool ordinal, got_args]
        self._tools = 0

    def on_event(self, ev: SSEEvent) -> None:
        if ev.data[:6] == "[DONE]":
            return  # some Anthropic-compatible proxies append OpenAI's sentinel; it means nothing here
        obj = self.event_object(ev.data)
        if obj is None:
            return
        t = obj.get("type") or ev.event
        sink = self.sink
        if t == "content_block_delta":
            d = obj.get("delta") or {}
            dt = d.get("type")
            if dt == "text_delta":
                sink.text(d.get("text") or "")
            elif dt == "thinking_delta":
                sink.thinking(d.get("thinking") or "")
            elif dt == "signature_delta" and isinstance(d.get("signature"), str):
                sink.thinking_signature(d["signature"])
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
            elif cb.get("type") == "thinking" and cb.get("thinking"):
                sink.thinking(cb["thinking"])
            elif cb.get("type") == "redacted_thinking" and isinstance(cb.get("data"), str):
                sink.redacted_thinking(cb["data"])
        elif t == "content_block_stop":
            blk = self._blocks.get(obj.get("index"))
            if blk is not None and not blk[1]:
                # a tool with no argument deltas: OpenAI clients json.loads(arguments), "" would fail
                blk[1] = True
                sink.tool_args(blk[0], "{}")
        elif t == "message_start":
            m = obj.get("message") or {}
            self.reported_usage = usage_from(m.get("usage"), self.reported_usage)
            if self.reported_model is None:
                self.reported_model = m.get("model") if isinstance(m.get("model"), str) and m["model"] else None
            sink.start(str(m.get("id") or ""), str(m.get("model") or ""))
        elif t == "message_delta":
            d = obj.get("delta") or {}
            self.reported_usage = usage_from(obj.get("usage"), self.reported_usage)
            if self.reported_usage is not None:
                sink.usage(self.reported_usage)
            sink.finish(FINISH_IN.get(d.get("stop_reason") or "end_turn", "stop"), d.get("stop_sequence"))
        elif t == "message_stop":
            self.done = True
            sink.end()
        elif t == "error":
            self.fail(event_error(obj))
        # ping and unknown future events carry nothing to translate


# =============================================================== the backend
ANTHROPIC_VERSION = "2023-06-01"


class AnthropicBackend(Backend):
    """api.anthropic.com and servers of the same API."""

    name = "anthropic"
    origin = ("https", "api.anthropic.com", 443)
    key_header, key_prefix = "x-api-key", ""
    version_headers = {"anthropic-version": ANTHROPIC_VERSION}

    def __init__(self, passthroughs: tuple[Passthrough, ...] = ()) -> None:
        self.passthroughs = passthroughs

    def path(self, req: CanonicalRequest, target: TargetSpec, model: str) -> str:
        return target.path or "/v1/messages"

    def build_body(self, req: CanonicalRequest, model: str, target: TargetSpec) -> dict:
        return encode(req, model, target.max_tokens_default)

    def parse_response(self, obj: Any, req: CanonicalRequest, new_id: IdFactory) -> CanonicalResponse:
        return parse_response(obj)

    def stream_source(self, sink: Sink, req: CanonicalRequest, new_id: IdFactory) -> Source:
        return AnthropicSource(sink)

    def usage_of(self, obj: Any) -> Usage | None:
        return usage_from(obj.get("usage")) if isinstance(obj, dict) else None
