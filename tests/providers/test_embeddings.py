"""providers/embeddings.py: OpenAI embeddings requests parsed, built for each family, answers translated back —
checked against the openai SDK's own types (strict) and its own base64 decoding."""
from __future__ import annotations

import base64
import json
import struct

import pytest
from openai.types import CreateEmbeddingResponse

import providers as P
from providers import GatewayError, TargetSpec, Usage

VEC = [0.5, -0.25, 0.125]
B64 = base64.b64encode(struct.pack("<3f", *VEC)).decode()


def req(**body):
    return P.parse_embeddings_request(json.dumps({"model": "emb", "input": "hi", **body}).encode())


def spec(provider: str, model: str = "m1", **kw) -> TargetSpec:
    return TargetSpec(provider=provider, model=model, credentials={"api_key": "k"}, **kw)


def sdk(body: bytes) -> CreateEmbeddingResponse:
    return CreateEmbeddingResponse.model_validate(json.loads(body), strict=True)


def sdk_floats(data: str) -> list[float]:
    """What the openai SDK does with a base64 embedding (embeddings.create without encoding_format)."""
    import array
    return array.array("f", base64.b64decode(data)).tolist()


# ------------------------------------------------------------------ parsing
@pytest.mark.parametrize("value,texts,tokens", [
    ("a", ("a",), None), (["a", "b"], ("a", "b"), None), ([1, 2], None, ((1, 2),)),
    ([[1], [2, 3]], None, ((1,), (2, 3))),
])
def test_input_forms(value, texts, tokens):
    r = req(input=value)
    assert (r.texts, r.tokens, r.count) == (texts, tokens, len(texts or tokens))


@pytest.mark.parametrize("body,param", [
    ({"input": ""}, "input"), ({"input": []}, "input"), ({"input": ["a", ""]}, "input"), ({"input": [[]]}, "input"),
    ({"input": ["a", 1]}, "input"), ({"input": [-1]}, "input"), ({"input": [True]}, "input"), ({"input": 3}, "input"),
    ({"input": {"a": 1}}, "input"), ({"dimensions": 0}, "dimensions"), ({"dimensions": "8"}, "dimensions"),
    ({"dimensions": True}, "dimensions"), ({"encoding_format": "int8"}, "encoding_format"),
    ({"model": 3}, "model"), ({"user": 1}, "user"),
])
def test_bad_requests_are_400s(body, param):
    with pytest.raises(GatewayError) as info:
        req(**body)
    assert info.value.status == 400 and info.value.param == param


@pytest.mark.parametrize("raw", [b"[]", b"{}", b"not json", b'{"input": NaN}'])
def test_bad_bodies_are_400s(raw):
    with pytest.raises(GatewayError) as info:
        P.parse_embeddings_request(raw)
    assert info.value.status == 400


def test_embeddings_path():
    assert P.is_embeddings_path("/v1/embeddings") and P.is_embeddings_path("/openai/deployments/d/embeddings?x=1")
    assert not P.is_embeddings_path("/v1/chat/completions") and not P.is_embeddings_path("/v1/embeddings/x")


# ------------------------------------------------------------------ requests
def test_openai_and_azure_get_the_callers_body_with_the_targets_model():
    r = req(input=["a", "b"], dimensions=8, encoding_format="base64", user="u")
    up = P.build_embeddings_request(r, spec("openai"))
    assert (up.method, up.path, up.stream) == ("POST", "/v1/embeddings", False)
    assert json.loads(up.body) == {"model": "m1", "input": ["a", "b"], "dimensions": 8, "encoding_format": "base64",
                                   "user": "u"}
    assert up.headers["authorization"] == "Bearer k"
    az = P.build_embeddings_request(r, spec("azure", path="/openai/deployments/{model}/chat/completions"))
    assert az.path == "/openai/deployments/m1/embeddings?api-version=2024-10-21" and az.headers["api-key"] == "k"
    az = P.build_embeddings_request(r, spec("azure", api_version="2024-02-01"))
    assert az.path == "/openai/deployments/m1/embeddings?api-version=2024-02-01"


def test_compatible_servers_get_only_openai_fields_and_floats():
    r = P.parse_embeddings_request(b'{"model":"e","input":"a","encoding_format":"base64","extra":1}')
    up = P.build_embeddings_request(r, spec("openai-compatible", path="/api/v1/chat/completions"))
    assert up.path == "/api/v1/embeddings" and json.loads(up.body) == {"model": "m1", "input": "a"}


def test_gemini_single_and_batch():
    up = P.build_embeddings_request(req(dimensions=4), spec("gemini"))
    assert up.path == "/v1beta/models/m1:embedContent" and up.headers["x-goog-api-key"] == "k"
    assert json.loads(up.body) == {"content": {"parts": [{"text": "hi"}]}, "outputDimensionality": 4}
    up = P.build_embeddings_request(req(input=["a", "b"]),
                                    spec("gemini", path="/v1beta/models/{model}:streamGenerateContent?alt=sse"))
    assert up.path == "/v1beta/models/m1:batchEmbedContents"
    assert json.loads(up.body) == {"requests": [{"model": "models/m1", "content": {"parts": [{"text": "a"}]}},
                                                {"model": "models/m1", "content": {"parts": [{"text": "b"}]}}]}


@pytest.mark.parametrize("r", [req(input=[1, 2]), req(input=[[1], [2]]), req(input=["x"] * 101)])
def test_what_gemini_cannot_embed_is_a_400_for_this_target(r):
    with pytest.raises(GatewayError) as info:
        P.build_embeddings_request(r, spec("gemini"))
    assert info.value.status == 400 and info.value.param == "input"


def test_anthropic_and_bad_models_are_400s():
    with pytest.raises(GatewayError) as info:
        P.build_embeddings_request(req(), spec("anthropic"))
    assert info.value.status == 400
    for model in (None, "a" * 300, "a b"):
        with pytest.raises(GatewayError) as info:
            P.build_embeddings_request(req(model=None), spec("openai", model=model))
        assert info.value.status == 400 and info.value.param == "model"
    for provider in ("gemini", "azure"):  # the model is a path segment there
        with pytest.raises(GatewayError) as info:
            P.build_embeddings_request(req(), spec(provider, model="../x"))
        assert info.value.status == 400


# ------------------------------------------------------------------ answers
def openai_answer(embedding, **extra) -> bytes:
    return json.dumps({"object": "list", "model": "text-embedding-3-small",
                       "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
                       "usage": {"prompt_tokens": 3, "total_tokens": 3}, **extra}).encode()


def test_openai_answer_in_the_asked_encoding_is_verbatim():
    body = openai_answer(VEC)
    r = P.translate_embeddings_response(req(), "openai", "m1", 200, {}, body)
    assert r.body == body and r.usage == Usage(3, 0) and r.model == "text-embedding-3-small"
    body = openai_answer(B64)
    assert P.translate_embeddings_response(req(encoding_format="base64"), "openai", "m1", 200, {}, body).body == body


def test_encoding_is_converted_when_the_server_ignored_it():
    r = P.translate_embeddings_response(req(encoding_format="base64"), "openai-compatible", "m1", 200, {},
                                        openai_answer(VEC))
    out = json.loads(r.body)
    assert sdk_floats(out["data"][0]["embedding"]) == VEC
    r = P.translate_embeddings_response(req(), "openai", "m1", 200, {}, openai_answer(B64))
    assert sdk(r.body).data[0].embedding == VEC


def test_compatible_answer_without_usage_or_object_is_made_sdk_valid():
    body = json.dumps({"data": [{"embedding": VEC}], "model": "e5"}).encode()
    r = P.translate_embeddings_response(req(), "openai-compatible", "m1", 200, {}, body)
    parsed = sdk(r.body)
    assert parsed.data[0].index == 0 and parsed.usage.total_tokens == 0 and r.usage is None


def test_gemini_answers_become_openai_lists():
    one = json.dumps({"embedding": {"values": VEC}}).encode()
    r = P.translate_embeddings_response(req(), "gemini", "gemini-embedding-001", 200, {}, one)
    parsed = sdk(r.body)
    assert parsed.model == "gemini-embedding-001" and parsed.data[0].embedding == VEC
    assert parsed.usage.prompt_tokens == 0 and r.usage is None  # Gemini reported none: none is counted
    many = json.dumps({"embeddings": [{"values": VEC}, {"values": VEC[:2]}],
                       "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7}}).encode()
    r = P.translate_embeddings_response(req(input=["a", "b"], encoding_format="base64"), "gemini", "g", 200, {}, many)
    out = json.loads(r.body)
    assert [d["index"] for d in out["data"]] == [0, 1] and sdk_floats(out["data"][1]["embedding"]) == VEC[:2]
    assert out["usage"] == {"prompt_tokens": 7, "total_tokens": 7} and r.usage == Usage(7, 0)


@pytest.mark.parametrize("provider,body", [
    ("gemini", b"{}"), ("gemini", b'{"embeddings": [{"values": [1]}]}'),  # one input asked for, two expected
    ("gemini", b'{"embedding": {"values": ["x"]}}'), ("gemini", b'{"embedding": {"values": [1e300]}}'),
    ("gemini", b"not json"), ("openai", b'{"data": 3}'), ("openai", b'{"data": [{"embedding": {"a": 1}}]}'),
    ("openai", b"[1]"),
])
def test_unexpected_answers_are_502s(provider, body):
    # Floats that float32 cannot hold fail only where they must be encoded (base64).
    r = req(input=["a", "b"]) if body.startswith(b'{"embeddings"') else req(encoding_format="base64")
    with pytest.raises(GatewayError) as info:
        P.translate_embeddings_response(r, provider, "m", 200, {}, body)
    assert info.value.status == 502


def test_errors_in_openai_format():
    gemini_err = json.dumps({"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT",
                                       "details": [{"reason": "API_KEY_INVALID"}]}}).encode()
    r = P.translate_embeddings_response(req(), "gemini", "g", 400, {"retry-after": "3"}, gemini_err)
    err = json.loads(r.body)["error"]
    assert r.status == 401 and err["type"] == "authentication_error" and r.headers["retry-after"] == "3"
    r = P.translate_embeddings_response(req(), "gemini", "g", 429, {}, b'{"error": {"code": 429, "message": "slow",'
                                                                        b' "status": "RESOURCE_EXHAUSTED"}}')
    assert r.status == 429 and json.loads(r.body)["error"]["type"] == "rate_limit_error"
    openai_err = b'{"error": {"message": "bad", "type": "invalid_request_error", "param": null, "code": null}}'
    assert P.translate_embeddings_response(req(), "openai", "m", 400, {}, openai_err).body == openai_err
