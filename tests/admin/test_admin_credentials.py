"""Provider credentials are write-only, and a GET -> edit -> PUT round trip keeps them."""

import json

import pytest

from admin.masking import mask_secret
from store.models import Upstream

API = "/api/v1"


@pytest.mark.parametrize(
    "secret, shown",
    [
        ("sk-proj-abcdefghijklmnop1234", "sk-…1234"),
        ("Bearer sk-proj-abcdefghijklmnop1234", "Bearer sk-…1234"),
        ("your-anthropic-key", "you…-key"),
        ("Bearer your-openai-key", "Bearer …"),  # token shorter than 16 characters: fully masked
        ("short", "…"),
        ("Bearer", "…"),
    ],
)
def test_mask_secret(secret, shown):
    assert mask_secret(secret) == shown


def stored_secrets(store, gid, upstream_id):
    upstream = store.get("upstreams", upstream_id, gateway_id=gid)
    return [t.credentials.secret() if t.credentials else None for t in upstream.targets]


def test_reads_never_show_secrets(client, store, gid, upstream):
    for response in (client.get(f"{API}/gateways/{gid}/upstreams/{upstream['id']}"),
                     client.get(f"{API}/gateways/{gid}/upstreams")):
        assert b"your-openai-key" not in response.data and b"your-anthropic-key" not in response.data
    openai, anthropic = upstream["targets"]
    assert openai["credentials"]["header_name"] == "Authorization"
    assert openai["credentials"]["header_value"] == "Bearer …"
    assert anthropic["credentials"] == {"header_name": "x-api-key", "header_value": "you…-key", "api_key": None}
    assert stored_secrets(store, gid, upstream["id"]) == ["Bearer your-openai-key", "your-anthropic-key"]


def test_api_key_shorthand_is_masked(client, gid):
    payload = {"name": "u", "targets": [{"provider": "openai", "credentials": {"api_key": "sk-abcdefghijklmnop9876"}}]}
    response = client.post(f"{API}/gateways/{gid}/upstreams", json=payload)
    assert response.status_code == 201
    assert response.json["targets"][0]["credentials"]["api_key"] == "sk-…9876"


def test_get_edit_put_round_trip_keeps_secrets(client, store, gid, upstream):
    fetched = client.get(f"{API}/gateways/{gid}/upstreams/{upstream['id']}").json
    fetched["targets"][1]["weight"] = 10
    response = client.put(f"{API}/gateways/{gid}/upstreams/{upstream['id']}", json=fetched)
    assert response.status_code == 200, response.json
    assert response.json["targets"][1]["weight"] == 10
    assert stored_secrets(store, gid, upstream["id"]) == ["Bearer your-openai-key", "your-anthropic-key"]


def test_round_trip_without_target_ids_matches_by_masked_value(client, store, gid, upstream):
    fetched = client.get(f"{API}/gateways/{gid}/upstreams/{upstream['id']}").json
    for target in fetched["targets"]:
        del target["id"]
    fetched["targets"].reverse()
    assert client.put(f"{API}/gateways/{gid}/upstreams/{upstream['id']}", json=fetched).status_code == 200
    assert stored_secrets(store, gid, upstream["id"]) == ["your-anthropic-key", "Bearer your-openai-key"]


def test_put_with_a_new_secret_replaces_it(client, store, gid, upstream):
    fetched = client.get(f"{API}/gateways/{gid}/upstreams/{upstream['id']}").json
    fetched["targets"][0]["credentials"]["header_value"] = "Bearer rotated-key-0000000000"
    assert client.put(f"{API}/gateways/{gid}/upstreams/{upstream['id']}", json=fetched).status_code == 200
    assert stored_secrets(store, gid, upstream["id"])[0] == "Bearer rotated-key-0000000000"


def test_masked_value_that_matches_nothing_is_refused(client, store, gid, upstream, guide):
    fetched = client.get(f"{API}/gateways/{gid}/upstreams/{upstream['id']}").json
    fetched["targets"][1]["credentials"]["header_value"] = "abc…wxyz"
    response = client.put(f"{API}/gateways/{gid}/upstreams/{upstream['id']}", json=fetched)
    assert response.status_code == 400
    assert response.json["details"][0]["loc"] == "targets.1.credentials.header_value"
    assert stored_secrets(store, gid, upstream["id"])[1] == "your-anthropic-key"
    # On create there is nothing to restore from.
    guide.upstream["name"] = "copy"
    guide.upstream["targets"][0]["credentials"]["header_value"] = "Bearer …"
    assert client.post(f"{API}/gateways/{gid}/upstreams", json=guide.upstream).status_code == 400


def test_store_file_holds_the_real_secret_for_the_data_plane(store, gid, upstream):
    with open(store.path) as handle:
        data = json.load(handle)
    upstream_doc = next(iter(data["upstreams"].values()))
    assert Upstream.model_validate(upstream_doc).targets[1].credentials.header_value == "your-anthropic-key"
