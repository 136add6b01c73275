"""Embeddings and model lists through a real mitmdump, with the real openai and anthropic SDKs: embeddings on
OpenAI, Azure and Gemini targets (single, batch, both encodings), failover, usage in the metrics, the gateway's
own /v1/models, and a mixed upstream that sends each request to the targets of its model."""

from __future__ import annotations

import urllib.request

import openai
import pytest
from anthropic import Anthropic
from openai import OpenAI

from aigw.mock.embeddings import GEMINI_DIM, OPENAI_DIM, vector
from aigw.procs import free_port
from tests.e2e.harness import gemini_target, http, openai_target, wait_until

EMB, GEM = "text-embedding-3-small", "gemini-embedding-001"
KEYS = {"openai": "sk-openai-test", "azure": "az-test", "gemini": "gm-test"}


def emb_target(provider: str, port: int, **kw) -> dict:
    if provider == "gemini":
        return gemini_target(port, models=[GEM], default_model=GEM, **kw)
    if provider == "azure":
        t = {"provider": "azure", "host": "127.0.0.1", "port": port, "protocol": "http", "weight": 50,
             "priority": 1, "models": [EMB], "default_model": EMB, "credentials": {"api_key": KEYS["azure"]}}
        t.update(kw)
        return t
    return openai_target(port, models=[EMB], default_model=EMB, **kw)


def client(proxy, key: str, *, strict: bool = True) -> OpenAI:
    # The SDK's strict mode cannot validate a base64 answer (a string for List[float]), whoever sends it: calls
    # that leave encoding_format to the SDK (base64, decoded by the SDK) use its default mode.
    return OpenAI(base_url=f"{proxy.base}/v1", api_key=key, max_retries=0, timeout=30,
                  _strict_response_validation=strict)


def input_tokens(proxy, gateway: str, requests: int) -> float:
    """The gateway's input tokens in the metrics, once `requests` requests of it are counted."""
    def read():
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        total = lambda name: sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()  # noqa: E731
                                 if line.startswith(name + "{") and f'gateway="{gateway}"' in line)
        return (total("aigw_input_tokens_total"),) if total("aigw_requests_total") == requests else None
    return wait_until(read, timeout=10)[0]


@pytest.mark.parametrize("provider", ["openai", "azure", "gemini"])
def test_embeddings_single_and_batch(proxy, admin, subdomain, mock_factory, provider):
    mock = mock_factory(f"{provider}-emb", KEYS[provider])
    cfg = admin.guide_setup([emb_target(provider, mock.port)], subdomain=subdomain)
    model, dim = (GEM, GEMINI_DIM) if provider == "gemini" else (EMB, OPENAI_DIM)
    one = client(proxy, cfg["key"]).embeddings.create(model=EMB, input="hello world", encoding_format="float")
    assert one.model == model and one.data[0].embedding == vector(model, "hello world", dim)
    batch = client(proxy, cfg["key"], strict=False).embeddings.create(model=EMB, input=["a", "bb", "ccc"],
                                                                      dimensions=16)
    assert [d.index for d in batch.data] == [0, 1, 2]
    assert [d.embedding for d in batch.data] == [vector(model, t, 16) for t in ("a", "bb", "ccc")]
    sent = mock.requests()
    if provider == "gemini":
        assert [r["path"] for r in sent] == [f"/v1beta/models/{GEM}:embedContent",
                                             f"/v1beta/models/{GEM}:batchEmbedContents"]
        assert sent[1]["body"]["requests"][0]["outputDimensionality"] == 16
    else:
        assert all(r["body"]["model"] == EMB for r in sent) and sent[1]["body"]["encoding_format"] == "base64"
        if provider == "azure":
            assert sent[0]["path"] == f"/openai/deployments/{EMB}/embeddings" and "api-version" in sent[0]["query"]
    # Usage: OpenAI's answers report it; Gemini's embeddings answers report none, so none is counted.
    tokens = input_tokens(proxy, cfg["gateway"]["name"], 2)
    if provider == "gemini":
        assert tokens == 0 and one.usage.prompt_tokens == 0
    else:
        assert tokens == one.usage.prompt_tokens + batch.usage.prompt_tokens > 0


@pytest.mark.parametrize("down", ["refused", "500"])
def test_failover_to_gemini(proxy, admin, subdomain, mock_factory, down):
    gemini = mock_factory("gemini-emb", KEYS["gemini"])
    if down == "refused":
        first_port = free_port()
    else:
        broken = mock_factory("openai-broken", KEYS["openai"])
        broken.set_faults([{"match": {"path_contains": "/embeddings"}, "status": 500}])
        first_port = broken.port
    cfg = admin.guide_setup([emb_target("openai", first_port, priority=1), emb_target("gemini", gemini.port,
                                                                                     priority=2)],
                            subdomain=subdomain, health_checks={"passive": False, "threshold": 3, "interval": 60})
    # OpenAI's model: Gemini (another provider) stays a candidate, with its default model.
    raw = client(proxy, cfg["key"]).embeddings.with_raw_response.create(model=EMB, input=["x", "y"],
                                                                       encoding_format="float")
    expected = "openai:connect" if down == "refused" else "openai:500"
    assert raw.headers["x-gateway-attempts"] == f"{expected},gemini:200"
    assert raw.parse().data[1].embedding == vector(GEM, "y", GEMINI_DIM)


def test_token_ids_skip_gemini(proxy, admin, subdomain, mock_factory):
    gemini, oa = mock_factory("gemini-emb", KEYS["gemini"]), mock_factory("openai-emb", KEYS["openai"])
    cfg = admin.guide_setup([emb_target("gemini", gemini.port, priority=1), emb_target("openai", oa.port,
                                                                                      priority=2)],
                            subdomain=subdomain)
    raw = client(proxy, cfg["key"]).embeddings.with_raw_response.create(model=EMB, input=[[1, 2, 3]],
                                                                       encoding_format="float")
    assert raw.headers["x-gateway-attempts"] == "gemini:unsupported,openai:200" and raw.parse().usage.prompt_tokens == 3
    assert gemini.requests() == []
    alone = admin.guide_setup([emb_target("gemini", gemini.port)], subdomain=subdomain + "b")
    with pytest.raises(openai.BadRequestError) as info:
        client(proxy, alone["key"]).embeddings.create(model=EMB, input=[1, 2], encoding_format="float")
    assert "token-id" in info.value.message


def test_bad_embeddings_request_is_a_400(proxy, admin, subdomain, mock_factory):
    mock = mock_factory("openai-emb", KEYS["openai"])
    cfg = admin.guide_setup([emb_target("openai", mock.port)], subdomain=subdomain)
    r = http("POST", f"{proxy.base}/v1/embeddings", {"model": EMB, "input": []}, {"X-Api-Key": cfg["key"]})
    assert r.status == 400 and r.json()["error"]["param"] == "input" and mock.requests() == []


def test_models_list_for_both_sdks(proxy, admin, subdomain, mock_factory):
    mock = mock_factory("any", KEYS["openai"])
    cfg = admin.guide_setup([openai_target(mock.port), emb_target("gemini", mock.port)], subdomain=subdomain)
    key = cfg["key"]
    # The guide's rule is POST /v1 only: the gateway answers the model list itself, whatever its rules match.
    models = client(proxy, key).models.list()
    assert [(m.id, m.owned_by) for m in models.data] == [("gpt-3.5-turbo", "openai"), ("gpt-4", "openai"),
                                                          (GEM, "gemini")]
    assert client(proxy, key).models.retrieve(GEM).id == GEM
    with pytest.raises(openai.NotFoundError):
        client(proxy, key).models.retrieve("claude-3")
    anthropic = Anthropic(base_url=proxy.base, api_key=key, max_retries=0, timeout=30,
                          _strict_response_validation=True)
    assert [m.id for m in anthropic.models.list()] == ["gpt-3.5-turbo", "gpt-4", GEM]
    assert [m.id for m in anthropic.models.list(limit=2)] == ["gpt-3.5-turbo", "gpt-4", GEM]  # pages, followed
    assert mock.requests() == []  # no provider was asked
    r = http("GET", f"{proxy.base}/v1/models", None, {"anthropic-version": "2023-06-01"})
    assert r.status == 401 and r.json()["type"] == "error"
    r = http("GET", f"{proxy.base}/v1/models", None, {"Authorization": "Bearer aigw-not-a-key"})
    assert r.status == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_mixed_upstream_routes_by_model(proxy, admin, subdomain, mock_factory):
    chat, emb = mock_factory("chat", KEYS["openai"]), mock_factory("emb", KEYS["openai"])
    cfg = admin.guide_setup([openai_target(chat.port, models=["gpt-4"], default_model="gpt-4"),
                             emb_target("openai", emb.port)], subdomain=subdomain)
    c = client(proxy, cfg["key"])
    for _ in range(4):
        assert c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}],
                                         max_tokens=8).choices[0].message.content == "Hello from chat"
        assert c.embeddings.create(model=EMB, input="hi", encoding_format="float").model == EMB
    assert {r["path"] for r in chat.requests()} == {"/v1/chat/completions"} and len(chat.requests()) == 4
    assert {r["path"] for r in emb.requests()} == {"/v1/embeddings"} and len(emb.requests()) == 4
    # A model no target names keeps the whole plan (each target maps it to its default model).
    for _ in range(2):
        c.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert len(chat.requests()) + len(emb.requests()) == 10 and len(emb.requests()) > 4
