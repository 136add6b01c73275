"""Hostile and odd input: every bad request gets a clear JSON 4xx, never a 500; secrets never come back.

The first group are regressions of what a schemathesis run against /api/v1/openapi.json found (500s, statuses
the document did not list, schema mismatches); the rest are hand-written edge cases.
"""

import json
import re

import pytest

API = "/api/v1"
JSON = "application/json"


def assert_error(response, status):
    assert response.status_code == status, (response.status_code, response.data)
    assert response.mimetype == JSON
    body = response.json
    assert set(body) == {"error", "details"} and body["error"] and "\n" not in body["error"]
    assert b"Traceback" not in response.data
    return body


def raw(client, method, url, data, content_type=JSON):
    return client.open(url, method=method, data=data, content_type=content_type)


@pytest.fixture
def urls(gid, upstream, service, rule, client):
    """One URL of every route, with real ids; ``key`` is a real key id."""
    key = client.post(f"{API}/gateways/{gid}/keys", json={"name": "k"}).json
    base = f"{API}/gateways/{gid}"
    return {
        "gateways": f"{API}/gateways",
        "gateway": base,
        "upstreams": f"{base}/upstreams",
        "upstream": f"{base}/upstreams/{upstream['id']}",
        "health": f"{base}/upstreams/{upstream['id']}/health",
        "services": f"{base}/services",
        "service": f"{base}/services/{service['id']}",
        "rules": f"{base}/rules",
        "rule": f"{base}/rules/{rule['id']}",
        "keys": f"{base}/keys",
        "key": f"{base}/keys/{key['id']}",
        "openapi": f"{API}/openapi.json",
    }


WRITE_ROUTES = [("POST", "gateways"), ("PUT", "gateway"), ("POST", "upstreams"), ("PUT", "upstream"),
                ("POST", "services"), ("PUT", "service"), ("POST", "rules"), ("PUT", "rule"), ("POST", "keys")]


# ----------------------------------------------------------------------------------------------------------------
# Regressions from the fuzz run
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("methods", [[{}], [[]], [{"a": 1}, "POST"], [1], [None]])
def test_rule_methods_that_are_not_strings_are_400_not_500(client, gid, service, rule, methods):
    payload = {"path": "/v1", "service_id": service["id"], "methods": methods}
    body = assert_error(client.post(f"{API}/gateways/{gid}/rules", json=payload), 400)
    assert body["details"][0]["loc"].startswith("methods.")
    assert_error(client.put(f"{API}/gateways/{gid}/rules/{rule['id']}", json=payload), 400)


@pytest.mark.parametrize("depth", [100_000, 150_000])
def test_deeply_nested_json_is_400(client, depth):
    for data in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        body = assert_error(raw(client, "POST", f"{API}/gateways", data), 400)
        assert "nested too deeply" in body["error"]


@pytest.mark.parametrize("query", ["offset=" + "9" * 5000, "limit=" + "1" * 5000, "offset=" + "9" * 40,
                                   f"offset={2**53}", "offset=-0", "limit=1e3", "offset=%EF%BC%91"])
def test_paging_with_absurd_numbers_is_400(client, gid, query):
    assert_error(client.get(f"{API}/gateways?{query}"), 400)
    assert_error(client.get(f"{API}/gateways/{gid}/upstreams?{query}"), 400)


def test_largest_documented_offset_is_accepted(client):
    assert client.get(f"{API}/gateways?offset={2**53 - 1}&limit=1000").json == []


@pytest.mark.parametrize("value", ["1e400", "-1e400", "1e999"])
def test_infinite_floats_are_400_and_do_not_poison_the_store(client, gid, upstream, value):
    data = '{"name": "u2", "targets": [{"provider": "openai"}], "failover": {"connect_timeout": %s}}' % value
    body = assert_error(raw(client, "POST", f"{API}/gateways/{gid}/upstreams", data), 400)
    assert body["details"][0]["loc"] == "failover.connect_timeout"
    listed = client.get(f"{API}/gateways/{gid}/upstreams")
    assert listed.status_code == 200 and b"Infinity" not in listed.data


@pytest.mark.parametrize("field, value", [("weight", 2**53), ("weight", 10**30), ("priority", 10**100),
                                          ("max_tokens_default", 2**64)])
def test_huge_integers_are_400(client, gid, field, value):
    payload = {"name": "u", "targets": [{"provider": "openai", field: value}]}
    body = assert_error(client.post(f"{API}/gateways/{gid}/upstreams", json=payload), 400)
    assert body["details"][0]["loc"] == f"targets.0.{field}"


def test_integer_of_more_than_4300_digits_is_400(client, gid):
    data = '{"name": "u", "targets": [{"provider": "openai", "weight": %s}]}' % ("9" * 5000)
    assert_error(raw(client, "POST", f"{API}/gateways/{gid}/upstreams", data), 400)


def test_integral_floats_count_as_integers_other_floats_do_not(client, gid):
    payload = {"name": "u", "targets": [{"provider": "openai", "weight": 50.0, "port": 443.0, "priority": 2.0}],
               "health_checks": {"threshold": 3.0, "interval": 60.0}}
    created = client.post(f"{API}/gateways/{gid}/upstreams", json=payload)
    assert created.status_code == 201, created.json
    target = created.json["targets"][0]
    assert (target["weight"], target["port"], target["priority"]) == (50, 443, 2)
    assert isinstance(target["weight"], int) and created.json["health_checks"]["threshold"] == 3
    for field, value in (("weight", 50.5), ("port", 443.1), ("priority", 1.5)):
        bad = {"name": "v", "targets": [{"provider": "openai", field: value}]}
        body = assert_error(client.post(f"{API}/gateways/{gid}/upstreams", json=bad), 400)
        assert body["details"][0]["loc"] == f"targets.0.{field}"


def test_float_time_outs_still_take_integers(client, gid):
    payload = {"name": "u", "targets": [{"provider": "openai"}],
               "failover": {"connect_timeout": 2, "idle_timeout": 1.5}}
    created = client.post(f"{API}/gateways/{gid}/upstreams", json=payload)
    assert created.status_code == 201 and created.json["failover"]["connect_timeout"] == 2


def test_duplicate_keys_are_400(client, gid):
    body = assert_error(raw(client, "POST", f"{API}/gateways", '{"name": "a", "name": "b", "subdomain": "dup"}'), 400)
    assert "duplicate key 'name'" in body["error"]
    nested = '{"name": "u", "targets": [{"provider": "openai", "weight": 1, "weight": 2}]}'
    assert_error(raw(client, "POST", f"{API}/gateways/{gid}/upstreams", nested), 400)


def test_same_key_in_different_objects_is_fine(client, gid):
    data = '{"name": "u", "targets": [{"provider": "openai", "id": "a"}, {"provider": "anthropic", "id": "b"}]}'
    assert raw(client, "POST", f"{API}/gateways/{gid}/upstreams", data).status_code == 201


@pytest.mark.parametrize(
    "headers, credentials",
    [({"X-A": "b\r\nInjected: 1"}, None), ({"X-A": "b\nc"}, None), ({"X-A": "nul\x00"}, None),
     ({"Bad Name": "v"}, None), ({"": "v"}, None), ({"X-A:": "v"}, None),
     (None, {"header_name": "Authorization\r\nX", "header_value": "Bearer k"}),
     (None, {"header_name": "x-api-key", "header_value": "key\r\nX-Injected: 1"}),
     (None, {"api_key": "sk-abc\ndef"})],
)
def test_header_injection_is_400(client, gid, upstream, headers, credentials):
    target = {"provider": "openai"}
    if headers is not None:
        target["headers"] = headers
    if credentials is not None:
        target["credentials"] = credentials
    payload = {"name": "u2", "targets": [target]}
    body = assert_error(client.post(f"{API}/gateways/{gid}/upstreams", json=payload), 400)
    assert body["details"][0]["loc"].startswith("targets.0.")
    assert "Injected" not in body["error"] and "sk-abc" not in json.dumps(body)  # values are never echoed
    assert_error(client.put(f"{API}/gateways/{gid}/upstreams/{upstream['id']}", json=payload), 400)


def test_ordinary_header_values_are_fine(client, gid):
    payload = {"name": "u", "targets": [{"provider": "anthropic", "headers": {"anthropic-version": "2023-06-01",
                                                                              "X-Tab": "a\tb", "X-Unicode": "é"}}]}
    assert client.post(f"{API}/gateways/{gid}/upstreams", json=payload).status_code == 201


@pytest.mark.parametrize("subdomain", ["\u212a", "te\u0130st", "ünï", "a_b", "-a", "a-", "a" * 64, "", " ", "a.b"])
def test_non_dns_label_subdomains_are_400(client, subdomain):
    body = assert_error(client.post(f"{API}/gateways", json={"name": "g", "subdomain": subdomain}), 400)
    assert body["details"][0]["loc"] == "subdomain"


def test_ascii_subdomain_is_lowercased(client):
    assert client.post(f"{API}/gateways", json={"name": "g", "subdomain": " Team-A "}).json["subdomain"] == "team-a"


@pytest.mark.parametrize("expires_at", [4102444800, 4102444800000, 1.5, True, ["2099-01-01T00:00:00Z"], {}])
def test_key_expiry_must_be_a_string(client, gid, expires_at):
    body = assert_error(client.post(f"{API}/gateways/{gid}/keys", json={"name": "k", "expires_at": expires_at}), 400)
    assert body["details"][0]["loc"] == "expires_at"


@pytest.mark.parametrize("expires_at", ["2001-01-01T00:00:00Z", "1970-01-01T00:00:00+00:00", "soon", "",
                                        "2099-13-01T00:00:00Z", "2099-01-01T25:00:00Z", "31/12/2099"])
def test_key_expiry_in_the_past_or_unparsable_is_400(client, gid, expires_at):
    body = assert_error(client.post(f"{API}/gateways/{gid}/keys", json={"name": "k", "expires_at": expires_at}), 400)
    assert body["details"][0]["loc"] == "expires_at"


@pytest.mark.parametrize("given, stored", [("2099-01-01T00:00:00", "2099-01-01T00:00:00.000Z"),
                                           ("2099-01-01T02:00:00+02:00", "2099-01-01T00:00:00.000Z"),
                                           ("2099-01-01T00:00:00.123456Z", "2099-01-01T00:00:00.123Z")])
def test_key_expiry_is_normalised_to_utc(client, gid, given, stored):
    created = client.post(f"{API}/gateways/{gid}/keys", json={"name": "k", "expires_at": given})
    assert created.status_code == 201 and created.json["expires_at"] == stored  # a naive time is taken as UTC


def test_key_expiry_null_means_never(client, gid):
    created = client.post(f"{API}/gateways/{gid}/keys", json={"name": "k", "expires_at": None})
    assert created.status_code == 201 and created.json["expires_at"] is None


@pytest.mark.parametrize("cascade", ["null", "maybe", "", "2"])
def test_bad_cascade_is_400(client, gid, cascade):
    body = assert_error(client.delete(f"{API}/gateways/{gid}?cascade={cascade}"), 400)
    assert body["details"][0]["loc"] == "query.cascade"
    assert client.get(f"{API}/gateways/{gid}").status_code == 200


# ----------------------------------------------------------------------------------------------------------------
# Bodies
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, route", WRITE_ROUTES)
@pytest.mark.parametrize("data", ["[]", "[{}]", '"text"', "1", "true", "null"])
def test_non_object_bodies_are_400_on_every_write_route(client, urls, method, route, data):
    body = assert_error(raw(client, method, urls[route], data), 400)
    assert "expected a JSON object" in body["error"]


@pytest.mark.parametrize("method, route", WRITE_ROUTES)
@pytest.mark.parametrize("data", [b"", b" \n", b"\xef\xbb\xbf"])
def test_empty_json_bodies_are_400_on_every_write_route(client, urls, method, route, data):
    assert_error(raw(client, method, urls[route], data), 400)


@pytest.mark.parametrize("method, route", WRITE_ROUTES)
def test_non_json_bodies_are_415_on_every_write_route(client, urls, method, route):
    assert_error(raw(client, method, urls[route], "{}", content_type="text/plain"), 415)
    assert_error(client.open(urls[route], method=method, data={"name": "x"}), 415)  # a form post


@pytest.mark.parametrize("method, route", WRITE_ROUTES)
def test_empty_object_is_400_with_details_on_every_write_route(client, urls, method, route):
    body = assert_error(raw(client, method, urls[route], "{}"), 400)
    assert body["details"]


def test_charset_parameter_is_accepted_everywhere(client, gid, upstream, service, guide):
    ct = "application/json; charset=utf-8"
    payloads = [
        ("POST", f"{API}/gateways", {"name": "g2", "subdomain": "g2"}),
        ("PUT", f"{API}/gateways/{gid}", guide.gateway),
        ("POST", f"{API}/gateways/{gid}/upstreams", {**guide.upstream, "name": "u2"}),
        ("POST", f"{API}/gateways/{gid}/services", {"name": "s2", "upstream_id": upstream["id"]}),
        ("POST", f"{API}/gateways/{gid}/rules", {"path": "/x", "service_id": service["id"]}),
        ("POST", f"{API}/gateways/{gid}/keys", {"name": "k"}),
    ]
    for method, url, payload in payloads:
        response = raw(client, method, url, json.dumps(payload), content_type=ct)
        assert response.status_code in (200, 201), (url, response.json)
    response = raw(client, "POST", f"{API}/gateways", b'{"name": "g3", "subdomain": "g3"}',
                   content_type="Application/JSON; Charset=UTF-8")
    assert response.status_code == 201


@pytest.mark.parametrize("required", ["name", "subdomain"])
def test_null_for_required_gateway_fields_is_400(client, required):
    payload = {"name": "g", "subdomain": "g", required: None}
    assert assert_error(client.post(f"{API}/gateways", json=payload), 400)["details"][0]["loc"] == required


@pytest.mark.parametrize("required", ["name", "targets"])
def test_null_for_required_upstream_fields_is_400(client, gid, guide, required):
    guide.upstream[required] = None
    body = assert_error(client.post(f"{API}/gateways/{gid}/upstreams", json=guide.upstream), 400)
    assert body["details"][0]["loc"] == required


@pytest.mark.parametrize("required", ["name", "upstream_id"])
def test_null_for_required_service_fields_is_400(client, gid, upstream, required):
    payload = {"name": "s", "type": "upstream", "upstream_id": upstream["id"], required: None}
    assert_error(client.post(f"{API}/gateways/{gid}/services", json=payload), 400)


@pytest.mark.parametrize("required", ["path", "service_id", "methods"])
def test_null_for_required_rule_fields_is_400(client, gid, service, required):
    payload = {"path": "/v1", "service_id": service["id"], "methods": ["POST"], required: None}
    body = assert_error(client.post(f"{API}/gateways/{gid}/rules", json=payload), 400)
    assert body["details"][0]["loc"] == required


def test_null_key_name_is_400(client, gid):
    body = assert_error(client.post(f"{API}/gateways/{gid}/keys", json={"name": None}), 400)
    assert body["details"][0]["loc"] == "name"


@pytest.mark.parametrize("name", ["网关 🚀", "Ωmega", "a\u0000b", "😀" * 100, "right-to-left \u202e", "x" * 10_000])
def test_unicode_names_round_trip(client, gid, upstream, name):
    created = client.post(f"{API}/gateways", json={"name": name, "subdomain": "uni"})
    assert created.status_code == 201 and created.json["name"] == name
    assert client.get(f"{API}/gateways/{created.json['id']}").json["name"] == name
    key = client.post(f"{API}/gateways/{gid}/keys", json={"name": name})
    assert key.status_code == 201 and key.json["name"] == name
    renamed = client.put(f"{API}/gateways/{gid}/upstreams/{upstream['id']}",
                         json={"name": name, "targets": [{"provider": "openai"}]})
    assert renamed.status_code == 200 and renamed.json["name"] == name


def test_lone_surrogates_are_400(client):
    body = assert_error(raw(client, "POST", f"{API}/gateways", '{"name": "\\ud800", "subdomain": "s"}'), 400)
    assert body["details"][0]["loc"] == "name"


def test_raw_utf8_body_is_read_as_utf8(client):
    response = raw(client, "POST", f"{API}/gateways", '{"name": "Zürich", "subdomain": "zh"}'.encode("utf-8"))
    assert response.status_code == 201 and response.json["name"] == "Zürich"


# ----------------------------------------------------------------------------------------------------------------
# Routing: trailing slashes, HEAD, OPTIONS, unknown methods, ids
# ----------------------------------------------------------------------------------------------------------------


def test_trailing_slashes_are_tolerated(client, gid, upstream):
    created = client.post(f"{API}/gateways/", json={"name": "g", "subdomain": "slash"})
    assert created.status_code == 201
    assert client.get(f"{API}/gateways/").status_code == 200
    assert client.get(f"{API}/gateways/{gid}/").json["id"] == gid
    assert client.get(f"{API}/gateways/{gid}/upstreams/{upstream['id']}/").json["id"] == upstream["id"]
    assert client.delete(f"{API}/gateways/{created.json['id']}/").status_code == 204


@pytest.mark.parametrize("path", ["/api/v1//gateways", "//api/v1/gateways", "/api/v1/gateways//",
                                  "/api/v1/gateways/x//upstreams", "/api/v1/./gateways", "/api/v1/gateways/%2F"])
def test_odd_paths_are_json_404_never_an_html_redirect(client, path):
    for method in ("GET", "POST", "DELETE"):
        assert_error(client.open(path, method=method, json={}), 404)


def _allowed(urls, app):
    """{route name: set of methods served}, read from the URL map."""
    adapter = app.url_map.bind("localhost")
    allowed = {}
    for name, url in urls.items():
        methods = set()
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            try:
                adapter.match(url, method=method)
            except Exception:
                continue
            methods.add(method)
        allowed[name] = methods
    return allowed


def test_head_on_every_route(client, urls, app):
    for name, methods in _allowed(urls, app).items():
        response = client.head(urls[name])
        assert response.data == b""
        if "GET" in methods:
            assert response.status_code == client.get(urls[name]).status_code == 200, name
        else:
            assert response.status_code == 405, name


def test_options_on_every_route(client, urls, app):
    for name, methods in _allowed(urls, app).items():
        response = client.options(urls[name])
        assert response.status_code == 200, name
        assert methods <= set(response.headers["Allow"].replace(" ", "").split(",")), name


@pytest.mark.parametrize("method", ["PATCH", "FOO", "TRACE", "CONNECT", "PROPFIND"])
def test_unknown_or_unserved_methods_are_json_405_everywhere(client, urls, method):
    for name, url in urls.items():
        if method == "PATCH" and name == "key":
            continue  # a key's name, active flag and limits are changed with PATCH (tests/admin/test_admin_limits.py)
        response = client.open(url, method=method)
        body = assert_error(response, 405)
        assert method in body["error"] and response.headers.get("Allow"), name


def test_put_on_a_collection_and_post_on_an_item_are_405(client, urls):
    for name in ("gateways", "upstreams", "services", "rules", "keys"):
        assert_error(client.put(urls[name], json={}), 405)
    for name in ("gateway", "upstream", "service", "rule", "key"):
        assert_error(client.post(urls[name], json={}), 405)
    assert_error(client.put(urls["key"], json={"name": "k"}), 405)
    assert_error(client.post(urls["openapi"], json={}), 405)


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "0", "00000000-0000-0000-0000-000000000000", "%20", "..%2F",
                                    "%C3%A9", "x" * 2000, "%00", "'; DROP TABLE gateways; --", "null"])
def test_unknown_ids_are_404_everywhere(client, gid, urls, bad_id):
    base = f"{API}/gateways/{gid}"
    assert_error(client.get(f"{API}/gateways/{bad_id}"), 404)
    assert_error(client.put(f"{API}/gateways/{bad_id}", json={"name": "g", "subdomain": "zz"}), 404)
    assert_error(client.delete(f"{API}/gateways/{bad_id}"), 404)
    assert_error(client.get(f"{API}/gateways/{bad_id}/upstreams"), 404)
    assert_error(client.post(f"{API}/gateways/{bad_id}/keys", json={"name": "k"}), 404)
    for kind in ("upstreams", "services", "rules", "keys"):
        assert_error(client.get(f"{base}/{kind}/{bad_id}"), 404)
        assert_error(client.delete(f"{base}/{kind}/{bad_id}"), 404)
    assert_error(client.get(f"{base}/upstreams/{bad_id}/health"), 404)
    assert_error(client.put(f"{base}/upstreams/{bad_id}", json={"name": "u", "targets": [{"provider": "openai"}]}),
                 404)


def test_an_id_of_one_kind_is_404_as_another(client, gid, urls, upstream, service):
    base = f"{API}/gateways/{gid}"
    assert_error(client.get(f"{base}/services/{upstream['id']}"), 404)
    assert_error(client.get(f"{base}/rules/{service['id']}"), 404)
    assert_error(client.get(f"{API}/gateways/{upstream['id']}"), 404)
    assert_error(client.get(f"{API}/gateways/{upstream['id']}/upstreams/{upstream['id']}"), 404)


# ----------------------------------------------------------------------------------------------------------------
# PUT semantics and conflicts
# ----------------------------------------------------------------------------------------------------------------


def test_put_gateway_onto_a_subdomain_in_use_is_409(client, gid, guide):
    other = client.post(f"{API}/gateways", json={"name": "other", "subdomain": "other"}).json
    body = assert_error(client.put(f"{API}/gateways/{other['id']}", json={"name": "o", "subdomain": "YOUR-SUBDOMAIN"}),
                        409)
    assert body["details"][0]["loc"] == "subdomain"
    assert client.get(f"{API}/gateways/{other['id']}").json["subdomain"] == "other"
    same = client.put(f"{API}/gateways/{gid}", json={**guide.gateway, "name": "renamed"})  # its own subdomain
    assert same.status_code == 200 and same.json["name"] == "renamed"


def test_put_upstream_onto_a_name_in_use_is_409(client, gid, upstream, guide):
    other = client.post(f"{API}/gateways/{gid}/upstreams", json={**guide.upstream, "name": "second"}).json
    assert_error(client.put(f"{API}/gateways/{gid}/upstreams/{other['id']}", json=guide.upstream), 409)


def test_put_that_drops_a_target(client, gid, upstream, service, rule):
    url = f"{API}/gateways/{gid}/upstreams/{upstream['id']}"
    current = client.get(url).json
    kept = current["targets"][1]
    replaced = client.put(url, json={**current, "targets": [kept]})
    assert replaced.status_code == 200, replaced.json
    assert [t["id"] for t in replaced.json["targets"]] == [kept["id"]]
    assert [t["target_id"] for t in client.get(f"{url}/health").json["targets"]] == [kept["id"]]
    assert client.get(f"{API}/gateways/{gid}/services/{service['id']}").status_code == 200  # still routable


def test_put_with_no_targets_is_400_and_keeps_the_old_ones(client, gid, upstream):
    url = f"{API}/gateways/{gid}/upstreams/{upstream['id']}"
    for targets in ([], None, {}, "openai"):
        body = assert_error(client.put(url, json={"name": upstream["name"], "targets": targets}), 400)
        assert body["details"][0]["loc"] == "targets"
    assert len(client.get(url).json["targets"]) == 2


def test_put_cannot_move_an_entity_or_change_its_id(client, gid, upstream, guide):
    other = client.post(f"{API}/gateways", json={"name": "o", "subdomain": "o"}).json
    url = f"{API}/gateways/{gid}/upstreams/{upstream['id']}"
    payload = {**guide.upstream, "id": "forged", "gateway_id": other["id"], "created_at": "2000-01-01T00:00:00Z"}
    replaced = client.put(url, json=payload).json
    assert (replaced["id"], replaced["gateway_id"], replaced["created_at"]) == (upstream["id"], gid,
                                                                               upstream["created_at"])


def test_put_service_to_an_upstream_of_another_gateway_is_400(client, gid, service, guide):
    other = client.post(f"{API}/gateways", json={"name": "o", "subdomain": "o"}).json
    foreign = client.post(f"{API}/gateways/{other['id']}/upstreams", json=guide.upstream).json
    body = assert_error(client.put(f"{API}/gateways/{gid}/services/{service['id']}",
                                   json={"name": "s", "upstream_id": foreign["id"]}), 400)
    assert body["details"][0]["loc"] == "upstream_id"


# ----------------------------------------------------------------------------------------------------------------
# Field validation
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("methods, stored", [(["post"], ["POST"]), (["Get", "get", "GET"], ["GET"]),
                                             ([" put ", "PATCH", "put"], ["PUT", "PATCH"]),
                                             (["delete", "head", "options"], ["DELETE", "HEAD", "OPTIONS"])])
def test_rule_methods_are_uppercased_and_deduplicated(client, gid, service, methods, stored):
    created = client.post(f"{API}/gateways/{gid}/rules", json={"path": "/v1", "service_id": service["id"],
                                                               "methods": methods})
    assert created.status_code == 201 and created.json["methods"] == stored


@pytest.mark.parametrize("methods", [["FETCH"], ["POST", "CONNECT"], ["TRACE"], [""], ["P OST"], "POST", []])
def test_unknown_rule_methods_are_400(client, gid, service, methods):
    body = assert_error(client.post(f"{API}/gateways/{gid}/rules", json={"path": "/v1", "service_id": service["id"],
                                                                        "methods": methods}), 400)
    assert body["details"][0]["loc"].startswith("methods")


@pytest.mark.parametrize("weight", [-1, -(2**63), 2**53, 10**20, "1", True, None, [1], 0.5])
def test_bad_weights_are_400(client, gid, weight):
    payload = {"name": "u", "targets": [{"provider": "openai", "weight": weight}]}
    body = assert_error(client.post(f"{API}/gateways/{gid}/upstreams", json=payload), 400)
    assert body["details"][0]["loc"] == "targets.0.weight"


@pytest.mark.parametrize("weight", [0, 1, 1000, 2**53 - 1])
def test_weights_in_range_are_accepted(client, gid, weight):
    payload = {"name": "u", "targets": [{"provider": "openai", "weight": weight}]}
    created = client.post(f"{API}/gateways/{gid}/upstreams", json=payload)
    assert created.status_code == 201 and created.json["targets"][0]["weight"] == weight


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini", "azure", "openai-compatible", "OpenAI",
                                      " Anthropic "])
def test_every_provider_is_accepted(client, gid, provider):
    payload = {"name": "u", "targets": [{"provider": provider, "credentials": {"api_key": "sk-0123456789abcdefgh"}}]}
    created = client.post(f"{API}/gateways/{gid}/upstreams", json=payload)
    assert created.status_code == 201, created.json
    assert created.json["targets"][0]["provider"] == provider.strip().lower()


@pytest.mark.parametrize("provider", ["cohere", "", "open ai", 1, ["openai"], {"name": "openai"}])
def test_unknown_providers_are_400(client, gid, provider):
    payload = {"name": "u", "targets": [{"provider": provider}]}
    body = assert_error(client.post(f"{API}/gateways/{gid}/upstreams", json=payload), 400)
    assert body["details"][0]["loc"] == "targets.0.provider"


@pytest.mark.parametrize(
    "credentials",
    [{"api_key": "sk-1", "header_name": "Authorization"},
     {"api_key": "sk-1", "header_name": "Authorization", "header_value": "Bearer x"},
     {"api_key": "sk-1", "header_value": "Bearer x"}, {"header_value": "x"}, {}, {"api_key": ""},
     {"api_key": None}, {"header_name": "", "header_value": "v"}, "sk-1", ["sk-1"], {"api_key": 12345}],
)
def test_bad_credentials_are_400_without_echo(client, gid, credentials):
    payload = {"name": "u", "targets": [{"provider": "openai", "credentials": credentials}]}
    response = client.post(f"{API}/gateways/{gid}/upstreams", json=payload)
    body = assert_error(response, 400)
    assert body["details"][0]["loc"].startswith("targets.0.credentials")
    assert b"sk-1" not in response.data and b"12345" not in response.data


def test_target_without_provider_needs_an_origin(client, gid):
    body = assert_error(client.post(f"{API}/gateways/{gid}/upstreams",
                                    json={"name": "u", "targets": [{"host": "h", "port": 80}]}), 400)
    assert "protocol" in body["error"]
    ok = {"name": "u", "targets": [{"host": "h", "port": 80, "protocol": "http"}]}
    assert client.post(f"{API}/gateways/{gid}/upstreams", json=ok).status_code == 201


@pytest.mark.parametrize("mutate, loc", [
    (lambda t: t.update(port=0), "targets.0.port"),
    (lambda t: t.update(port=65536), "targets.0.port"),
    (lambda t: t.update(path="v1/chat"), "targets.0.path"),
    (lambda t: t.update(id="has space"), "targets.0.id"),
    (lambda t: t.update(id="a/b"), "targets.0.id"),
    (lambda t: t.update(models="gpt-4"), "targets.0.models"),
    (lambda t: t.update(models=[""]), "targets.0.models.0"),
    (lambda t: t.update(headers=["a"]), "targets.0.headers"),
    (lambda t: t.update(headers={"X-A": 1}), "targets.0.headers.X-A"),
    (lambda t: t.update(max_tokens_default=0), "targets.0.max_tokens_default"),
])
def test_bad_target_fields_are_400(client, gid, mutate, loc):
    target = {"provider": "openai"}
    mutate(target)
    body = assert_error(client.post(f"{API}/gateways/{gid}/upstreams", json={"name": "u", "targets": [target]}), 400)
    assert loc in [d["loc"] for d in body["details"]]


def test_duplicate_target_ids_are_400(client, gid):
    payload = {"name": "u", "targets": [{"provider": "openai", "id": "a"}, {"provider": "anthropic", "id": "a"}]}
    assert assert_error(client.post(f"{API}/gateways/{gid}/upstreams", json=payload), 400)["details"][0]["loc"] == \
        "targets"


@pytest.mark.parametrize("failover", [{"connect_timeout": 0}, {"connect_timeout": -1}, {"total_timeout": "10"},
                                      {"retry_on": ["never"]}, {"retry_on": "5xx"}, {"retry_on": [{}]},
                                      {"max_attempts": 0}, {"idle_timeout": True}])
def test_bad_failover_is_400(client, gid, failover):
    payload = {"name": "u", "targets": [{"provider": "openai"}], "failover": failover}
    body = assert_error(client.post(f"{API}/gateways/{gid}/upstreams", json=payload), 400)
    assert body["details"][0]["loc"].startswith("failover")


@pytest.mark.parametrize("sticky", [{"hash_on": "cookie"}, {"hash_on": "header:"}, {"hash_on": "header:a b"},
                                    {"ttl": 0}, {"ttl": "300"}])
def test_bad_sticky_is_400(client, gid, sticky):
    payload = {"name": "u", "algorithm": "sticky", "targets": [{"provider": "openai"}], "sticky": sticky}
    body = assert_error(client.post(f"{API}/gateways/{gid}/upstreams", json=payload), 400)
    assert body["details"][0]["loc"].startswith("sticky")


@pytest.mark.parametrize("payload", [{"name": "s", "type": "endpoint", "host": "h", "port": 80, "protocol": "ftp"},
                                     {"name": "s", "type": "endpoint", "host": "", "port": 80, "protocol": "http"},
                                     {"name": "s", "type": "endpoint", "host": "h", "port": 80, "protocol": "http",
                                      "path": "nope"},
                                     {"name": "s", "type": None, "upstream_id": "u"},
                                     {"name": "s", "upstream_id": ""}])
def test_bad_services_are_400(client, gid, payload):
    assert_error(client.post(f"{API}/gateways/{gid}/services", json=payload), 400)


# ----------------------------------------------------------------------------------------------------------------
# Secrets: masked on read, never echoed, keys stored hashed
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["a", "sk-1", "short-key", "fifteen-chars-x", "Bearer abc", "Basic dXNlcjpw",
                                    "Token 0123456789"])
def test_short_secrets_are_masked_completely(client, gid, secret):
    payload = {"name": "u", "targets": [
        {"provider": "openai", "credentials": {"header_name": "Authorization", "header_value": secret}},
        {"provider": "anthropic", "credentials": {"api_key": secret}}]}
    created = client.post(f"{API}/gateways/{gid}/upstreams", json=payload)
    assert created.status_code == 201
    for response in (created, client.get(f"{API}/gateways/{gid}/upstreams/{created.json['id']}")):
        header, api_key = (t["credentials"] for t in response.json["targets"])
        token = secret.split(" ", 1)[-1]
        for shown in (header["header_value"], api_key["api_key"]):
            assert "…" in shown and token not in shown
            assert not re.search(r"[A-Za-z0-9]{3,}$", shown.split(" ", 1)[-1])  # nothing of a short token shown


def test_long_secrets_show_at_most_seven_characters(client, gid):
    secret = "sk-proj-" + "abcdefghijklmnopqrstuvwxyz0123456789"
    payload = {"name": "u", "targets": [{"provider": "openai", "credentials": {"api_key": secret}}]}
    shown = client.post(f"{API}/gateways/{gid}/upstreams", json=payload).json["targets"][0]["credentials"]["api_key"]
    assert shown == "sk-…6789"


def test_no_read_ever_contains_a_secret_or_a_key_hash(client, store, gid, upstream, service, rule, urls):
    secrets = ["sk-live-SECRET-0123456789abcdef", "tiny", "Bearer sk-ant-SECRET-abcdefghijklmnop", "x-secret-zz"]
    payload = {"name": "secret-pool", "targets": [
        {"provider": "openai", "credentials": {"api_key": secrets[0]}},
        {"provider": "gemini", "credentials": {"api_key": secrets[1]}},
        {"provider": "anthropic", "credentials": {"header_name": "Authorization", "header_value": secrets[2]}},
        {"provider": "azure", "credentials": {"header_name": "api-key", "header_value": secrets[3]}}]}
    created = client.post(f"{API}/gateways/{gid}/upstreams", json=payload)
    assert created.status_code == 201
    pool = f"{API}/gateways/{gid}/upstreams/{created.json['id']}"
    keys = [client.post(f"{API}/gateways/{gid}/keys", json={"name": f"k{i}"}).json for i in range(2)]
    plaintexts = [key["key"] for key in keys]
    hashes = [stored.key_hash for stored in store.list("keys", gateway_id=gid)]
    assert len(hashes) == 3 and all(len(h) == 64 for h in hashes)
    forbidden = [s.split(" ", 1)[-1] for s in secrets] + ["your-openai-key", "your-anthropic-key"] + plaintexts + hashes
    forbidden += [p[len("aigw-"):] for p in plaintexts]  # nor the random part of a key
    responses = [client.get(url) for url in urls.values()]
    responses += [client.get(pool), client.get(f"{pool}/health"), client.get(f"{API}/gateways?limit=1000"),
                  client.get(f"{API}/gateways/{gid}/keys?limit=1000"), client.get(f"{API}/gateways/{gid}/keys/"
                                                                                 f"{keys[0]['id']}")]
    # writes that answer with the entity (a PUT echoing back what was sent must still mask it)
    responses.append(client.put(pool, json=payload))
    responses.append(client.put(pool, json={**payload, "targets": [{"provider": "openai", "weight": -1,
                                                                    "credentials": {"api_key": secrets[0]}}]}))
    responses.append(client.post(f"{API}/gateways/{gid}/upstreams",
                                 json={"name": "secret-pool", "targets": payload["targets"]}))  # 409
    for response in responses:
        text = response.get_data(as_text=True)
        for secret in forbidden:
            assert secret not in text, (response.request.path, secret)
        assert "key_hash" not in text
    for key in client.get(f"{API}/gateways/{gid}/keys").json:
        assert set(key) == {"id", "gateway_id", "name", "key_prefix", "expires_at", "active", "limits", "created_at"}


def test_keys_are_stored_hashed(client, store, gid):
    import hashlib

    created = client.post(f"{API}/gateways/{gid}/keys", json={"name": "k"}).json
    with open(store.path, encoding="utf-8") as handle:
        text = handle.read()
    assert created["key"] not in text
    assert hashlib.sha256(created["key"].encode()).hexdigest() in text
    assert created["key"].startswith(created["key_prefix"]) and len(created["key_prefix"]) < 12


def test_key_payload_cannot_choose_its_key_or_hash(client, store, gid):
    created = client.post(f"{API}/gateways/{gid}/keys", json={"name": "k", "key": "aigw-chosen",
                                                              "key_hash": "0" * 64, "key_prefix": "aigw-x"}).json
    assert created["key"] != "aigw-chosen"
    stored = store.get("keys", created["id"], gateway_id=gid)
    assert stored.key_hash != "0" * 64 and stored.key_prefix != "aigw-x"


# ----------------------------------------------------------------------------------------------------------------
# The OpenAPI document describes what the API does
# ----------------------------------------------------------------------------------------------------------------


def test_every_operation_documents_its_errors_with_the_error_schema(client):
    doc = client.get(f"{API}/openapi.json").json
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters" or path.endswith("/openapi.json"):
                continue
            responses = operation["responses"]
            assert {"401", "503"} <= set(responses), (method, path)
            for status, response in responses.items():
                if status.startswith("4") or status.startswith("5"):
                    assert response["content"]["application/json"]["schema"] == error_ref
            if method in ("post", "put"):
                assert {"400", "404", "409", "413", "415"} <= set(responses), (method, path)
            if "{" in path:
                assert "404" in responses
    delete = doc["paths"][f"{API}/gateways/{{entity_id}}"]["delete"]
    assert "400" in delete["responses"] and delete["parameters"][0]["name"] == "cascade"


def test_document_paging_and_path_parameters(client):
    doc = client.get(f"{API}/openapi.json").json
    listing = doc["paths"][f"{API}/gateways"]["get"]
    params = {p["name"]: p["schema"] for p in listing["parameters"]}
    assert params["limit"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
    assert params["offset"]["minimum"] == 0 and params["offset"]["maximum"] == 2**53 - 1
    item = doc["paths"][f"{API}/gateways/{{gateway_id}}/rules/{{entity_id}}"]
    assert [p["name"] for p in item["parameters"]] == ["gateway_id", "entity_id"]
    assert all(p["in"] == "path" and p["required"] for p in item["parameters"])


def test_document_links_point_at_real_operations(client):
    doc = client.get(f"{API}/openapi.json").json
    operation_ids = {op["operationId"] for item in doc["paths"].values() for key, op in item.items()
                     if key != "parameters"}
    links = doc["paths"][f"{API}/gateways"]["post"]["responses"]["201"]["links"]
    assert {"get_gateway", "create_upstream", "list_keys"} <= {link["operationId"] for link in links.values()}
    for item in doc["paths"].values():
        for key, op in item.items():
            for response in (op.get("responses", {}).values() if key != "parameters" else ()):
                for link in response.get("links", {}).values():
                    assert link["operationId"] in operation_ids


def test_document_schemas_carry_the_validation_patterns(client):
    schemas = client.get(f"{API}/openapi.json").json["components"]["schemas"]
    pattern = re.compile(schemas["Gateway"]["properties"]["subdomain"]["pattern"])
    assert pattern.fullmatch("your-subdomain") and not pattern.fullmatch("-x") and not pattern.fullmatch("A")
    assert schemas["Rule"]["properties"]["path"]["pattern"] == "^/"
    assert "oneOf" in schemas["Credentials"] and "anyOf" in schemas["Target"] and "anyOf" in schemas["Service"]
    assert schemas["Target"]["properties"]["weight"]["maximum"] == 2**53 - 1


def test_documented_examples_validate_like_the_server(client, gid, guide):
    """Sanity: the guide's payloads satisfy the documented request schemas' required fields."""
    schemas = client.get(f"{API}/openapi.json").json["components"]["schemas"]
    for name, payload in (("Gateway", guide.gateway), ("Upstream", guide.upstream), ("ApiKeyCreate", guide.key)):
        assert set(schemas[name].get("required", [])) <= set(payload), name
