"""Anthropic Messages, client side: parse a client's request into canonical, render canonical answers and
streams (lazily opened content blocks) and errors in Anthropic's format."""
from __future__ import annotations

import json
from typing import Any

from .canonical import (
    DYNAMIC_BUDGET, NUM, CanonicalRequest, CanonicalResponse, Clock, IdFactory, MediaPart, Message, Reasoning,
    RefusalPart, TextPart, ThinkingPart, Tool, ToolCallPart, ToolChoice, ToolResultPart, Usage, dumps,
    fill_tool_result_names, merge_messages, want,
)
from .errors import GatewayError, invalid
from .interface import Client
from .anthropic_wire import (
    FINISH_OUT, MIN_THINKING_BUDGET, THINKING_BLOCKS, error_event, error_obj, safe_tool_id, thinking_block,
    thinking_part, usage_obj,
)
from .streaming import Sink

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
        elif t in THINKING_BLOCKS:
            thought = thinking_part(b)
            if thought is None:
                raise invalid(f"'{w}' needs a string " + ("thinking" if t == "thinking" else "data"),
                              param="messages")
            parts.append(thought)
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
    req.reasoning = _reasoning(obj, req.max_tokens)
    # Anthropic streams always carry usage; an OpenAI-family upstream is asked for it explicitly.
    req.include_usage = True
    return req


def _reasoning(obj: dict, max_tokens: int | None) -> Reasoning | None:
    """`thinking` → Reasoning, checked as Anthropic checks it: enabled needs budget_tokens ≥ 1024 and below
    max_tokens (when the caller gave max_tokens; otherwise the target's default is filled later). Adaptive
    thinking lets the model decide: a dynamic budget."""
    th = want(obj, "thinking", (dict,), "an object")
    if th is None:
        return None
    kind = th.get("type")
    if kind == "disabled":
        return Reasoning(budget=0)
    if kind == "adaptive":
        return Reasoning(budget=DYNAMIC_BUDGET, include=True)
    if kind != "enabled":
        raise invalid("thinking: Input tag found using 'type' does not match any of the expected tags: "
                      "'enabled', 'disabled', 'adaptive'", param="thinking")
    budget = th.get("budget_tokens")
    if type(budget) is not int:
        raise invalid("thinking.enabled.budget_tokens: Input should be a valid integer", param="thinking")
    if budget < MIN_THINKING_BUDGET:
        raise invalid(f"thinking.enabled.budget_tokens: Input should be greater than or equal to "
                      f"{MIN_THINKING_BUDGET}", param="thinking")
    if max_tokens is not None and budget >= max_tokens:
        raise invalid("`max_tokens` must be greater than `thinking.budget_tokens`.", param="max_tokens")
    return Reasoning(budget=budget, include=True)


# =============================================================== responses
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
        elif isinstance(p, ThinkingPart):
            block = thinking_block(p)  # None for unsigned reasoning: Anthropic would refuse it on the next turn
            if block is not None:
                content.append(block)
    reason = FINISH_OUT.get(resp.finish, "end_turn")
    return {"id": message_id(resp.id, new_id), "type": "message", "role": "assistant", "model": resp.model,
            "content": content, "stop_reason": reason,
            "stop_sequence": resp.stop_sequence if reason == "stop_sequence" else None,
            "usage": usage_obj(resp.usage or Usage())}


# =============================================================== stream sink
class AnthropicSink(Sink):
    """Canonical stream calls → Anthropic events (§2.4, §4.5): lazily opened content blocks with
    indices 0..n-1, a new block per kind change or tool call, message_delta held for real usage."""

    error_event = staticmethod(error_event)

    def __init__(self, new_id: IdFactory) -> None:
        super().__init__()
        self._new_id = new_id
        self._started = False
        self._index = -1
        self._open: str | None = None          # kind of the open block: "text" | "tool" | "thinking" | None
        self._tool_blocks: dict[int, int] = {}  # tool ordinal → block index
        self._reason: str | None = None
        self._stop_sequence: str | None = None
        self._usage: Usage | None = None
        self._model = ""
        self._thinking: list[str] = []          # the reasoning fragments waiting for their block's signature

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
        self._thinking = []  # reasoning that got no signature is never shown: Anthropic refuses it back
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

    def thinking(self, s: str) -> None:
        # Held until the signature arrives: only a signed block can be sent back on the next turn.
        if s and self._reason is None:
            self._thinking.append(s)

    def thinking_signature(self, signature: str) -> None:
        """The held reasoning as one thinking block, streamed as Anthropic does: block start, thinking_delta
        events, signature_delta, block stop. Thinking does not commit the stream."""
        if self._reason is not None:
            return
        fragments = self._thinking
        self._ensure_started()
        self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        for f in fragments:
            self._ev("content_block_delta", {"type": "content_block_delta", "index": self._index,
                                             "delta": {"type": "thinking_delta", "thinking": f}})
        self._ev("content_block_delta", {"type": "content_block_delta", "index": self._index,
                                         "delta": {"type": "signature_delta", "signature": signature}})
        self._close_block()

    def redacted_thinking(self, data: str) -> None:
        if self._reason is not None:
            return
        self._ensure_started()
        self._open_block("redacted_thinking", {"type": "redacted_thinking", "data": data})
        self._close_block()

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


class AnthropicClient(Client):
    """Clients of the Anthropic Messages API (`POST …/messages`)."""

    name = "anthropic"
    path_suffix = "/messages"
    # anthropic-beta switches features on: a same-family request is served from the client's body, whose
    # beta fields mean nothing upstream without the header.
    forwarded_headers = ("anthropic-beta",)

    def parse_request(self, obj: dict) -> CanonicalRequest:
        return parse_request(obj)

    def render_response(self, resp: CanonicalResponse, req: CanonicalRequest, now: Clock,
                        new_id: IdFactory) -> dict:
        return render_response(resp, new_id)

    def stream_sink(self, req: CanonicalRequest, now: Clock, new_id: IdFactory) -> Sink:
        return AnthropicSink(new_id)

    def error_body(self, err: GatewayError) -> bytes:
        return json.dumps(error_obj(err), ensure_ascii=False, separators=(",", ":")).encode()
