"""Read a Responses API stream (or answer) the way the real openai SDK does, validating every event strictly.

Its own SSEDecoder; every event's `event:` line names its `type`; each event validated as `ResponseStreamEvent`
(strict) and accumulated with the SDK's `ResponseStreamState` (what `client.responses.stream()` uses); sequence
numbers 0, 1, …; nothing after the terminal or error event.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pydantic
from openai import omit
from openai._streaming import SSEDecoder
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

_event_adapter = pydantic.TypeAdapter(ResponseStreamEvent)
TERMINAL = ("response.completed", "response.incomplete", "response.failed")


@dataclass
class ResponsesResult:
    events: list = field(default_factory=list)
    response: Any = None      # the final Response (from the SDK's accumulator)
    error: Any = None         # the `error` event, when the stream ended with one


def read_responses_stream(data: bytes, *, expect_error: bool = False) -> ResponsesResult:
    res = ResponsesResult()
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    ended = False
    for sse in SSEDecoder().iter_bytes(iter([data])):
        assert not ended, "an event followed the terminal or error event"
        obj = json.loads(sse.data)
        assert sse.event == obj["type"], (sse.event, obj.get("type"))
        assert obj["sequence_number"] == len(res.events), "sequence numbers must be 0, 1, …"
        ev = _event_adapter.validate_python(obj, strict=True)
        res.events.append(ev)
        if ev.type == "error":
            res.error = ev
            ended = True
            continue
        state.handle_event(ev)
        ended = ev.type in TERMINAL
    if expect_error:
        assert res.error is not None, "expected an error event"
        return res
    assert res.error is None, res.error
    assert res.events[0].type == "response.created" and res.events[-1].type in TERMINAL
    if res.events[-1].type == "response.completed":
        res.response = state._completed_response
    else:
        res.response = res.events[-1].response
    Response.model_validate(res.response.model_dump(), strict=False)
    return res


def validate_response(obj: dict) -> Response:
    """A non-stream answer, as the SDK in strict mode reads it."""
    return Response.model_validate(obj, strict=True)
