"""Responses client → OpenAI target: the client's own body goes to `/v1/responses` with the model replaced, and
answers pass through verbatim (stored state, hosted tools, reasoning items: nothing is lost).

The stream relay re-frames every event with its JSON bytes kept and tracks what the gateway needs: the commit
point (the first output_text / refusal / function-call-arguments delta), the model and response id (from
response.created), the usage (from response.completed or .incomplete), and upstream failures (`error`,
`response.failed`). It also reads response ids out of answers for addon/response_affinity.py.
"""
from __future__ import annotations

import json
from typing import Any

from .canonical import CanonicalRequest, Clock, Usage
from .errors import GatewayError, error_shape
from .interface import Backend, Passthrough, TargetSpec
from .responses_stream import response_error, event_error
from .responses_wire import INGRESS, error_event, usage_from
from .sse import SSEDecoder, SSEEvent
from .streaming import INVALID, Sink, Source

RESPONSES_PATH = "/v1/responses"
_CHAT_SUFFIX = "/chat/completions"
_COMMIT_EVENTS = frozenset(("response.output_text.delta", "response.refusal.delta",
                            "response.function_call_arguments.delta"))
_TERMINAL_EVENTS = frozenset(("response.completed", "response.incomplete"))
_LIFECYCLE_EVENTS = frozenset(("response.created", "response.in_progress", "response.queued"))


def responses_path(target_path: str | None) -> str:
    """Where a target's Responses requests go: its configured chat path with `/responses` in place of
    `/chat/completions` (query kept), a configured `…/responses` path as it is, else `/v1/responses`."""
    if not target_path:
        return RESPONSES_PATH
    base, sep, query = target_path.partition("?")
    base = base.rstrip("/")
    if base.endswith(_CHAT_SUFFIX):
        base = base[: -len(_CHAT_SUFFIX)] + "/responses"
    elif not base.endswith("/responses"):
        base = RESPONSES_PATH
    return base + sep + query


class ResponsesRelay(Source, Sink):
    """OpenAI Responses stream → Responses client, event bytes kept (see the module docstring)."""

    def __init__(self) -> None:
        Sink.__init__(self)
        Source.__init__(self, self)
        self.response_id: str | None = None
        self._seq = 0   # the next sequence number (for an error event the gateway adds)

    def on_event(self, ev: SSEEvent) -> None:
        data = ev.data
        obj = self.event_json(data)
        if obj is INVALID:
            return
        if not isinstance(obj, dict):
            self.invalid_event()
            return
        t = obj.get("type") or ev.event
        if not isinstance(t, str) or not t:
            return
        if isinstance(obj.get("sequence_number"), int):
            self._seq = obj["sequence_number"] + 1
        resp = obj.get("response")
        if t in _LIFECYCLE_EVENTS and isinstance(resp, dict):
            if self.response_id is None and isinstance(resp.get("id"), str):
                self.response_id = resp["id"]
            if self.reported_model is None and isinstance(resp.get("model"), str) and resp["model"]:
                self.reported_model = resp["model"]
        elif t in _COMMIT_EVENTS and obj.get("delta"):
            self.committed = True
        self.out.append(b"event: " + t.encode() + b"\ndata: " + data.encode() + b"\n\n")
        if t in _TERMINAL_EVENTS:
            self.reported_usage = usage_from((resp or {}).get("usage")) or self.reported_usage
            self.done = True
            self.closed = True
        elif t == "response.failed":
            self.upstream_error = response_error(resp)
            self.closed = True
        elif t == "error":
            self.upstream_error = event_error(obj)
            self.closed = True

    def error(self, err: GatewayError) -> None:
        if self.closed:
            return
        self.out.append(error_event(err, self._seq))
        self.closed = True


class ResponsesPassthrough(Passthrough):
    ingress = INGRESS

    def path(self, backend: Backend, req: CanonicalRequest, target: TargetSpec, model: str) -> str:
        return responses_path(target.path)

    def build_body(self, req: CanonicalRequest, model: str, target: TargetSpec) -> dict:
        body = dict(req.raw)
        body["model"] = model
        return body

    def verbatim_error(self, body: bytes) -> bool:
        return error_shape(body) == "openai"

    def response_body(self, obj: Any, body: bytes, now: Clock) -> bytes:
        if not isinstance(obj, dict) or obj.get("object") != "response" or not isinstance(obj.get("id"), str):
            raise GatewayError(502, "api_error", "openai returned a malformed response object")
        return body

    def usage_of(self, backend: Backend, obj: Any) -> Usage | None:
        return usage_from(obj.get("usage")) if isinstance(obj, dict) else None

    def relay(self, req: CanonicalRequest) -> Source:
        return ResponsesRelay()


# ---------------------------------------------------------------- response ids (for the gateway's affinity map)
def response_id_in_body(body: bytes) -> str | None:
    """The id of a Responses JSON answer (`{"object": "response", "id": …}`); None for anything else."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(obj, dict) and obj.get("object") == "response" and isinstance(obj.get("id"), str):
        return obj["id"]
    return None


def response_id_in_events(data: bytes) -> str | None:
    """The response id a Responses stream names in its lifecycle events (response.created first); None when
    `data` holds none."""
    dec = SSEDecoder()
    for ev in [*dec.feed(data), *dec.finish()]:
        try:
            obj = json.loads(ev.data)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        resp = obj.get("response")
        if obj.get("type") in _LIFECYCLE_EVENTS and isinstance(resp, dict) and isinstance(resp.get("id"), str):
            return resp["id"]
    return None
