"""Read translator output the way the real SDKs do, validating every object with their pydantic types.

openai: its own SSEDecoder, `[DONE]` ends the stream, a truthy `error` raises, each chunk validated as
`ChatCompletionChunk` and accumulated with `ChatCompletionStreamState`.
anthropic: its own SSEDecoder, events without a name and `ping` skipped, `event: error` raises, each
event validated as `RawMessageStreamEvent` and accumulated with `accumulate_event`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import openai
import pydantic
from anthropic._streaming import SSEDecoder as AnthropicSSEDecoder
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from openai._streaming import SSEDecoder as OpenAISSEDecoder
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

_event_adapter = pydantic.TypeAdapter(RawMessageStreamEvent)

FIXED_NOW = 1_700_000_000


def fixed_now() -> float:
    return FIXED_NOW


class IdCounter:
    """Deterministic `new_id`: prefix_0000, prefix_0001, ..."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n:04d}"


class StreamErrorRaised(Exception):
    def __init__(self, body: Any) -> None:
        super().__init__(str(body))
        self.body = body


@dataclass
class OpenAIResult:
    chunks: list = field(default_factory=list)
    completion: Any = None
    error: Any = None
    done: bool = False


def read_openai_stream(data: bytes, *, expect_error: bool = False) -> OpenAIResult:
    assert b"\nevent:" not in b"\n" + data, "OpenAI-format streams must not carry event: lines"
    res = OpenAIResult()
    state = ChatCompletionStreamState()
    for sse in OpenAISSEDecoder().iter_bytes(iter([data])):
        assert sse.event is None
        if sse.data.startswith("[DONE]"):
            res.done = True
            break
        obj = json.loads(sse.data)
        if isinstance(obj, dict) and obj.get("error"):
            res.error = obj["error"]
            break
        chunk = ChatCompletionChunk.model_validate(obj, strict=True)
        res.chunks.append(chunk)
        state.handle_chunk(chunk)
    if expect_error:
        assert res.error is not None and not res.done, "expected an error event and no [DONE]"
    else:
        assert res.error is None, res.error
        assert res.done, "stream did not end with [DONE]"
        # nothing may follow [DONE]
        assert data.endswith(b"data: [DONE]\n\n")
    if res.chunks:
        first = res.chunks[0]
        for c in res.chunks:
            assert (c.id, c.created, c.model) == (first.id, first.created, first.model)
        role_seen: set = set()
        for c in res.chunks:
            for ch in c.choices:
                if ch.delta.role:  # role only in the first chunk of each choice
                    assert ch.index not in role_seen
                    role_seen.add(ch.index)
        assert not res.chunks[0].choices or res.chunks[0].choices[0].delta.role
        seen_ids: set = set()
        for c in res.chunks:
            for ch in c.choices:
                for tc in ch.delta.tool_calls or []:
                    assert isinstance(tc.index, int)
                    if tc.id is not None:
                        assert (ch.index, tc.index) not in seen_ids, "tool call id repeated"
                        seen_ids.add((ch.index, tc.index))
                    else:
                        assert tc.function is None or tc.function.name is None
        if not expect_error:
            try:
                res.completion = state.get_final_completion()
            except (openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError):
                # the SDK refuses to *parse* truncated/filtered answers; the snapshot is what it built
                res.completion = state.current_completion_snapshot
            ChatCompletion.model_validate(res.completion.model_dump(), strict=False)
    return res


@dataclass
class AnthropicResult:
    events: list = field(default_factory=list)
    message: Any = None
    error: Any = None


def read_anthropic_stream(data: bytes, *, expect_error: bool = False, strict_blocks: bool = True) -> AnthropicResult:
    """strict_blocks=False for recordings of Anthropic itself, which may skip a content_block_stop
    when max_tokens cuts a tool call (incomplete_partial_json_response)."""
    res = AnthropicResult()
    snapshot = None
    bufs: dict = {}
    for sse in AnthropicSSEDecoder().iter_bytes(iter([data])):
        assert sse.event, "every Anthropic-format event needs an event: line"
        if sse.event == "ping":
            continue
        if sse.event == "error":
            res.error = json.loads(sse.data)
            assert res.error["type"] == "error" and isinstance(res.error["error"]["type"], str)
            break
        obj = json.loads(sse.data)
        assert obj["type"] == sse.event
        ev = _event_adapter.validate_python(obj, strict=True)
        res.events.append(ev)
        snapshot = accumulate_event(event=ev, current_snapshot=snapshot, json_bufs=bufs)
    if expect_error:
        assert res.error is not None
        return res
    assert res.error is None, res.error
    types = [e.type for e in res.events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert types.count("message_delta") == 1 and types[-2] == "message_delta"
    if not strict_blocks:
        res.message = Message.model_validate(snapshot.model_dump(), strict=False)
        return res
    # block indices 0..n-1, each started once, stopped once, in order, all before message_delta
    starts = [e.index for e in res.events if e.type == "content_block_start"]
    stops = [e.index for e in res.events if e.type == "content_block_stop"]
    assert starts == list(range(len(starts))) and stops == starts
    open_idx = None
    for e in res.events:
        if e.type == "content_block_start":
            assert open_idx is None
            open_idx = e.index
        elif e.type == "content_block_delta":
            assert e.index == open_idx
        elif e.type == "content_block_stop":
            assert e.index == open_idx
            open_idx = None
        elif e.type == "message_delta":
            assert open_idx is None
    res.message = Message.model_validate(snapshot.model_dump(), strict=False)
    return res
