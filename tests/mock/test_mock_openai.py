"""OpenAI chat completions on the mock, driven by the real openai SDK in strict mode."""

from __future__ import annotations

import json

import httpx2
import openai
import pytest
from openai import AzureOpenAI, OpenAI

from .conftest import KEY, TOOLS_OA

USER = [{"role": "user", "content": "Hi there"}]


def test_text_completion(oa, mock):
    r = oa.chat.completions.create(model="gpt-4o", messages=USER)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and isinstance(r.created, int)
    assert r.model == "gpt-4o"
    ch = r.choices[0]
    assert ch.message.content == "Hello from a" and ch.message.role == "assistant" and ch.message.refusal is None
    assert ch.finish_reason == "stop" and ch.message.tool_calls is None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (2, 3, 5)
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    rec = mock.requests()[-1]
    assert rec["path"] == "/v1/chat/completions" and rec["body"]["messages"] == USER
    assert rec["headers"]["authorization"] == f"Bearer {KEY}" and rec["status"] == 200


def test_stream_chunks_match_the_recordings(oa):
    chunks = list(oa.chat.completions.create(model="gpt-4o", messages=USER, stream=True,
                                             stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content == ""
    assert [c.choices[0].delta.content for c in chunks[1:4]] == ["Hello", " from", " a"]
    assert all(c.choices[0].delta.role is None for c in chunks[1:-1])
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-2].choices[0].delta.content is None
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 5


def test_stream_without_include_usage_has_no_usage_chunk(oa, mock):
    chunks = list(oa.chat.completions.create(model="gpt-4o", messages=USER, stream=True))
    assert all(c.choices and c.usage is None for c in chunks)
    # raw wire: data lines only, no event: lines, terminated by [DONE]
    with httpx2.Client() as c:
        r = c.post(f"{mock.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                   json={"model": "m", "messages": USER, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert "event:" not in r.text and r.text.endswith("data: [DONE]\n\n")


def test_stream_helper_final_completion(oa):
    with oa.chat.completions.stream(model="gpt-4o", messages=USER, stream_options={"include_usage": True}) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.content == "Hello from a" and final.usage.completion_tokens == 3


def test_tool_call_non_stream(oa):
    r = oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Weather in Paris?"}],
                                   tools=TOOLS_OA)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content is None
    (tc,) = ch.message.tool_calls
    assert tc.id.startswith("call_") and tc.function.name == "get_weather"
    assert json.loads(tc.function.arguments) == {"city": "Paris"}


def test_tool_call_stream_like_the_recording(oa):
    kw = dict(model="gpt-4o", messages=[{"role": "user", "content": "What's the weather?"}], tools=TOOLS_OA)
    chunks = list(oa.chat.completions.create(stream=True, **kw))
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content is None
    call = first.tool_calls[0]
    assert (call.index, call.type, call.function.name, call.function.arguments) == (0, "function", "get_weather", "")
    frags = [c.choices[0].delta.tool_calls[0] for c in chunks[1:-1]]
    assert all(f.id is None and f.function.name is None and f.index == 0 for f in frags) and len(frags) > 1
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    with oa.chat.completions.stream(**kw) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.arguments == '{"city": "Paris"}'


def test_parallel_tool_calls(oa):
    kw = dict(model="gpt-4o", messages=[{"role": "user", "content": "weather, in parallel"}], tools=TOOLS_OA)
    with oa.chat.completions.stream(**kw) as s:
        final = s.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [c.index for c in calls] == [0, 1] and len({c.id for c in calls}) == 2
    assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Paris", "Rome"]
    assert len(oa.chat.completions.create(**kw).choices[0].message.tool_calls) == 2
    r = oa.chat.completions.create(parallel_tool_calls=False, **kw)
    assert len(r.choices[0].message.tool_calls) == 1


def test_forced_tool_choice_and_none(oa):
    forced = {"type": "function", "function": {"name": "get_weather"}}
    r = oa.chat.completions.create(model="m", messages=USER, tools=TOOLS_OA, tool_choice=forced)
    assert r.choices[0].finish_reason == "tool_calls"
    r = oa.chat.completions.create(model="m", messages=USER, tools=TOOLS_OA, tool_choice="required")
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
    r = oa.chat.completions.create(model="m", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS_OA,
                                   tool_choice="none")
    assert r.choices[0].finish_reason == "stop"


def test_tool_round_trip_answers_text(oa):
    msgs = [{"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"}]
    r = oa.chat.completions.create(model="m", messages=msgs, tools=TOOLS_OA)
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == "Hello from a"


def test_n_choices_and_max_tokens_and_stop(oa):
    r = oa.chat.completions.create(model="m", messages=USER, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2] and r.usage.completion_tokens == 9
    chunks = list(oa.chat.completions.create(model="m", messages=USER, n=2, stream=True))
    assert {c.choices[0].index for c in chunks} == {0, 1}
    r = oa.chat.completions.create(model="m", messages=USER, max_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content == "Hello from"
    r = oa.chat.completions.create(model="m", messages=USER, max_completion_tokens=1, stream=True)
    assert [c.choices[0].finish_reason for c in r][-1] == "length"
    r = oa.chat.completions.create(model="m", messages=USER, stop=[" a"])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == "Hello from"


def test_any_path_ending_in_chat_completions(mock):
    c = OpenAI(base_url=f"{mock.base_url}/openai/v1", api_key=KEY, max_retries=0, _strict_response_validation=True)
    assert c.chat.completions.create(model="m", messages=USER).choices[0].message.content == "Hello from a"


def test_azure_deployment_path(mock):
    az = AzureOpenAI(azure_endpoint=mock.base_url, api_key=KEY, api_version="2024-10-21", max_retries=0,
                     _strict_response_validation=True)
    r = az.chat.completions.create(model="my-deploy", messages=USER)
    assert r.choices[0].message.content == "Hello from a"
    rec = mock.requests()[-1]
    assert rec["path"] == "/openai/deployments/my-deploy/chat/completions"
    assert rec["query"]["api-version"] == "2024-10-21" and rec["headers"]["api-key"] == KEY
    with httpx2.Client() as c:
        r = c.post(f"{mock.base_url}/openai/deployments/d/chat/completions", headers={"api-key": KEY},
                   json={"messages": USER})
        assert r.status_code == 404 and r.json() == {"error": {"code": "404", "message": "Resource not found"}}
        r = c.post(f"{mock.base_url}/openai/deployments/d/chat/completions?api-version=x", headers={"api-key": "no"},
                   json={"messages": USER})
        assert r.status_code == 401 and r.json()["error"]["code"] == "401"


def test_auth_errors(mock):
    bad = OpenAI(base_url=f"{mock.base_url}/v1", api_key="sk-wrong-key-123", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as ei:
        bad.chat.completions.create(model="m", messages=USER)
    err = ei.value.body
    assert ei.value.status_code == 401 and err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error"
    assert "sk-wrong-key-123" not in err["message"]
    with httpx2.Client() as c:
        r = c.post(f"{mock.base_url}/v1/chat/completions", json={"model": "m", "messages": USER})
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def _msgs_tool_unanswered():
    return [{"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                  "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "user", "content": "y"}]


@pytest.mark.parametrize("body,param,needle", [
    ({"messages": USER}, "model", "model"),
    ({"model": "m"}, "messages", "Missing required parameter"),
    ({"model": "m", "messages": []}, "messages", "empty array"),
    ({"model": "m", "messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "Invalid value: 'bot'"),
    ({"model": "m", "messages": ["hi"]}, "messages[0]", "expected an object"),
    ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content", "Missing required parameter"),
    ({"model": "m", "messages": [{"role": "assistant", "content": None}]}, "messages[0].content", "got null"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id", "tool_call_id"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c",
                                                                    "content": "r"}]},
     "messages[1].role", "must be a response to a preceeding message with 'tool_calls'"),
    ({"model": "m", "messages": _msgs_tool_unanswered()}, "messages[2].role", "did not have response messages: c1"),
    ({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "f", "arguments": {"a": 1}}}]}, {"role": "tool", "tool_call_id": "c", "content": "r"}]},
     "messages[0].tool_calls[0].function.arguments", "expected a string"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image", "url": "x"}]}]},
     "messages[0].content[0].type", "Invalid value: 'image'"),
    ({"model": "m", "messages": USER, "n": 0}, "n", "below minimum value"),
    ({"model": "m", "messages": USER, "n": "2"}, "n", "expected an integer"),
    ({"model": "m", "messages": USER, "temperature": 2.5}, "temperature", "above maximum value"),
    ({"model": "m", "messages": USER, "stream_options": {"include_usage": True}}, "stream_options",
     "only allowed when 'stream' is enabled"),
    ({"model": "m", "messages": USER, "max_tokens": 0}, "max_tokens", "below minimum value"),
    ({"model": "m", "messages": USER, "tools": [{"type": "function", "function": {"name": "bad name"}}]},
     "tools[0].function.name", "does not match pattern"),
    ({"model": "m", "messages": USER, "tool_choice": "auto"}, "tool_choice", "only allowed when 'tools'"),
    ({"model": "m", "messages": USER, "max_tokens_to_sample": 5}, "max_tokens_to_sample", "Unrecognized request"),
])
def test_validation_rejections(oa, body, param, needle):
    with pytest.raises(openai.BadRequestError) as ei:
        oa.post("/chat/completions", body=body, cast_to=object)
    err = ei.value.body
    assert ei.value.status_code == 400 and err["type"] == "invalid_request_error"
    assert err["param"] == param and needle in err["message"], err


def test_invalid_json_body(mock):
    with httpx2.Client() as c:
        r = c.post(f"{mock.base_url}/v1/chat/completions", content=b"{nope",
                   headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert r.status_code == 400 and "could not parse the JSON body" in r.json()["error"]["message"]
    assert mock.requests()[-1]["raw"] == "{nope"


def test_azure_content_filter_shapes(mock):
    az = AzureOpenAI(azure_endpoint=mock.base_url, api_key=KEY, api_version="2024-10-21", max_retries=0,
                     _strict_response_validation=True)
    raw = az.chat.completions.with_raw_response.create(model="my-deploy", messages=USER)
    body = json.loads(raw.http_response.text)
    assert body["prompt_filter_results"][0]["prompt_index"] == 0
    assert "content_filter_results" in body["choices"][0]
    assert raw.parse().choices[0].message.content == "Hello from a"
    # (object "" fails strict validation: a gateway must drop this chunk before a strict client sees it)
    lax = AzureOpenAI(azure_endpoint=mock.base_url, api_key=KEY, api_version="2024-10-21", max_retries=0)
    chunks = list(lax.chat.completions.create(model="my-deploy", messages=USER, stream=True))
    assert chunks[0].choices == [] and chunks[0].id == ""
    assert "".join(c.choices[0].delta.content or "" for c in chunks[1:]) == "Hello from a"


def test_automatic_prompt_caching(mock):
    c = OpenAI(base_url=f"{mock.base_url}/v1", api_key=KEY, max_retries=0, _strict_response_validation=True)
    long = [{"role": "user", "content": "word " * 1000}]  # 5000 chars → 1250 tokens
    first = c.chat.completions.create(model="m", messages=long)
    assert first.usage.prompt_tokens == 1250 and first.usage.prompt_tokens_details.cached_tokens == 0
    again = c.chat.completions.create(model="m", messages=long)
    assert again.usage.prompt_tokens == 1250 and again.usage.prompt_tokens_details.cached_tokens == 1152
    short = [{"role": "user", "content": "hi"}]
    c.chat.completions.create(model="m", messages=short)
    assert c.chat.completions.create(model="m", messages=short).usage.prompt_tokens_details.cached_tokens == 0
