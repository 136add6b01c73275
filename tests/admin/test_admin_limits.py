"""Limits through the admin API: keys created with limits, PATCH of a key's name/active/limits, gateway defaults
by PUT, target limits on an upstream, and the OpenAPI document's PATCH."""

from __future__ import annotations

import pytest

API = "/api/v1"

LIMITS = {"requests": "60/minute", "tokens": {"limit": 40000, "window": "hour"}, "concurrent": 2,
          "budget": {"period": "day", "cost": 5, "prefer_lowest_cost_below": 0.1}}
SHOWN = {"requests": {"limit": 60, "window": "minute"}, "tokens": {"limit": 40000, "window": "hour"},
         "concurrent": 2, "budget": {"period": "day", "tokens": None, "cost": 5.0, "prefer_lowest_cost_below": 0.1}}


@pytest.fixture
def key(client, gid):
    created = client.post(f"{API}/gateways/{gid}/keys", json={"name": "team-a", "limits": LIMITS})
    assert created.status_code == 201, created.json
    return created.json


def patch(client, gid, key_id, body):
    return client.patch(f"{API}/gateways/{gid}/keys/{key_id}", json=body)


def get_key(client, gid, key_id):
    response = client.get(f"{API}/gateways/{gid}/keys/{key_id}")
    assert response.status_code == 200
    return response.json


# ---------------------------------------------------------------------------------------------------- create
def test_create_a_key_with_limits(client, gid, key, store):
    assert key["limits"] == SHOWN
    assert get_key(client, gid, key["id"])["limits"] == SHOWN
    assert store.get("keys", key["id"], gateway_id=gid).limits.requests.limit == 60


def test_create_without_limits_shows_null(client, gid):
    created = client.post(f"{API}/gateways/{gid}/keys", json={"name": "plain"})
    assert created.status_code == 201 and created.json["limits"] is None


@pytest.mark.parametrize("limits, loc", [
    ({"requests": "60/fortnight"}, "limits.requests"),
    ({"requests": {"limit": 0}}, "limits.requests.limit"),
    ({"concurrent": "2"}, "limits.concurrent"),
    ({"budget": {"period": "day"}}, "limits.budget"),
    ({"budget": {"cost": 1, "prefer_lowest_cost_below": 1}}, "limits.budget.prefer_lowest_cost_below"),
])
def test_create_with_invalid_limits_is_400(client, gid, limits, loc):
    response = client.post(f"{API}/gateways/{gid}/keys", json={"name": "k", "limits": limits})
    assert response.status_code == 400
    assert response.json["error"].startswith(f"invalid key: {loc}: ")
    assert response.json["details"][0]["loc"] == loc
    assert client.get(f"{API}/gateways/{gid}/keys").json == []  # nothing stored


# ----------------------------------------------------------------------------------------------------- PATCH
def test_patch_name(client, gid, key):
    response = patch(client, gid, key["id"], {"name": "renamed"})
    assert response.status_code == 200
    assert response.json["name"] == "renamed"
    assert response.json["limits"] == SHOWN and response.json["active"] is True  # untouched
    assert response.json["key_prefix"] == key["key_prefix"] and "key" not in response.json
    assert "key_hash" not in response.json
    assert get_key(client, gid, key["id"])["name"] == "renamed"


def test_patch_active(client, gid, key):
    response = patch(client, gid, key["id"], {"active": False})
    assert response.status_code == 200 and response.json["active"] is False
    assert get_key(client, gid, key["id"])["active"] is False
    assert patch(client, gid, key["id"], {"active": True}).json["active"] is True


def test_patch_limits_replaces_them_whole(client, gid, key):
    response = patch(client, gid, key["id"], {"limits": {"requests": "5 per second"}})
    assert response.status_code == 200
    assert response.json["limits"] == {"requests": {"limit": 5, "window": "second"}, "tokens": None,
                                       "concurrent": None, "budget": None}
    assert response.json["name"] == "team-a"
    assert get_key(client, gid, key["id"])["limits"] == response.json["limits"]


def test_patch_limits_null_removes_them(client, gid, key, store):
    response = patch(client, gid, key["id"], {"limits": None})
    assert response.status_code == 200 and response.json["limits"] is None
    assert get_key(client, gid, key["id"])["limits"] is None
    assert store.get("keys", key["id"], gateway_id=gid).limits is None


def test_patch_keeps_the_key_usable_and_its_hash(client, gid, key, store):
    before = store.get("keys", key["id"], gateway_id=gid)
    patch(client, gid, key["id"], {"name": "x", "limits": {"concurrent": 9}})
    after = store.get("keys", key["id"], gateway_id=gid)
    assert (after.key_hash, after.key_prefix, after.created_at) == (before.key_hash, before.key_prefix,
                                                                    before.created_at)
    assert after.updated_at >= before.updated_at
    assert after.limits.concurrent == 9 and after.name == "x"


def test_patch_empty_object_changes_nothing(client, gid, key):
    response = patch(client, gid, key["id"], {})
    assert response.status_code == 200
    assert (response.json["name"], response.json["active"], response.json["limits"]) == ("team-a", True, SHOWN)


def test_patch_server_owned_or_unknown_fields_are_ignored(client, gid, key, store):
    response = patch(client, gid, key["id"], {"id": "mine", "key_hash": "0" * 64, "gateway_id": "other",
                                              "key_prefix": "aigw-fake", "bogus": 1})
    assert response.status_code == 200
    assert response.json["id"] == key["id"] and response.json["key_prefix"] == key["key_prefix"]
    assert store.get("keys", key["id"], gateway_id=gid).key_hash != "0" * 64


@pytest.mark.parametrize("field", ["name", "active"])
def test_patch_null_name_or_active_is_400(client, gid, key, field):
    response = patch(client, gid, key["id"], {field: None})
    assert response.status_code == 400
    assert response.json == {"error": f"invalid key: {field} cannot be null",
                             "details": [{"loc": field, "msg": "cannot be null"}]}
    assert get_key(client, gid, key["id"])["name"] == "team-a"


@pytest.mark.parametrize("body, loc", [
    ({"name": ""}, "name"),
    ({"name": 5}, "name"),
    ({"active": "false"}, "active"),
    ({"active": 0}, "active"),
    ({"limits": {"requests": "lots"}}, "limits.requests"),
    ({"limits": {"tokens": {"limit": -1}}}, "limits.tokens.limit"),
    ({"limits": {"concurrent": 1.5}}, "limits.concurrent"),
    ({"limits": {"budget": {}}}, "limits.budget"),
    ({"limits": {"budget": {"tokens": 1, "period": "week"}}}, "limits.budget.period"),
    ({"limits": "60/minute"}, "limits"),
    ({"limits": [1]}, "limits"),
])
def test_patch_invalid_is_400_with_a_json_error(client, gid, key, body, loc):
    response = patch(client, gid, key["id"], body)
    assert response.status_code == 400 and response.is_json
    assert response.json["error"].startswith(f"invalid key: {loc}: ")
    assert response.json["details"][0]["loc"] == loc
    assert get_key(client, gid, key["id"])["limits"] == SHOWN  # nothing changed


def test_patch_bad_shorthand_message_names_the_format(client, gid, key):
    response = patch(client, gid, key["id"], {"limits": {"requests": "60/min"}})
    assert response.status_code == 400
    assert response.json["details"] == [{"loc": "limits.requests", "msg": (
        'a rate is {"limit": N, "window": ...} or "N/<window>" with a window of second, minute, hour, day; '
        "got '60/min'")}]


def test_patch_unknown_key_is_404(client, gid):
    response = patch(client, gid, "no-such-key", {"name": "x"})
    assert response.status_code == 404 and response.is_json and "error" in response.json


def test_patch_a_key_of_another_gateway_is_404(client, gid, key):
    other = client.post(f"{API}/gateways", json={"name": "other", "subdomain": "other"}).json["id"]
    assert patch(client, other, key["id"], {"name": "x"}).status_code == 404
    assert get_key(client, gid, key["id"])["name"] == "team-a"


def test_patch_unknown_gateway_is_404(client, key):
    assert patch(client, "no-such-gateway", key["id"], {"name": "x"}).status_code == 404


@pytest.mark.parametrize("data, content_type, status", [
    (b"[]", "application/json", 400),
    (b"{", "application/json", 400),
    (b"", "application/json", 400),
    (b'{"name": "x"}', "text/plain", 415),
])
def test_patch_malformed_bodies(client, gid, key, data, content_type, status):
    response = client.patch(f"{API}/gateways/{gid}/keys/{key['id']}", data=data, content_type=content_type)
    assert response.status_code == status and response.is_json


def test_keys_still_have_no_put(client, gid, key):
    assert client.put(f"{API}/gateways/{gid}/keys/{key['id']}", json={"name": "x"}).status_code == 405


# ------------------------------------------------------------------------------------------- gateway defaults
def test_gateway_limits_by_put_and_removed(client, gid):
    put = client.put(f"{API}/gateways/{gid}", json={"name": "g", "subdomain": "your-subdomain",
                                                     "limits": {"requests": "100/minute", "budget": {"tokens": 10}}})
    assert put.status_code == 200, put.json
    expected = {"requests": {"limit": 100, "window": "minute"}, "tokens": None, "concurrent": None,
                "budget": {"period": "month", "tokens": 10, "cost": None, "prefer_lowest_cost_below": None}}
    assert put.json["limits"] == expected
    assert client.get(f"{API}/gateways/{gid}").json["limits"] == expected
    cleared = client.put(f"{API}/gateways/{gid}", json={"name": "g", "subdomain": "your-subdomain"})
    assert cleared.status_code == 200 and cleared.json["limits"] is None


def test_gateway_created_with_limits(client):
    created = client.post(f"{API}/gateways", json={"name": "g2", "subdomain": "g2", "limits": {"concurrent": 3}})
    assert created.status_code == 201 and created.json["limits"]["concurrent"] == 3


def test_invalid_gateway_limits_are_400(client, gid):
    response = client.put(f"{API}/gateways/{gid}", json={"name": "g", "subdomain": "your-subdomain",
                                                          "limits": {"requests": "1/week"}})
    assert response.status_code == 400
    assert response.json["details"][0]["loc"] == "limits.requests"
    assert client.get(f"{API}/gateways/{gid}").json["limits"] is None


# ---------------------------------------------------------------------------------------------- target limits
def test_target_limits_on_upstream_create(client, gid, guide):
    guide.upstream["targets"][0]["limits"] = {"requests": "3/hour", "tokens": "90000 per minute"}
    created = client.post(f"{API}/gateways/{gid}/upstreams", json=guide.upstream)
    assert created.status_code == 201, created.json
    targets = created.json["targets"]
    assert targets[0]["limits"] == {"requests": {"limit": 3, "window": "hour"},
                                    "tokens": {"limit": 90000, "window": "minute"}}
    assert targets[1]["limits"] is None
    fetched = client.get(f"{API}/gateways/{gid}/upstreams/{created.json['id']}").json
    assert fetched["targets"][0]["limits"] == targets[0]["limits"]


def test_invalid_target_limits_are_400(client, gid, guide):
    guide.upstream["targets"][1]["limits"] = {"tokens": {"limit": 0}}
    response = client.post(f"{API}/gateways/{gid}/upstreams", json=guide.upstream)
    assert response.status_code == 400 and response.is_json
    assert response.json["details"][0]["loc"] == "targets.1.limits.tokens.limit"


def test_lowest_cost_algorithm_is_accepted(client, gid, guide):
    guide.upstream["algorithm"] = "lowest-cost"
    created = client.post(f"{API}/gateways/{gid}/upstreams", json=guide.upstream)
    assert created.status_code == 201 and created.json["algorithm"] == "lowest-cost"


# ----------------------------------------------------------------------------------------------------- OpenAPI
def test_openapi_lists_patch_on_keys_with_the_update_schema(client):
    doc = client.get(f"{API}/openapi.json").json
    item = doc["paths"]["/api/v1/gateways/{gateway_id}/keys/{entity_id}"]
    assert set(item) >= {"get", "patch", "delete"} and "put" not in item
    op = item["patch"]
    assert op["operationId"] == "update_key"
    assert op["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ApiKeyUpdate"}
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ApiKeyView"}
    assert "400" in op["responses"] and "404" in op["responses"]
    schema = doc["components"]["schemas"]["ApiKeyUpdate"]
    assert set(schema["properties"]) == {"name", "active", "limits"}
    assert schema["properties"]["limits"]["anyOf"] == [{"$ref": "#/components/schemas/KeyLimits"}, {"type": "null"}]
    assert "KeyLimits" in doc["components"]["schemas"]
    # Only keys have a PATCH.
    others = [path for path, ops in doc["paths"].items() if "patch" in ops and "/keys/" not in path]
    assert others == []
