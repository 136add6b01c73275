"""`GET/POST /api/v1/config` through the real Flask app, and the read-only admin API of database-less mode."""

from __future__ import annotations

import json

import yaml

from admin import create_app
from store.config import ConfigFileStore

from .conftest import API, guide_setup, ok

SMALL = """gateways:
  - name: gw
    subdomain: gw
    upstreams:
      - {name: up, targets: [{provider: openai, weight: 2}]}
    services:
      - {name: svc, upstream: up}
"""


def test_get_config_is_yaml_by_default_and_json_on_request(client, store, env):
    guide_setup(client)
    as_yaml = client.get(f"{API}/config")
    assert as_yaml.status_code == 200 and as_yaml.mimetype == "application/yaml"
    doc = yaml.safe_load(as_yaml.get_data(as_text=True))
    as_json = client.get(f"{API}/config", headers={"Accept": "application/json"})
    assert as_json.mimetype == "application/json" and as_json.get_json() == doc
    assert [g["name"] for g in doc["gateways"]] == ["multi-provider-gateway", "second"]
    assert "your-openai-key" not in as_yaml.get_data(as_text=True)
    assert client.get(f"{API}/config", headers={"Accept": "text/html"}).status_code == 406


def test_post_config_dry_run_then_apply_then_empty(client, store, env):
    headers = {"Content-Type": "application/yaml"}
    dry = ok(client.post(f"{API}/config?dry_run=true", data=SMALL, headers=headers))
    assert dry["applied"] is False and dry["summary"]["create"] == 3 and store.list("gateways") == []
    assert "+ create upstream gw/up" in dry["text"]
    done = ok(client.post(f"{API}/config?dry_run=false", data=SMALL, headers=headers))
    assert done["applied"] is True and [g.name for g in store.list("gateways")] == ["gw"]
    as_json = json.dumps(yaml.safe_load(SMALL))
    again = ok(client.post(f"{API}/config", data=as_json, headers={"Content-Type": "application/json"}))
    assert again["changes"] == [] and again["summary"]["unchanged"] == 3


def test_post_config_errors_are_json_4xx_with_positions(client, store, env):
    headers = {"Content-Type": "application/yaml"}
    bad = client.post(f"{API}/config", data=SMALL.replace("weight: 2", "weight: -1"), headers=headers)
    body = bad.get_json()
    assert bad.status_code == 400 and body["error"].startswith("body:5:")
    assert body["details"][0]["loc"] == "gateways.0.upstreams.0.targets.0.weight" and body["details"][0]["line"] == 5
    dangling = client.post(f"{API}/config", data=SMALL.replace("upstream: up", "upstream: x"), headers=headers)
    assert dangling.status_code == 400 and "no upstream named 'x'" in dangling.get_json()["error"]
    syntax = client.post(f"{API}/config", data="gateways: [", headers=headers)
    assert syntax.status_code == 400 and "YAML syntax" in syntax.get_json()["error"]
    assert client.post(f"{API}/config", data=SMALL, headers={"Content-Type": "text/plain"}).status_code == 415
    assert client.post(f"{API}/config?dry_run=maybe", data=SMALL, headers=headers).status_code == 400
    huge = client.post(f"{API}/config", data=b"#" * (9 * 1024 * 1024), headers=headers)
    assert huge.status_code == 413 and huge.get_json()["error"]
    bad_json = client.post(f"{API}/config", data='{"gateways": [], "gateways": []}',
                           headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "duplicate key" in bad_json.get_json()["error"]
    assert store.list("gateways") == []


def test_read_only_admin_over_a_config_file(tmp_path, env):
    path = tmp_path / "gateway.yaml"
    path.write_text(SMALL)
    client = create_app(ConfigFileStore(path)).test_client()
    gateways = ok(client.get(f"{API}/gateways"))
    assert [g["name"] for g in gateways] == ["gw"]
    gid = gateways[0]["id"]
    upstream = ok(client.get(f"{API}/gateways/{gid}/upstreams"))[0]
    assert ok(client.get(f"{API}/gateways/{gid}/upstreams/{upstream['id']}"))["name"] == "up"
    assert client.get(f"{API}/gateways/{gid}/upstreams/nope").status_code == 404
    assert client.get(f"{API}/gateways/nope/upstreams").status_code == 404
    for method, url in (("post", "/gateways"), ("put", f"/gateways/{gid}"), ("delete", f"/gateways/{gid}"),
                        ("post", f"/gateways/{gid}/keys"), ("post", "/config")):
        refused = getattr(client, method)(f"{API}{url}", json={})
        assert refused.status_code == 405 and str(path) in refused.get_json()["error"], (method, url)
        assert refused.headers["Allow"] == "GET, HEAD"
    assert b"name: up" in client.get(f"{API}/config").data
    path.write_text(SMALL.replace("name: up,", "name: renamed,").replace("upstream: up", "upstream: renamed"))
    assert ok(client.get(f"{API}/gateways/{gid}/upstreams"))[0]["name"] == "renamed"  # read live


def test_openapi_documents_the_config_endpoints(client):
    doc = ok(client.get(f"{API}/openapi.json"))
    item = doc["paths"][f"{API}/config"]
    assert item["get"]["operationId"] == "export_config"
    assert "application/yaml" in item["get"]["responses"]["200"]["content"]
    post = item["post"]
    assert [p["name"] for p in post["parameters"]] == ["dry_run", "prune"]
    assert {"400", "405", "409", "413", "415"} <= set(post["responses"])
