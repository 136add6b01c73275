"""The OpenAI Responses API through a real mitmdump, with the real openai SDK in strict mode and strict mocks.

{OpenAI (pass-through), Anthropic, Gemini (through the hub)} × {stream, non-stream} × {text, function-call round
trip, JSON-schema answer}; failover before the commit point; previous_response_id (and GET/DELETE by id) staying
on the target that holds the state.
"""

from __future__ import annotations

import json

import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel

from tests.e2e.harness import anthropic_target, gemini_target, http, openai_target, wait_until

TARGETS = {"openai": openai_target, "anthropic": anthropic_target, "gemini": gemini_target}
KEYS = {"openai": "sk-openai-test", "anthropic": "sk-ant-test", "gemini": "gm-test"}
TOOL = {"type": "function", "name": "get_weather", "description": "Current weather for a city", "strict": True,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                       "additionalProperties": False}}
FAST_FAILOVER = {"connect_timeout": 1.0, "headers_timeout": 2.0, "first_token_timeout": 2.0, "idle_timeout": 2.0,
                 "total_timeout": 20.0}
STREAM = pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])


class Weather(BaseModel):
    city: str
    temp_c: int


def _client(proxy, key: str) -> OpenAI:
    return OpenAI(base_url=f"{proxy.base}/v1", api_key=key, max_retries=0, _strict_response_validation=True,
                  timeout=30)


def _create(client: OpenAI, stream: bool, **kw):
    if stream:
        with client.responses.stream(**kw) as s:
            return s.get_final_response()
    return client.responses.create(**kw)


@pytest.fixture
def served_by(admin, subdomain, mock_factory):
    def make(provider: str, stream: bool = False, **mock_kw):
        mock = mock_factory(f"{provider}-mock", KEYS[provider], chunk_delay=0.005 if stream else 0.0, **mock_kw)
        cfg = admin.guide_setup([TARGETS[provider](mock.port, weight=1)], subdomain=subdomain)
        return mock, cfg["key"]
    return make


def _with_id_rule(admin, proxy, cfg: dict) -> None:
    """GET/DELETE /v1/responses/{id} routed to the same service (the guide's rule takes POST only)."""
    admin.ok("POST", f"/gateways/{cfg['gateway']['id']}/rules",
             {"path": "/v1/responses", "service_id": cfg["service"]["id"], "methods": ["GET", "DELETE"]})
    # Live once the proxy has reloaded: a GET of the bare path is then refused by the gateway itself (400, no body),
    # before any upstream is called.
    wait_until(lambda: http("GET", f"{proxy.base}/v1/responses", headers={"X-Api-Key": cfg["key"]}).status == 400,
               timeout=5)


@pytest.mark.parametrize("target", list(TARGETS))
@STREAM
def test_text(proxy, served_by, target, stream):
    mock, key = served_by(target, stream)
    r = _create(_client(proxy, key), stream, model="gpt-4", input="Say hello", instructions="Be brief.",
                max_output_tokens=200)
    assert r.status == "completed" and r.output_text == f"Hello from {target}-mock"
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    sent = mock.requests()[-1]
    assert sent["provider"] == target and sent["status"] == 200
    if target == "openai":  # the client's own body, on the Responses endpoint
        assert sent["path"] == "/v1/responses" and sent["body"]["input"] == "Say hello"


@pytest.mark.parametrize("target", list(TARGETS))
@STREAM
def test_function_call_round_trip(proxy, served_by, target, stream):
    mock, key = served_by(target, stream)
    client = _client(proxy, key)
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = _create(client, stream, model="gpt-4", input=[question], tools=[TOOL], max_output_tokens=200)
    calls = [o for o in first.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Paris"}
    call = calls[0]
    history = [question, *(o.model_dump(exclude_none=True) for o in first.output),
               {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}]
    second = _create(client, stream, model="gpt-4", input=history, tools=[TOOL], max_output_tokens=200)
    assert second.output_text == f"Hello from {target}-mock"
    body = mock.requests()[-1]["body"]
    if target == "anthropic":
        results = [b for m in body["messages"] for b in (m["content"] if isinstance(m["content"], list) else ())
                   if b.get("type") == "tool_result"]
        assert results and results[0]["content"] == "Sunny, 21 C"
    elif target == "gemini":
        assert any("functionResponse" in p for c in body["contents"] for p in c["parts"])
    else:
        assert body["input"][-1]["call_id"] == call.call_id


@pytest.mark.parametrize("target", list(TARGETS))
@STREAM
def test_json_schema_answer(proxy, served_by, target, stream):
    mock, key = served_by(target, stream, reply='{"city": "Paris", "temp_c": 21}')
    client = _client(proxy, key)
    kw = dict(model="gpt-4", input="The weather in Paris, as JSON", text_format=Weather, max_output_tokens=200)
    if stream:
        with client.responses.stream(**kw) as s:
            r = s.get_final_response()
    else:
        r = client.responses.parse(**kw)
    assert r.output_parsed == Weather(city="Paris", temp_c=21)
    body = mock.requests()[-1]["body"]
    if target == "openai":
        assert body["text"]["format"]["type"] == "json_schema" and body["text"]["format"]["name"] == "Weather"
    elif target == "gemini":
        assert body["generationConfig"]["responseMimeType"] == "application/json"
        assert "city" in json.dumps(body["generationConfig"]["responseSchema"])
    else:
        assert "JSON" in json.dumps(body["system"])  # Anthropic: emulated with an instruction


@STREAM
def test_failover_before_commit(admin, proxy, subdomain, mock_factory, stream):
    bad = mock_factory("bad", KEYS["openai"])
    good = mock_factory("good", KEYS["anthropic"])
    bad.set_faults([{"status": 500}])
    cfg = admin.guide_setup([openai_target(bad.port, priority=1), anthropic_target(good.port, priority=2)],
                            subdomain=subdomain, extra={"failover": FAST_FAILOVER})
    raw = _client(proxy, cfg["key"]).responses.with_raw_response.create(model="gpt-4", input="Hi", stream=stream)
    assert raw.headers["x-gateway-attempts"] == "openai:500,anthropic:200"
    parsed = raw.parse()
    if stream:
        events = list(parsed)
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert events[-1].type == "response.completed"
    else:
        text = parsed.output_text
    assert text == "Hello from good"
    assert [r["status"] for r in bad.requests()] == [500] and bad.requests()[0]["path"] == "/v1/responses"


@STREAM
def test_previous_response_id_stays_on_its_target(admin, proxy, subdomain, mock_factory, stream):
    a, b = mock_factory("a", KEYS["openai"]), mock_factory("b", KEYS["openai"])
    cfg = admin.guide_setup([openai_target(a.port, weight=1), openai_target(b.port, weight=1)], subdomain=subdomain)
    _with_id_rule(admin, proxy, cfg)
    client = _client(proxy, cfg["key"])
    first = _create(client, stream, model="gpt-4", input="Hi")
    owner, other = (a, b) if a.requests() else (b, a)
    assert len(owner.requests()) == 1 and not other.requests()
    prev = first.id
    for _ in range(4):  # round-robin would alternate; the state keeps every turn on its owner
        r = _create(client, stream, model="gpt-4", input="And then?", previous_response_id=prev)
        assert r.previous_response_id == prev
        prev = r.id
    assert len(owner.requests()) == 5 and not other.requests()
    assert client.responses.retrieve(first.id).id == first.id
    client.responses.delete(first.id)
    assert [r["method"] for r in owner.requests()[-2:]] == ["GET", "DELETE"] and not other.requests()


def test_previous_response_id_needs_an_openai_target(proxy, served_by):
    mock, key = served_by("anthropic")
    with pytest.raises(openai.BadRequestError) as e:
        _client(proxy, key).responses.create(model="gpt-4", input="Hi", previous_response_id="resp_123")
    assert e.value.body["param"] == "previous_response_id" and not mock.requests()
    r = _client(proxy, key).responses.create(model="gpt-4", input="Hi", store=True)  # store is ignored
    assert r.output_text == "Hello from anthropic-mock" and r.store is False


def test_unknown_previous_id_goes_to_openai_targets_only(admin, proxy, subdomain, mock_factory):
    oa, an = mock_factory("oa", KEYS["openai"]), mock_factory("an", KEYS["anthropic"])
    cfg = admin.guide_setup([openai_target(oa.port, weight=1), anthropic_target(an.port, weight=1)],
                            subdomain=subdomain)
    client = _client(proxy, cfg["key"])
    for _ in range(3):  # e.g. made before a restart: OpenAI's own answer (its 404), never the Anthropic target
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model="gpt-4", input="Hi", previous_response_id="resp_unknown")
    assert len(oa.requests()) == 3 and not an.requests()


def test_owner_down_is_a_clear_503(admin, proxy, subdomain, mock_factory):
    a, b = mock_factory("a", KEYS["openai"]), mock_factory("b", KEYS["openai"])
    cfg = admin.guide_setup([openai_target(a.port, priority=1), openai_target(b.port, priority=2)],
                            subdomain=subdomain, health_checks={"passive": True, "threshold": 1, "interval": 60})
    client = _client(proxy, cfg["key"])
    first = client.responses.create(model="gpt-4", input="Hi")
    assert len(a.requests()) == 1
    a.set_faults([{"status": 500}])
    with pytest.raises(openai.InternalServerError):  # the owner fails: no failover to a target without the state
        client.responses.create(model="gpt-4", input="more", previous_response_id=first.id)
    with pytest.raises(openai.APIStatusError) as e:  # its circuit is open now
        client.responses.create(model="gpt-4", input="more", previous_response_id=first.id)
    assert e.value.status_code == 503 and "circuit open" in e.value.message
    assert e.value.body["code"] == "response_target_unavailable" and not b.requests()
