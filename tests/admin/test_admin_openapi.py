"""The OpenAPI document covers every route the app serves, with schemas from the models."""

import re

API = "/api/v1"


def test_document_covers_every_route(app, client):
    doc = client.get(f"{API}/openapi.json").json
    assert doc["openapi"].startswith("3.")
    documented = {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    served = {
        (method, re.sub(r"<(\w+)>", r"{\1}", rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(API)
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert documented == served


def test_schemas_come_from_the_models(client):
    doc = client.get(f"{API}/openapi.json").json
    schemas = doc["components"]["schemas"]
    for name in ("Gateway", "Upstream", "Target", "Credentials", "HealthChecks", "Failover", "Service", "Rule",
                 "ApiKeyCreate", "ApiKeyCreated", "ApiKeyView", "ErrorBody", "MergedUpstreamHealth", "WorkerHealth", "TargetHealth"):
        assert name in schemas, name
    assert schemas["Target"]["properties"]["weight"]["minimum"] == 0
    assert schemas["Gateway"]["properties"]["id"]["readOnly"] is True
    assert set(schemas["Upstream"]["required"]) == {"name", "targets"}
    body = doc["paths"][f"{API}/gateways/{{gateway_id}}/keys"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ApiKeyCreate"}
    refs = re.findall(r'"\$ref": "#/components/schemas/(\w+)"', str(doc).replace("'", '"'))
    assert refs and all(ref in schemas for ref in refs)
