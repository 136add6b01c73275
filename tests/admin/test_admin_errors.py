"""Every error is JSON in the promised shape, with the right status; never HTML, never a traceback."""

import logging

import pytest

from store import Store

API = "/api/v1"


def assert_error(response, status):
    assert response.status_code == status, response.data
    assert response.mimetype == "application/json"
    body = response.json
    assert set(body) == {"error", "details"}
    assert body["error"] and "\n" not in body["error"]
    assert all(set(d) == {"loc", "msg"} for d in body["details"])
    return body


@pytest.mark.parametrize(
    "data, fragment",
    [(b"{", "malformed JSON"), (b'{"name": "g",}', "malformed JSON"), (b"", "empty"), (b"   ", "empty"),
     (b"[1, 2]", "expected a JSON object"), (b'"text"', "expected a JSON object"), (b"null", "expected a JSON object"),
     (b'{"name": NaN, "subdomain": "a"}', "NaN"), (b"\xff\xfe{}", "UTF-8")],
)
def test_unreadable_bodies_are_400(client, data, fragment):
    body = assert_error(client.post(f"{API}/gateways", data=data, content_type="application/json"), 400)
    assert fragment in body["error"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "text/json"])
def test_non_json_content_type_is_415(client, content_type):
    kwargs = {"content_type": content_type} if content_type else {}
    assert_error(client.post(f"{API}/gateways", data=b'{"name": "g", "subdomain": "a"}', **kwargs), 415)


def test_json_with_charset_and_suffix_types_are_accepted(client):
    response = client.post(f"{API}/gateways", data=b'{"name": "g", "subdomain": "a"}',
                           content_type="application/json; charset=utf-8")
    assert response.status_code == 201
    response = client.post(f"{API}/gateways", data=b'{"name": "g", "subdomain": "b"}',
                           content_type="application/merge-patch+json")
    assert response.status_code == 201


def test_body_over_one_mib_is_413(client, gid):
    big = b'{"name": "' + b"x" * (1024 * 1024) + b'", "subdomain": "a"}'
    assert_error(client.post(f"{API}/gateways", data=big, content_type="application/json"), 413)
    assert_error(client.put(f"{API}/gateways/{gid}", data=big, content_type="application/json"), 413)


def test_unknown_route_is_json_404(client):
    assert_error(client.get("/"), 404)
    assert_error(client.get(f"{API}/nothing"), 404)
    assert_error(client.get(f"{API}/gateways/g/unknown"), 404)


def test_wrong_method_is_json_405_with_allow(client, gid):
    response = client.delete(f"{API}/gateways")
    body = assert_error(response, 405)
    assert "POST" in response.headers["Allow"] and "DELETE" in body["error"]
    assert_error(client.patch(f"{API}/gateways/{gid}", json={}), 405)
    assert_error(client.put(f"{API}/gateways/{gid}/keys/k", json={}), 405)


@pytest.mark.parametrize(
    "payload, loc",
    [
        ({"subdomain": "a"}, "name"),
        ({"name": "g"}, "subdomain"),
        ({"name": "g", "subdomain": "not_a_label"}, "subdomain"),
        ({"name": 5, "subdomain": "a"}, "name"),
        ({"name": "g", "subdomain": "a", "status": "paused"}, "status"),
    ],
)
def test_invalid_gateway_is_400_with_location(client, payload, loc):
    body = assert_error(client.post(f"{API}/gateways", json=payload), 400)
    assert body["details"][0]["loc"] == loc
    assert body["error"].startswith(f"invalid gateway: {loc}: ")


@pytest.mark.parametrize(
    "mutate, loc",
    [
        (lambda u: u["targets"][0].update(weight=-1), "targets.0.weight"),
        (lambda u: u["targets"][0].update(weight="50"), "targets.0.weight"),
        (lambda u: u["targets"][1].update(priority=0), "targets.1.priority"),
        (lambda u: u["targets"][0].update(port=70000), "targets.0.port"),
        (lambda u: u["targets"][0].update(protocol="ftp"), "targets.0.protocol"),
        (lambda u: u["targets"][0].update(provider="cohere"), "targets.0.provider"),
        (lambda u: u["targets"][0].update(default_model="gpt-5"), "targets.0.default_model"),
        (lambda u: u["targets"][0].update(provider=None), "targets.0"),
        (lambda u: u["targets"][0].update(credentials={"header_name": "x"}), "targets.0.credentials"),
        (lambda u: u.update(targets=[]), "targets"),
        (lambda u: u.update(targets="openai"), "targets"),
        (lambda u: u.update(algorithm="fastest"), "algorithm"),
        (lambda u: u["health_checks"].update(threshold=0), "health_checks.threshold"),
        (lambda u: u["health_checks"].update(interval=-5), "health_checks.interval"),
        (lambda u: u.pop("name"), "name"),
    ],
)
def test_invalid_upstream_is_400_with_location(client, gid, guide, mutate, loc):
    mutate(guide.upstream)
    body = assert_error(client.post(f"{API}/gateways/{gid}/upstreams", json=guide.upstream), 400)
    assert loc in [d["loc"] for d in body["details"]]


def test_several_problems_are_all_listed(client, gid, guide):
    guide.upstream["targets"][0]["weight"] = -1
    guide.upstream["algorithm"] = "fastest"
    body = assert_error(client.post(f"{API}/gateways/{gid}/upstreams", json=guide.upstream), 400)
    assert len(body["details"]) == 2 and "(and 1 more)" in body["error"]


def test_validation_messages_do_not_echo_secrets(client, gid, guide):
    guide.upstream["targets"][0]["credentials"] = {"header_name": "Authorization", "header_value": 12345678901}
    response = client.post(f"{API}/gateways/{gid}/upstreams", json=guide.upstream)
    assert response.status_code == 400 and b"12345678901" not in response.data


@pytest.mark.parametrize(
    "payload, loc",
    [
        ({"name": "s", "type": "upstream"}, "body"),
        ({"name": "s", "type": "endpoint", "host": "h"}, "body"),
        ({"name": "s", "type": "queue", "upstream_id": "u"}, "type"),
        ({"name": "s", "type": "endpoint", "host": "h", "port": 0, "protocol": "http"}, "port"),
    ],
)
def test_invalid_service_is_400(client, gid, payload, loc):
    body = assert_error(client.post(f"{API}/gateways/{gid}/services", json=payload), 400)
    assert body["details"][0]["loc"] == loc


@pytest.mark.parametrize(
    "changes, loc",
    [
        ({"path": "v1"}, "path"),
        ({"methods": []}, "methods"),
        ({"methods": ["FETCH"]}, "methods.0"),
        ({"strip_path": "no"}, "strip_path"),
        ({"service_id": None}, "service_id"),
        ({"retry_attempts": 0}, "retry_attempts"),
    ],
)
def test_invalid_rule_is_400(client, gid, service, guide, changes, loc):
    payload = {**guide.rule, "service_id": service["id"], **changes}
    body = assert_error(client.post(f"{API}/gateways/{gid}/rules", json=payload), 400)
    assert body["details"][0]["loc"] == loc


def test_rule_methods_are_normalised(client, gid, service):
    response = client.post(f"{API}/gateways/{gid}/rules",
                           json={"path": "/v1/", "service_id": service["id"], "methods": ["post", "get"]})
    assert response.status_code == 201
    assert (response.json["path"], response.json["methods"]) == ("/v1", ["POST", "GET"])


@pytest.mark.parametrize(
    "payload, loc",
    [({}, "name"), ({"name": ""}, "name"), ({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
     ({"name": "k", "expires_at": "soon"}, "expires_at")],
)
def test_invalid_key_is_400(client, gid, payload, loc):
    body = assert_error(client.post(f"{API}/gateways/{gid}/keys", json=payload), 400)
    assert body["details"][0]["loc"] == loc


def test_put_validates_like_post(client, gid, upstream):
    body = assert_error(client.put(f"{API}/gateways/{gid}/upstreams/{upstream['id']}", json={"name": "x"}), 400)
    assert body["details"][0]["loc"] == "targets"
    assert_error(client.put(f"{API}/gateways/{gid}", data=b"{", content_type="application/json"), 400)
    assert_error(client.put(f"{API}/gateways/{gid}", data=b"{}", content_type="text/plain"), 415)


def test_unexpected_errors_are_json_500_without_traceback(client, monkeypatch, caplog):
    def explode(*args, **kwargs):
        raise ZeroDivisionError("secret internals")

    monkeypatch.setattr(Store, "list", explode)
    with caplog.at_level(logging.ERROR):
        response = client.get(f"{API}/gateways")
    body = assert_error(response, 500)
    assert b"secret internals" not in response.data and b"Traceback" not in response.data
    assert "unhandled error" in caplog.text and body["details"] == []


def test_corrupt_store_file_is_503(client, store):
    with open(store.path, "w") as handle:
        handle.write("{broken")
    assert_error(client.get(f"{API}/gateways"), 503)
