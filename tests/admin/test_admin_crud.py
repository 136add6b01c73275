"""Every CRUD endpoint of every resource: status codes, bodies, paging, scoping, references."""

import pytest

API = "/api/v1"


def test_gateway_crud(client, guide):
    created = client.post(f"{API}/gateways", json=guide.gateway)
    assert created.status_code == 201
    gid = created.json["id"]
    assert client.get(f"{API}/gateways/{gid}").json == created.json
    assert client.get(f"{API}/gateways").json == [created.json]

    replaced = client.put(f"{API}/gateways/{gid}", json={"name": "renamed", "subdomain": "renamed", "id": "x"})
    assert replaced.status_code == 200
    assert (replaced.json["id"], replaced.json["name"], replaced.json["created_at"]) == (
        gid, "renamed", created.json["created_at"])
    assert replaced.json["status"] == "active"  # PUT replaces: omitted fields take their defaults

    assert client.delete(f"{API}/gateways/{gid}").status_code == 204
    assert client.get(f"{API}/gateways/{gid}").status_code == 404
    assert client.delete(f"{API}/gateways/{gid}").status_code == 404


@pytest.mark.parametrize("kind", ["upstreams", "services", "rules"])
def test_scoped_crud(client, gid, upstream, service, rule, kind):
    existing = {"upstreams": upstream, "services": service, "rules": rule}[kind]
    base = f"{API}/gateways/{gid}/{kind}"
    assert client.get(f"{base}/{existing['id']}").json == existing
    assert client.get(base).json == [existing]

    payload = {k: v for k, v in existing.items() if k not in ("id", "created_at", "updated_at", "gateway_id")}
    payload["name"] = "edited"
    replaced = client.put(f"{base}/{existing['id']}", json=payload)
    assert replaced.status_code == 200, replaced.json
    assert replaced.json["name"] == "edited" and replaced.json["id"] == existing["id"]
    assert client.get(f"{base}/{existing['id']}").json == replaced.json


def test_delete_chain_in_reference_order(client, gid, upstream, service, rule):
    base = f"{API}/gateways/{gid}"
    assert client.delete(f"{base}/rules/{rule['id']}").status_code == 204
    assert client.delete(f"{base}/services/{service['id']}").status_code == 204
    assert client.delete(f"{base}/upstreams/{upstream['id']}").status_code == 204
    assert client.delete(f"{API}/gateways/{gid}").status_code == 204


def test_deleting_referenced_things_conflicts(client, gid, upstream, service, rule):
    base = f"{API}/gateways/{gid}"
    response = client.delete(f"{base}/upstreams/{upstream['id']}")
    assert response.status_code == 409
    assert service["id"] in response.json["error"]
    message = "service 'multi-provider-service' references it through upstream_id"
    assert response.json["details"] == [{"loc": f"services.{service['id']}", "msg": message}]
    response = client.delete(f"{base}/services/{service['id']}")
    assert response.status_code == 409 and rule["id"] in response.json["error"]


def test_gateway_delete_with_children_conflicts_or_cascades(client, gid, rule, guide):
    client.post(f"{API}/gateways/{gid}/keys", json=guide.key)
    response = client.delete(f"{API}/gateways/{gid}")
    assert response.status_code == 409
    assert "cascade=true" in response.json["error"]
    assert {d["loc"].split(".")[0] for d in response.json["details"]} == {"upstreams", "services", "rules", "keys"}
    assert client.delete(f"{API}/gateways/{gid}?cascade=false").status_code == 409
    assert client.delete(f"{API}/gateways/{gid}?cascade=maybe").status_code == 400
    assert client.delete(f"{API}/gateways/{gid}?cascade=true").status_code == 204
    assert client.get(f"{API}/gateways").json == []


def test_ids_of_another_gateway_are_404(client, gid, upstream, service, rule, guide):
    other = client.post(f"{API}/gateways", json={"name": "other", "subdomain": "other"}).json["id"]
    for kind, entity in (("upstreams", upstream), ("services", service), ("rules", rule)):
        url = f"{API}/gateways/{other}/{kind}/{entity['id']}"
        assert client.get(url).status_code == 404
        assert client.delete(url).status_code == 404
    put = client.put(f"{API}/gateways/{other}/upstreams/{upstream['id']}", json=guide.upstream)
    assert put.status_code == 404
    assert client.get(f"{API}/gateways/{other}/upstreams").json == []


def test_unknown_gateway_is_404_on_scoped_routes(client, guide):
    for kind in ("upstreams", "services", "rules", "keys"):
        response = client.get(f"{API}/gateways/nope/{kind}")
        assert response.status_code == 404 and response.json["error"] == "gateway 'nope' not found"
    assert client.post(f"{API}/gateways/nope/upstreams", json=guide.upstream).status_code == 404


def test_references_must_exist_in_the_same_gateway(client, gid, upstream, service):
    other = client.post(f"{API}/gateways", json={"name": "other", "subdomain": "other"}).json["id"]
    response = client.post(f"{API}/gateways/{other}/services", json={"name": "s", "upstream_id": upstream["id"]})
    assert response.status_code == 400
    assert response.json["details"][0]["loc"] == "upstream_id"
    response = client.post(f"{API}/gateways/{other}/rules", json={"path": "/v1", "service_id": service["id"]})
    assert response.status_code == 400 and response.json["details"][0]["loc"] == "service_id"
    response = client.put(f"{API}/gateways/{gid}/services/{service['id']}", json={"name": "s", "upstream_id": "gone"})
    assert response.status_code == 400


def test_duplicates_conflict(client, gid, upstream, guide):
    response = client.post(f"{API}/gateways", json={"name": "again", "subdomain": "YOUR-SUBDOMAIN"})
    assert response.status_code == 409 and response.json["details"][0]["loc"] == "subdomain"
    response = client.post(f"{API}/gateways/{gid}/upstreams", json=guide.upstream)
    assert response.status_code == 409 and "ai-providers-upstream" in response.json["error"]


def test_list_paging(client):
    ids = [client.post(f"{API}/gateways", json={"name": "g", "subdomain": f"g{i}"}).json["id"] for i in range(5)]
    assert [g["id"] for g in client.get(f"{API}/gateways").json] == ids
    assert [g["id"] for g in client.get(f"{API}/gateways?offset=1&limit=2").json] == ids[1:3]
    assert [g["id"] for g in client.get(f"{API}/gateways?offset=4&limit=1000").json] == ids[4:]
    assert client.get(f"{API}/gateways?offset=9").json == []


@pytest.mark.parametrize(
    "query, loc",
    [("limit=0", "query.limit"), ("limit=1001", "query.limit"), ("limit=abc", "query.limit"),
     ("limit=-1", "query.limit"), ("offset=-1", "query.offset"), ("offset=1.5", "query.offset"),
     ("limit=%C2%B2", "query.limit")],
)
def test_bad_paging_is_400(client, query, loc):
    response = client.get(f"{API}/gateways?{query}")
    assert response.status_code == 400
    assert response.json["details"][0]["loc"] == loc


def test_endpoint_service(client, gid):
    payload = {"name": "direct", "type": "endpoint", "host": "localhost", "port": 9000, "protocol": "http",
               "path": "/v1"}
    response = client.post(f"{API}/gateways/{gid}/services", json=payload)
    assert response.status_code == 201 and response.json["type"] == "endpoint"


def test_target_ids_survive_put(client, gid, upstream):
    payload = {k: v for k, v in upstream.items() if k not in ("id", "created_at", "updated_at")}
    payload["targets"][0]["weight"] = 80
    replaced = client.put(f"{API}/gateways/{gid}/upstreams/{upstream['id']}", json=payload)
    assert [t["id"] for t in replaced.json["targets"]] == [t["id"] for t in upstream["targets"]]
    assert replaced.json["targets"][0]["weight"] == 80
