"""OpenAI Responses API streams: the *sink* (canonical stream calls → Responses events, for Responses clients served
through the hub) and the *source* (Responses events → canonical calls, so any sink can read a Responses stream).

The sink's events, in order: response.created, response.in_progress; per output item output_item.added, then for
a message content_part.added, output_text.delta… (or refusal.delta…), output_text.done (refusal.done),
content_part.done; for a function call function_call_arguments.delta…, .done; output_item.done; finally
response.completed (or response.incomplete). Every event carries its `sequence_number` (0, 1, …); items are
numbered by `output_index` and named by `item_id`. An error is the `error` event, and nothing follows it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .canonical import CanonicalRequest, IdFactory, Usage
from .errors import GatewayError
from .openai_wire import stream_error
from .responses_wire import (
    FINISH_OF_INCOMPLETE, error_event, event, function_call_item, message_item, refusal_content, response_object,
    status_of, text_content, usage_from,
)
from .sse import SSEEvent
from .streaming import Sink, Source


@dataclass
class _Item:
    """An output item while it streams: a message (its content parts) or a function call (its arguments)."""
    index: int
    id: str
    kind: str                                   # "message" | "function_call"
    content: list = field(default_factory=list)  # message: finished content parts (dicts)
    part: dict | None = None                    # message: the content part still streaming
    call_id: str = ""
    name: str = ""
    arguments: str = ""

    def final(self) -> dict:
        if self.kind == "message":
            return message_item(self.id, list(self.content))
        return function_call_item(self.id, self.call_id, self.name, self.arguments)


class ResponsesSink(Sink):
    """Canonical stream calls → Responses events (see the module docstring)."""

    def __init__(self, req: CanonicalRequest, created: int, new_id: IdFactory) -> None:
        super().__init__()
        self._req = req
        self._created = created
        self._new_id = new_id
        self._seq = 0
        self._id = ""
        self._model = ""
        self._started = False
        self._items: list[_Item] = []
        self._open: _Item | None = None
        self._tools: dict[int, _Item] = {}   # tool ordinal → its item
        self._usage: Usage | None = None
        self._reason: str | None = None

    # ---------------------------------------------------------------- framing
    def _ev(self, obj: dict) -> None:
        if self.closed:
            return
        obj["sequence_number"] = self._seq
        self._seq += 1
        self.out.append(event(obj))

    def _response(self, status: str, incomplete: dict | None = None, usage: Usage | None = None) -> dict:
        output = [i.final() for i in self._items] if status != "in_progress" else []
        return response_object(self._req, id=self._id, created_at=self._created, model=self._model, status=status,
                               output=output, usage=usage, incomplete=incomplete)

    def start(self, id: str, model: str) -> None:
        if self._started:
            return
        self._started = True
        self._id, self._model = self._new_id("resp"), model
        self._ev({"type": "response.created", "response": self._response("in_progress")})
        self._ev({"type": "response.in_progress", "response": self._response("in_progress")})

    def _ensure_started(self) -> None:
        if not self._started:
            self.start("", "")

    # ---------------------------------------------------------------- items
    def _open_item(self, item: _Item, added: dict) -> None:
        self._close_item()
        self._items.append(item)
        self._open = item
        self._ev({"type": "response.output_item.added", "output_index": item.index, "item": added})

    def _close_part(self, item: _Item) -> None:
        part = item.part
        if part is None:
            return
        base = {"item_id": item.id, "output_index": item.index, "content_index": len(item.content)}
        if part["type"] == "output_text":
            self._ev({"type": "response.output_text.done", **base, "text": part["text"], "logprobs": []})
        else:
            self._ev({"type": "response.refusal.done", **base, "refusal": part["refusal"]})
        self._ev({"type": "response.content_part.done", **base, "part": part})
        item.content.append(part)
        item.part = None

    def _close_item(self) -> None:
        item = self._open
        if item is None:
            return
        if item.kind == "message":
            self._close_part(item)
        else:
            self._ev({"type": "response.function_call_arguments.done", "item_id": item.id,
                      "output_index": item.index, "arguments": item.arguments})
        self._ev({"type": "response.output_item.done", "output_index": item.index, "item": item.final()})
        self._open = None

    def _content(self, kind: str, s: str) -> None:
        """A text or refusal fragment: into the open message's part of that kind (opened as needed)."""
        if not s or self._reason is not None:
            return
        self._ensure_started()
        item = self._open
        if item is None or item.kind != "message":
            item = _Item(len(self._items), self._new_id("msg"), "message")
            self._open_item(item, message_item(item.id, [], "in_progress"))
        if item.part is None or item.part["type"] != kind:
            self._close_part(item)
            item.part = text_content("") if kind == "output_text" else refusal_content("")
            self._ev({"type": "response.content_part.added", "item_id": item.id, "output_index": item.index,
                      "content_index": len(item.content), "part": dict(item.part)})
        key = "text" if kind == "output_text" else "refusal"
        item.part[key] += s
        self.committed = True
        delta_type = "response.output_text.delta" if kind == "output_text" else "response.refusal.delta"
        ev = {"type": delta_type, "item_id": item.id, "output_index": item.index,
              "content_index": len(item.content), "delta": s}
        if kind == "output_text":
            ev["logprobs"] = []
        self._ev(ev)

    def text(self, s: str) -> None:
        self._content("output_text", s)

    def refusal(self, s: str) -> None:
        self._content("refusal", s)

    def tool_start(self, index: int, id: str, name: str) -> None:
        if self._reason is not None:
            return
        self._ensure_started()
        item = _Item(len(self._items), self._new_id("fc"), "function_call", call_id=id, name=name)
        self._open_item(item, function_call_item(item.id, id, name, "", "in_progress"))
        self._tools[index] = item
        self.committed = True

    def tool_args(self, index: int, fragment: str) -> None:
        item = self._tools.get(index)
        # Fragments for an item already done (interleaved parallel calls) are dropped, as the Anthropic sink does.
        if not fragment or item is None or item is not self._open:
            return
        item.arguments += fragment
        self._ev({"type": "response.function_call_arguments.delta", "item_id": item.id,
                  "output_index": item.index, "delta": fragment})

    # ---------------------------------------------------------------- end
    def usage(self, u: Usage) -> None:
        self._usage = u

    def finish(self, reason: str, stop_sequence: str | None = None) -> None:
        if self._reason is None:
            self._reason = reason

    def end(self) -> None:
        if self.closed:
            return
        self._ensure_started()
        self._close_item()
        status, incomplete = status_of(self._reason or "stop")
        etype = "response.completed" if status == "completed" else "response.incomplete"
        self._ev({"type": etype, "response": self._response(status, incomplete, self._usage or Usage())})
        self.closed = True

    def error(self, err: GatewayError) -> None:
        if self.closed:
            return
        self.out.append(error_event(err, self._seq))
        self._seq += 1
        self.closed = True


def response_error(resp: object) -> GatewayError:
    err = resp.get("error") if isinstance(resp, dict) else None
    return stream_error(err if isinstance(err, dict) else {"message": "upstream response failed"})


def event_error(obj: dict) -> GatewayError:
    """An upstream `error` event (code, message at the top level) → GatewayError."""
    return stream_error({"message": obj.get("message"), "type": obj.get("code"), "code": obj.get("code")})


class ResponsesSource(Source):
    """Responses events → canonical calls on any sink. Function calls are numbered 0, 1, … in item order."""

    def __init__(self, sink: Sink, new_id: IdFactory) -> None:
        super().__init__(sink)
        self._new_id = new_id
        self._started = False
        self._calls: dict[int, int] = {}      # output_index → tool ordinal
        self._args_seen: set[int] = set()     # output_index of calls whose arguments streamed
        self._refusal = False

    def on_event(self, ev: SSEEvent) -> None:
        obj = self.event_object(ev.data)
        if obj is None:
            return
        t = obj.get("type") or ev.event
        sink = self.sink
        if t == "response.created":
            resp = obj.get("response") or {}
            model = resp.get("model") if isinstance(resp.get("model"), str) else ""
            self.reported_model = self.reported_model or model or None
            self._started = True
            sink.start(str(resp.get("id") or self._new_id("resp")), model)
        elif t == "response.output_item.added":
            item = obj.get("item") or {}
            if item.get("type") == "function_call":
                ordinal = self._calls[obj["output_index"]] = len(self._calls)
                sink.tool_start(ordinal, str(item.get("call_id") or self._new_id("call")), str(item.get("name") or ""))
        elif t == "response.output_text.delta":
            sink.text(obj.get("delta") or "")
        elif t == "response.refusal.delta":
            self._refusal = True
            sink.refusal(obj.get("delta") or "")
        elif t == "response.function_call_arguments.delta":
            index = obj.get("output_index")
            if index in self._calls and obj.get("delta"):
                self._args_seen.add(index)
                sink.tool_args(self._calls[index], obj["delta"])
        elif t == "response.output_item.done":
            index, item = obj.get("output_index"), obj.get("item") or {}
            if index in self._calls and index not in self._args_seen and item.get("arguments"):
                sink.tool_args(self._calls[index], item["arguments"])  # a call that came whole
        elif t in ("response.completed", "response.incomplete"):
            self._end(obj.get("response") or {})
        elif t == "response.failed":
            self.fail(response_error(obj.get("response")))
        elif t == "error":
            self.fail(event_error(obj))

    def _end(self, resp: dict) -> None:
        usage = usage_from(resp.get("usage"))
        if usage is not None:
            self.reported_usage = usage
            self.sink.usage(usage)
        reason = FINISH_OF_INCOMPLETE.get((resp.get("incomplete_details") or {}).get("reason") or "")
        if reason is None:
            reason = "tool_calls" if self._calls else "refusal" if self._refusal else "stop"
        self.sink.finish(reason)
        self.sink.end()
        self.done = True
