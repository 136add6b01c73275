"""The OpenAI Responses API on the mock, driven by the real openai SDK in strict mode."""

from __future__ import annotations

import json

import httpx2
import openai
import pytest

from tests.providers.sdk_responses import read_responses_stream

from .conftest import KEY

TOOL = {"type": "function", "name": "get_weather", "description": "Get the weather", "strict": True,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                       "additionalProperties": False}}


def _post(mock, body, path="/v1/responses", key=KEY):
    with httpx2.Client() as c:
        return c.post(f"{mock.base_url}{path}", headers={"authorization": f"Bearer {key}"}, json=body)


def test_text_answer(oa, mock):
    r = oa.responses.create(model="gpt-4o", input="Hi there", instructions="Be brief.")
    assert r.object == "response" and r.id.startswith("resp_") and r.status == "completed"
    assert r.output_text == "Hello from a" and r.instructions == "Be brief." and r.model == "gpt-4o"
    assert r.usage.output_tokens == 3 and r.usage.total_tokens == r.usage.input_tokens + 3
    rec = mock.requests()[-1]
    assert rec["path"] == "/v1/responses" and rec["provider"] == "openai" and rec["status"] == 200


def test_stream_and_the_stream_helper(oa, mock):
    events = list(oa.responses.create(model="gpt-4o", input="Hi", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello from a"
    with oa.responses.stream(model="gpt-4o", input="Hi") as s:
        final = s.get_final_response()
    assert final.output_text == "Hello from a"
    read_responses_stream(_post(mock, {"model": "m", "input": "Hi", "stream": True}).content)


def test_function_call_round_trip_with_previous_response_id(oa):
    first = oa.responses.create(model="gpt-4o", input="What is the weather in Paris?", tools=[TOOL])
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    second = oa.responses.create(model="gpt-4o", previous_response_id=first.id, tools=[TOOL],
                                 input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert second.output_text == "Hello from a" and second.previous_response_id == first.id
    # without the state, the call must be part of the input
    third = oa.responses.create(model="gpt-4o", tools=[TOOL], input=[
        {"role": "user", "content": "What is the weather in Paris?"}, call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert third.output_text == "Hello from a"


def test_get_and_delete_stored_responses(oa):
    r = oa.responses.create(model="gpt-4o", input="Hi")
    assert oa.responses.retrieve(r.id).output_text == "Hello from a"
    oa.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        oa.responses.retrieve(r.id)
    unstored = oa.responses.create(model="gpt-4o", input="Hi", store=False)
    with pytest.raises(openai.NotFoundError):
        oa.responses.create(model="gpt-4o", input="again", previous_response_id=unstored.id)


@pytest.mark.parametrize("body,status,param", [
    ({"model": "m", "input": "x", "messages": []}, 400, "messages"),
    ({"input": "x"}, 400, "model"),
    ({"model": "m"}, 400, "input"),
    ({"model": "m", "input": 5}, 400, "input"),
    ({"model": "m", "input": "x", "max_output_tokens": 5}, 400, "max_output_tokens"),
    ({"model": "m", "input": "x", "stream": "yes"}, 400, "stream"),
    ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, 400, "input[0].role"),
    ({"model": "m", "input": [{"type": "function_call_output", "call_id": "c1", "output": "x"}]}, 400, "input"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}}, 400, "text.format.name"),
    ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, 400, "tools[0].name"),
    ({"model": "m", "input": "x", "previous_response_id": "resp_nope"}, 404, "previous_response_id"),
])
def test_strict_validation(mock, body, status, param):
    r = _post(mock, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    if status == 404:
        assert err["message"] == "Previous response with id 'resp_nope' not found."


def test_auth(mock):
    r = _post(mock, {"model": "m", "input": "x"}, key="wrong")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_faults_apply(oa, mock):
    mock.set_faults([{"match": {"path_contains": "/v1/responses"}, "status": 500, "times": 1}])
    with pytest.raises(openai.InternalServerError):
        oa.responses.create(model="gpt-4o", input="Hi")
    assert oa.responses.create(model="gpt-4o", input="Hi").output_text == "Hello from a"
    mock.set_faults([{"error_event_after": 4}])
    raw = _post(mock, {"model": "m", "input": "Hi", "stream": True}).content
    events = [e for e in raw.decode().split("\n\n") if e]
    assert len(events) == 5 and events[-1].startswith("event: error\n")
    err = json.loads(events[-1].split("data: ", 1)[1])
    assert err["type"] == "error" and err["code"] == "server_is_overloaded"
