"""Target (and endpoint service) host, path, headers and credentials: what the admin API accepts.

A host, path or header reaches the URL or the headers of every upstream request: a host with a path or user info
sent requests elsewhere (or crashed the proxy), a `Content-Length` header cut the body short. New input is
checked; records stored before the checks existed stay loadable (the proxy refuses them per attempt).
"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from admin import create_app
from store import Store
from store.models import INPUT_CONTEXT, Gateway, Service, Target, Upstream
from store.validation import host_problem, path_problem
from store.snapshot import SnapshotLoader


def target_input(**fields) -> Target:
    return Target.model_validate({"provider": "openai", **fields}, context=INPUT_CONTEXT)


def errors(exc: ValidationError) -> list[tuple[str, str]]:
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]


# ------------------------------------------------------------------------------------------------------ hosts
GOOD_HOSTS = ["api.openai.com", "my-resource.openai.azure.com", "127.0.0.1", "localhost", "10.0.0.5",
              "generativelanguage.googleapis.com", "example.com.", "mock_provider", "a" * 63 + ".example",
              ".".join(["a" * 63] * 3) + "." + "b" * 61, "::1", "2001:db8::1", "xn--bcher-kva.example"]
BAD_HOSTS = {
    "path and fragment": "127.0.0.1:45505/_mock/stats#",
    "port": "127.0.0.1:8080",
    "user info": "user:pw@127.0.0.1",
    "scheme": "https://api.openai.com",
    "300 characters": "a" * 300,
    "254 characters": ".".join(["a" * 63] * 4)[:254],
    "label of 64": "a" * 64 + ".com",
    "space": "api.openai.com ",
    "inner space": "api openai.com",
    "newline": "api.openai.com\n",
    "leading dash": "-api.example.com",
    "trailing dash": "api-.example.com",
    "empty label": "api..example.com",
    "only a dot": ".",
    "query": "api.openai.com?x=1",
    "backslash": "api.openai.com\\x",
    "non-ascii": "b\u00fccher.example",
    "kelvin sign": "\u212a.example",
    "bad ipv4": "999.1.1.1",
    "short ipv4": "1.2.3",
    "ipv4 leading zero": "01.2.3.4",
    "ipv6 zone": "fe80::1%eth0",
    "ipv6 with port": "[::1]:8080",
    "brackets on a name": "[api.openai.com]",
    "percent": "api%2eopenai.com",
}


@pytest.mark.parametrize("host", GOOD_HOSTS)
def test_plausible_hosts_are_accepted(host):
    assert host_problem(host) is None
    assert target_input(host=host).host == host


def test_bracketed_ipv6_is_stored_bare():
    assert target_input(host="[::1]").host == "::1"  # the proxy adds the brackets when it builds the URL


@pytest.mark.parametrize("host", BAD_HOSTS.values(), ids=BAD_HOSTS.keys())
def test_hosts_with_more_than_a_host_are_refused(host):
    assert host_problem(host)
    with pytest.raises(ValidationError) as info:
        target_input(host=host, port=443, protocol="https")
    (loc, msg), = errors(info.value)
    assert loc == "host" and "host" in msg
    assert host not in msg or len(host) < 3  # the message explains; it does not echo (user info is a secret)


def test_length_limits_are_named():
    assert "253" in host_problem("a" * 300)
    assert "63" in host_problem("a" * 64 + ".com")


def test_endpoint_service_host_and_path_are_checked_too():
    with pytest.raises(ValidationError):
        Service.from_payload({"name": "s", "type": "endpoint", "host": "user:pw@10.0.0.1", "port": 80,
                              "protocol": "http"})
    with pytest.raises(ValidationError):
        Service.from_payload({"name": "s", "type": "endpoint", "host": "10.0.0.1", "port": 80, "protocol": "http",
                              "path": "/a/../b"})
    ok = Service.from_payload({"name": "s", "type": "endpoint", "host": "10.0.0.1", "port": 80, "protocol": "http",
                               "path": "/base"})
    assert ok.host == "10.0.0.1"


# ------------------------------------------------------------------------------------------------------ paths
GOOD_PATHS = ["/v1/chat/completions", "/v1/messages", "/openai/deployments/{model}/chat/completions",
              "/openai/deployments/{model}/chat/completions?api-version=2024-10-21",
              "/v1beta/models/{model}:generateContent", "/v1beta/models/{model}:streamGenerateContent?alt=sse",
              "/", "/a..b/...", "/.well-known/x", "/v1/x?next=../y"]
BAD_PATHS = ["/a/../b", "/a/..", "/..", "/a/./b", "/a/%2e%2E/b", "/a/.%2e/b", "/a/%2E/b", "/a#b", "/a b",
             "/a\tb", "/a\r\nX: y", "/a\\b", "/a%2fb", "/a%5Cb", "/a%00b", "/caf\u00e9", "v1/chat"]


@pytest.mark.parametrize("path", GOOD_PATHS)
def test_plausible_paths_are_accepted(path):
    assert path_problem(path) is None
    assert target_input(path=path).path == path


@pytest.mark.parametrize("path", BAD_PATHS)
def test_paths_that_would_be_resolved_or_cut_are_refused(path):
    with pytest.raises(ValidationError) as info:
        target_input(path=path)
    assert errors(info.value)[0][0] == "path"


@pytest.mark.parametrize("version, ok", [("2024-10-21", True), ("2024-10-01-preview", True),
                                         ("2024-10-21&x=1", False), ("v#1", False), ("", False)])
def test_api_version_goes_into_a_query_and_must_be_plain(version, ok):
    if ok:
        assert target_input(provider="azure", host="r.openai.azure.com", api_version=version).api_version == version
    else:
        with pytest.raises(ValidationError):
            target_input(provider="azure", host="r.openai.azure.com", api_version=version)


# ---------------------------------------------------------------------------------------------------- headers
FRAMING = ["Content-Length", "content-length", "Transfer-Encoding", "Connection", "Keep-Alive", "Host", "Upgrade",
           "TE", "Trailer", "Proxy-Authorization", "Proxy-Connection", "Content-Encoding"]


@pytest.mark.parametrize("name", FRAMING)
def test_framing_and_hop_by_hop_target_headers_are_refused(name):
    with pytest.raises(ValidationError) as info:
        target_input(headers={name: "5"})
    (loc, msg), = errors(info.value)
    assert loc == "headers" and name in msg and "framing or hop-by-hop" in msg


@pytest.mark.parametrize("name", ["Host", "Content-Length", "Proxy-Authorization"])
def test_framing_credential_headers_are_refused(name):
    with pytest.raises(ValidationError):
        target_input(credentials={"header_name": name, "header_value": "x"})


@pytest.mark.parametrize("headers", [{"X-A": "v\r\nX-B: y"}, {"X-A": "v\x00"}, {"X-A": "v\n"}, {"Bad Name": "v"},
                                     {"X:A": "v"}, {"": "v"}])
def test_header_names_are_tokens_and_values_have_no_line_breaks(headers):
    with pytest.raises(ValidationError):
        target_input(headers=headers)


def test_ordinary_headers_still_work():
    t = target_input(provider="anthropic", headers={"anthropic-version": "2023-06-01", "X-Trace": "a b\tc"},
                     credentials={"header_name": "x-api-key", "header_value": "sk-ant"})
    assert t.headers["anthropic-version"] == "2023-06-01"


# ------------------------------------------------------------------------------------ stored records, admin API
def broken_upstream() -> dict:
    return {"name": "u", "targets": [
        {"id": "smuggle", "provider": "openai", "host": "127.0.0.1:1/_mock/stats#", "port": 80, "protocol": "http"},
        {"id": "userinfo", "provider": "openai", "host": "user:pw@127.0.0.1", "port": 80, "protocol": "http"},
        {"id": "long", "provider": "openai", "host": "a" * 300, "port": 80, "protocol": "http"},
        {"id": "framing", "provider": "openai", "host": "127.0.0.1", "port": 80, "protocol": "http",
         "headers": {"Content-Length": "5"}, "path": "/a/../b"},
        {"id": "fine", "provider": "openai", "host": "127.0.0.1", "port": 80, "protocol": "http", "priority": 2},
    ]}


def test_records_stored_before_the_checks_still_load(tmp_path):
    store = Store(tmp_path / "aigw.json")
    gateway = store.create("gateways", Gateway.from_payload({"name": "g", "subdomain": "g"}))
    # Written as an older version would have: plain validation, no input context.
    stored = store.create("upstreams", Upstream.model_validate(broken_upstream()), gateway_id=gateway.id)
    snapshot = SnapshotLoader(store.path).current
    assert [t.id for t in snapshot.upstream(stored.id).targets] == ["smuggle", "userinfo", "long", "framing", "fine"]
    # ... but the admin API refuses the same payload as new input.
    with pytest.raises(ValidationError) as info:
        Upstream.from_payload(broken_upstream())
    locs = {loc for loc, _ in errors(info.value)}
    assert {"targets.0.host", "targets.1.host", "targets.2.host", "targets.3.headers", "targets.3.path"} <= locs


def test_admin_api_answers_400_naming_the_field(tmp_path):
    client = create_app(Store(tmp_path / "aigw.json")).test_client()
    gid = client.post("/api/v1/gateways", json={"name": "g", "subdomain": "g"}).get_json()["id"]
    for target, loc, words in [
        ({"host": "user:pw@127.0.0.1"}, "targets.0.host", "user info"),
        ({"host": "a" * 300}, "targets.0.host", "253"),
        ({"host": "127.0.0.1:45505/_mock/stats#"}, "targets.0.host", "port, path"),
        ({"headers": {"Content-Length": "5"}}, "targets.0.headers", "Content-Length"),
        ({"path": "/v1/../admin"}, "targets.0.path", ".."),
    ]:
        payload = {"name": "u", "targets": [{"provider": "openai", "port": 80, "protocol": "http", **target}]}
        r = client.post(f"/api/v1/gateways/{gid}/upstreams", json=payload)
        assert r.status_code == 400, r.data
        body = r.get_json()
        assert body["details"][0]["loc"] == loc and words in body["details"][0]["msg"], body
        assert words in body["error"]
        assert "pw@" not in json.dumps(body)
    # PUT applies the same checks.
    good = {"name": "u", "targets": [{"provider": "openai", "host": "my-resource.openai.azure.com"}]}
    uid = client.post(f"/api/v1/gateways/{gid}/upstreams", json=good).get_json()["id"]
    bad = {"name": "u", "targets": [{"provider": "openai", "host": "x.com/evil"}]}
    assert client.put(f"/api/v1/gateways/{gid}/upstreams/{uid}", json=bad).status_code == 400
