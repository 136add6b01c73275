"""OpenAI Chat Completions, backend side: encode canonical requests for OpenAI, Azure OpenAI and
OpenAI-compatible servers, decode their answers and streams. The three providers are configured
instances of one `OpenAIBackend` (registry.py); OpenAI clients are served by openai_passthrough.py."""
from __future__ import annotations

import hashlib
import re
from dataclasses import KW_ONLY, dataclass
from typing import Any
from urllib.parse import quote

from .canonical import (
    CanonicalRequest, CanonicalResponse, IdFactory, MediaPart, RefusalPart, TextPart, ThinkingPart, Tool,
    ToolCallPart, ToolResultPart, Usage, put_settings,
)
from .errors import GatewayError, invalid
from .interface import Backend, Passthrough, TargetSpec, add_query, fill_model
from .openai_wire import FINISH_IN, stream_error, usage_from
from .sse import SSEEvent
from .streaming import Sink, Source

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


def encode(req: CanonicalRequest, model: str, provider: str, max_tokens_field: str) -> dict:
    """A canonical request (from a client of another family) → a Chat Completions body."""
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
    put_settings(body, req, {"max_tokens": max_tokens_field, "temperature": "temperature", "top_p": "top_p"},
                 temperature_max=2)
    if req.stop:
        body["stop"] = req.stop[:4]
    put_settings(body, req, {k: k for k in ("seed", "presence_penalty", "frequency_penalty", "user",
                                            "response_format")})
    if req.tools:
        body["tools"] = [{"type": "function", "function": _tool_fn(t, req.tool_names)} for t in req.tools]
        tc = req.tool_choice
        if tc is not None:
            body["tool_choice"] = (tc.mode if tc.mode != "tool"
                                   else {"type": "function", "function": {"name": short_name(tc.name or "", req.tool_names)}})
        if req.parallel_tool_calls is False:
            body["parallel_tool_calls"] = False
    # The caller's reasoning as OpenAI's effort (an Anthropic budget by the effort table's thresholds). Off or
    # dynamic sends nothing: the model's default, since not every model takes "none". openai-compatible servers
    # get it too (vLLM, DeepSeek, Groq and Ollama take reasoning_effort).
    effort = req.reasoning.level if req.reasoning is not None else None
    if effort is not None:
        body["reasoning_effort"] = effort
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


# Where OpenAI-compatible servers put a model's reasoning in a message or delta: DeepSeek and vLLM's
# `reasoning_content`, newer vLLM (and OpenRouter) `reasoning`.
REASONING_FIELDS = ("reasoning_content", "reasoning")


def reasoning_of(msg: dict) -> str:
    """The reasoning text of a message or stream delta ("" when it carries none)."""
    for key in REASONING_FIELDS:
        v = msg.get(key)
        if isinstance(v, str) and v:
            return v
    return ""


# =============================================================== responses
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
        reasoning = reasoning_of(msg)
        if reasoning:
            parts.insert(0, ThinkingPart(reasoning))
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


# =============================================================== stream source
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
        chunk = self.event_object(data)
        if chunk is None:
            return
        if chunk.get("error"):
            self.fail(stream_error(chunk["error"]))
            return
        sink = self.sink
        choices = chunk.get("choices") or []
        if not self._started and (choices or chunk.get("id")):
            self._started = True
            sink.start(str(chunk.get("id") or ""), str(chunk.get("model") or ""))
        if self.reported_model is None:
            m = chunk.get("model")
            self.reported_model = m if isinstance(m, str) and m else None
        for ch in choices:
            if not isinstance(ch, dict) or ch.get("index", 0) != 0:
                continue  # only one answer can be expressed in a non-OpenAI format
            delta = ch.get("delta") or {}
            reasoning = reasoning_of(delta)
            if reasoning:
                sink.thinking(reasoning)
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
        if u is not None:
            usage = usage_from(u)
            if usage is not None:
                self.reported_usage = usage
                sink.usage(usage)


# =============================================================== the backend
@dataclass(eq=False)
class OpenAIBackend(Backend):
    """A Chat Completions server. The providers of this family differ only in configuration:

    `origin`            where a target without host goes (None: the target must name one)
    `default_path`      the path when the target names none; `{model}` in it is filled only when
    `model_in_path`     is set (Azure deployments), as one checked path segment
    `api_version`       the default `api-version` query parameter (Azure; the target's own wins)
    `key_header`/`key_prefix`  how an `api_key` credential is sent
    `max_tokens_field`  where the canonical max_tokens goes. Only api.openai.com is known to accept
                        max_completion_tokens everywhere (and its reasoning models reject max_tokens);
                        Azure/compat servers universally take max_tokens.
    `passthroughs`      the client formats served natively (openai_passthrough.OpenAIPassthrough, ...)
    """

    name: str
    _: KW_ONLY
    origin: tuple[str, str, int] | None = None
    default_path: str = "/v1/chat/completions"
    model_in_path: bool = False
    api_version: str | None = None
    key_header: str = "authorization"
    key_prefix: str = "Bearer "
    max_tokens_field: str = "max_tokens"
    passthroughs: tuple[Passthrough, ...] = ()

    def path(self, req: CanonicalRequest, target: TargetSpec, model: str) -> str:
        path = target.path or self.default_path
        if self.model_in_path:
            path = fill_model(path, model, self.name)
        if self.api_version and "api-version=" not in path and "/openai/v1/" not in path:
            path = add_query(path, "api-version=" + quote(target.api_version or self.api_version, safe=""))
        return path

    def build_body(self, req: CanonicalRequest, model: str, target: TargetSpec) -> dict:
        return encode(req, model, self.name, self.max_tokens_field)

    def parse_response(self, obj: Any, req: CanonicalRequest, new_id: IdFactory) -> CanonicalResponse:
        return parse_response(obj, new_id, req.tool_names)

    def stream_source(self, sink: Sink, req: CanonicalRequest, new_id: IdFactory) -> Source:
        return OpenAISource(sink, new_id, req.tool_names)

    def usage_of(self, obj: Any) -> Usage | None:
        return usage_from(obj.get("usage")) if isinstance(obj, dict) else None
