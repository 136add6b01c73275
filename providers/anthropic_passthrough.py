"""Anthropic client → Anthropic target: the client's own body goes upstream (with the model and a max_tokens
when the client gave none), and answers pass through with the bytes of each event kept."""
from __future__ import annotations

from typing import Any

from .canonical import CanonicalRequest, Clock
from .errors import GatewayError, error_shape
from .interface import Passthrough, TargetSpec
from .anthropic_wire import DEFAULT_MAX_TOKENS, error_event, event_error, usage_from
from .sse import SSEEvent
from .streaming import INVALID, Sink, Source

class AnthropicRelay(Source, Sink):
    """Anthropic upstream → Anthropic client: events re-framed (always with an `event:` line) with
    their JSON bytes unchanged; only commit/terminal/error state is tracked."""

    error_event = staticmethod(error_event)

    def __init__(self) -> None:
        Sink.__init__(self)
        Source.__init__(self, self)

    def on_event(self, ev: SSEEvent) -> None:
        data = ev.data
        if data[:6] == "[DONE]":
            return
        obj = self.event_json(data)
        if obj is INVALID:
            return
        t = (obj.get("type") if isinstance(obj, dict) else None) or ev.event
        if not t:
            return
        if t == "message_start" or t == "message_delta":
            self._report(t, obj)
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
            self.upstream_error = event_error(obj)
            self.closed = True

    def _report(self, t: str, obj: Any) -> None:
        """Usage (input in message_start, output in message_delta, merged) and model, for the gateway."""
        if not isinstance(obj, dict):
            return
        if t == "message_start":
            m = obj.get("message")
            if not isinstance(m, dict):
                return
            if self.reported_model is None and isinstance(m.get("model"), str) and m["model"]:
                self.reported_model = m["model"]
            obj = m
        self.reported_usage = usage_from(obj.get("usage"), self.reported_usage)


class AnthropicPassthrough(Passthrough):
    ingress = "anthropic"

    def build_body(self, req: CanonicalRequest, model: str, target: TargetSpec) -> dict:
        body = dict(req.raw)
        body["model"] = model
        if not isinstance(body.get("max_tokens"), int):
            body["max_tokens"] = target.max_tokens_default or DEFAULT_MAX_TOKENS
        return body

    def verbatim_error(self, body: bytes) -> bool:
        return error_shape(body) == self.ingress

    def response_body(self, obj: Any, body: bytes, now: Clock) -> bytes:
        if not isinstance(obj, dict) or obj.get("type") != "message":
            raise GatewayError(502, "api_error", "anthropic returned a malformed message")
        return body

    def relay(self, req: CanonicalRequest) -> Source:
        return AnthropicRelay()
