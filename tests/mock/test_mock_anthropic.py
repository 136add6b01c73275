"""Anthropic Messages on the mock, driven by the real anthropic SDK in strict mode."""

from __future__ import annotations

import anthropic
import httpx2
import pytest
from anthropic import Anthropic

from .conftest import KEY, TOOLS_AN

USER = [{"role": "user", "content": "Hi there"}]
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}


def _events(text: str) -> list[str]:
    return [line[len("event: "):] for line in text.splitlines() if line.startswith("event: ")]


def test_text_message(an, mock):
    m = an.messages.create(model="claude-x", max_tokens=100, messages=USER, system="Be brief.")
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant" and m.model == "claude-x"
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == "Hello from a"
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert (m.usage.input_tokens, m.usage.output_tokens) == (5, 3)
    assert m.usage.cache_read_input_tokens == 0 and m.usage.cache_creation_input_tokens == 0
    rec = mock.requests()[-1]
    assert rec["headers"]["authorization"] == f"Bearer {KEY}" and rec["headers"]["anthropic-version"]


def test_legacy_x_api_key_header_accepted(mock):
    with httpx2.Client() as c:
        r = c.post(f"{mock.base_url}/v1/messages", headers=HEADERS,
                   json={"model": "m", "max_tokens": 10, "messages": USER})
    assert r.status_code == 200 and r.headers["request-id"].startswith("req_")


def test_stream_event_sequence(mock):
    with httpx2.Client() as c:
        r = c.post(f"{mock.base_url}/v1/messages", headers=HEADERS,
                   json={"model": "m", "max_tokens": 10, "messages": USER, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert _events(r.text) == ["message_start", "content_block_start", "ping", "content_block_delta",
                               "content_block_delta", "content_block_delta", "content_block_stop", "message_delta",
                               "message_stop"]
    assert "[DONE]" not in r.text


def test_stream_helper_final_message(an):
    with an.messages.stream(model="claude-x", max_tokens=100, messages=USER) as s:
        texts = list(s.text_stream)
        m = s.get_final_message()
    assert texts == ["Hello", " from", " a"]
    assert m.content[0].text == "Hello from a" and m.stop_reason == "end_turn" and m.usage.output_tokens == 3


def test_tool_use_non_stream_and_stream(an):
    kw = dict(model="claude-x", max_tokens=200, tools=TOOLS_AN,
              messages=[{"role": "user", "content": "What's the weather in Paris?"}])
    m = an.messages.create(**kw)
    assert [b.type for b in m.content] == ["text", "tool_use"] and m.stop_reason == "tool_use"
    tu = m.content[1]
    assert tu.name == "get_weather" and tu.input == {"city": "Paris"} and tu.id.startswith("toolu_")
    with an.messages.stream(**kw) as s:
        events = list(s)
        final = s.get_final_message()
    assert final.content[1].input == {"city": "Paris"} and final.stop_reason == "tool_use"
    json_deltas = [e.delta.partial_json for e in events
                   if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
    assert json_deltas[0] == "" and "".join(json_deltas) == '{"city": "Paris"}' and len(json_deltas) > 2
    assert final.usage.output_tokens == m.usage.output_tokens


def test_parallel_tool_use(an):
    with an.messages.stream(model="c", max_tokens=200, tools=TOOLS_AN,
                            messages=[{"role": "user", "content": "weather in parallel please"}]) as s:
        m = s.get_final_message()
    assert [b.type for b in m.content] == ["text", "tool_use", "tool_use"]
    assert [b.input["city"] for b in m.content[1:]] == ["Paris", "Rome"]
    m = an.messages.create(model="c", max_tokens=200, tools=TOOLS_AN,
                           tool_choice={"type": "auto", "disable_parallel_tool_use": True},
                           messages=[{"role": "user", "content": "weather in parallel please"}])
    assert [b.type for b in m.content] == ["text", "tool_use"]


def test_tool_choice_forces_and_result_turn_answers_text(an):
    m = an.messages.create(model="c", max_tokens=50, tools=TOOLS_AN, messages=USER,
                           tool_choice={"type": "tool", "name": "get_weather"})
    assert m.stop_reason == "tool_use"
    tu = m.content[-1]
    follow = [{"role": "user", "content": "weather?"},
              {"role": "assistant", "content": [{"type": "tool_use", "id": tu.id, "name": tu.name, "input": tu.input}]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tu.id, "content": "18C"},
                                           {"type": "text", "text": "thanks"}]}]
    m = an.messages.create(model="c", max_tokens=50, tools=TOOLS_AN, messages=follow)
    assert m.stop_reason == "end_turn" and m.content[0].text == "Hello from a"


def test_max_tokens_and_stop_sequences(an):
    m = an.messages.create(model="c", max_tokens=1, messages=USER)
    assert m.stop_reason == "max_tokens" and m.content[0].text == "Hello" and m.usage.output_tokens == 1
    with an.messages.stream(model="c", max_tokens=2, messages=USER) as s:
        m = s.get_final_message()
    assert m.stop_reason == "max_tokens" and m.content[0].text == "Hello from"
    m = an.messages.create(model="c", max_tokens=50, messages=USER, stop_sequences=[" from"])
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == " from" and m.content[0].text == "Hello"


def test_consecutive_same_roles_are_merged_and_accepted(an):
    msgs = [{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c"}, {"role": "assistant", "content": "d"},
            {"role": "user", "content": "e"}]
    assert an.messages.create(model="c", max_tokens=5, messages=msgs).stop_reason == "end_turn"


def test_auth_and_version_errors(mock):
    bad = Anthropic(base_url=mock.base_url, api_key="nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as ei:
        bad.messages.create(model="c", max_tokens=5, messages=USER)
    assert ei.value.body["type"] == "error" and ei.value.body["error"]["type"] == "authentication_error"
    with httpx2.Client() as c:
        r = c.post(f"{mock.base_url}/v1/messages", headers={"anthropic-version": "2023-06-01"},
                   json={"model": "m", "max_tokens": 1, "messages": USER})
        assert r.status_code == 401 and r.json()["error"]["message"] == "x-api-key header is required"
        r = c.post(f"{mock.base_url}/v1/messages", headers={"x-api-key": KEY},
                   json={"model": "m", "max_tokens": 1, "messages": USER})
        assert r.status_code == 400 and "anthropic-version" in r.json()["error"]["message"]
        assert r.json()["request_id"].startswith("req_")


def _tool_use(tid="toolu_1"):
    return {"type": "tool_use", "id": tid, "name": "get_weather", "input": {}}


def _tool_result(tid="toolu_1"):
    return {"type": "tool_result", "tool_use_id": tid, "content": "18C"}


BASE = {"model": "m", "max_tokens": 10}


@pytest.mark.parametrize("body,needle", [
    ({**BASE, "messages": USER, "n": 1}, "n: Extra inputs are not permitted"),
    ({**BASE, "messages": USER, "stop": ["x"]}, "stop: Extra inputs are not permitted"),
    ({"model": "m", "messages": USER}, "max_tokens: Field required"),
    ({**BASE, "max_tokens": 0, "messages": USER}, "max_tokens: Input should be greater than or equal to 1"),
    ({**BASE, "max_tokens": "10", "messages": USER}, "max_tokens: Input should be a valid integer"),
    ({"max_tokens": 5, "messages": USER}, "model: Field required"),
    ({**BASE}, "messages: Field required"),
    ({**BASE, "messages": []}, "at least one message"),
    ({**BASE, "messages": [{"role": "system", "content": "x"}, *USER]}, "messages.0.role: Input should be 'user'"),
    ({**BASE, "messages": [{"role": "assistant", "content": "x"}, *USER]}, 'first message must use the "user" role'),
    ({**BASE, "messages": [{"role": "user", "content": ""}]}, "must have non-empty content"),
    ({**BASE, "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
     "text content blocks must be non-empty"),
    ({**BASE, "messages": [*USER, {"role": "assistant", "content": "prefill "}]}, "trailing whitespace"),
    ({**BASE, "messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/bmp", "data": "AA=="}}]}]}, "media_type"),
    ({**BASE, "messages": [{"role": "user", "content": [{"type": "video"}]}]}, "does not match any of the expected"),
    ({**BASE, "messages": [*USER, {"role": "assistant", "content": [_tool_use()]},
                           {"role": "user", "content": "no result"}]},
     "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_1"),
    ({**BASE, "messages": [*USER, {"role": "assistant", "content": [_tool_use()]},
                           {"role": "user", "content": [{"type": "text", "text": "hi"}, _tool_result()]}]},
     "`tool_result` blocks must come before any other content"),
    ({**BASE, "messages": [*USER, {"role": "assistant", "content": "ok"},
                           {"role": "user", "content": [_tool_result()]}]}, "unexpected `tool_use_id`"),
    ({**BASE, "messages": [*USER, {"role": "assistant", "content": [_tool_use("call.1")]},
                           {"role": "user", "content": [_tool_result("call.1")]}]}, "String should match pattern"),
    ({**BASE, "messages": [{"role": "user", "content": [_tool_use()]}]}, "not allowed in user messages"),
    ({**BASE, "messages": USER, "system": [{"type": "image"}]}, "system.0.type"),
    ({**BASE, "messages": USER, "stop_sequences": ["  "]}, "stop sequence must contain non-whitespace"),
    ({**BASE, "messages": USER, "temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
    ({**BASE, "messages": USER, "metadata": {"user_id": "u", "session": "s"}}, "metadata.session: Extra inputs"),
    ({**BASE, "messages": USER, "tools": [{"name": "bad name!", "input_schema": {"type": "object"}}]},
     "String should match pattern"),
    ({**BASE, "messages": USER, "tools": [{"name": "t"}]}, "input_schema: Field required"),
    ({**BASE, "messages": USER, "tools": [{"name": "t", "input_schema": {"type": "string"}}]},
     "input_schema.type: Input should be 'object'"),
    ({**BASE, "messages": USER, "tool_choice": {"type": "auto"}}, "tool_choice may only be specified"),
    ({**BASE, "max_tokens": 2000, "messages": USER, "thinking": {"type": "enabled", "budget_tokens": 3000}},
     "must be greater than `thinking.budget_tokens`"),
])
def test_validation_rejections(an, body, needle):
    with pytest.raises(anthropic.BadRequestError) as ei:
        an.post("/v1/messages", body=body, cast_to=object)
    err = ei.value.body
    assert ei.value.status_code == 400 and err["type"] == "error"
    assert err["error"]["type"] == "invalid_request_error" and needle in err["error"]["message"], err


def test_accepted_content_blocks(an):
    msgs = [{"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]}]
    m = an.messages.create(model="c", max_tokens=5, messages=msgs, metadata={"user_id": "u1"},
                           system=[{"type": "text", "text": "sys"}], extra_body={"temperature": 0.5, "top_k": 5, "top_p": 0.9})
    assert m.stop_reason == "end_turn"
