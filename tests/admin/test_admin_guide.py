"""The five calls of the TrustGate guide, with its exact payloads, and what they leave in the store."""

from store import SnapshotLoader
from store.keys import hash_key

API = "/api/v1"


def test_the_guides_five_calls(client, store, guide):
    gateway = client.post(f"{API}/gateways", json=guide.gateway)
    assert gateway.status_code == 201
    gid = gateway.json["id"]
    assert gateway.json["subdomain"] == "your-subdomain" and gateway.json["status"] == "active"

    upstream = client.post(f"{API}/gateways/{gid}/upstreams", json=guide.upstream)
    assert upstream.status_code == 201, upstream.json
    openai, anthropic = upstream.json["targets"]
    assert (openai["provider"], openai["weight"], openai["priority"]) == ("openai", 50, 1)
    assert anthropic["headers"] == {"anthropic-version": "2023-06-01"}
    assert upstream.json["health_checks"]["threshold"] == 3

    service = client.post(f"{API}/gateways/{gid}/services", json={**guide.service, "upstream_id": upstream.json["id"]})
    assert service.status_code == 201, service.json
    assert service.json["description"] == "Load balanced AI service"

    rule = client.post(f"{API}/gateways/{gid}/rules", json={**guide.rule, "service_id": service.json["id"]})
    assert rule.status_code == 201, rule.json
    assert rule.json["methods"] == ["POST"] and rule.json["strip_path"] is False

    key = client.post(f"{API}/gateways/{gid}/keys", json=guide.key)
    assert key.status_code == 201, key.json
    assert key.json["key"].startswith("aigw-")

    # What the data plane will see: the whole chain resolves, with the real credentials.
    snapshot = SnapshotLoader(store.path).current
    assert snapshot.gateway_by_subdomain("your-subdomain").id == gid
    assert snapshot.key_by_hash(hash_key(key.json["key"])).name == "multi-provider-key"
    matched = snapshot.match_rule(gid, "/v1/chat/completions", "POST")
    assert matched.id == rule.json["id"]
    stored_upstream = snapshot.upstream(snapshot.service(matched.service_id).upstream_id)
    assert [t.credentials.header_value for t in stored_upstream.targets] == [
        "Bearer your-openai-key",
        "your-anthropic-key",
    ]


def test_guide_payload_with_unknown_extras_is_accepted(client, gid, guide):
    guide.upstream["targets"][0]["provider_options"] = {"temperature": 0.7}
    guide.upstream["embedding_config"] = {"x": 1}
    response = client.post(f"{API}/gateways/{gid}/upstreams", json=guide.upstream)
    assert response.status_code == 201
    assert "provider_options" not in response.json["targets"][0]
