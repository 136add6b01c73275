"""OpenAI client → OpenAI-family target: the client's own body goes upstream with the few edits the target
needs, and answers pass through near-verbatim. Translating through the hub would only lose fields (logprobs,
n>1, audio, ...)."""
from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any

from .canonical import CanonicalRequest, Clock, Usage, dumps
from .errors import GatewayError, error_shape
from .interface import Passthrough, TargetSpec
from .openai_wire import (
    FINISH_IN, FINISH_LITERALS, FINISH_OUT, error_event, stream_error, usage_from, usage_obj,
)
from .sse import SSEEvent
from .streaming import Sink, Source

# Top-level fields essentially every OpenAI-compatible server accepts (Groq, vLLM, DeepSeek, Together,
# Mistral, Ollama...). Anything else (logprobs, logit_bias, store, metadata, audio...) is rejected by
# at least one of them (§3.2).
COMPAT_FIELDS = frozenset((
    "model", "messages", "max_tokens", "temperature", "top_p", "stop", "stream", "stream_options",
    "tools", "tool_choice", "parallel_tool_calls", "n", "seed", "presence_penalty", "frequency_penalty",
    "response_format", "user", "reasoning_effort",
))


def _from_openai_body(req: CanonicalRequest, model: str, fields: frozenset | None, always_usage: bool) -> dict:
    body = dict(req.raw)
    body["model"] = model
    system = body.pop("system", None)
    if system is not None:  # the mixed TrustGate body: OpenAI rejects a top-level `system`
        body["messages"] = [{"role": "system", "content": "\n".join(req.system[:_n_top_system(system)])}] + list(body["messages"])
    if fields is not None:
        if "max_tokens" not in body and "max_completion_tokens" in body:
            body["max_tokens"] = body["max_completion_tokens"]
        body = {k: v for k, v in body.items() if k in fields}
        # Groq rejects messages[].name; nobody needs it to answer.
        body["messages"] = [{k: v for k, v in m.items() if k != "name"} if isinstance(m, dict) and "name" in m else m
                            for m in body["messages"]]
    if req.stream:
        so = dict(body.get("stream_options") or {})
        if always_usage or req.include_usage:
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


class OpenAIRelay(Source, Sink):
    """OpenAI-family upstream → OpenAI client. Events are re-framed, their JSON bytes kept unless an
    edit is needed: strip the usage chunk the gateway asked for on its own behalf, drop Azure's
    prompt-filter chunk (`choices: []`, empty id), and normalise off-list finish reasons."""

    error_event = staticmethod(error_event)

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
        chunk = self.event_object(data)
        if chunk is None:
            return
        if chunk.get("error"):
            self.upstream_error = stream_error(chunk["error"])
            self.out.append(b"data: " + data.encode() + b"\n\n")
            self.closed = True
            return
        edited = False
        choices = chunk.get("choices")
        if self.reported_model is None:
            m = chunk.get("model")
            self.reported_model = m if isinstance(m, str) and m else None
        if chunk.get("usage") is not None:
            self._usage_seen = True
            # Recorded before it may be stripped: the gateway accounts what the caller does not see.
            self.reported_usage = usage_from(chunk["usage"]) or self.reported_usage
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


@dataclass(eq=False)
class OpenAIPassthrough(Passthrough):
    """`fields`: when set, the body keeps only these top-level fields (servers that reject the rest), with
    max_completion_tokens mirrored into max_tokens and messages[].name dropped. `always_usage`: a stream asks
    for usage even when the client did not (the relay strips that chunk again); off where a server may not
    know stream_options."""

    ingress = "openai"
    _: KW_ONLY
    fields: frozenset | None = None
    always_usage: bool = True

    def build_body(self, req: CanonicalRequest, model: str, target: TargetSpec) -> dict:
        return _from_openai_body(req, model, self.fields, self.always_usage)

    def verbatim_error(self, body: bytes) -> bool:
        return error_shape(body) == self.ingress

    def response_body(self, obj: Any, body: bytes, now: Clock) -> bytes:
        return dumps(obj) if normalize_response(obj, int(now())) else body

    def relay(self, req: CanonicalRequest) -> Source:
        return OpenAIRelay(req)
