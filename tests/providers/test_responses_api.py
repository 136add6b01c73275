"""The OpenAI Responses API through the hub: parsing, rendering, the pass-through, and golden stream transcripts in
both directions (provider streams → Responses events; Responses events → Chat Completions / Anthropic events).

Regenerate the golden files with `AIGW_UPDATE_GOLDEN=1 pytest tests/providers/test_responses_api.py` and review the
diff by eye. Every transcript is also replayed split at every byte: the output must be byte-identical.
"""
import json
import os
import pathlib

import pytest

import providers as P
from providers import registry
from providers.canonical import MediaPart, Reasoning, TextPart, ToolCallPart, ToolResultPart
from providers.responses_passthrough import ResponsesRelay, responses_path
from providers.responses_stream import ResponsesSource
from providers.streaming import StreamTranslator

from .sdk import IdCounter, fixed_now, read_anthropic_stream, read_openai_stream
from .sdk_responses import read_responses_stream, validate_response

HERE = pathlib.Path(__file__).parent
FIXTURES = HERE.parent / "fixtures"
GOLDEN = HERE / "golden" / "responses"
UPSTREAM = GOLDEN / "upstream"
UPDATE = os.environ.get("AIGW_UPDATE_GOLDEN") == "1"
ING = "openai-responses"
TOOL = {"type": "function", "name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": False}


def parse(body: dict):
    return P.parse_request(ING, json.dumps(body).encode())


def spec(provider: str, **kw) -> P.TargetSpec:
    return P.TargetSpec(provider, kw.pop("model", "m"), credentials={"api_key": "k"}, **kw)


def upstream_body(body: dict, provider: str, **kw) -> dict:
    return json.loads(P.build_upstream_request(parse(body), spec(provider, **kw)).body)


def bad(body: dict, provider: str | None = None) -> P.GatewayError:
    with pytest.raises(P.GatewayError) as e:
        req = parse(body)
        if provider:
            P.build_upstream_request(req, spec(provider))
    assert e.value.status == 400
    return e.value


# ------------------------------------------------------------------ the registry
def test_ingress_for_path():
    assert P.ingress_for_path("/v1/responses") == ING
    assert P.ingress_for_path("/openai/v1/responses?x=1") == ING
    assert P.ingress_for_path("/v1/chat/completions") == "openai"
    for p in ("/v1/responses/resp_1", "/v1/responses/resp_1/cancel", "/v1/responses/resp_1/input_items"):
        assert P.ingress_for_path(p) is None
    assert ING in P.INGRESSES


def test_route_one_passthrough_per_ingress():
    be, pt = registry.route(ING, "openai")
    assert pt is not None and pt.ingress == ING
    assert registry.route("openai", "openai")[1].ingress == "openai"
    for provider in ("azure", "openai-compatible", "anthropic", "gemini"):
        assert registry.route(ING, provider)[1] is None  # through the hub
    assert registry.route("anthropic", "anthropic")[1].ingress == "anthropic"


# ------------------------------------------------------------------ parsing
def test_parse_string_input_and_settings():
    req = parse({"model": "gpt-4o", "input": "Hi", "instructions": "Be brief.", "max_output_tokens": 99,
                 "temperature": 0.5, "top_p": 0.9, "user": "u1", "metadata": {"a": "b"}, "stream": True,
                 "parallel_tool_calls": False, "reasoning": {"effort": "low", "summary": "auto"}})
    assert req.ingress == ING and req.model == "gpt-4o" and req.stream and req.include_usage
    assert req.system == ["Be brief."] and req.messages[0].parts == [TextPart("Hi")]
    assert (req.max_tokens, req.temperature, req.top_p, req.user, req.parallel_tool_calls) == (99, 0.5, 0.9, "u1", False)
    assert req.reasoning == Reasoning(effort="low", include=True)
    assert parse({"model": "m", "input": "x", "reasoning": {"effort": "xhigh"}}).reasoning.effort == "high"


def test_parse_items():
    req = parse({"model": "m", "input": [
        {"role": "developer", "content": "dev"},
        {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "sys"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "look"},
                                     {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                                     {"type": "input_image", "image_url": "https://x/y.png"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "calling", "annotations": []}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
         "arguments": "{\"city\":\"Paris\"}", "status": "completed"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ], "tools": [TOOL], "tool_choice": {"type": "function", "name": "get_weather"}})
    assert req.system == ["dev", "sys"]
    user, assistant, result = req.messages
    assert user.parts[0] == TextPart("look") and isinstance(user.parts[1], MediaPart)
    assert user.parts[1].data == "AAAA" and user.parts[2].url == "https://x/y.png"
    assert assistant.parts[0] == TextPart("calling")
    assert isinstance(assistant.parts[1], ToolCallPart) and assistant.parts[1].input == {"city": "Paris"}
    assert isinstance(result.parts[0], ToolResultPart) and result.parts[0].text == "sunny"
    assert result.parts[0].name == "get_weather"  # resolved from the call (Gemini needs it)
    assert req.tools[0].name == "get_weather" and req.tool_choice.mode == "tool"


@pytest.mark.parametrize("fmt,want", [
    ({"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True},
     {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True}}),
    ({"type": "json_object"}, {"type": "json_object"}),
    ({"type": "text"}, None),
])
def test_text_format_is_the_canonical_response_format(fmt, want):
    assert parse({"model": "m", "input": "x", "text": {"format": fmt}}).response_format == want


@pytest.mark.parametrize("body,param", [
    ({"input": "x"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": 3}, "input"),
    ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input"),
    ({"model": "m", "input": [{"type": "function_call", "call_id": "c"}]}, "input"),
    ({"model": "m", "input": "x", "max_output_tokens": "9"}, "max_output_tokens"),
    ({"model": "m", "input": "x", "reasoning": {"effort": "huge"}}, "reasoning.effort"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format"),
    ({"model": "m", "input": "x", "tool_choice": "sometimes"}, "tool_choice"),
])
def test_malformed_requests_are_400s(body, param):
    assert bad(body).param == param


# ------------------------------------------------------------------ what only OpenAI can do
@pytest.mark.parametrize("extra,param", [
    ({"tools": [{"type": "web_search"}]}, "tools"),
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}, "messages"),
])
@pytest.mark.parametrize("provider", ["anthropic", "gemini", "azure", "openai-compatible"])
def test_openai_only_features_are_a_clear_400_elsewhere(extra, param, provider):
    body = {"model": "m", "input": "x", **extra}
    err = bad(body, provider)
    assert err.param == param and provider in err.message
    if "tools" in extra:
        assert "web_search" in err.message
    P.build_upstream_request(parse(body), spec("openai"))  # OpenAI takes all of it


def test_store_is_ignored_through_the_hub():
    assert "store" not in upstream_body({"model": "m", "input": "x", "store": True}, "anthropic")


# ------------------------------------------------------------------ the pass-through
@pytest.mark.parametrize("configured,want", [
    (None, "/v1/responses"), ("/v1/chat/completions", "/v1/responses"),
    ("/proxy/openai/v1/chat/completions?tenant=a", "/proxy/openai/v1/responses?tenant=a"),
    ("/v1/responses", "/v1/responses"), ("/elsewhere", "/v1/responses"),
])
def test_passthrough_path(configured, want):
    assert responses_path(configured) == want
    assert P.build_upstream_request(parse({"model": "m", "input": "x"}), spec("openai", path=configured)).path == want


def test_passthrough_body_is_the_clients_with_the_model_replaced():
    body = {"model": "gpt-4o", "input": [{"type": "reasoning", "id": "rs_1", "summary": [],
                                          "encrypted_content": "zz"}], "store": True,
            "previous_response_id": "resp_1", "tools": [{"type": "web_search"}], "include": ["x"]}
    assert upstream_body(body, "openai", model="gpt-4.1") == {**body, "model": "gpt-4.1"}


def test_passthrough_answer_is_verbatim_with_usage_read():
    raw = (UPSTREAM / "text.sse").read_bytes()
    final = json.loads(raw.rsplit(b"data: ", 1)[1])["response"]
    body = json.dumps(final).encode()
    r = P.translate_response(parse({"model": "m", "input": "x"}), "openai", 200, {}, body)
    assert r.body == body and r.model == "gpt-4o-2024-08-06"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (12, final["usage"]["output_tokens"])
    assert P.response_id_in_body(body) == final["id"]
    err = b'{"error":{"message":"Previous response with id \'x\' not found.","type":"invalid_request_error"}}'
    assert P.translate_response(parse({"model": "m", "input": "x"}), "openai", 404, {}, err).body == err


# ------------------------------------------------------------------ rendering through the hub
def _translate(provider: str, answer: dict, body: dict | None = None) -> dict:
    req = parse(body or {"model": "m", "input": "x", "tools": [TOOL], "instructions": "Be brief."})
    r = P.translate_response(req, provider, 200, {}, json.dumps(answer).encode(), now=fixed_now, new_id=IdCounter())
    assert r.status == 200
    obj = json.loads(r.body)
    validate_response(obj)
    return obj


def test_render_text_answer_from_anthropic():
    obj = _translate("anthropic", {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "stop_reason": "end_turn",
        "stop_sequence": None, "content": [{"type": "text", "text": "Hello"}],
        "usage": {"input_tokens": 5, "output_tokens": 2, "cache_read_input_tokens": 3}})
    resp = validate_response(obj)
    assert resp.output_text == "Hello" and resp.status == "completed" and resp.id.startswith("resp_")
    assert resp.instructions == "Be brief." and resp.tools[0].name == "get_weather" and resp.store is False
    u = resp.usage
    assert (u.input_tokens, u.output_tokens, u.total_tokens, u.input_tokens_details.cached_tokens) == (8, 2, 10, 3)


def test_render_tool_calls_and_length():
    obj = _translate("openai-compatible", {
        "id": "c1", "object": "chat.completion", "created": 1, "model": "llama", "choices": [{
            "index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Let me see.",
                                                                   "tool_calls": [{"id": "call_9", "type": "function",
                                                                                   "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}]}}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}})
    msg, call = obj["output"]
    assert msg["type"] == "message" and msg["content"][0]["text"] == "Let me see."
    assert (call["type"], call["call_id"], call["name"], call["arguments"]) == \
        ("function_call", "call_9", "get_weather", "{\"city\":\"Rome\"}")
    assert call["id"].startswith("fc_")
    cut = _translate("gemini", {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]},
                                               "finishReason": "MAX_TOKENS"}], "modelVersion": "g"})
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}


def test_error_body_is_openais_shape():
    r = P.error_reply(ING, P.GatewayError(429, "rate_limit", "slow down"))
    assert json.loads(r.body) == {"error": {"message": "slow down", "type": "rate_limit_error", "param": None,
                                            "code": "rate_limit_exceeded"}}


# ------------------------------------------------------------------ golden streams: provider → Responses events
STREAM_REQ = {"model": "m", "input": "x", "stream": True, "tools": [TOOL]}


def _into_responses(raw: bytes, provider: str, chunks=None) -> bytes:
    t = P.open_stream(parse(STREAM_REQ), provider, now=fixed_now, new_id=IdCounter())
    out = [t.feed(c) for c in (chunks if chunks is not None else [raw])]
    out.append(t.finish())
    assert t.done and t.upstream_error is None
    return b"".join(out)


INTO = ([(f, "anthropic") for f in sorted((FIXTURES / "anthropic-sdk").glob("*.sse"))]
        + [(f, "openai-compatible") for f in sorted((FIXTURES / "openai-sdk").glob("*.sse"))]
        + [(f, "gemini") for f in sorted((HERE / "fixtures" / "gemini").glob("*.sse"))])


def _golden(path: pathlib.Path, out: bytes) -> None:
    if UPDATE:
        path.write_bytes(out)
    assert out == path.read_bytes(), f"{path.name} differs; AIGW_UPDATE_GOLDEN=1 to regenerate, then review"


@pytest.mark.parametrize("src,provider", INTO, ids=[f"{p.parent.name}/{p.stem}" for p, _ in INTO])
def test_golden_into_responses(src, provider):
    raw = src.read_bytes()
    out = _into_responses(raw, provider)
    _golden(GOLDEN / f"{src.parent.name}__{src.stem}.responses.sse", out)
    res = read_responses_stream(out)
    assert res.response.usage is not None
    assert _into_responses(raw, provider, [raw[i:i + 1] for i in range(len(raw))]) == out


def test_stream_event_order_and_commit():
    raw = (FIXTURES / "anthropic-sdk" / "tool_use_response.sse").read_bytes()
    res = read_responses_stream(_into_responses(raw, "anthropic"))
    types = [e.type for e in res.events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert "response.function_call_arguments.done" in types
    call = next(o for o in res.response.output if o.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments)
    t = P.open_stream(parse(STREAM_REQ), "anthropic", now=fixed_now, new_id=IdCounter())
    events = raw.split(b"\n\n")
    t.feed(events[0] + b"\n\n")
    assert not t.committed  # message_start: response.created, no content yet
    for e in events[1:]:
        t.feed(e + b"\n\n")
        if t.committed:
            break
    assert t.committed


def test_sink_error_event_ends_the_stream():
    t = P.open_stream(parse(STREAM_REQ), "anthropic", now=fixed_now, new_id=IdCounter())
    raw = (FIXTURES / "anthropic-sdk" / "basic_response.sse").read_bytes()
    out = t.feed(raw[: raw.index(b"content_block_stop")]) + t.abort("upstream went away")
    res = read_responses_stream(out, expect_error=True)
    assert res.error.message == "upstream went away" and res.error.sequence_number == len(res.events) - 1


# ------------------------------------------------------------------ golden streams: Responses events → others
FROM = sorted(UPSTREAM.glob("*.sse"))
CHAT_REQ = json.dumps({"model": "m", "stream": True, "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": "x"}]}).encode()
ANTHROPIC_REQ = json.dumps({"model": "m", "max_tokens": 64, "stream": True,
                            "messages": [{"role": "user", "content": "x"}]}).encode()


def _from_responses(raw: bytes, ingress: str, chunks=None) -> bytes:
    req = P.parse_request(ingress, CHAT_REQ if ingress == "openai" else ANTHROPIC_REQ)
    sink = registry.client(ingress).stream_sink(req, fixed_now, IdCounter())
    t = StreamTranslator(ResponsesSource(sink, IdCounter()), sink)
    out = [t.feed(c) for c in (chunks if chunks is not None else [raw])]
    out.append(t.finish())
    assert t.done and t.upstream_error is None
    return b"".join(out)


@pytest.mark.parametrize("ingress", ["openai", "anthropic"])
@pytest.mark.parametrize("src", FROM, ids=[p.stem for p in FROM])
def test_golden_from_responses(src, ingress):
    raw = src.read_bytes()
    read_responses_stream(raw)  # the fixture itself is what the SDK accepts
    out = _from_responses(raw, ingress)
    _golden(GOLDEN / f"responses__{src.stem}.{ingress}.sse", out)
    if ingress == "openai":
        completion = read_openai_stream(out).completion
        assert completion.usage.prompt_tokens == 12
        if src.stem == "tool_calls":
            assert [json.loads(c.function.arguments) for c in completion.choices[0].message.tool_calls] == \
                [{"city": "Paris"}, {"city": "Rome"}]
    else:
        read_anthropic_stream(out)
    assert _from_responses(raw, ingress, [raw[i:i + 1] for i in range(len(raw))]) == out


# ------------------------------------------------------------------ the relay (OpenAI target, Responses client)
def _relay(raw: bytes, chunks=None):
    t = P.open_stream(parse(STREAM_REQ), "openai")
    out = [t.feed(c) for c in (chunks if chunks is not None else [raw])]
    return t, b"".join(out) + t.finish()


@pytest.mark.parametrize("src", FROM, ids=[p.stem for p in FROM])
def test_relay_keeps_every_event(src):
    raw = src.read_bytes()
    t, out = _relay(raw, [raw[i:i + 1] for i in range(len(raw))])
    assert out == raw and t.done and t.committed and t.upstream_error is None
    assert t.model == "gpt-4o-2024-08-06" and t.usage.prompt_tokens == 12
    assert P.response_id_in_events(out).startswith("resp_")


def test_relay_commit_point_and_upstream_errors():
    raw = (UPSTREAM / "text.sse").read_bytes()
    events = [e + b"\n\n" for e in raw.split(b"\n\n") if e]
    relay = ResponsesRelay()
    t = StreamTranslator(relay, relay)
    for e in events[:4]:  # created, in_progress, output_item.added, content_part.added
        t.feed(e)
    assert not t.committed and relay.response_id.startswith("resp_")
    t.feed(events[4])  # the first output_text.delta
    assert t.committed
    failed = b'event: error\ndata: {"type":"error","code":"server_error","message":"boom","param":null,' \
             b'"sequence_number":2}\n\n'
    t, out = _relay(b"".join(events[:2]) + failed)
    assert t.upstream_error is not None and t.upstream_error.message == "boom" and not t.committed
    read_responses_stream(out, expect_error=True)
    resp_failed = (b'event: response.failed\ndata: {"type":"response.failed","sequence_number":2,"response":'
                   b'{"id":"r","status":"failed","error":{"code":"server_error","message":"bad"}}}\n\n')
    t, _ = _relay(b"".join(events[:2]) + resp_failed)
    assert t.upstream_error.message == "bad"
    t, out = _relay(b"".join(events[:6]))  # cut after content: the gateway's error event, numbered on
    res = read_responses_stream(out, expect_error=True)
    assert res.error.sequence_number == 6
