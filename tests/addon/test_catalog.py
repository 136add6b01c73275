"""addon/catalog.py: which requests are model lists, the models a gateway can serve, both answer formats (parsed
with the openai and anthropic SDKs' own types, strictly), paging, 404s, and the per-snapshot cache."""
from __future__ import annotations

import json

import pytest
from anthropic.types import ModelInfo
from openai.types import Model

from addon import catalog
from addon.catalog import Catalog, ModelsRequest, models_request
from providers import GatewayError
from store.snapshot import Snapshot


def target(tid: str, provider: str | None, models: list[str], default: str | None = None) -> dict:
    t: dict = {"id": tid, "models": models, "default_model": default}
    if provider:
        t["provider"] = provider
    else:
        t.update(host="127.0.0.1", port=9, protocol="http")
    return t


def snapshot(extra_rules: bool = True) -> Snapshot:
    upstreams = {
        "u1": {"id": "u1", "gateway_id": "g1", "name": "chat", "targets": [
            target("t1", "openai", ["gpt-4o", "gpt-4o-mini"], "gpt-4o"), target("t2", "gemini", [], "gemini-2.0"),
            target("t3", "anthropic", ["gpt-4o", "claude-x"])]},
        "u2": {"id": "u2", "gateway_id": "g1", "name": "emb", "targets": [
            target("e1", "openai", ["text-embedding-3-small"]), target("e2", None, ["org/local-model"])]},
        "u3": {"id": "u3", "gateway_id": "g2", "name": "other", "targets": [target("o1", "openai", ["secret"])]},
        "u4": {"id": "u4", "gateway_id": "g1", "name": "unrouted", "targets": [target("x1", "openai", ["nope"])]},
    }
    services = {sid: {"id": sid, "gateway_id": gid, "name": sid, "type": "upstream", "upstream_id": uid}
                for sid, gid, uid in (("s1", "g1", "u1"), ("s2", "g1", "u2"), ("s3", "g2", "u3"), ("s4", "g1", "u4"))}
    services["s5"] = {"id": "s5", "gateway_id": "g1", "name": "ep", "type": "endpoint", "host": "127.0.0.1",
                      "port": 9, "protocol": "http"}
    rules = {"r1": {"id": "r1", "gateway_id": "g1", "path": "/v1/chat", "service_id": "s1", "methods": ["POST"]},
             "r3": {"id": "r3", "gateway_id": "g2", "path": "/v1", "service_id": "s3", "methods": ["POST"]},
             "r4": {"id": "r4", "gateway_id": "g1", "path": "/off", "service_id": "s4", "methods": ["POST"],
                    "active": False}}
    if extra_rules:
        rules["r2"] = {"id": "r2", "gateway_id": "g1", "path": "/v1", "service_id": "s2", "methods": ["POST"]}
        rules["r5"] = {"id": "r5", "gateway_id": "g1", "path": "/ep", "service_id": "s5", "methods": ["GET"]}
    data = {"gateways": {g: {"id": g, "name": g, "subdomain": g} for g in ("g1", "g2")}, "upstreams": upstreams,
            "services": services, "rules": rules}
    snap = Snapshot.from_data(data)
    assert len(snap.upstreams_by_id) == 4 and len(snap.services_by_id) == 5  # every record was valid
    return snap


def answer(snap: Snapshot, req: ModelsRequest, gateway: str = "g1") -> dict:
    out = Catalog().answer(snap, snap.gateway(gateway), req)
    assert out.status == 200 and out.headers["content-type"] == "application/json"
    return json.loads(out.body)


@pytest.mark.parametrize("method,path,expected", [
    ("GET", "/v1/models", ModelsRequest(None, None, "")), ("GET", "/v1/models/", ModelsRequest(None, None, "")),
    ("GET", "/v1/models?limit=2", ModelsRequest(None, None, "limit=2")),
    ("GET", "/v1/models/gpt-4o", ModelsRequest("gpt-4o", None, "")),
    ("GET", "/v1/models/org%2Flocal-model", ModelsRequest("org/local-model", None, "")),
    ("POST", "/v1/models", None), ("GET", "/v1/modelsx", None), ("GET", "/v2/models", None),
    ("GET", "/v1/chat/completions", None),
])
def test_which_requests_are_model_lists(method, path, expected):
    assert models_request(method, path, {}) == expected


def test_anthropic_version_header_picks_anthropic_format():
    assert models_request("GET", "/v1/models", {"anthropic-version": "2023-06-01"}).ingress == "anthropic"


def test_the_models_a_gateway_serves():
    models = catalog.gateway_models(snapshot(), snapshot().gateway("g1"))
    # Longest rule first (/v1/chat, then /v1); targets and lists in order; each id once, owned by its first target;
    # inactive rules, endpoint services and other gateways' upstreams contribute nothing.
    assert [(m.id, m.owned_by) for m in models] == [
        ("gpt-4o", "openai"), ("gpt-4o-mini", "openai"), ("gemini-2.0", "gemini"), ("claude-x", "anthropic"),
        ("text-embedding-3-small", "openai"), ("org/local-model", "aigw")]
    assert [m.id for m in catalog.gateway_models(snapshot(False), snapshot(False).gateway("g1"))] == [
        "gpt-4o", "gpt-4o-mini", "gemini-2.0", "claude-x"]
    assert [m.id for m in catalog.gateway_models(snapshot(), snapshot().gateway("g2"))] == ["secret"]


def test_openai_list_and_retrieve_parse_with_the_sdk():
    snap = snapshot()
    out = answer(snap, ModelsRequest(None, None, ""))
    assert out["object"] == "list"
    models = [Model.model_validate(m, strict=True) for m in out["data"]]
    assert models[0].id == "gpt-4o" and models[0].owned_by == "openai" and models[0].object == "model"
    one = Model.model_validate(answer(snap, ModelsRequest("org/local-model", None, "")), strict=True)
    assert one.id == "org/local-model" and one.owned_by == "aigw"


def test_anthropic_list_pages_and_retrieve():
    snap = snapshot()
    full = answer(snap, ModelsRequest(None, "anthropic", ""))
    assert full["has_more"] is False and full["first_id"] == "gpt-4o" and full["last_id"] == "org/local-model"
    infos = [ModelInfo.model_validate(m) for m in full["data"]]
    assert infos[3].id == "claude-x" and infos[3].display_name == "claude-x" and infos[3].type == "model"
    page = answer(snap, ModelsRequest(None, "anthropic", "limit=2"))
    assert [m["id"] for m in page["data"]] == ["gpt-4o", "gpt-4o-mini"] and page["has_more"] is True
    page = answer(snap, ModelsRequest(None, "anthropic", "limit=2&after_id=gpt-4o-mini"))
    assert [m["id"] for m in page["data"]] == ["gemini-2.0", "claude-x"] and page["has_more"] is True
    page = answer(snap, ModelsRequest(None, "anthropic", "limit=2&before_id=claude-x"))
    assert [m["id"] for m in page["data"]] == ["gpt-4o-mini", "gemini-2.0"] and page["has_more"] is True
    page = answer(snap, ModelsRequest(None, "anthropic", "after_id=unknown"))
    assert page == {"data": [], "has_more": False, "first_id": None, "last_id": None}
    assert ModelInfo.model_validate(answer(snap, ModelsRequest("claude-x", "anthropic", ""))).id == "claude-x"


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "limit="])
def test_bad_anthropic_limit_is_a_400(query):
    with pytest.raises(GatewayError) as info:
        answer(snapshot(), ModelsRequest(None, "anthropic", query))
    assert info.value.status == 400 and info.value.param == "limit"


@pytest.mark.parametrize("ingress", [None, "anthropic"])
def test_unknown_model_is_a_404(ingress):
    with pytest.raises(GatewayError) as info:
        answer(snapshot(), ModelsRequest("secret", ingress, ""))  # another gateway's model
    assert info.value.status == 404 and info.value.code == "model_not_found"


def test_lists_are_computed_once_per_snapshot():
    cat, snap = Catalog(), snapshot()
    gw = snap.gateway("g1")
    first = cat.models(snap, gw)
    assert cat.models(snap, gw) is first
    other = snapshot(False)
    assert cat.models(other, other.gateway("g1")) is not first and len(cat.models(other, other.gateway("g1"))) == 4
