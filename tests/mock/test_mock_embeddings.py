"""The mock's embeddings endpoints: OpenAI (through the real openai SDK, strict), Azure's deployment path and
Gemini's embedContent / batchEmbedContents, with their validation and fault rules."""

from __future__ import annotations

import json
import math

import aiohttp
import openai
import pytest

from aigw.mock.embeddings import GEMINI_DIM, OPENAI_DIM, vector

from .conftest import KEY


async def _post(mock, path: str, body, headers: dict | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{mock.base_url}{path}", data=body if isinstance(body, bytes) else json.dumps(body),
                          headers={"content-type": "application/json", **(headers or {})}) as r:
            return r.status, json.loads(await r.text())


GM = {"x-goog-api-key": KEY}
OA = {"authorization": f"Bearer {KEY}"}


def test_vectors_are_deterministic_unit_and_float32():
    v = vector("m", "hello", 64)
    assert v == vector("m", "hello", 64) and v != vector("m", "hellp", 64) and v != vector("n", "hello", 64)
    assert math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-5)


def test_openai_sdk_float_base64_and_batch(oa):
    floats = oa.embeddings.create(model="text-embedding-3-small", input="hello", encoding_format="float")
    assert floats.data[0].embedding == vector("text-embedding-3-small", "hello", OPENAI_DIM)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == 2 and floats.model == "text-embedding-3-small"
    # Without encoding_format the SDK asks for base64 and decodes it; its strict mode cannot validate a base64
    # answer (a string for List[float]) — against the real API too — so that path is read in its default mode.
    lax = openai.OpenAI(base_url=str(oa.base_url), api_key=KEY, max_retries=0, timeout=10)
    default = lax.embeddings.create(model="text-embedding-3-small", input="hello")
    assert default.data[0].embedding == floats.data[0].embedding
    batch = lax.embeddings.create(model="e", input=["a", "bb"], dimensions=8)
    assert [d.index for d in batch.data] == [0, 1] and all(len(d.embedding) == 8 for d in batch.data)
    tokens = oa.embeddings.create(model="e", input=[[1, 2, 3], [4]], encoding_format="float")
    assert tokens.usage.prompt_tokens == 4 and len(tokens.data) == 2


@pytest.mark.parametrize("body,param", [
    ({"model": "e", "input": ""}, "input"), ({"model": "e", "input": []}, "input"), ({"model": "e"}, "input"),
    ({"model": "e", "input": ["a", 1]}, "input"), ({"model": "e", "input": [[]]}, "input"),
    ({"model": "e", "input": {"x": 1}}, "input"), ({"model": "e", "input": ["a"] * 2049}, "input"),
    ({"input": "a"}, "model"), ({"model": "e", "input": "a", "dimensions": 0}, "dimensions"),
    ({"model": "e", "input": "a", "dimensions": OPENAI_DIM + 1}, "dimensions"),
    ({"model": "e", "input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({"model": "e", "input": "a", "stream": True}, None), ({"model": "e", "input": "a", "user": 3}, "user"),
])
async def test_openai_validation(amock, body, param):
    status, out = await _post(amock, "/v1/embeddings", body, OA)
    assert status == 400 and out["error"]["type"] == "invalid_request_error" and out["error"]["param"] == param


async def test_openai_auth_and_azure_path(amock):
    status, out = await _post(amock, "/v1/embeddings", {"model": "e", "input": "a"}, {"authorization": "Bearer x"})
    assert status == 401 and out["error"]["code"] == "invalid_api_key"
    path = "/openai/deployments/my-emb/embeddings"
    assert (await _post(amock, path + "?api-version=2024-10-21", {"input": "a"}, {"api-key": KEY}))[1]["model"] \
        == "my-emb"
    assert (await _post(amock, path, {"input": "a"}, {"api-key": KEY}))[0] == 404  # no api-version
    assert (await _post(amock, path + "?api-version=1", {"input": "a"}, {"api-key": "x"}))[0] == 401


async def test_gemini_embed_and_batch(amock):
    status, out = await _post(amock, "/v1beta/models/gemini-embedding-001:embedContent",
                              {"content": {"parts": [{"text": "hello"}]}}, GM)
    assert status == 200 and out == {"embedding": {"values": vector("gemini-embedding-001", "hello", GEMINI_DIM)}}
    status, out = await _post(amock, "/v1beta/models/g:batchEmbedContents", {"requests": [
        {"model": "models/g", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 4},
        {"model": "models/g", "content": {"parts": [{"text": "b"}]}, "taskType": "RETRIEVAL_QUERY"}]}, GM)
    assert status == 200 and [len(e["values"]) for e in out["embeddings"]] == [4, GEMINI_DIM]
    assert "usageMetadata" not in out  # Gemini's embeddings answers report no usage


def _batch(n: int, model: str = "models/g") -> dict:
    return {"requests": [{"model": model, "content": {"parts": [{"text": "a"}]}}] * n}


@pytest.mark.parametrize("method,body", [
    ("embedContent", {"content": {"parts": []}}), ("embedContent", {}), ("embedContent", b"{"),
    ("embedContent", {"content": {"parts": [{"text": "a"}]}, "dimensions": 3}),
    ("embedContent", {"content": {"parts": [{"inlineData": {}}]}}),
    ("embedContent", {"content": {"parts": [{"text": "a"}]}, "outputDimensionality": 0}),
    ("batchEmbedContents", {"requests": []}), ("batchEmbedContents", _batch(101)),
    ("batchEmbedContents", _batch(2, "models/other")), ("batchEmbedContents", {"requests": [{}], "x": 1}),
])
async def test_gemini_validation(amock, method, body):
    status, out = await _post(amock, f"/v1beta/models/g:{method}", body, GM)
    assert status == 400 and out["error"]["status"] == "INVALID_ARGUMENT"


async def test_gemini_auth(amock):
    status, out = await _post(amock, "/v1beta/models/g:embedContent", {"content": {"parts": [{"text": "a"}]}},
                              {"x-goog-api-key": "bad"})
    assert status == 400 and "API_KEY_INVALID" in json.dumps(out)


async def test_faults_apply(amock):
    amock.set_faults([{"match": {"path_contains": "embed"}, "status": 500, "times": 2}])
    assert (await _post(amock, "/v1/embeddings", {"model": "e", "input": "a"}, OA))[0] == 500
    status, out = await _post(amock, "/v1beta/models/g:embedContent", {"content": {"parts": [{"text": "a"}]}}, GM)
    assert status == 500 and out["error"]["status"] == "INTERNAL"
    assert (await _post(amock, "/v1/embeddings", {"model": "e", "input": "a"}, OA))[0] == 200
    assert [r["status"] for r in amock.requests()] == [500, 500, 200]


def test_unknown_model_with_a_model_list():
    from aigw.mock import MockProviderThread
    mp = MockProviderThread(api_key=KEY, models=["only"])
    mp.start()
    try:
        client = openai.OpenAI(base_url=f"{mp.base_url}/v1", api_key=KEY, max_retries=0, timeout=10)
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model="other", input="a")
    finally:
        mp.stop()
