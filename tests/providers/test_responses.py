"""Non-streaming responses and errors: TV-4, TV-5, TV-10, TV-12 (response half)."""
import json

import anthropic
import httpx2
import openai
import pytest
from anthropic.types import Message
from openai.types.chat import ChatCompletion

import providers as P
from providers import GatewayError

from .sdk import FIXED_NOW, IdCounter, fixed_now

OA_REQ = P.parse_request("openai", b'{"model":"m","messages":[{"role":"user","content":"x"}]}')
AN_REQ = P.parse_request("anthropic", b'{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"x"}]}')


def tr(req, provider, body, status=200, headers=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return P.translate_response(req, provider, status, headers or {}, raw, now=fixed_now, new_id=IdCounter())


def as_openai(reply) -> ChatCompletion:
    assert reply.headers["content-type"] == "application/json"
    return ChatCompletion.model_validate(json.loads(reply.body), strict=True)


def as_anthropic(reply) -> Message:
    assert reply.headers["content-type"] == "application/json"
    return Message.model_validate(json.loads(reply.body), strict=True)


# ------------------------------------------------------------------ TV-4
TV4_IN = {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
          "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " world"}],
          "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 3}}


def test_tv4_text_response():
    reply = tr(OA_REQ, "anthropic", TV4_IN)
    assert reply.status == 200
    assert json.loads(reply.body) == {
        "id": "msg_01", "object": "chat.completion", "created": FIXED_NOW, "model": "claude-x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15, "prompt_tokens_details": {"cached_tokens": 0}}}
    as_openai(reply)


@pytest.mark.parametrize("stop,finish", [("max_tokens", "length"), ("stop_sequence", "stop"), ("refusal", "content_filter"),
                                         ("pause_turn", "stop"), ("tool_use", "tool_calls"),
                                         ("model_context_window_exceeded", "length"), (None, "stop"), ("new_reason", "stop")])
def test_tv4_stop_reason_map(stop, finish):
    assert as_openai(tr(OA_REQ, "anthropic", {**TV4_IN, "stop_reason": stop})).choices[0].finish_reason == finish


# ------------------------------------------------------------------ TV-5
TV5_IN = {"id": "msg_02", "type": "message", "role": "assistant", "model": "claude-x",
          "content": [{"type": "text", "text": "Checking."},
                      {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}],
          "stop_reason": "tool_use", "stop_sequence": None,
          "usage": {"input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 50, "cache_creation_input_tokens": 10}}


def test_tv5_tool_use_with_cache_usage():
    c = as_openai(tr(OA_REQ, "anthropic", TV5_IN))
    ch = c.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content == "Checking."
    tc = ch.message.tool_calls[0]
    assert (tc.id, tc.type, tc.function.name) == ("toolu_01", "function", "get_weather")
    assert json.loads(tc.function.arguments) == {"city": "Paris"}
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (160, 20, 180)
    assert c.usage.prompt_tokens_details.cached_tokens == 50


def test_tool_only_answer_has_null_content_and_legacy_functions_shape():
    body = {**TV5_IN, "content": [TV5_IN["content"][1]]}
    assert as_openai(tr(OA_REQ, "anthropic", body)).choices[0].message.content is None
    legacy = P.parse_request("openai", b'{"model":"m","functions":[{"name":"get_weather"}],"messages":[{"role":"user","content":"x"}]}')
    c = as_openai(tr(legacy, "anthropic", body))
    assert c.choices[0].finish_reason == "function_call"
    assert c.choices[0].message.function_call.name == "get_weather" and c.choices[0].message.tool_calls is None


# ------------------------------------------------------------------ OpenAI → Anthropic (non-stream)
OA_RESP = {"id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "gpt-4o",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": None,
                                                "tool_calls": [{"id": "call.1", "type": "function",
                                                                "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                        "logprobs": None, "finish_reason": "tool_calls"}],
           "usage": {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35,
                     "prompt_tokens_details": {"cached_tokens": 10}}}


def test_openai_response_to_anthropic():
    m = as_anthropic(tr(AN_REQ, "openai", OA_RESP))
    assert m.id == "msg_chatcmpl-9" and m.model == "gpt-4o" and m.stop_reason == "tool_use"
    assert m.content[0].text == "Hi"
    assert (m.content[1].id, m.content[1].name, m.content[1].input) == ("call_1", "f", {"a": 1})
    assert (m.usage.input_tokens, m.usage.output_tokens, m.usage.cache_read_input_tokens) == (20, 5, 10)


@pytest.mark.parametrize("finish,stop", [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal"),
                                         ("function_call", "tool_use"), ("insufficient_system_resource", "max_tokens")])
def test_openai_finish_to_anthropic_stop_reason(finish, stop):
    body = json.loads(json.dumps(OA_RESP))
    body["choices"][0]["finish_reason"] = finish
    assert as_anthropic(tr(AN_REQ, "openai", body)).stop_reason == stop


def test_openai_bad_tool_arguments_and_refusal_to_anthropic():
    body = json.loads(json.dumps(OA_RESP))
    body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = "{broken"
    assert as_anthropic(tr(AN_REQ, "openai", body)).content[1].input == {}
    body["choices"][0] = {"index": 0, "message": {"role": "assistant", "content": None, "refusal": "No."},
                          "finish_reason": "stop", "logprobs": None}
    m = as_anthropic(tr(AN_REQ, "openai", body))
    assert m.stop_reason == "refusal" and m.content[0].text == "No."


def test_same_family_passthrough_keeps_bytes():
    raw = json.dumps(OA_RESP, indent=1).encode()
    assert tr(OA_REQ, "openai", raw).body == raw
    raw = json.dumps(TV4_IN).encode()
    assert tr(AN_REQ, "anthropic", raw).body == raw
    # but an off-list finish_reason is normalised for strict SDKs
    body = json.loads(json.dumps(OA_RESP))
    body["choices"][0]["finish_reason"] = "insufficient_system_resource"
    assert as_openai(tr(OA_REQ, "openai-compatible", body)).choices[0].finish_reason == "length"


def test_unparseable_2xx_is_502():
    for req, prov in ((OA_REQ, "anthropic"), (AN_REQ, "openai"), (OA_REQ, "gemini"), (OA_REQ, "openai")):
        with pytest.raises(GatewayError) as e:
            tr(req, prov, b"<html>oops</html>")
        assert e.value.status == 502
    with pytest.raises(GatewayError) as e:
        tr(OA_REQ, "anthropic", {"unexpected": True})
    assert e.value.status == 502


# ------------------------------------------------------------------ TV-12 (Gemini response)
TV12_RESP = {"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]},
                             "finishReason": "STOP"}],
             "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2, "totalTokenCount": 7}}


def test_tv12_gemini_response_to_openai():
    c = as_openai(tr(OA_REQ, "gemini", TV12_RESP))
    ch = c.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content is None
    tc = ch.message.tool_calls[0]
    assert tc.id == "call_0001" and tc.function.name == "f" and json.loads(tc.function.arguments) == {"a": 1}
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (5, 2, 7)
    assert c.model == "m"  # no modelVersion: the requested model


def test_gemini_response_to_anthropic_and_finish_map():
    m = as_anthropic(tr(AN_REQ, "gemini", TV12_RESP))
    assert m.stop_reason == "tool_use" and m.content[0].input == {"a": 1} and m.usage.input_tokens == 5
    text = {"candidates": [{"content": {"parts": [{"text": "a", "thought": True}, {"text": "b"}, {"text": "c"}]},
                            "finishReason": "MAX_TOKENS"}], "modelVersion": "gemini-2.5", "responseId": "r1",
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2, "thoughtsTokenCount": 3,
                              "cachedContentTokenCount": 1, "totalTokenCount": 10}}
    c = as_openai(tr(OA_REQ, "gemini", text))
    assert c.choices[0].message.content == "bc" and c.choices[0].finish_reason == "length" and c.model == "gemini-2.5"
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (5, 5, 10)
    assert c.usage.completion_tokens_details.reasoning_tokens == 3 and c.usage.prompt_tokens_details.cached_tokens == 1
    for reason, want in (("SAFETY", "content_filter"), ("RECITATION", "stop"), ("PROHIBITED_CONTENT", "content_filter")):
        text["candidates"][0]["finishReason"] = reason
        assert as_openai(tr(OA_REQ, "gemini", text)).choices[0].finish_reason == want
    blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3}}
    assert as_openai(tr(OA_REQ, "gemini", blocked)).choices[0].finish_reason == "content_filter"
    assert as_anthropic(tr(AN_REQ, "gemini", blocked)).stop_reason == "refusal"


# ------------------------------------------------------------------ TV-10 (errors)
def sdk_error(reply, ingress):
    """Let the real SDK classify the reply."""
    resp = httpx2.Response(reply.status, headers=reply.headers, content=reply.body,
                           request=httpx2.Request("POST", "http://gw/v1/x"))
    if ingress == "openai":
        client = openai.OpenAI(api_key="k", base_url="http://gw/v1", max_retries=0)
    else:
        client = anthropic.Anthropic(api_key="k", base_url="http://gw", max_retries=0)
    return client._make_status_error_from_response(resp)


def test_tv10_anthropic_529_to_openai():
    reply = tr(OA_REQ, "anthropic", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, 529)
    assert reply.status == 529
    assert json.loads(reply.body) == {"error": {"message": "Overloaded", "type": "overloaded_error", "param": None, "code": None}}
    assert isinstance(sdk_error(reply, "openai"), openai.InternalServerError)


def test_tv10_anthropic_429_retry_after_to_openai():
    reply = tr(OA_REQ, "anthropic", {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}, 429,
               {"Retry-After": "7", "retry-after-ms": "7000", "x-other": "no"})
    assert reply.status == 429 and reply.headers["retry-after"] == "7" and reply.headers["retry-after-ms"] == "7000"
    assert "x-other" not in reply.headers
    err = json.loads(reply.body)["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded" and err["message"] == "slow down"
    assert isinstance(sdk_error(reply, "openai"), openai.RateLimitError)


def test_tv10_anthropic_401_to_openai():
    reply = tr(OA_REQ, "anthropic", {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}, 401)
    err = json.loads(reply.body)["error"]
    assert reply.status == 401 and err["type"] == "authentication_error" and err["code"] == "invalid_api_key"
    assert isinstance(sdk_error(reply, "openai"), openai.AuthenticationError)


def test_tv10_openai_404_and_503_to_anthropic():
    reply = tr(AN_REQ, "openai", {"error": {"message": "The model `x` does not exist", "type": "invalid_request_error",
                                            "param": None, "code": "model_not_found"}}, 404)
    assert reply.status == 404
    assert json.loads(reply.body) == {"type": "error", "error": {"type": "not_found_error", "message": "The model `x` does not exist"}}
    assert isinstance(sdk_error(reply, "anthropic"), anthropic.NotFoundError)
    reply = tr(AN_REQ, "openai", {"error": {"message": "busy", "type": "service_unavailable_error"}}, 503)
    assert reply.status == 503 and json.loads(reply.body)["error"]["type"] == "overloaded_error"
    assert isinstance(sdk_error(reply, "anthropic"), anthropic.InternalServerError)


@pytest.mark.parametrize("status,body,kind_type", [
    (502, b"<html><body>Bad Gateway</body></html>", "api_error"),
    (500, b"", "api_error"),
    (413, b"too big", "request_too_large"),
    (403, b'{"error":{"code":403,"message":"denied","status":"PERMISSION_DENIED"}}', "permission_error"),
    (429, b'{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}', "rate_limit_error"),
    (422, b'{"object":"error","message":"bad tool id","type":"invalid_request_error","code":"3051"}', "invalid_request_error"),
])
def test_any_error_body_shape_to_anthropic(status, body, kind_type):
    reply = tr(AN_REQ, "openai", body, status)
    obj = json.loads(reply.body)
    assert reply.status == status and obj["type"] == "error" and obj["error"]["type"] == kind_type
    assert obj["error"]["message"]
    sdk_error(reply, "anthropic")  # classifiable


def test_gemini_bad_key_is_401():
    body = {"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
                      "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}}
    reply = tr(OA_REQ, "gemini", body, 400)
    assert reply.status == 401 and json.loads(reply.body)["error"]["type"] == "authentication_error"
    assert isinstance(sdk_error(reply, "openai"), openai.AuthenticationError)


def test_same_family_error_passthrough():
    raw = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_1"}'
    reply = tr(AN_REQ, "anthropic", raw, 529)
    assert reply.body == raw and reply.status == 529
    assert isinstance(sdk_error(reply, "anthropic"), anthropic.OverloadedError)
    raw = b'{"error":{"message":"Deployment not found","type":null,"code":"DeploymentNotFound","param":null}}'
    assert tr(OA_REQ, "azure", raw, 404).body == raw


def test_tv10_gateway_errors():
    reply = P.error_reply("openai", GatewayError(404, "not_found", "The model 'x' does not exist", param="model", code="model_not_found"))
    assert reply.status == 404 and json.loads(reply.body) == {"error": {
        "message": "The model 'x' does not exist", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}
    assert isinstance(sdk_error(reply, "openai"), openai.NotFoundError)
    reply = P.error_reply("anthropic", GatewayError(401, "authentication", "invalid x-api-key"))
    assert reply.status == 401 and json.loads(reply.body) == {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
    assert isinstance(sdk_error(reply, "anthropic"), anthropic.AuthenticationError)
    reply = P.error_reply("anthropic", GatewayError(429, "rate_limit", "slow", retry_after="3"))
    assert reply.headers["retry-after"] == "3" and isinstance(sdk_error(reply, "anthropic"), anthropic.RateLimitError)
    reply = P.error_reply("openai", GatewayError(503, "unavailable", "all targets down"))
    assert reply.status == 503 and isinstance(sdk_error(reply, "openai"), openai.InternalServerError)
    assert GatewayError(None, "timeout", "t").status == 504


def test_compatible_server_quirks_normalised_for_strict_sdk():
    body = {"id": 7, "created": 1.5, "model": "local", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "eos"}]}
    c = as_openai(tr(OA_REQ, "openai-compatible", body))
    assert (c.id, c.created, c.object, c.choices[0].finish_reason) == ("7", 1, "chat.completion", "stop")
    del body["created"]
    assert as_openai(tr(OA_REQ, "openai-compatible", body)).created == FIXED_NOW


@pytest.mark.parametrize("body", [
    {"choices": [None, "x"]}, {"choices": [{"message": "x"}]}, {"choices": [{"message": {"tool_calls": ["x"]}}]},
    {"content": ["x", {"type": "tool_use", "input": "s"}]}, {"content": "x"}, {"candidates": ["x"]},
    {"candidates": [{"content": {"parts": ["x", {"functionCall": "f"}]}}]}, {"usage": "x", "choices": []},
    [], None, 5,
])
@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini", "openai-compatible"])
def test_odd_2xx_bodies_give_502_or_a_valid_answer(body, provider):
    for req in (OA_REQ, AN_REQ):
        try:
            reply = tr(req, provider, json.dumps(body).encode())
        except GatewayError as e:
            assert e.status == 502
            continue
        assert reply.status == 200


@pytest.mark.parametrize("status,gstatus,kind_type", [
    (413, "FAILED_PRECONDITION", "request_too_large"),   # the HTTP status is specific: it wins
    (504, "INTERNAL", "api_error"),
    (529, "UNAVAILABLE", "overloaded_error"),
    (400, "FAILED_PRECONDITION", "invalid_request_error"),
    (400, "RESOURCE_EXHAUSTED", "invalid_request_error"),  # not a 429: no rate-limit type without the status
    (503, "UNAVAILABLE", "overloaded_error"),
    (404, "NOT_FOUND", "not_found_error"),
])
def test_gemini_error_kind_agrees_with_http_status(status, gstatus, kind_type):
    body = {"error": {"code": status, "message": "m", "status": gstatus}}
    reply = tr(AN_REQ, "gemini", body, status)
    obj = json.loads(reply.body)
    assert reply.status == status and obj["error"]["type"] == kind_type


def test_gemini_parallel_calls_trimmed_when_client_disabled_them():
    body = {"model": "m", "max_tokens": 10, "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
            "messages": [{"role": "user", "content": "q"}]}
    answer = {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "f", "args": {"a": 1}}}, {"functionCall": {"name": "f", "args": {"a": 2}}}]},
        "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4}}
    raw = json.dumps(answer).encode()
    for disable, n in ((True, 1), (False, 2)):
        b = json.loads(json.dumps(body))
        b["tool_choice"]["disable_parallel_tool_use"] = disable
        req = P.parse_request("anthropic", json.dumps(b).encode())
        msg = json.loads(P.translate_response(req, "gemini", 200, {}, raw).body)
        assert [c["input"] for c in msg["content"]] == [{"a": 1}, {"a": 2}][:n]
        assert msg["stop_reason"] == "tool_use"
        st = P.open_stream(req, "gemini")
        out = st.feed(b"data: " + raw + b"\r\n\r\n") + st.finish()
        assert out.count(b"event: content_block_start") == n
