"""Reasoning across families: reasoning_effort ⇄ thinking budget ⇄ thinkingConfig (one budget table), thinking
blocks with signatures, reasoning_content for OpenAI-format callers, and the mocks' thinking rules."""
import json

import pytest

import providers as P
from aigw.mock import thinking as mock_thinking
from aigw.mock.anthropic import validate_anthropic
from aigw.mock.errors import ApiError
from aigw.mock.gemini import validate_gemini
from aigw.mock.openai import validate_openai
from providers import GatewayError, TargetSpec, registry
from providers.anthropic_backend import encode as anthropic_encode
from providers.canonical import (
    EFFORT_BUDGETS, REASONING_EFFORTS, CanonicalRequest, Message, Reasoning, TextPart, ThinkingPart, ToolCallPart,
    ToolResultPart,
)

from .sdk import IdCounter, fixed_now, read_anthropic_stream, read_openai_stream

USER = [{"role": "user", "content": "Why is the sky blue?"}]
SIG = "EqQBCkYIBxgCKkBsig=="


def parse(ingress, body, expose=False):
    req = P.parse_request(ingress, json.dumps(body).encode())
    req.expose_reasoning = expose
    return req


def up(ingress, body, provider, expose=False, **target):
    req = parse(ingress, body, expose)
    return json.loads(P.build_upstream_request(req, TargetSpec(provider, target.pop("model", None), **target)).body)


def oa(**extra):
    return {"model": "m", "messages": USER, **extra}


def an(**extra):
    return {"model": "m", "max_tokens": 20000, "messages": USER, **extra}


def answer(ingress, provider, obj, expose=False, **body):
    req = parse(ingress, (oa if ingress == "openai" else an)(**body), expose)
    r = P.translate_response(req, provider, 200, {}, json.dumps(obj).encode(), now=fixed_now, new_id=IdCounter())
    return json.loads(r.body)


def stream(ingress, provider, raw: bytes, expose=False, chunk=None, **body):
    req = parse(ingress, (oa if ingress == "openai" else an)(stream=True, **body), expose)
    t = P.open_stream(req, provider, now=fixed_now, new_id=IdCounter())
    size = chunk or len(raw)
    out = b"".join(t.feed(raw[i:i + size]) for i in range(0, len(raw), size))
    return t, out + t.finish()


def sse(*events) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


# ------------------------------------------------------------------ the budget table
def test_one_table_covers_every_effort_and_round_trips():
    assert tuple(EFFORT_BUDGETS) == REASONING_EFFORTS
    assert list(EFFORT_BUDGETS.values()) == sorted(EFFORT_BUDGETS.values())
    assert EFFORT_BUDGETS == {"minimal": 1024, "low": 4096, "medium": 8192, "high": 16384, "xhigh": 24576,
                              "max": 32768}
    for effort, budget in EFFORT_BUDGETS.items():
        assert Reasoning(effort=effort).tokens == budget
        assert Reasoning(budget=budget).level == effort
        assert Reasoning(budget=budget + 1).level == effort  # thresholds: the highest level the budget reaches
    assert Reasoning(effort="none").tokens == 0
    assert Reasoning(budget=1).level == "minimal"
    assert Reasoning(budget=0).level is None and Reasoning(budget=-1).level is None
    assert Reasoning().tokens is None and Reasoning().level is None


# ------------------------------------------------------------------ parsing
@pytest.mark.parametrize("effort", ["none", *REASONING_EFFORTS])
def test_openai_reasoning_effort_parses(effort):
    assert parse("openai", oa(reasoning_effort=effort)).reasoning == Reasoning(effort=effort)


@pytest.mark.parametrize("bad", ["extreme", "", 3, True, ["high"]])
def test_openai_reasoning_effort_outside_the_enum_is_a_400(bad):
    with pytest.raises(GatewayError) as e:
        parse("openai", oa(reasoning_effort=bad))
    assert e.value.status == 400 and e.value.param == "reasoning_effort" and "Supported values" in e.value.message


def test_anthropic_thinking_parses_and_is_checked_as_anthropic_does():
    assert parse("anthropic", an(thinking={"type": "enabled", "budget_tokens": 5000})).reasoning == \
        Reasoning(budget=5000, include=True)
    assert parse("anthropic", an(thinking={"type": "disabled"})).reasoning == Reasoning(budget=0)
    assert parse("anthropic", an(thinking={"type": "adaptive"})).reasoning.budget == -1
    no_max = {"model": "m", "messages": USER, "thinking": {"type": "enabled", "budget_tokens": 50000}}
    assert parse("anthropic", no_max).reasoning.budget == 50000  # checked against the target's default later
    for thinking, words in [({"type": "enabled", "budget_tokens": 1023}, "greater than or equal to 1024"),
                            ({"type": "enabled", "budget_tokens": 20000}, "`max_tokens` must be greater"),
                            ({"type": "enabled", "budget_tokens": "2000"}, "valid integer"),
                            ({"type": "enabled"}, "valid integer"),
                            ({"type": "sometimes"}, "expected tags"), ("on", "must be an object")]:
        with pytest.raises(GatewayError) as e:
            parse("anthropic", an(thinking=thinking))
        assert e.value.status == 400 and words in e.value.message, (thinking, e.value.message)


def test_anthropic_history_thinking_blocks_become_thinking_parts():
    history = [*USER, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "Rayleigh.", "signature": SIG},
        {"type": "redacted_thinking", "data": "ENC"}, {"type": "text", "text": "Scattering."}]},
        {"role": "user", "content": "More?"}]
    req = parse("anthropic", an(messages=history))
    assert req.messages[1].parts[:2] == [ThinkingPart("Rayleigh.", signature=SIG), ThinkingPart(redacted="ENC")]
    for bad in [{"type": "thinking", "signature": SIG}, {"type": "redacted_thinking"}]:
        broken = [*USER, {"role": "assistant", "content": [bad, {"type": "text", "text": "x"}]}]
        with pytest.raises(GatewayError) as e:
            parse("anthropic", an(messages=broken))
        assert e.value.status == 400


# ------------------------------------------------------------------ encoding: Anthropic targets
def test_effort_reaches_anthropic_as_the_table_budget_and_max_tokens_makes_room():
    body = up("openai", oa(reasoning_effort="high", max_completion_tokens=100, temperature=0.3, top_k=5,
                           top_p=0.5), "anthropic")
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 16384}
    assert body["max_tokens"] == 16384 + 100
    assert "temperature" not in body and "top_k" not in body and body["top_p"] == 0.95
    roomy = up("openai", oa(reasoning_effort="low", max_completion_tokens=30000), "anthropic")
    assert (roomy["thinking"]["budget_tokens"], roomy["max_tokens"]) == (4096, 30000)
    default = up("openai", oa(reasoning_effort="minimal"), "anthropic")
    assert (default["thinking"]["budget_tokens"], default["max_tokens"]) == (1024, 4096)
    assert up("openai", oa(reasoning_effort="none"), "anthropic")["thinking"] == {"type": "disabled"}
    assert "thinking" not in up("openai", oa(), "anthropic")
    validate_anthropic(body)  # the strict mock takes what the encoder sends


def test_anthropic_target_keeps_thinking_off_where_anthropic_refuses_it():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    forced = up("openai", oa(reasoning_effort="high", tools=tools, tool_choice="required"), "anthropic")
    assert "thinking" not in forced and forced["tool_choice"] == {"type": "any"}
    loop = [*USER, {"role": "assistant", "content": None,
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"}]
    body = up("openai", oa(reasoning_effort="high", tools=tools, messages=loop), "anthropic")
    assert "thinking" not in body  # an OpenAI history carries no signed thinking block
    validate_anthropic(body)
    prefill = up("openai", oa(reasoning_effort="high", messages=[*USER, {"role": "assistant", "content": "Because"}]),
                 "anthropic")
    assert "thinking" not in prefill
    with pytest.raises(ApiError):
        validate_anthropic({**body, "max_tokens": 20000, "thinking": {"type": "enabled", "budget_tokens": 16384}})


def _canon(parts, reasoning=None):
    return CanonicalRequest(ingress="openai", model="m", reasoning=reasoning, max_tokens=2000, messages=[
        Message("user", [TextPart("q")]), Message("assistant", parts), Message("user", [TextPart("more")])])


def test_anthropic_target_sends_signed_thinking_back_and_drops_unsigned():
    parts = [ThinkingPart("signed", signature=SIG), ThinkingPart("unsigned"), ThinkingPart(redacted="ENC"),
             TextPart("answer")]
    body = anthropic_encode(_canon(parts), "m", None)
    assert body["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "signed", "signature": SIG}, {"type": "redacted_thinking", "data": "ENC"},
        {"type": "text", "text": "answer"}]
    # a tool turn that opens with a signed block may think again
    call = ToolCallPart("toolu_1", "f", arguments_obj={})
    tool_turn = CanonicalRequest(ingress="openai", model="m", reasoning=Reasoning(effort="low"), messages=[
        Message("user", [TextPart("q")]), Message("assistant", [ThinkingPart("t", signature=SIG), call]),
        Message("user", [ToolResultPart("toolu_1", [TextPart("42")])])])
    assert anthropic_encode(tool_turn, "m", None)["thinking"]["budget_tokens"] == 4096
    assert "thinking" not in anthropic_encode(_canon([call], Reasoning(effort="low")), "m", None)
    assert anthropic_encode(_canon([TextPart("a")], Reasoning(budget=-1)), "m", None)["thinking"]["budget_tokens"] \
        == EFFORT_BUDGETS["medium"]


# ------------------------------------------------------------------ encoding: Gemini and OpenAI targets
@pytest.mark.parametrize("effort", REASONING_EFFORTS)
def test_effort_reaches_gemini_as_the_same_budget(effort):
    body = up("openai", oa(reasoning_effort=effort), "gemini")
    assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": EFFORT_BUDGETS[effort]}
    validate_gemini(body)


def test_gemini_thinking_config_edges():
    assert up("openai", oa(reasoning_effort="none"), "gemini", expose=True)["generationConfig"] == \
        {"thinkingConfig": {"thinkingBudget": 0}}
    assert up("openai", oa(reasoning_effort="high"), "gemini", expose=True)["generationConfig"]["thinkingConfig"] \
        == {"thinkingBudget": 16384, "includeThoughts": True}
    assert up("openai", oa(), "gemini", expose=True)["generationConfig"] == {"thinkingConfig": {"includeThoughts": True}}
    assert "generationConfig" not in up("openai", oa(), "gemini")
    assert up("anthropic", an(thinking={"type": "enabled", "budget_tokens": 3000}), "gemini")["generationConfig"][
        "thinkingConfig"] == {"thinkingBudget": 3000, "includeThoughts": True}
    assert up("anthropic", an(thinking={"type": "adaptive"}), "gemini")["generationConfig"]["thinkingConfig"] == \
        {"thinkingBudget": -1, "includeThoughts": True}
    assert up("anthropic", an(thinking={"type": "disabled"}), "gemini")["generationConfig"]["thinkingConfig"] == \
        {"thinkingBudget": 0}


@pytest.mark.parametrize("provider", ["openai", "azure", "openai-compatible"])
def test_anthropic_budget_reaches_openai_targets_as_effort(provider):
    target = {"api_version": "2024-10-21"} if provider == "azure" else {}
    for budget, effort in [(1024, "minimal"), (4095, "minimal"), (5000, "low"), (16384, "high"), (19000, "high")]:
        body = up("anthropic", an(thinking={"type": "enabled", "budget_tokens": budget}), provider, **target)
        assert body["reasoning_effort"] == effort
        validate_openai(body)
    for off in [{"type": "disabled"}, {"type": "adaptive"}]:
        assert "reasoning_effort" not in up("anthropic", an(thinking=off), provider, **target)


def test_openai_passthrough_keeps_reasoning_effort():
    assert up("openai", oa(reasoning_effort="xhigh"), "openai")["reasoning_effort"] == "xhigh"


# ------------------------------------------------------------------ decoding, non-stream
AN_ANSWER = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "stop_reason": "end_turn",
             "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 9},
             "content": [{"type": "thinking", "thinking": "Light scatters.", "signature": SIG},
                         {"type": "redacted_thinking", "data": "ENC"}, {"type": "text", "text": "Rayleigh."}]}
GM_ANSWER = {"candidates": [{"content": {"role": "model", "parts": [
    {"text": "Thinking first. ", "thought": True}, {"text": "Then more.", "thought": True}, {"text": "Blue."}]},
    "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2,
                                                "thoughtsTokenCount": 7}, "modelVersion": "gemini-2.5"}


def test_reasoning_content_for_openai_callers_only_when_the_gateway_exposes_it():
    msg = answer("openai", "anthropic", AN_ANSWER, expose=True)["choices"][0]["message"]
    assert (msg["content"], msg["reasoning_content"]) == ("Rayleigh.", "Light scatters.")
    assert "reasoning_content" not in answer("openai", "anthropic", AN_ANSWER)["choices"][0]["message"]
    out = answer("openai", "gemini", GM_ANSWER, expose=True)
    msg = out["choices"][0]["message"]
    assert (msg["content"], msg["reasoning_content"]) == ("Blue.", "Thinking first. Then more.")
    assert out["usage"]["completion_tokens"] == 9 and out["usage"]["completion_tokens_details"]["reasoning_tokens"] == 7
    compat = {"id": "x", "model": "deepseek-reasoner", "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "42", "reasoning_content": "Deep thought."}}]}
    assert registry.backend("openai-compatible").parse_response(compat, parse("openai", oa()), IdCounter()) \
        .parts[0] == ThinkingPart("Deep thought.")


def test_anthropic_callers_get_only_signed_thinking_blocks():
    gm = answer("anthropic", "gemini", GM_ANSWER)
    assert [b["type"] for b in gm["content"]] == ["text"]  # Gemini thoughts carry no signature
    from providers.anthropic_client import render_response
    from providers.canonical import CanonicalResponse
    out = render_response(CanonicalResponse("msg_2", "m", [ThinkingPart("t", signature=SIG),
                                                           ThinkingPart(redacted="ENC"), TextPart("a")]), IdCounter())
    assert out["content"] == [{"type": "thinking", "thinking": "t", "signature": SIG},
                              {"type": "redacted_thinking", "data": "ENC"}, {"type": "text", "text": "a"}]
    from anthropic.types import Message as AnMessage
    AnMessage.model_validate(out, strict=True)


# ------------------------------------------------------------------ streams
AN_STREAM = sse(
    {"type": "message_start", "message": {"id": "msg_s", "type": "message", "role": "assistant", "model": "claude",
                                          "content": [], "stop_reason": None, "stop_sequence": None,
                                          "usage": {"input_tokens": 5, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Light "}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "scatters."}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": SIG}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "redacted_thinking", "data": "ENC"}},
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "Rayleigh."}},
    {"type": "content_block_stop", "index": 2},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
     "usage": {"output_tokens": 9}},
    {"type": "message_stop"})


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_anthropic_thinking_stream_to_openai_reasoning_content(chunk):
    t, out = stream("openai", "anthropic", AN_STREAM, expose=True, chunk=chunk)
    res = read_openai_stream(out)
    deltas = [c.choices[0].delta for c in res.chunks if c.choices]
    reasoning = [getattr(d, "reasoning_content", None) for d in deltas]
    assert [r for r in reasoning if r] == ["Light ", "scatters."]
    first_content = next(i for i, d in enumerate(deltas) if d.content)
    assert all(not d.content for d in deltas[:first_content]) and reasoning.index("Light ") < first_content
    assert res.completion.choices[0].message.content == "Rayleigh." and t.done


def test_thinking_does_not_commit_the_stream():
    head = AN_STREAM[:AN_STREAM.index(b"event: content_block_start\ndata: {\"type\": \"content_block_start\", "
                                      b"\"index\": 2")]
    for expose in (True, False):
        req = parse("openai", oa(stream=True), expose)
        t = P.open_stream(req, "anthropic", now=fixed_now, new_id=IdCounter())
        out = t.feed(head)
        assert not t.committed and (b"reasoning_content" in out) is expose
        t.feed(AN_STREAM[len(head):])
        assert t.committed


def test_openai_stream_without_exposure_drops_thinking():
    _, out = stream("openai", "anthropic", AN_STREAM)
    assert b"reasoning_content" not in out and b"Light" not in out
    assert read_openai_stream(out).completion.choices[0].message.content == "Rayleigh."


@pytest.mark.parametrize("chunk", [None, 5])
def test_gemini_thought_stream_to_openai_reasoning_content(chunk):
    raw = b"".join(b"data: " + json.dumps(o).encode() + b"\r\n\r\n" for o in [
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hmm.", "thought": True}]}}]},
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Blue."}]}, "finishReason": "STOP"}],
         "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1, "thoughtsTokenCount": 4}}])
    t, out = stream("openai", "gemini", raw, expose=True, chunk=chunk, stream_options={"include_usage": True})
    res = read_openai_stream(out)
    assert [getattr(c.choices[0].delta, "reasoning_content", None) for c in res.chunks if c.choices][1] == "Hmm."
    assert res.chunks[-1].usage.completion_tokens_details.reasoning_tokens == 4 and t.usage.reasoning == 4


def test_anthropic_sink_streams_signed_thinking_as_anthropic_does():
    from providers.anthropic_client import AnthropicSink
    sink = AnthropicSink(IdCounter())
    sink.start("msg_x", "m")
    sink.thinking("unsigned, ")
    sink.text("dropped thinking above; ")  # a block that got no signature is never shown
    sink.thinking("Light ")
    sink.thinking("scatters.")
    sink.thinking_signature(SIG)
    sink.redacted_thinking("ENC")
    sink.text("Rayleigh.")
    sink.finish("stop")
    sink.end()
    res = read_anthropic_stream(sink.take())
    blocks = [b.model_dump(exclude_none=True) for b in res.message.content]
    assert blocks == [{"type": "text", "text": "dropped thinking above; "},
                      {"type": "thinking", "thinking": "Light scatters.", "signature": SIG},
                      {"type": "redacted_thinking", "data": "ENC"}, {"type": "text", "text": "Rayleigh."}]
    alone = AnthropicSink(IdCounter())
    alone.thinking("t")
    alone.thinking_signature(SIG)
    assert not alone.committed


def test_gemini_stream_to_anthropic_caller_has_no_unsigned_thinking():
    raw = b"".join(b"data: " + json.dumps(o).encode() + b"\r\n\r\n" for o in [
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hmm.", "thought": True}]}}]},
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Blue."}]}, "finishReason": "STOP"}]}])
    _, out = stream("anthropic", "gemini", raw, thinking={"type": "enabled", "budget_tokens": 2000})
    res = read_anthropic_stream(out)
    assert [b.type for b in res.message.content] == ["text"]


# ------------------------------------------------------------------ the mocks are as strict as the APIs
def test_mock_anthropic_thinking_rules():
    ok = an(thinking={"type": "enabled", "budget_tokens": 2000})
    validate_anthropic(ok)
    for extra, words in [({"temperature": 0.5}, "temperature"), ({"top_k": 3}, "top_k"), ({"top_p": 0.5}, "top_p"),
                         ({"max_tokens": 2000}, "max_tokens"),
                         ({"thinking": {"type": "enabled", "budget_tokens": 1000}}, "1024")]:
        with pytest.raises(ApiError) as e:
            validate_anthropic({**ok, **extra})
        assert words in e.value.message
    validate_anthropic({**ok, "temperature": 1, "top_p": 0.95})
    block = mock_thinking.block()
    signed = [*USER, {"role": "assistant", "content": [block, {"type": "text", "text": "a"}]},
              {"role": "user", "content": "b"}]
    validate_anthropic(an(messages=signed))
    forged = [*USER, {"role": "assistant", "content": [{**block, "thinking": block["thinking"] + "!"}]},
              {"role": "user", "content": "b"}]
    with pytest.raises(ApiError) as e:
        validate_anthropic(an(messages=forged))
    assert "signature" in e.value.message


def test_mock_gemini_and_openai_reasoning_fields():
    base = {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}
    for tc in [{"thinkingBudget": -1}, {"thinkingBudget": 0, "includeThoughts": False}, {"thinkingLevel": "LOW"}]:
        validate_gemini({**base, "generationConfig": {"thinkingConfig": tc}})
    for tc in [{"thinkingBudget": "8"}, {"thinkingBudget": 40000}, {"thinkingBudget": -2}, {"includeThoughts": 1},
               {"thinkingBudget": 8, "thinkingLevel": "LOW"}, {"budget": 8}, {"thinkingLevel": "EXTREME"}]:
        with pytest.raises(ApiError):
            validate_gemini({**base, "generationConfig": {"thinkingConfig": tc}})
    validate_openai({"model": "m", "messages": USER, "reasoning_effort": "minimal"})
    with pytest.raises(ApiError) as e:
        validate_openai({"model": "m", "messages": USER, "reasoning_effort": "extreme"})
    assert e.value.param == "reasoning_effort"
