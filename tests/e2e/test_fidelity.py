"""Translation fidelity through the real proxy: multi-turn and edge scenarios with the real SDKs in strict mode.

Every case asserts both the parsed SDK result and what the (strict) mock provider received.
"""

from __future__ import annotations

import json

import anthropic
import openai
import pytest
from anthropic import Anthropic
from openai import OpenAI

from tests.e2e.harness import anthropic_target, gemini_target, openai_target

KEYS = {"openai": "sk-openai-test", "anthropic": "sk-ant-test", "gemini": "gm-test", "azure": "az-test",
        "compat": "sk-compat-test"}
TARGETS = {"openai": openai_target, "anthropic": anthropic_target, "gemini": gemini_target}
NO_RETRY = {"failover": {"retry_on": []}}

WEATHER_OA = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
WEATHER_AN = {"name": "get_weather", "description": "Current weather for a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


@pytest.fixture(scope="module")
def _shared_setups():
    """Setups reused across this module's tests (a gateway + mock per distinct configuration): the guide's
    five calls and waiting for the proxy to load them dominate an e2e test's time otherwise."""
    cache: dict = {}
    yield cache
    for mock, _ in cache.values():
        mock.stop()


@pytest.fixture
def serve(admin, subdomain, mock_factory, proxy, _shared_setups):
    """serve(provider, ...) → (mock, key) for a single-target upstream. Setups are shared between tests (the mock
    is reset: no records, no faults) unless fresh=True, which tests that inject faults use so that the health
    state of one test never leaks into another."""
    def make(provider: str, extra: dict | None = None, mock_kw: dict | None = None, fresh: bool = False,
             **target_kw):
        cache_key = json.dumps([provider, extra, mock_kw, target_kw], sort_keys=True)
        if not fresh and cache_key in _shared_setups:
            mock, key = _shared_setups[cache_key]
            mock.reset()
            return mock, key
        mock_kw = mock_kw or {}
        if fresh:
            start = mock_factory
        else:
            def start(name, api_key, **kw):
                from aigw.mock import MockProviderThread
                m = MockProviderThread(api_key=api_key, name=name, **kw)
                m.port = m.start()
                return m
        if provider == "azure":
            mock = start("azure-mock", KEYS["azure"], **mock_kw)
            target = {"provider": "azure", "host": "127.0.0.1", "port": mock.port, "protocol": "http",
                      "path": "/openai/deployments/{model}/chat/completions", "api_version": "2024-10-21",
                      "weight": 1, "priority": 1, "default_model": "gpt-4o-deploy", "models": ["gpt-4o-deploy"],
                      "credentials": {"header_name": "api-key", "header_value": KEYS["azure"]}}
        elif provider == "compat":
            mock = start("compat-mock", KEYS["compat"], **mock_kw)
            target = openai_target(mock.port, weight=1, key=KEYS["compat"], provider="openai-compatible",
                                   default_model="llama-3", models=["llama-3"])
        else:
            mock = start(f"{provider}-mock", KEYS[provider], **mock_kw)
            target = TARGETS[provider](mock.port, weight=1)
        target.update(target_kw)
        cfg = admin.guide_setup([target], subdomain=f"{subdomain}-{len(_shared_setups)}", extra=extra,
                                health_checks={"passive": True, "threshold": 1000, "interval": 60})
        if not fresh:
            _shared_setups[cache_key] = (mock, cfg["key"])
        return mock, cfg["key"]
    return make


def oa_client(proxy, key) -> OpenAI:
    return OpenAI(base_url=f"{proxy.base}/v1", api_key=key, max_retries=0, _strict_response_validation=True,
                  timeout=30)


def an_client(proxy, key) -> Anthropic:
    return Anthropic(base_url=proxy.base, api_key=key, max_retries=0, _strict_response_validation=True, timeout=30)


def sent(mock) -> dict:
    return mock.requests()[-1]["body"]


# ============================================================================================================
# OpenAI SDK → Anthropic target
# ============================================================================================================

OA_ROUND_TRIP = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
        {"id": "call.2", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    {"role": "tool", "tool_call_id": "call.2", "content": [{"type": "text", "text": "24C"}]},
    {"role": "user", "content": "Which is warmer?"},
]


@pytest.mark.parametrize("target", ["anthropic", "gemini", "openai"])
def test_openai_sdk_tool_round_trip(proxy, serve, target):
    mock, key = serve(target)
    client = oa_client(proxy, key)
    done = client.chat.completions.create(model="gpt-4", messages=OA_ROUND_TRIP, tools=[WEATHER_OA],
                                          max_completion_tokens=100, user="u-1")
    assert done.choices[0].finish_reason == "stop"
    assert done.choices[0].message.content == f"Hello from {target}-mock"
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    body = sent(mock)
    if target == "anthropic":
        assert body["system"] == [{"type": "text", "text": "Be brief."}]
        assert body["max_tokens"] == 100
        assert body["metadata"] == {"user_id": "u-1"}
        asst, results = body["messages"][1], body["messages"][2]
        assert [b["id"] for b in asst["content"]] == ["call_1", "call_2"]
        assert asst["content"][1]["input"] == {}
        assert [b["type"] for b in results["content"]] == ["tool_result", "tool_result", "text"]
        assert [b["tool_use_id"] for b in results["content"][:2]] == ["call_1", "call_2"]
        assert results["content"][2]["text"] == "Which is warmer?"
    elif target == "gemini":
        roles = [c["role"] for c in body["contents"]]
        assert roles == ["user", "model", "user"]
        fr = [p["functionResponse"] for p in body["contents"][2]["parts"] if "functionResponse" in p]
        assert [f["name"] for f in fr] == ["get_weather", "get_weather"]
        assert body["generationConfig"]["maxOutputTokens"] == 100
    else:
        assert body["messages"][3]["tool_call_id"] == "call_1"
        assert body["user"] == "u-1"


@pytest.mark.parametrize("target", ["anthropic", "gemini", "openai"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_openai_sdk_parallel_calls(proxy, serve, target, stream):
    mock, key = serve(target)
    client = oa_client(proxy, key)
    msgs = [{"role": "user", "content": "What is the weather in Paris and Rome? Call in parallel."}]
    if stream:
        with client.chat.completions.stream(model="gpt-4", messages=msgs, tools=[WEATHER_OA], max_tokens=100,
                                            stream_options={"include_usage": True}) as s:
            chunks = []
            for ev in s:
                if ev.type == "chunk":
                    chunks.append(ev.chunk)
            done = s.get_final_completion()
        assert chunks[-1].usage is not None and chunks[-1].choices == []
        ids = {c.id for c in chunks}
        assert len(ids) == 1
    else:
        done = client.chat.completions.create(model="gpt-4", messages=msgs, tools=[WEATHER_OA], max_tokens=100)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert len(calls) == 2
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    assert all(c.function.name == "get_weather" for c in calls)
    assert len({c.id for c in calls}) == 2
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    assert mock.requests()[-1]["status"] == 200


def test_openai_sdk_parameters_to_anthropic(proxy, serve):
    mock, key = serve("anthropic")
    client = oa_client(proxy, key)
    done = client.chat.completions.create(
        model="gpt-4",
        messages=[{"role": "developer", "content": "Answer in English."},
                  {"role": "user", "content": [
                      {"type": "text", "text": "Describe these."},
                      {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}", "detail": "low"}},
                      {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}],
        stop=["from", "   "], temperature=1.7, top_p=0.9, response_format={"type": "json_object"},
        max_completion_tokens=50, n=1, seed=3, presence_penalty=0.2, user="u-9")
    # "from" cuts the reply "Hello from anthropic-mock" before the match.
    assert done.choices[0].message.content.strip() == "Hello"
    assert done.choices[0].finish_reason == "stop"
    body = sent(mock)
    assert body["temperature"] == 1
    assert body["top_p"] == 0.9
    assert body["stop_sequences"] == ["from"]
    assert body["max_tokens"] == 50
    assert body["metadata"] == {"user_id": "u-9"}
    assert body["system"][0] == {"type": "text", "text": "Answer in English."}
    assert any("JSON" in b["text"] for b in body["system"][1:])
    for k in ("n", "seed", "presence_penalty", "response_format", "user"):
        assert k not in body
    content = body["messages"][0]["content"]
    assert content[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
    assert content[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}


@pytest.mark.parametrize("target", ["anthropic", "gemini"])
def test_openai_sdk_n2_refused(proxy, serve, target):
    mock, key = serve(target)
    client = oa_client(proxy, key)
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}], n=2)
    assert exc.value.status_code == 400
    assert mock.requests() == []


def test_openai_sdk_tool_choice_to_anthropic(proxy, serve):
    mock, key = serve("anthropic")
    client = oa_client(proxy, key)
    done = client.chat.completions.create(
        model="gpt-4", messages=[{"role": "user", "content": "Hi there"}], tools=[WEATHER_OA],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, parallel_tool_calls=False)
    assert done.choices[0].finish_reason == "tool_calls"
    assert len(done.choices[0].message.tool_calls) == 1
    assert sent(mock)["tool_choice"] == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "weather?"}],
                                   tools=[WEATHER_OA], tool_choice="none")
    assert sent(mock)["tool_choice"] == {"type": "none"}


@pytest.mark.parametrize("target", ["anthropic", "gemini", "openai", "azure", "compat"])
def test_openai_sdk_stream_without_usage(proxy, serve, target):
    mock, key = serve(target)
    client = oa_client(proxy, key)
    chunks = list(client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Say hi"}],
                                                 stream=True))
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("Hello from")
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:])


# ============================================================================================================
# Anthropic SDK → OpenAI / Gemini / Azure / compatible targets
# ============================================================================================================

AN_ROUND_TRIP = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}]},
    {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18"},
                                                                         {"type": "text", "text": "C"}]},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "no data", "is_error": True},
        {"type": "text", "text": "Which is warmer?"}]},
]


@pytest.mark.parametrize("target", ["openai", "gemini", "azure", "compat", "anthropic"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_anthropic_sdk_tool_round_trip(proxy, serve, target, stream):
    mock, key = serve(target)
    client = an_client(proxy, key)
    kw = dict(model="claude-3-sonnet", max_tokens=100, messages=AN_ROUND_TRIP, tools=[WEATHER_AN],
              system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use Celsius."}])
    if stream:
        with client.messages.stream(**kw) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(**kw)
    assert msg.stop_reason == "end_turn"
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == f"Hello from {target}-mock"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    body = sent(mock)
    if target in ("openai", "azure", "compat"):
        msgs = body["messages"]
        assert msgs[0]["role"] == "system" and "Be brief." in msgs[0]["content"] and "Use Celsius." in msgs[0]["content"]
        assert msgs[2]["role"] == "assistant" and msgs[2]["content"] == "Let me check."
        assert [c["id"] for c in msgs[2]["tool_calls"]] == ["toolu_1", "toolu_2"]
        assert [json.loads(c["function"]["arguments"]) for c in msgs[2]["tool_calls"]] == [
            {"city": "Paris"}, {"city": "Rome"}]
        assert [(m["role"], m.get("tool_call_id")) for m in msgs[3:5]] == [("tool", "toolu_1"), ("tool", "toolu_2")]
        assert msgs[3]["content"] == "18C" or msgs[3]["content"] == "18\nC" or msgs[3]["content"] == "18 C"
        assert msgs[5]["role"] == "user"
        if stream:
            assert body["stream_options"] == {"include_usage": True}
    elif target == "gemini":
        assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
        assert [p["text"] for p in body["systemInstruction"]["parts"]] == ["Be brief.", "Use Celsius."]
        calls = [p["functionCall"] for p in body["contents"][1]["parts"] if "functionCall" in p]
        assert [c["args"] for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
        results = [p["functionResponse"] for p in body["contents"][2]["parts"] if "functionResponse" in p]
        assert [r["response"] for r in results] == [{"content": "18\nC"}, {"error": "no data"}]
        assert body["contents"][2]["parts"][-1] == {"text": "Which is warmer?"}
    else:
        assert body["messages"] == AN_ROUND_TRIP


@pytest.mark.parametrize("target", ["openai", "gemini", "azure", "compat", "anthropic"])
def test_anthropic_sdk_parallel_stream(proxy, serve, target):
    mock, key = serve(target)
    client = an_client(proxy, key)
    indices, starts = [], []
    with client.messages.stream(model="claude-3-sonnet", max_tokens=100, tools=[WEATHER_AN],
                                messages=[{"role": "user", "content": "weather in Paris and Rome, parallel"}]) as s:
        for ev in s:
            if ev.type == "content_block_start":
                starts.append(ev.index)
            if ev.type in ("content_block_start", "content_block_delta", "content_block_stop"):
                indices.append(ev.index)
        msg = s.get_final_message()
    assert starts == list(range(len(starts)))
    assert indices == sorted(indices)
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert [u.input for u in uses] == [{"city": "Paris"}, {"city": "Rome"}]
    assert len({u.id for u in uses}) == 2
    assert msg.stop_reason == "tool_use"
    assert msg.usage.output_tokens > 0
    # Non-stream as well.
    msg2 = client.messages.create(model="claude-3-sonnet", max_tokens=100, tools=[WEATHER_AN],
                                  messages=[{"role": "user", "content": "weather in Paris and Rome, parallel"}])
    assert [b.input for b in msg2.content if b.type == "tool_use"] == [{"city": "Paris"}, {"city": "Rome"}]


@pytest.mark.parametrize("target", ["openai", "gemini"])
def test_anthropic_sdk_parameters(proxy, serve, target):
    mock, key = serve(target)
    client = an_client(proxy, key)
    msg = client.messages.create(
        model="claude-3-sonnet", max_tokens=60, stop_sequences=["from"], extra_body={"top_k": 5, "temperature": 0.3},
        metadata={"user_id": "u-42"}, system="Be brief.",
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "Look"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]}])
    assert msg.stop_reason == "stop_sequence" or msg.stop_reason == "end_turn"
    assert msg.content[0].text.strip() == "Hello"
    body = sent(mock)
    if target == "openai":
        assert body["stop"] == ["from"]
        assert "top_k" not in body
        assert body["user"] == "u-42"
        assert body["max_completion_tokens"] == 60
        parts = body["messages"][1]["content"]
        assert parts[1]["image_url"]["url"] == f"data:image/png;base64,{PNG_B64}"
        assert parts[2]["image_url"]["url"] == "https://example.com/cat.jpg"
    else:
        cfg = body["generationConfig"]
        assert cfg["stopSequences"] == ["from"] and cfg["topK"] == 5 and cfg["maxOutputTokens"] == 60
        parts = body["contents"][0]["parts"]
        assert parts[1]["inlineData"] == {"mimeType": "image/png", "data": PNG_B64}
        assert parts[2]["fileData"]["fileUri"] == "https://example.com/cat.jpg"


@pytest.mark.parametrize("target", ["openai", "gemini"])
def test_anthropic_sdk_tool_choice(proxy, serve, target):
    mock, key = serve(target)
    client = an_client(proxy, key)
    hi = [{"role": "user", "content": "Hi there"}]
    msg = client.messages.create(model="claude-3-sonnet", max_tokens=50, messages=hi, tools=[WEATHER_AN],
                                 tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert msg.stop_reason == "tool_use"
    body = sent(mock)
    if target == "openai":
        assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    else:
        assert body["toolConfig"]["functionCallingConfig"]["mode"] == "ANY"
    client.messages.create(model="claude-3-sonnet", max_tokens=50, messages=hi, tools=[WEATHER_AN],
                           tool_choice={"type": "tool", "name": "get_weather"})
    body = sent(mock)
    if target == "openai":
        assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    else:
        assert body["toolConfig"]["functionCallingConfig"]["allowedFunctionNames"] == ["get_weather"]
    msg = client.messages.create(model="claude-3-sonnet", max_tokens=50, tools=[WEATHER_AN],
                                 messages=[{"role": "user", "content": "weather?"}], tool_choice={"type": "none"})
    assert msg.stop_reason == "end_turn"
    body = sent(mock)
    if target == "openai":
        assert body["tool_choice"] == "none"
    else:
        assert body["toolConfig"]["functionCallingConfig"]["mode"] == "NONE"


def test_azure_and_compat_paths(proxy, serve, admin):
    mock, key = serve("azure")
    client = oa_client(proxy, key)
    done = client.chat.completions.create(model="gpt-4o-deploy", messages=[{"role": "user", "content": "hi"}],
                                          max_completion_tokens=20)
    assert done.choices[0].message.content == "Hello from azure-mock"
    rec = mock.requests()[-1]
    assert rec["path"] == "/openai/deployments/gpt-4o-deploy/chat/completions"
    assert rec["query"]["api-version"] == "2024-10-21"
    assert rec["headers"]["api-key"] == KEYS["azure"]


def test_compat_strips_fields(proxy, serve):
    mock, key = serve("compat")
    client = oa_client(proxy, key)
    done = client.chat.completions.create(
        model="llama-3", messages=[{"role": "user", "content": "hi", "name": "bob"}], max_completion_tokens=20,
        store=True, metadata={"a": "b"}, logprobs=False)
    assert done.choices[0].message.content == "Hello from compat-mock"
    body = sent(mock)
    assert body["max_tokens"] == 20
    for k in ("max_completion_tokens", "store", "metadata", "logprobs"):
        assert k not in body
    assert "name" not in body["messages"][0]


# ============================================================================================================
# Errors through the proxy
# ============================================================================================================

OA_EXC = {400: openai.BadRequestError, 401: openai.AuthenticationError, 403: openai.PermissionDeniedError,
          404: openai.NotFoundError, 409: openai.ConflictError, 413: openai.APIStatusError,
          422: openai.UnprocessableEntityError, 429: openai.RateLimitError, 500: openai.InternalServerError,
          502: openai.InternalServerError, 503: openai.InternalServerError, 504: openai.InternalServerError,
          529: openai.InternalServerError}
AN_EXC = {400: anthropic.BadRequestError, 401: anthropic.AuthenticationError, 403: anthropic.PermissionDeniedError,
          404: anthropic.NotFoundError, 409: anthropic.ConflictError, 413: anthropic.ContentTooLargeError,
          422: anthropic.UnprocessableEntityError, 429: anthropic.RateLimitError,
          500: anthropic.InternalServerError, 502: anthropic.InternalServerError,
          503: anthropic.ServiceUnavailableError, 504: anthropic.GatewayTimeoutError, 529: anthropic.OverloadedError}
# What an Anthropic-format client must see for each upstream status (errors table of docs/translation.md).
AN_TYPE = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
           404: "not_found_error", 409: "invalid_request_error", 413: "request_too_large",
           422: "invalid_request_error", 429: "rate_limit_error", 500: "api_error", 503: "overloaded_error",
           504: "api_error", 529: "overloaded_error"}


def _call(ingress, proxy, key, stream=False):
    if ingress == "openai":
        client = oa_client(proxy, key)
        r = client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}],
                                           stream=stream)
    else:
        client = an_client(proxy, key)
        r = client.messages.create(model="claude-3-sonnet", max_tokens=20,
                                   messages=[{"role": "user", "content": "hi"}], stream=stream)
    if stream:
        return list(r)
    return r


@pytest.mark.parametrize("target", ["openai", "anthropic", "gemini", "azure", "compat"])
@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
def test_provider_errors_passthrough(proxy, serve, target, ingress):
    mock, key = serve(target, extra=NO_RETRY, fresh=True)
    exc_map = OA_EXC if ingress == "openai" else AN_EXC
    for status in (400, 401, 403, 404, 409, 413, 422, 429, 500, 503, 504, 529):
        fault = {"status": status, "times": 1}
        if status == 429:
            fault["retry_after"] = "7"
        mock.set_faults([fault])
        with pytest.raises(exc_map[status]) as exc:
            _call(ingress, proxy, key)
        err = exc.value
        assert type(err) is exc_map[status] or status == 413, (status, type(err))
        assert err.status_code == status, (status, err.response.text)
        body = err.response.json()
        if ingress == "anthropic":
            assert body["type"] == "error" and isinstance(body["error"]["message"], str)
            if target != "anthropic":
                assert body["error"]["type"] == AN_TYPE[status], (status, body)
        else:
            assert isinstance(body["error"]["message"], str) and "type" in body["error"]
            if status == 401 and target in ("anthropic", "gemini"):
                assert body["error"]["code"] == "invalid_api_key"
            if status == 429 and target in ("anthropic", "gemini"):
                assert body["error"]["type"] == "rate_limit_error"
                assert body["error"]["code"] == "rate_limit_exceeded"
        if status == 429:
            assert err.response.headers.get("retry-after") == "7"


@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
def test_gateway_errors_with_default_failover(proxy, serve, ingress):
    mock, key = serve("anthropic" if ingress == "openai" else "openai", fresh=True)
    exc_map = OA_EXC if ingress == "openai" else AN_EXC
    mock.set_faults([{"status": 429, "retry_after": "3"}])
    with pytest.raises(exc_map[429]) as exc:
        _call(ingress, proxy, key)
    assert exc.value.response.headers.get("retry-after") == "3"


@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
def test_gateway_502_with_default_failover(proxy, serve, ingress):
    mock, key = serve("gemini", fresh=True)
    exc_map = OA_EXC if ingress == "openai" else AN_EXC
    mock.set_faults([{"status": 500}])
    with pytest.raises(exc_map[502]) as exc:
        _call(ingress, proxy, key)
    assert exc.value.status_code == 502


FIRST_CONTENT_AFTER = {"openai": 3, "anthropic": 4, "gemini": 1, "azure": 4, "compat": 3}


@pytest.mark.parametrize("target", ["openai", "anthropic", "gemini", "azure"])
@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
def test_in_stream_error(proxy, serve, target, ingress):
    mock, key = serve(target, fresh=True)
    # Past the first content event of every provider's stream.
    mock.set_faults([{"error_event_after": FIRST_CONTENT_AFTER[target]}])
    seen = []
    if ingress == "openai":
        client = oa_client(proxy, key)
        with pytest.raises(openai.APIError):
            for chunk in client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}],
                                                        stream=True):
                seen.append(chunk)
    else:
        client = an_client(proxy, key)
        with pytest.raises(anthropic.APIStatusError):
            with client.messages.stream(model="claude-3-sonnet", max_tokens=50,
                                        messages=[{"role": "user", "content": "hi"}]) as s:
                for ev in s:
                    seen.append(ev)
    assert seen


@pytest.mark.parametrize("target", ["anthropic", "gemini", "openai"])
def test_usage_consistency_cached(proxy, serve, target):
    mock, key = serve(target)
    client = oa_client(proxy, key)
    with client.chat.completions.stream(model="gpt-4", messages=[{"role": "user", "content": "Say hi " * 20}],
                                        stream_options={"include_usage": True}) as s:
        final = s.get_final_completion()
    plain = client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Say hi " * 20}])
    for u in (final.usage, plain.usage):
        assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert final.usage.prompt_tokens == plain.usage.prompt_tokens
    assert final.usage.completion_tokens == plain.usage.completion_tokens


# ============================================================================================================
# Multi-turn with the SDK's own answers fed back (ids synthesized by the gateway must round-trip)
# ============================================================================================================

ALL = ["openai", "anthropic", "gemini", "azure", "compat"]


@pytest.mark.parametrize("target", ALL)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_openai_sdk_multi_turn_feedback(proxy, serve, target, stream):
    mock, key = serve(target)
    client = oa_client(proxy, key)
    msgs = [{"role": "user", "content": "What is the weather in Paris and Rome? parallel please"}]
    if stream:
        with client.chat.completions.stream(model="gpt-4", messages=msgs, tools=[WEATHER_OA]) as s:
            first = s.get_final_completion()
    else:
        first = client.chat.completions.create(model="gpt-4", messages=msgs, tools=[WEATHER_OA])
    m = first.choices[0].message
    assert len(m.tool_calls) == 2
    msgs.append(m.model_dump(exclude_none=True, exclude={"parsed", "annotations", "refusal"}))
    for call, temp in zip(m.tool_calls, ("18C", "24C")):
        msgs.append({"role": "tool", "tool_call_id": call.id, "content": temp})
    msgs.append({"role": "user", "content": "Thanks. Which is warmer?"})
    second = client.chat.completions.create(model="gpt-4", messages=msgs, tools=[WEATHER_OA])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == f"Hello from {target}-mock"
    assert mock.requests()[-1]["status"] == 200


@pytest.mark.parametrize("target", ALL)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_anthropic_sdk_multi_turn_feedback(proxy, serve, target, stream):
    mock, key = serve(target)
    client = an_client(proxy, key)
    msgs = [{"role": "user", "content": "What is the weather in Paris and Rome? parallel please"}]
    if stream:
        with client.messages.stream(model="claude-3-sonnet", max_tokens=100, messages=msgs, tools=[WEATHER_AN]) as s:
            first = s.get_final_message()
    else:
        first = client.messages.create(model="claude-3-sonnet", max_tokens=100, messages=msgs, tools=[WEATHER_AN])
    uses = [b for b in first.content if b.type == "tool_use"]
    assert len(uses) == 2 and first.stop_reason == "tool_use"
    msgs.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]})
    msgs.append({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": u.id, "content": t} for u, t in zip(uses, ("18C", "24C"))]
        + [{"type": "text", "text": "Which is warmer?"}]})
    second = client.messages.create(model="claude-3-sonnet", max_tokens=100, messages=msgs, tools=[WEATHER_AN])
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == f"Hello from {target}-mock"
    assert mock.requests()[-1]["status"] == 200


# ============================================================================================================
# Text edge cases: unicode in streams, truncation, long tool names
# ============================================================================================================

UNICODE = "Grüße 👋🏽 你好 — ok"


@pytest.mark.parametrize("target", ["openai", "anthropic", "gemini"])
def test_unicode_streams(proxy, serve, target):
    mock, key = serve(target, mock_kw={"reply": UNICODE})
    oa = oa_client(proxy, key)
    with oa.chat.completions.stream(model="gpt-4", messages=[{"role": "user", "content": "hi"}]) as s:
        assert s.get_final_completion().choices[0].message.content == UNICODE
    an = an_client(proxy, key)
    with an.messages.stream(model="claude-3-sonnet", max_tokens=100, messages=[{"role": "user", "content": "hi"}]) as s:
        assert s.get_final_message().content[0].text == UNICODE


@pytest.mark.parametrize("target", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_truncation(proxy, serve, target, stream):
    mock, key = serve(target)
    oa = oa_client(proxy, key)
    msgs = [{"role": "user", "content": "hi"}]
    if stream:
        # (the stream helper raises LengthFinishReasonError on "length", so iterate the raw chunks)
        chunks = list(oa.chat.completions.create(model="gpt-4", messages=msgs, max_tokens=1, stream=True,
                                                 stream_options={"include_usage": True}))
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
        assert chunks[-1].usage.completion_tokens == 1
    else:
        done = oa.chat.completions.create(model="gpt-4", messages=msgs, max_tokens=1)
        assert done.choices[0].finish_reason == "length"
        assert done.choices[0].message.content == "Hello"
        assert done.usage.completion_tokens == 1
    an = an_client(proxy, key)
    if stream:
        with an.messages.stream(model="claude-3-sonnet", max_tokens=1, messages=msgs) as s:
            msg = s.get_final_message()
    else:
        msg = an.messages.create(model="claude-3-sonnet", max_tokens=1, messages=msgs)
    assert msg.stop_reason == "max_tokens"
    assert msg.content[0].text == "Hello"
    assert msg.usage.output_tokens == 1


LONG_NAME = "lookup_the_current_weather_conditions_for_a_given_city_name_in_the_world_now"


@pytest.mark.parametrize("target", ["openai", "compat", "gemini"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_long_tool_name(proxy, serve, target, stream):
    assert len(LONG_NAME) > 64
    mock, key = serve(target)
    client = an_client(proxy, key)
    tool = dict(WEATHER_AN, name=LONG_NAME)
    kw = dict(model="claude-3-sonnet", max_tokens=100, tools=[tool],
              messages=[{"role": "user", "content": "weather in Paris"}])
    if stream:
        with client.messages.stream(**kw) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(**kw)
    use = [b for b in msg.content if b.type == "tool_use"][0]
    assert use.name == LONG_NAME
    def sent_tool_name(body):
        if target == "gemini":
            return body["tools"][0]["functionDeclarations"][0]["name"]
        return body["tools"][0]["function"]["name"]

    def sent_call_name(body):
        if target == "gemini":
            return body["contents"][1]["parts"][0]["functionCall"]["name"]
        return body["messages"][1]["tool_calls"][0]["function"]["name"]

    sent_name = sent_tool_name(sent(mock))
    assert len(sent_name) <= 64
    # Feed it back.
    msgs = kw["messages"] + [{"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
                             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                           "content": "18C"}]}]
    second = client.messages.create(**dict(kw, messages=msgs))
    assert second.stop_reason == "end_turn"
    assert sent_call_name(sent(mock)) == sent_name


# ============================================================================================================
# Stream failures
# ============================================================================================================

@pytest.mark.parametrize("target", ["openai", "anthropic", "gemini", "azure"])
@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
def test_stream_cut(proxy, serve, target, ingress):
    mock, key = serve(target, fresh=True)
    mock.set_faults([{"cut_after": FIRST_CONTENT_AFTER[target] + 1}])
    seen = []
    if ingress == "openai":
        with pytest.raises(openai.APIError):
            for chunk in oa_client(proxy, key).chat.completions.create(
                    model="gpt-4", messages=[{"role": "user", "content": "hi"}], stream=True):
                seen.append(chunk)
    else:
        with pytest.raises(anthropic.APIStatusError):
            with an_client(proxy, key).messages.stream(model="claude-3-sonnet", max_tokens=50,
                                                       messages=[{"role": "user", "content": "hi"}]) as s:
                for ev in s:
                    seen.append(ev)
    assert seen


@pytest.mark.parametrize("target", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
def test_stream_request_http_error(proxy, serve, target, ingress):
    mock, key = serve(target, extra=NO_RETRY, fresh=True)
    mock.set_faults([{"status": 429, "retry_after": "5"}])
    exc_map = OA_EXC if ingress == "openai" else AN_EXC
    with pytest.raises(exc_map[429]) as exc:
        _call(ingress, proxy, key, stream=True)
    assert exc.value.response.headers.get("retry-after") == "5"
    mock.set_faults([{"status": 529}])
    with pytest.raises(exc_map[529]):
        _call(ingress, proxy, key, stream=True)


def test_openai_legacy_functions_to_anthropic(proxy, serve):
    mock, key = serve("anthropic")
    client = oa_client(proxy, key)
    done = client.chat.completions.create(
        model="gpt-4", messages=[{"role": "user", "content": "weather in Paris"}],
        functions=[WEATHER_OA["function"]])
    assert done.choices[0].finish_reason == "function_call"
    fc = done.choices[0].message.function_call
    assert fc.name == "get_weather" and json.loads(fc.arguments) == {"city": "Paris"}
    msgs = [{"role": "user", "content": "weather in Paris"},
            {"role": "assistant", "content": None, "function_call": {"name": fc.name, "arguments": fc.arguments}},
            {"role": "function", "name": "get_weather", "content": "18C"}]
    done = client.chat.completions.create(model="gpt-4", messages=msgs, functions=[WEATHER_OA["function"]])
    assert done.choices[0].finish_reason == "stop"
    body = sent(mock)
    assert body["messages"][2]["content"][0]["type"] == "tool_result"


def test_anthropic_beta_header_reaches_anthropic(proxy, serve):
    mock, key = serve("anthropic")
    client = an_client(proxy, key)
    msg = client.beta.messages.create(model="claude-3-sonnet", max_tokens=20, betas=["token-efficient-tools-2025-02-19"],
                                      messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "Hello from anthropic-mock"
    assert mock.requests()[-1]["headers"].get("anthropic-beta") == "token-efficient-tools-2025-02-19"


@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
def test_gateway_own_errors(proxy, serve, ingress):
    mock, key = serve("anthropic" if ingress == "openai" else "openai")
    exc_map = OA_EXC if ingress == "openai" else AN_EXC
    # a bad gateway key
    with pytest.raises(exc_map[401]) as exc:
        _call(ingress, proxy, "not-a-key")
    body = exc.value.response.json()
    if ingress == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    else:
        assert body["error"]["type"] == "authentication_error" or body["error"]["code"] == "invalid_api_key"
    # a request the gateway itself refuses (bad field type)
    with pytest.raises(exc_map[400]) as exc:
        if ingress == "openai":
            oa_client(proxy, key).chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}],
                                                          extra_body={"temperature": "hot"})
        else:
            an_client(proxy, key).messages.create(model="claude-3-sonnet", max_tokens=5, messages="nope")
    assert exc.value.status_code == 400
    assert mock.requests() == []


# ============================================================================================================
# Schemas from pydantic models ($defs/$ref, anyOf null, additionalProperties) → Gemini's Schema subset
# ============================================================================================================

def _nested_models():
    from typing import Optional

    from pydantic import BaseModel

    class Loc(BaseModel):
        city: str
        country: Optional[str] = None

    class Forecast(BaseModel):
        where: Loc
        also: list[Loc]

    return Forecast


def test_openai_sdk_pydantic_tool_and_schema_to_gemini(proxy, serve):
    from openai.lib._parsing._completions import type_to_response_format_param

    mock, key = serve("gemini")
    client = oa_client(proxy, key)
    model = _nested_models()
    tool = openai.pydantic_function_tool(model, name="get_weather")
    done = client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "weather in Paris"}],
                                          tools=[tool])
    assert done.choices[0].message.tool_calls[0].function.name == "get_weather"
    params = sent(mock)["tools"][0]["functionDeclarations"][0]["parameters"]
    assert params["properties"]["where"]["properties"]["city"]["type"] == "string"
    assert params["properties"]["where"]["properties"]["country"]["nullable"] is True
    assert params["properties"]["also"]["items"]["properties"]["city"]["type"] == "string"
    done = client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}],
                                          response_format=type_to_response_format_param(model))
    assert done.choices[0].message.content == "Hello from gemini-mock"
    cfg = sent(mock)["generationConfig"]
    assert cfg["responseMimeType"] == "application/json"
    assert cfg["responseSchema"]["properties"]["where"]["properties"]["city"] == {"type": "string", "title": "City"}


def test_anthropic_sdk_nested_schema_to_gemini(proxy, serve):
    mock, key = serve("gemini")
    client = an_client(proxy, key)
    schema = _nested_models().model_json_schema()
    msg = client.messages.create(model="claude-3-sonnet", max_tokens=50,
                                 tools=[{"name": "get_weather", "input_schema": schema}],
                                 messages=[{"role": "user", "content": "weather in Paris"}])
    assert msg.stop_reason == "tool_use"
    params = sent(mock)["tools"][0]["functionDeclarations"][0]["parameters"]
    assert params["properties"]["where"]["properties"]["city"]["type"] == "string"


@pytest.mark.parametrize("target,status", [("openai", 503), ("anthropic", 529), ("gemini", 503)])
@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
def test_stream_error_before_content_is_an_http_error(proxy, serve, target, status, ingress):
    """An upstream error event before any content: nothing was committed, so the client gets a plain HTTP
    error (with the provider's status where it has one) instead of a 200 stream."""
    mock, key = serve(target, extra=NO_RETRY, fresh=True)
    mock.set_faults([{"error_event_after": 0 if target == "gemini" else 1}])
    with pytest.raises(openai.APIStatusError if ingress == "openai" else anthropic.APIStatusError) as exc:
        _call(ingress, proxy, key, stream=True)
    assert exc.value.status_code == status
    assert type(exc.value) is (OA_EXC if ingress == "openai" else AN_EXC)[status]


@pytest.mark.parametrize("target", ["anthropic", "gemini"])
def test_openai_sdk_images(proxy, serve, target):
    mock, key = serve(target)
    client = oa_client(proxy, key)
    done = client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/jpg;base64,{PNG_B64}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a/cat.png?x=1", "detail": "high"}}]}])
    assert done.choices[0].message.content == f"Hello from {target}-mock"
    body = sent(mock)
    if target == "anthropic":
        c = body["messages"][0]["content"]
        assert c[1]["source"] == {"type": "base64", "media_type": "image/jpeg", "data": PNG_B64}
        assert c[2]["source"] == {"type": "url", "url": "https://example.com/a/cat.png?x=1"}
    else:
        parts = body["contents"][0]["parts"]
        assert parts[1] == {"inlineData": {"mimeType": "image/jpeg", "data": PNG_B64}}
        assert parts[2] == {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/a/cat.png?x=1"}}


@pytest.mark.parametrize("target", ["gemini", "openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_disabled_parallel_calls_give_one_call(proxy, serve, target, stream):
    """Gemini cannot be told to make one call at a time: the gateway keeps the first one."""
    mock, key = serve(target)
    an = an_client(proxy, key)
    kw = dict(model="claude-3-sonnet", max_tokens=100, tools=[WEATHER_AN],
              tool_choice={"type": "auto", "disable_parallel_tool_use": True},
              messages=[{"role": "user", "content": "weather in Paris and Rome, parallel"}])
    if stream:
        with an.messages.stream(**kw) as s:
            msg = s.get_final_message()
    else:
        msg = an.messages.create(**kw)
    assert [b.input for b in msg.content if b.type == "tool_use"] == [{"city": "Paris"}]
    oa = oa_client(proxy, key)
    kw = dict(model="gpt-4", tools=[WEATHER_OA], parallel_tool_calls=False,
              messages=[{"role": "user", "content": "weather in Paris and Rome, parallel"}])
    if stream:
        with oa.chat.completions.stream(**kw) as s:
            done = s.get_final_completion()
    else:
        done = oa.chat.completions.create(**kw)
    assert [json.loads(c.function.arguments) for c in done.choices[0].message.tool_calls] == [{"city": "Paris"}]


# ============================================================================================================
# Cached prompt tokens (OpenAI / Gemini automatic caching) in both client formats, JSON and stream
# ============================================================================================================

LONG = "Tell me about the weather patterns of Europe. " * 120  # ≈ 5,500 characters: over 1024 tokens


@pytest.mark.parametrize("target", ["openai", "gemini", "azure"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_cached_tokens_to_anthropic_client(proxy, serve, target, stream):
    mock, key = serve(target)
    client = an_client(proxy, key)
    kw = dict(model="claude-3-sonnet", max_tokens=50, messages=[{"role": "user", "content": LONG}])

    def ask():
        if stream:
            with client.messages.stream(**kw) as s:
                return s.get_final_message().usage
        return client.messages.create(**kw).usage

    first, second = ask(), ask()
    assert not first.cache_read_input_tokens
    assert second.cache_read_input_tokens and second.cache_read_input_tokens % 128 == 0
    # input_tokens excludes cache reads (Anthropic's meaning): the two add up to the whole prompt
    assert second.input_tokens + second.cache_read_input_tokens == first.input_tokens
    assert second.output_tokens == first.output_tokens


@pytest.mark.parametrize("target", ["anthropic", "gemini", "openai"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_cached_tokens_to_openai_client(proxy, serve, target, stream):
    mock, key = serve(target)
    client = oa_client(proxy, key)
    kw = dict(model="gpt-4", messages=[{"role": "user", "content": LONG}])

    def ask():
        if stream:
            with client.chat.completions.stream(**kw, stream_options={"include_usage": True}) as s:
                return s.get_final_completion().usage
        return client.chat.completions.create(**kw).usage

    first, second = ask(), ask()
    for u in (first, second):
        assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert second.prompt_tokens == first.prompt_tokens
    if target == "anthropic":  # Anthropic caches only what cache_control marks, which OpenAI clients cannot send
        assert not second.prompt_tokens_details.cached_tokens
    else:
        assert second.prompt_tokens_details.cached_tokens == second.prompt_tokens - second.prompt_tokens % 128


@pytest.mark.parametrize("target", ["anthropic", "gemini", "openai"])
def test_openai_sdk_conversation_opening_with_assistant_or_system_only(proxy, serve, target):
    mock, key = serve(target)
    client = oa_client(proxy, key)
    done = client.chat.completions.create(model="gpt-4", messages=[
        {"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "Say hi"}])
    assert done.choices[0].message.content == f"Hello from {target}-mock"
    done = client.chat.completions.create(model="gpt-4", messages=[{"role": "system", "content": "Say hi."}])
    assert done.choices[0].message.content == f"Hello from {target}-mock"
    if target == "anthropic":
        assert sent(mock)["messages"][0]["role"] == "user"


def test_other_provider_endpoints_keep_their_own_path(proxy, serve):
    # count_tokens is not a chat call: it is forwarded untranslated to the provider's own endpoint.
    mock, key = serve("anthropic")
    client = an_client(proxy, key)
    try:
        client.messages.count_tokens(model="claude-3-sonnet", messages=[{"role": "user", "content": "Hi"}])
    except Exception as exc:
        assert "404" in str(exc)  # the mock has no count_tokens; what matters is where the request went
    paths = [r["path"] for r in mock.requests()]
    assert "/v1/messages/count_tokens" in paths, paths
