"""Paths through a real mitmdump: a client cannot reach a provider path its rule does not cover, the client's
model cannot pick the upstream path, and a target stored with a bad host, path or header is a failed attempt.

Raw requests (http.client, no client-side normalisation, like `curl --path-as-is`) against strict mock providers
that record every path they receive.
"""

from __future__ import annotations

import http.client as httpc
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from store import Store
from store.models import Upstream
from tests.e2e.harness import gemini_target, http, openai_target, wait_until

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hello!"}]}


def raw(proxy, method: str, path: str, host: str, key: str, body=None) -> tuple[int, dict]:
    """One request with the path sent byte for byte."""
    conn = httpc.HTTPConnection("127.0.0.1", proxy.port, timeout=15)
    try:
        data = json.dumps(body if body is not None else CHAT).encode()
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in (("Host", host), ("X-Api-Key", key), ("Content-Type", "application/json"),
                            ("Content-Length", str(len(data)))):
            conn.putheader(name, value)
        conn.endheaders(data)
        resp = conn.getresponse()
        text = resp.read()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, {"raw": text.decode(errors="replace")}
    finally:
        conn.close()


ESCAPES = [
    "/v1/chat/completions/../../models", "/v1/chat/completions/%2e%2e/%2e%2e/models",
    "/v1/chat/completions/%2E%2E/%2E%2e/models", "/v1/chat/completions/.%2e/.%2E/models",
    "/v1/chat/completions/..%2f..%2fmodels", "/v1/chat/completions%2f..%2f..%2fmodels",
    "/v1/chat/completions/..%5c..%5cmodels", "/v1/chat/completions/./../../models",
    "/v1/chat/completions//../../models", "/v1/chat/completions/%252e%252e/%252e%252e/models",
    "/v1/chat/completions/../../_mock/faults", "/v1/chat/completions/../../../v1/models?x=1",
]


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_dot_segments_cannot_escape_the_rule(admin, proxy, subdomain, mock_factory, method):
    oa = mock_factory("openai-mock", "sk-openai-test")
    cfg = admin.guide_setup([openai_target(oa.port)], subdomain=subdomain, rule_path="/v1/chat/completions")
    admin.ok("PUT", f"/gateways/{cfg['gateway']['id']}/rules/{cfg['rule']['id']}",
             {"path": "/v1/chat/completions", "service_id": cfg["service"]["id"], "methods": ["POST", "GET"]})
    host = f"{subdomain}.example.com"
    status, body = raw(proxy, "POST", "/v1/chat/completions", host, cfg["key"])
    assert status == 200, body
    oa.reset()
    for path in ESCAPES + ["/v1/chat/completions\\..\\..\\models"]:
        status, body = raw(proxy, method, path, host, cfg["key"])
        assert status == 400, (path, status, body)
        assert body["error"]["code"] == "invalid_path" and body["error"]["type"] == "invalid_request_error"
    assert oa.requests() == [] and oa.stats()["total"] == 0  # the provider saw none of them
    assert oa.faults() == []


def test_refusal_is_in_the_anthropic_format_on_messages_paths(admin, proxy, subdomain, mock_factory):
    oa = mock_factory("openai-mock", "sk-openai-test")
    cfg = admin.guide_setup([openai_target(oa.port)], subdomain=subdomain)
    status, body = raw(proxy, "POST", "/v1/x/../messages", f"{subdomain}.example.com", cfg["key"],
                       {"model": "gpt-4", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 400 and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert oa.requests() == []


@pytest.fixture
def raw_server():
    """A provider-less upstream that records the request line exactly as it arrived."""
    lines: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            lines.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], lines
    server.shutdown()
    server.server_close()


def test_the_path_goes_upstream_exactly_as_matched(admin, proxy, subdomain, raw_server):
    """Nothing re-normalises the path on the way out (aiohttp/yarl would decode %41 to "A" and %2F in the query)."""
    port, lines = raw_server
    cfg = admin.guide_setup([{"host": "127.0.0.1", "port": port, "protocol": "http"}], subdomain=subdomain)
    sent = "/v1/x%41y/%7Efile:1@a;b=c?q=%2F&r=a+b&s=%2e%2e"
    status, body = raw(proxy, "POST", sent, f"{subdomain}.example.com", cfg["key"])
    assert (status, body) == (200, {"ok": True})
    assert lines == [sent]


BAD_MODELS = ["../../_mock/faults?", "../../v1/models#", "x/../../_mock/reset", "%2e%2e%2f_mock%2fstats",
              "a?key=other", "m" * 300, "gemini 2.0"]


@pytest.mark.parametrize("provider", ["gemini", "azure"])
def test_the_clients_model_cannot_choose_the_upstream_path(admin, proxy, subdomain, mock_factory, provider):
    if provider == "gemini":
        mock = mock_factory("gemini-mock", "gm-test")
        target = gemini_target(mock.port, default_model=None, models=[])
        good = "gemini-2.0-flash"
    else:
        mock = mock_factory("azure-mock", "az-test")
        target = {"provider": "azure", "host": "127.0.0.1", "port": mock.port, "protocol": "http",
                  "credentials": {"header_name": "api-key", "header_value": "az-test"}}
        good = "gpt-4o-deploy"
    cfg = admin.guide_setup([target], subdomain=subdomain)
    host = f"{subdomain}.example.com"
    mock.set_faults([{"match": {"path_contains": "never"}, "status": 500}])  # a marker /_mock/faults would erase
    for model in BAD_MODELS:
        status, body = raw(proxy, "POST", "/v1/chat/completions", host, cfg["key"],
                           {"model": model, "messages": [{"role": "user", "content": "hi"}]})
        assert status == 400, (model, status, body)
        assert body["error"]["param"] == "model" and body["error"]["type"] == "invalid_request_error"
    status, body = raw(proxy, "POST", "/v1/messages", host, cfg["key"],
                       {"model": "../../_mock/reset", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 400 and body["type"] == "error"
    assert mock.requests() == []
    assert len(mock.faults()) == 1  # the marker is still there: nothing reached /_mock/
    status, body = raw(proxy, "POST", "/v1/chat/completions", host, cfg["key"],
                       {"model": good, "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200, body
    assert len(mock.requests()) == 1 and good in mock.requests()[0]["path"]


# --------------------------------------------------------------------------------------- stored bad targets
BAD_HOSTS = {"path-smuggling": "127.0.0.1:{port}/_mock/stats#", "userinfo": "user:pw@127.0.0.1",
             "300-chars": "a" * 300}


@pytest.mark.parametrize("kind", BAD_HOSTS)
def test_admin_refuses_the_bad_host(admin, subdomain, mock_factory, kind):
    gw = admin.ok("POST", "/gateways", {"name": "g", "subdomain": subdomain})
    r = admin.call("POST", f"/gateways/{gw['id']}/upstreams",
                   {"name": "u", "targets": [openai_target(1, host=BAD_HOSTS[kind].format(port=1))]})
    assert r.status == 400, r.body
    assert r.json()["details"][0]["loc"] == "targets.0.host"
    assert "pw@" not in r.body.decode()


def _store_unvalidated(stack, cfg, targets) -> None:
    """Write the upstream as an aigw without these checks would have: the proxy must cope with it."""
    up = cfg["upstream"]
    Store(stack["data"]).replace("upstreams", up["id"],
                                 Upstream.model_validate({**up, "targets": targets}),
                                 gateway_id=cfg["gateway"]["id"])


@pytest.mark.parametrize("kind", BAD_HOSTS)
def test_a_stored_bad_host_fails_over_and_opens_the_breaker(stack, admin, proxy, subdomain, mock_factory, kind):
    bad_mock = mock_factory("bad-mock", "sk-openai-test")
    good = mock_factory("good-mock", "sk-openai-test")
    cfg = admin.guide_setup([openai_target(good.port)], subdomain=subdomain)
    _store_unvalidated(stack, cfg, [
        openai_target(bad_mock.port, host=BAD_HOSTS[kind].format(port=bad_mock.port), id="broken"),
        openai_target(good.port, priority=2, id="healthy")])
    host = f"{subdomain}.example.com"
    served_by = lambda: http("POST", f"{proxy.base}/v1/chat/completions", CHAT,  # noqa: E731
                             {"Host": host, "X-Api-Key": cfg["key"]}, timeout=15).headers.get("x-selected-target")
    wait_until(lambda: served_by() == "healthy", timeout=5)  # the proxy serves the stored version
    results = []
    for _ in range(10):
        r = http("POST", f"{proxy.base}/v1/chat/completions", CHAT, {"Host": host, "X-Api-Key": cfg["key"]},
                 timeout=15)
        results.append((r.status, r.headers.get("x-gateway-attempts"), r.headers.get("x-selected-target")))
    assert all(s == 200 and t == "healthy" for s, _, t in results), results
    assert results[-1][1] == "openai:200", results  # the breaker took the broken target out

    def state():
        health = admin.ok("GET", f"/gateways/{cfg['gateway']['id']}/upstreams/{cfg['upstream']['id']}/health")
        return next(t for t in health["targets"] if t["target_id"] == "broken")

    opened = wait_until(lambda: state()["state"] == "open" and state(), timeout=3)
    assert "misconfigured" in opened["last_error"] and "pw" not in opened["last_error"]
    assert bad_mock.requests() == [] and bad_mock.stats()["total"] == 0
    assert "Traceback" not in proxy.log()


def test_a_stored_content_length_header_does_not_cut_the_body(stack, admin, proxy, subdomain, mock_factory):
    oa = mock_factory("openai-mock", "sk-openai-test")
    cfg = admin.guide_setup([openai_target(oa.port)], subdomain=subdomain)
    payload = {**cfg["upstream"], "targets": [openai_target(oa.port, headers={"Content-Length": "5"})]}
    r = admin.call("PUT", f"/gateways/{cfg['gateway']['id']}/upstreams/{cfg['upstream']['id']}", payload)
    assert r.status == 400 and "Content-Length" in r.json()["error"]
    _store_unvalidated(stack, cfg, [openai_target(oa.port, headers={"Content-Length": "5",
                                                                    "Transfer-Encoding": "chunked"}, id="framed")])
    host = f"{subdomain}.example.com"
    deadline = time.monotonic() + 5
    while True:  # until the proxy serves the stored version (its target id says so)
        r = http("POST", f"{proxy.base}/v1/chat/completions", CHAT, {"Host": host, "X-Api-Key": cfg["key"]})
        if r.headers.get("x-selected-target") == "framed" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.status == 200 and r.headers["x-selected-target"] == "framed", r.body
    sent = oa.requests()[-1]
    assert sent["body"] == {"model": "gpt-4", "messages": [{"role": "user", "content": "Hello!"}]}
    assert sent["headers"]["content-length"] != "5"
