"""What the provider reported: `Reply.usage` / `Reply.model` (non-stream), `StreamTranslator.usage` / `.model`
(streams) and `usage_from_body`, for every provider family × ingress × stream/non-stream; and the rule "ask an
OpenAI-format target for usage when the caller did not, strip that chunk from what the caller receives"."""
import json
import pathlib

import pytest

import providers as P
from providers import Usage

from .sdk import IdCounter, fixed_now, read_anthropic_stream, read_openai_stream

FIX = pathlib.Path(__file__).parent.parent / "fixtures"

# The same answer in each family: 100 prompt tokens (40 read from cache, 10 written to it), 20 completion tokens.
OPENAI_USAGE = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                "prompt_tokens_details": {"cached_tokens": 40}, "completion_tokens_details": {"reasoning_tokens": 5}}
ANTHROPIC_USAGE = {"input_tokens": 50, "output_tokens": 20, "cache_read_input_tokens": 40,
                   "cache_creation_input_tokens": 10}
GEMINI_USAGE = {"promptTokenCount": 100, "candidatesTokenCount": 15, "cachedContentTokenCount": 40,
                "thoughtsTokenCount": 5, "totalTokenCount": 120}
EXPECTED = {"openai": Usage(100, 20, cache_read=40, reasoning=5),
            "anthropic": Usage(100, 20, cache_read=40, cache_write=10),
            "gemini": Usage(100, 20, cache_read=40, reasoning=5)}
MODEL = {"openai": "gpt-served", "anthropic": "claude-served", "gemini": "gemini-served"}
FAMILY = {"openai": "openai", "azure": "openai", "openai-compatible": "openai", "anthropic": "anthropic",
          "gemini": "gemini"}
PROVIDERS = list(FAMILY)
INGRESSES = ["openai", "anthropic"]
USAGE_KEY = {"openai": "usage", "anthropic": "usage", "gemini": "usageMetadata"}


def request(ingress: str, stream: bool, include_usage: bool = False) -> P.CanonicalRequest:
    body: dict = {"model": "alias", "messages": [{"role": "user", "content": "x"}]}
    if ingress == "anthropic":
        body["max_tokens"] = 16
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    return P.parse_request(ingress, json.dumps(body).encode())


# ------------------------------------------------------------------ provider answers
def answer(family: str, usage=None) -> dict:
    if family == "openai":
        obj = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL["openai"],
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
    elif family == "anthropic":
        obj = {"id": "msg_1", "type": "message", "role": "assistant", "model": MODEL["anthropic"],
               "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "stop_sequence": None}
    else:
        obj = {"candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
               "modelVersion": MODEL["gemini"], "responseId": "r1"}
    if usage is not None:
        obj[USAGE_KEY[family]] = usage
    return obj


def full_usage(family: str):
    return {"openai": OPENAI_USAGE, "anthropic": ANTHROPIC_USAGE, "gemini": GEMINI_USAGE}[family]


def sse(obj, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def stream(family: str, usage=None) -> bytes:
    """A provider stream of "hi" whose usage (None: none) is reported the family's way."""
    if family == "openai":
        def chunk(delta, finish=None):
            return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL["openai"],
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        out = sse(chunk({"role": "assistant", "content": ""})) + sse(chunk({"content": "hi"})) + sse(chunk({}, "stop"))
        if usage is not None:
            out += sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL["openai"],
                        "choices": [], "usage": usage})
        return out + b"data: [DONE]\n\n"
    if family == "anthropic":
        start_usage, delta_usage = None, None
        if usage == ANTHROPIC_USAGE:  # as Anthropic reports it: input in message_start, output in message_delta
            start_usage = {k: v for k, v in usage.items() if k != "output_tokens"} | {"output_tokens": 1}
            delta_usage = {"output_tokens": usage["output_tokens"]}
        elif usage is not None:
            start_usage = delta_usage = usage
        message = {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": MODEL["anthropic"],
                   "stop_reason": None, "stop_sequence": None}
        if start_usage is not None:
            message["usage"] = start_usage
        delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}}
        if delta_usage is not None:
            delta["usage"] = delta_usage
        return (sse({"type": "message_start", "message": message}, "message_start")
                + sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                      "content_block_start")
                + sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
                      "content_block_delta")
                + sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
                + sse(delta, "message_delta") + sse({"type": "message_stop"}, "message_stop"))
    first = {"candidates": [{"content": {"role": "model", "parts": [{"text": "h"}]}}], "modelVersion": MODEL["gemini"]}
    last = {"candidates": [{"content": {"role": "model", "parts": [{"text": "i"}]}, "finishReason": "STOP"}],
            "modelVersion": MODEL["gemini"]}
    if usage is not None:
        first["usageMetadata"] = {"promptTokenCount": 100, "candidatesTokenCount": 1}  # cumulative: the last wins
        last["usageMetadata"] = usage
    return sse(first) + sse(last)


def translate(req, provider: str, body: dict, status: int = 200) -> P.Reply:
    return P.translate_response(req, provider, status, {}, json.dumps(body).encode(), now=fixed_now,
                                new_id=IdCounter())


def run_stream(req, provider: str, raw: bytes, chunk: int | None = None) -> tuple[P.StreamTranslator, bytes]:
    t = P.open_stream(req, provider, now=fixed_now, new_id=IdCounter())
    step = chunk or len(raw) or 1
    out = b"".join(t.feed(raw[i:i + step]) for i in range(0, len(raw), step)) + t.finish()
    return t, out


MATRIX = [(p, i) for p in PROVIDERS for i in INGRESSES]


# ------------------------------------------------------------------ non-stream
@pytest.mark.parametrize("provider,ingress", MATRIX)
def test_reply_carries_reported_usage_and_model(provider, ingress):
    family = FAMILY[provider]
    reply = translate(request(ingress, False), provider, answer(family, full_usage(family)))
    assert reply.status == 200
    assert reply.usage == EXPECTED[family]
    assert reply.model == MODEL[family]


@pytest.mark.parametrize("provider,ingress", MATRIX)
def test_reply_without_usage_has_none(provider, ingress):
    family = FAMILY[provider]
    reply = translate(request(ingress, False), provider, answer(family))
    assert reply.status == 200 and reply.usage is None and reply.model == MODEL[family]


MALFORMED = ["u", 5, [], {"prompt_tokens": "x"}, {"input_tokens": -1}, {"promptTokenCount": True},
             {"prompt_tokens": 1.5}, {"candidatesTokenCount": {}}, {"cached_tokens": 3}, {}]


@pytest.mark.parametrize("provider,ingress", MATRIX)
@pytest.mark.parametrize("usage", MALFORMED, ids=[json.dumps(u) for u in MALFORMED])
def test_reply_with_malformed_usage_has_none_and_still_answers(provider, ingress, usage):
    family = FAMILY[provider]
    reply = translate(request(ingress, False), provider, answer(family, usage))
    assert reply.status == 200 and reply.usage is None
    json.loads(reply.body)


def test_same_family_body_is_kept_verbatim_while_usage_is_read():
    raw = json.dumps(answer("openai", OPENAI_USAGE)).encode()
    reply = P.translate_response(request("openai", False), "openai", 200, {}, raw)
    assert reply.body == raw and reply.usage == EXPECTED["openai"]


def test_gemini_non_stream_without_model_version_reports_no_model():
    body = answer("gemini", GEMINI_USAGE)
    del body["modelVersion"]
    reply = translate(request("openai", False), "gemini", body)
    assert json.loads(reply.body)["model"] == "alias"   # the caller still sees the requested model
    assert reply.model is None and reply.usage == EXPECTED["gemini"]


def test_gemini_array_answer():
    body = [answer("gemini", {"promptTokenCount": 100, "candidatesTokenCount": 1}), answer("gemini", GEMINI_USAGE)]
    reply = translate(request("anthropic", False), "gemini", body)
    assert reply.usage == EXPECTED["gemini"] and reply.model == MODEL["gemini"]


@pytest.mark.parametrize("provider,ingress", MATRIX)
def test_error_answers_report_nothing(provider, ingress):
    reply = translate(request(ingress, False), provider, {"error": {"message": "slow down", "type": "rate_limit"}},
                      status=429)
    assert reply.status == 429 and reply.usage is None and reply.model is None


def test_reply_stays_backwards_compatible():
    r = P.Reply(200, {}, b"x")
    assert (r.usage, r.model) == (None, None)


# ------------------------------------------------------------------ streams
@pytest.mark.parametrize("provider,ingress", MATRIX)
@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_usage_and_model(provider, ingress, include_usage):
    family = FAMILY[provider]
    req = request(ingress, True, include_usage)
    t, out = run_stream(req, provider, stream(family, full_usage(family)))
    assert t.done and t.upstream_error is None
    assert t.usage == EXPECTED[family] and t.model == MODEL[family]
    expected = EXPECTED[family]
    if ingress == "anthropic":
        m = read_anthropic_stream(out).message
        assert (m.usage.input_tokens, m.usage.output_tokens) == (expected.uncached_input, 20)
        assert m.usage.cache_read_input_tokens == 40
    else:
        chunks = read_openai_stream(out).chunks
        usage = [c.usage for c in chunks if c.usage is not None]
        if include_usage:
            assert len(usage) == 1 and (usage[0].prompt_tokens, usage[0].completion_tokens) == (100, 20)
            assert usage[0].prompt_tokens_details.cached_tokens == 40
        else:
            assert usage == []  # the caller did not ask: its stream carries no usage


@pytest.mark.parametrize("provider,ingress", MATRIX)
def test_stream_usage_any_chunking(provider, ingress):
    family = FAMILY[provider]
    t, _ = run_stream(request(ingress, True), provider, stream(family, full_usage(family)), chunk=1)
    assert t.done and t.usage == EXPECTED[family] and t.model == MODEL[family]


@pytest.mark.parametrize("provider,ingress", MATRIX)
def test_stream_without_usage_has_none(provider, ingress):
    family = FAMILY[provider]
    t, out = run_stream(request(ingress, True, True), provider, stream(family))
    assert t.done and t.upstream_error is None and out.endswith(b"\n\n")
    assert t.usage is None and t.model == MODEL[family]


STREAM_MALFORMED = ["u", 5, {"prompt_tokens": "x", "input_tokens": "x", "promptTokenCount": "x"},
                    {"output_tokens": -3, "completion_tokens": -3, "candidatesTokenCount": -3}, {}]


@pytest.mark.parametrize("provider,ingress", MATRIX)
@pytest.mark.parametrize("usage", STREAM_MALFORMED, ids=[json.dumps(u) for u in STREAM_MALFORMED])
def test_stream_with_malformed_usage_has_none_and_ends_cleanly(provider, ingress, usage):
    family = FAMILY[provider]
    raw = stream(family, usage)
    if family == "gemini":  # no valid count anywhere
        raw = raw.replace(b'"usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":1}', b'"usageMetadata":"u"')
    t, out = run_stream(request(ingress, True, True), provider, raw)
    assert t.done and t.upstream_error is None
    assert t.usage is None
    if family == FAMILY.get(ingress):  # same family: the provider's event goes on as it was
        assert out.endswith(b"data: [DONE]\n\n" if ingress == "openai" else b'{"type":"message_stop"}\n\n')
    elif ingress == "anthropic":
        read_anthropic_stream(out)
    else:
        read_openai_stream(out)


def test_anthropic_stream_merges_start_and_delta():
    """Input tokens come in message_start, output tokens in message_delta: both paths merge them."""
    raw = (FIX / "anthropic-sdk/basic_response.sse").read_bytes()
    for ingress in INGRESSES:
        t, _ = run_stream(request(ingress, True), "anthropic", raw)
        assert t.usage == Usage(11, 6) and t.model == "claude-3-opus-latest"


def test_anthropic_stream_usage_known_before_the_end():
    """A stream cut after message_start still tells what the provider reported so far."""
    raw = stream("anthropic", ANTHROPIC_USAGE)
    cut = raw[:raw.index(b"event: message_delta")]
    for ingress in INGRESSES:
        t, _ = run_stream(request(ingress, True), "anthropic", cut)
        assert not t.done and t.usage == Usage(100, 1, cache_read=40, cache_write=10)


def test_gemini_stream_last_usage_wins():
    t, _ = run_stream(request("openai", True), "gemini", stream("gemini", GEMINI_USAGE))
    assert t.usage == EXPECTED["gemini"] and t.usage.reasoning == 5


# ------------------------------------------------------------------ ask for usage, strip it again
def _events(raw: bytes) -> list[bytes]:
    return [e + b"\n\n" for e in raw.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]


FIXTURE = b"".join(_events((FIX / "openai-sdk/text.sse").read_bytes()))
FIXTURE_NO_USAGE = b"".join(e for e in _events(FIXTURE) if b'"usage"' not in e)
FIXTURE_USAGE = Usage(14, 30, reasoning=0)


def _upstream_body(provider: str, req) -> dict:
    up = P.build_upstream_request(req, P.TargetSpec(provider=provider, model="served", api_version=None))
    return json.loads(up.body)


@pytest.mark.parametrize("provider", ["openai", "azure"])
def test_same_family_asks_for_usage_and_strips_it_byte_for_byte(provider):
    req = request("openai", True, include_usage=False)
    assert _upstream_body(provider, req)["stream_options"] == {"include_usage": True}
    t, out = run_stream(req, provider, FIXTURE, chunk=13)
    assert out == FIXTURE_NO_USAGE       # exactly what the caller gets from a provider it did not ask
    assert t.usage == FIXTURE_USAGE and t.model == "gpt-4o-2024-08-06"


@pytest.mark.parametrize("provider", ["openai", "azure", "openai-compatible"])
def test_same_family_keeps_usage_the_caller_asked_for_byte_for_byte(provider):
    req = request("openai", True, include_usage=True)
    assert _upstream_body(provider, req)["stream_options"] == {"include_usage": True}
    t, out = run_stream(req, provider, FIXTURE, chunk=13)
    assert out == FIXTURE
    assert t.usage == FIXTURE_USAGE


def test_compatible_target_is_not_asked_but_usage_it_sends_is_captured_and_stripped():
    req = request("openai", True, include_usage=False)
    assert "stream_options" not in _upstream_body("openai-compatible", req)
    t, out = run_stream(req, "openai-compatible", FIXTURE)
    assert out == FIXTURE_NO_USAGE and t.usage == FIXTURE_USAGE
    t, out = run_stream(req, "openai-compatible", FIXTURE_NO_USAGE)
    assert out == FIXTURE_NO_USAGE and t.usage is None


def test_usage_on_the_finish_chunk_is_captured_and_stripped():
    """Some servers put usage on the last chunk with choices; the relay removes it there."""
    events = _events(FIXTURE_NO_USAGE)
    finish = json.loads(events[-2][6:])
    assert finish["choices"][0]["finish_reason"] == "stop"
    finish["usage"] = OPENAI_USAGE
    raw = b"".join(events[:-2]) + sse(finish) + events[-1]
    t, out = run_stream(request("openai", True, include_usage=False), "openai", raw)
    last = json.loads(_events(out)[-2][6:])
    assert "usage" not in last and last["choices"][0]["finish_reason"] == "stop"
    assert t.usage == EXPECTED["openai"]
    t, out = run_stream(request("openai", True, include_usage=True), "openai", raw)
    assert out == raw and t.usage == EXPECTED["openai"]


@pytest.mark.parametrize("provider", ["openai", "azure", "openai-compatible"])
def test_translated_stream_to_openai_family_asks_for_usage(provider):
    """An Anthropic-format caller through an OpenAI-family target: usage asked for, carried in message_delta."""
    req = request("anthropic", True)
    assert _upstream_body(provider, req)["stream_options"] == {"include_usage": True}
    t, out = run_stream(req, provider, FIXTURE)
    m = read_anthropic_stream(out).message
    assert (m.usage.input_tokens, m.usage.output_tokens) == (14, 30)
    assert t.usage == FIXTURE_USAGE and t.model == "gpt-4o-2024-08-06"


# ------------------------------------------------------------------ usage_from_body
@pytest.mark.parametrize("provider", PROVIDERS)
def test_usage_from_body(provider):
    family = FAMILY[provider]
    body = json.dumps(answer(family, full_usage(family))).encode()
    assert P.usage_from_body(provider, body) == EXPECTED[family]
    assert P.usage_from_body(provider, json.dumps(answer(family)).encode()) is None


def test_usage_from_body_embeddings_and_gemini_array():
    emb = {"object": "list", "data": [], "model": "text-embedding-3-small",
           "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    assert P.usage_from_body("openai", json.dumps(emb).encode()) == Usage(8, 0)
    arr = [answer("gemini", {"promptTokenCount": 1}), answer("gemini", GEMINI_USAGE)]
    assert P.usage_from_body("gemini", json.dumps(arr).encode()) == EXPECTED["gemini"]


@pytest.mark.parametrize("provider,body", [
    ("openai", b""), ("openai", b"not json"), ("openai", b"\xff\xfe"), ("anthropic", b"[1, 2]"), ("gemini", b"null"),
    ("gemini", b'{"usageMetadata": "x"}'), ("openai", b'{"usage": {"prompt_tokens": "1"}}'),
    ("openai", b"[" * 100_000 + b"]" * 100_000), ("openai", b'{"usage": {"prompt_tokens": 1' + b"0" * 5000 + b"}}"),
    ("nope", b'{"usage": {"prompt_tokens": 1}}'), (None, b"{}"), (["x"], b"{}"),
])
def test_usage_from_body_never_raises(provider, body):
    assert P.usage_from_body(provider, body) is None
