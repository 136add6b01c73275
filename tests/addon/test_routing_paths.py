"""Paths: the request path a rule matches is exactly the path that goes upstream; the client's model cannot
change the upstream path; a target that cannot be called is a failed attempt, never a 500.

Policy (addon/routing.request_path_problem): refuse, do not normalise. Dot segments (also %2e, any case), empty
segments, backslashes, encoded "/", "\\", "%" or NUL, malformed escapes and non-path characters are a 400.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace as NS

import pytest
from aiohttp import web

import providers
from addon import attempt, routing
from addon.attempt import AttemptRequest, Inbound
from addon.dispatch import Dispatcher, Settings
from addon.live import LiveConfig
from addon.relay import Relay
from addon.targets import credential_headers
from addon.upstream import Attempt, UpstreamClient
from aigw.mock import MockProvider
from providers import GatewayError, TargetSpec
from store import Store
from store.health_file import target_key
from store.keys import hash_key
from store.models import ApiKey, Failover, Gateway, Rule, Service, Target, Upstream

# -------------------------------------------------------------------------------------------- request paths
ESCAPES = [
    "/v1/chat/completions/../../models", "/v1/chat/completions/..", "/v1/chat/completions/%2e%2e/%2E%2e/models",
    "/v1/chat/completions/.%2E/models", "/v1/chat/completions/%2e./models", "/v1/chat/completions/./x",
    "/v1/chat/completions/%2e/x", "/v1/chat/completions/..%2f..%2fmodels", "/v1/chat/completions%2F..%2Fmodels",
    "/v1/chat/completions\\..\\..\\models", "/v1/chat/completions/..%5c..%5cmodels",
    "/v1/chat/completions//../../models", "//v1/chat/completions", "/v1//chat/completions",
    "/v1/chat/completions/%252e%252e/models", "/v1/chat/completions/%00", "/v1/chat/completions/%zz",
    "/v1/chat/completions/%2", "/v1/chat/completions#/../../models", "/v1/chat/completions?x#y",
    "/v1/chat/completions x", "/v1/chat/completions\t", "/v1/chat/compl\u00e9tions", "v1/chat/completions", "*",
    "/v1/chat/completions?a=b c",
]
PLAIN = ["/v1/chat/completions", "/v1/messages?beta=true", "/v1/", "/", "/v1/models/gpt-4o", "/v1/x%41y",
         "/v1beta/models/gemini-2.0-flash:generateContent?alt=sse", "/v1/a..b/...c", "/v1/.well-known",
         "/v1/chat/completions?next=../../x&p=%2F", "/v1/files/file-abc~1!$&'()*+,;=:@"]


@pytest.mark.parametrize("path", ESCAPES)
def test_paths_a_server_could_resolve_elsewhere_are_refused(path):
    assert routing.request_path_problem(path)
    with pytest.raises(GatewayError) as info:
        routing.check_request_path(path)
    assert info.value.status == 400 and info.value.code == "invalid_path"


@pytest.mark.parametrize("path", PLAIN)
def test_ordinary_paths_pass(path):
    assert routing.request_path_problem(path) is None


class Snap:
    def __init__(self):
        self.gw = NS(id="g1", subdomain="alpha", status="active")
        from store.models import ApiKey

        self.key = ApiKey(id="k", gateway_id="g1", name="k", key_hash="h", key_prefix="aigw")
        self.rule = Rule.model_validate({"path": "/v1/chat/completions", "service_id": "s1", "methods": ["POST"]})

    def gateway(self, gid):
        return self.gw if gid == "g1" else None

    def gateway_by_subdomain(self, label):
        return self.gw if label == "alpha" else None

    def key_by_hash(self, h):
        return self.key if h == hash_key("k1") else None

    def match_rule(self, gid, path, method):
        return self.rule if self.rule.matches(path, method) else None

    def service(self, sid):
        return NS(id="s1", type="upstream", upstream_id="u1")

    def upstream(self, uid):
        return NS(id="u1", targets=[NS(id="t1")])


def resolve(path, headers=None):
    headers = {"x-api-key": "k1"} if headers is None else headers
    return routing.resolve(Snap(), host="alpha.example.com", headers=headers, path=path,
                           method="POST")


def test_resolve_refuses_before_matching_and_after_the_key_check():
    assert resolve("/v1/chat/completions").rule.path == "/v1/chat/completions"
    with pytest.raises(GatewayError) as info:
        resolve("/v1/chat/completions/../../models")
    assert info.value.status == 400
    with pytest.raises(GatewayError) as info:  # no key: 401 first, whatever the path
        resolve("/v1/chat/completions/../../models", headers={})
    assert info.value.status == 401


def test_forwarded_path_is_byte_for_byte():
    rule = NS(path="/v1", strip_path=False)
    assert routing.forwarded_path("/v1/x%41y?q=%2F", rule, None) == "/v1/x%41y?q=%2F"
    strip = NS(path="/ai", strip_path=True)
    assert routing.forwarded_path("/ai/v1/x?a=1", strip, "/base") == "/base/v1/x?a=1"
    assert routing.forwarded_path("/ai/v1/x?a=1", strip, "/base?key=k") == "/base/v1/x?key=k&a=1"
    assert routing.forwarded_path("/ai", strip, "/base?key=k") == "/base?key=k"


# ------------------------------------------------------------------------------------------ model in paths
def canon(model, stream=False, ingress="openai"):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    if ingress == "anthropic":
        body["max_tokens"] = 5
    return providers.parse_request(ingress, json.dumps(body).encode())


@pytest.mark.parametrize("model", ["../../_mock/faults?", "a/b", "x#y", "x?y", "%2e%2e", "..", ".", "a%2Fb",
                                   "a b", "a\nb", "m" * 257, "caf\u00e9", "a\\b", "-x"])
@pytest.mark.parametrize("provider", ["gemini", "azure"])
def test_a_model_that_becomes_a_path_segment_must_be_a_model_id(provider, model):
    spec = TargetSpec(provider=provider, model=None, credentials={"api_key": "k"})
    with pytest.raises(GatewayError) as info:
        providers.build_upstream_request(canon(model), spec)
    assert info.value.status == 400 and info.value.param == "model"


@pytest.mark.parametrize("provider, model, path", [
    ("gemini", "gemini-2.0-flash", "/v1beta/models/gemini-2.0-flash:generateContent"),
    ("gemini", "gemini-exp-1206", "/v1beta/models/gemini-exp-1206:generateContent"),
    ("gemini", "tuned_model.v2", "/v1beta/models/tuned_model.v2:generateContent"),
    ("azure", "gpt-4o-deploy", "/openai/deployments/gpt-4o-deploy/chat/completions?api-version=2024-10-21"),
    ("azure", "dep:1@x+y~z", "/openai/deployments/dep:1@x+y~z/chat/completions?api-version=2024-10-21"),
])
def test_plausible_models_make_the_expected_path(provider, model, path):
    up = providers.build_upstream_request(canon(model), TargetSpec(provider=provider, model=None,
                                                                   credentials={"api_key": "k"}))
    assert up.path == path


@pytest.mark.parametrize("model", ["meta-llama/Llama-3.1-8B-Instruct", "llama3:8b", "openai/gpt-4o:free",
                                   "accounts/fireworks/models/llama-v3-70b", "anthropic.claude-3-5-sonnet-v1:0"])
def test_models_in_the_body_keep_slashes_and_colons(model):
    up = providers.build_upstream_request(canon(model), TargetSpec(provider="openai-compatible", model=None))
    assert up.path == "/v1/chat/completions" and json.loads(up.body)["model"] == model


@pytest.mark.parametrize("model", ["a b", "a\nb", "m" * 257, "caf\u00e9"])
def test_implausible_models_are_refused_for_every_provider(model):
    with pytest.raises(GatewayError) as info:
        providers.build_upstream_request(canon(model), TargetSpec(provider="openai", model=None))
    assert info.value.status == 400


def test_a_gemini_path_without_the_placeholder_ignores_the_model_shape():
    spec = TargetSpec(provider="gemini", model=None, path="/v1beta/models/fixed:generateContent")
    assert providers.build_upstream_request(canon("x/y"), spec).path == "/v1beta/models/fixed:generateContent"


def test_azure_api_version_is_escaped():
    spec = TargetSpec(provider="azure", model="d", api_version="2024&x=1#f")
    assert providers.build_upstream_request(canon("d"), spec).path.endswith("?api-version=2024%26x%3D1%23f")


def test_framing_headers_of_a_stored_target_are_not_sent():
    spec = TargetSpec(provider="anthropic", model="m", headers={"Content-Length": "5", "Host": "evil",
                                                                "Transfer-Encoding": "chunked", "X-Keep": "1",
                                                                "Proxy-Authorization": "x"},
                      credentials={"header_name": "Connection", "header_value": "close"})
    headers = {k.lower() for k in providers.build_upstream_request(canon("m", ingress="anthropic"), spec).headers}
    assert "x-keep" in headers and "anthropic-version" in headers
    assert not headers & {"content-length", "host", "transfer-encoding", "proxy-authorization", "connection"}
    t = Target.model_construct(headers={"Content-Length": "5", "X-Keep": "1"})  # stored before headers were checked
    assert credential_headers(t) == {"X-Keep": "1"}


# ----------------------------------------------------------------------------------- the URL that goes out
async def test_upstream_url_is_sent_exactly_as_built():
    seen = []

    async def handler(request):
        seen.append(request.raw_path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    client = UpstreamClient()
    try:
        for raw in ["/v1/x%41y?q=%2F&r=a%20b", "/v1/models/%7Efoo"]:
            attempt = Attempt(method="GET", url=f"http://127.0.0.1:{port}{raw}", headers={}, body=b"", stream=False,
                              connect_timeout=2, headers_timeout=2, first_token_timeout=2, idle_timeout=2)
            resp = await client.send(attempt)
            await resp.read()
            resp.release()
            assert seen[-1] == raw
    finally:
        await client.close()
        await runner.cleanup()


# ------------------------------------------------------------------------ a target that cannot be called
class RecordingClient:
    def __init__(self, exc=None):
        self.attempts: list[Attempt] = []
        self.exc = exc

    async def send(self, attempt):
        self.attempts.append(attempt)
        raise self.exc or OSError("refused")


def attempt_once(client, target, provider="openai", model="gpt-4"):
    rule = Rule.model_validate({"path": "/v1", "service_id": "s1"})
    inbound = Inbound(method="POST", path="/v1/chat/completions", headers={}, body=b"{}", rule=rule,
                      canon=canon(model) if provider else None, gateway_key=None)
    return attempt.once(AttemptRequest(target, target_key("u1", target.id), inbound, Failover(), 10.0), client)


def target(**kw):
    """A target as the snapshot may hold it: stored before the admin API checked hosts, paths and ids."""
    fields = dict(id="t1", provider="openai", host="127.0.0.1", port=80, protocol="http",
                  credentials={"api_key": "sk-secret"})
    fields.update(kw)
    return Target.model_construct(**fields)


@pytest.mark.parametrize("host", ["127.0.0.1:45505/_mock/stats#", "user:pw@127.0.0.1", "a" * 300, "h\r\nX: y"])
async def test_a_stored_bad_host_is_a_failed_attempt_and_never_sent(host, caplog):
    client = RecordingClient()
    with caplog.at_level(logging.WARNING, "aigw.dispatch"):
        outcome = await attempt_once(client, target(id=f"bad-{len(host)}-{host[:3]}", host=host))
        again = await attempt_once(client, target(id=f"bad-{len(host)}-{host[:3]}", host=host))
    assert client.attempts == []
    assert (outcome.kind, outcome.reason, again.reason) == ("failure", "connect", "connect")
    assert "target misconfigured" in outcome.error.message
    logged = [r for r in caplog.records if "cannot be called" in r.getMessage()]
    assert len(logged) == 1  # once, not per request
    assert "pw" not in logged[0].getMessage() and "sk-secret" not in logged[0].getMessage()


async def test_a_stored_bad_target_path_is_a_failed_attempt():
    client = RecordingClient()
    outcome = await attempt_once(client, target(id="badpath", path="/v1/../admin"))
    assert client.attempts == [] and outcome.reason == "connect"


async def test_an_http_client_refusal_is_a_failed_attempt():
    client = RecordingClient(exc=ValueError("Newline or carriage return character detected"))
    outcome = await attempt_once(client, target(id="refused"))
    assert len(client.attempts) == 1 and (outcome.kind, outcome.reason) == ("failure", "connect")


async def test_a_target_without_origin_is_a_failed_attempt_not_a_503():
    outcome = await attempt_once(RecordingClient(), target(id="nohost", provider="azure", host=None), "azure")
    assert outcome.reason == "connect"


async def test_ipv6_literals_are_bracketed_in_the_url():
    client = RecordingClient()
    await attempt_once(client, target(id="v6", host="::1", port=8080))
    await attempt_once(client, target(id="v6b", host="[::1]", port=8080))
    assert [a.url for a in client.attempts] == ["http://[::1]:8080/v1/chat/completions"] * 2


async def test_a_bad_model_is_still_the_callers_400():
    with pytest.raises(GatewayError) as info:
        await attempt_once(RecordingClient(), target(id="gm", provider="gemini"), "gemini", model="../x")
    assert info.value.status == 400


# ------------------------------------------------------------- whole dispatcher: failover past a broken target
@pytest.fixture
async def world(tmp_path):
    mock = MockProvider(api_key="sk-good", name="good")
    port = await mock.start()
    store = Store(tmp_path / "aigw.json")
    gw = store.create("gateways", Gateway.from_payload({"name": "g", "subdomain": "alpha"}))
    good = {"id": "good", "provider": "openai", "host": "127.0.0.1", "port": port, "protocol": "http",
            "priority": 2, "credentials": {"api_key": "sk-good"}}
    upstreams = {}
    for name, broken in {"host": {"host": f"127.0.0.1:{port}/_mock/stats#"},
                         "userinfo": {"host": "user:pw@127.0.0.1"}, "long": {"host": "a" * 300},
                         "bug": {"host": "127.0.0.1"}}.items():
        bad = {"id": "broken", "provider": "openai", "port": port, "protocol": "http",
               "credentials": {"api_key": "sk-good"}, **broken}
        # Stored as before validation existed: plain model validation, no admin input context.
        up = store.create("upstreams", Upstream.model_validate(
            {"name": name, "targets": [bad, good], "health_checks": {"threshold": 3, "interval": 60}}),
            gateway_id=gw.id)
        svc = store.create("services", Service.from_payload({"name": name, "upstream_id": up.id}), gateway_id=gw.id)
        store.create("rules", Rule.from_payload({"path": f"/{name}", "service_id": svc.id}), gateway_id=gw.id)
        upstreams[name] = up
    store.create("keys", ApiKey.model_validate({"name": "k", "key_hash": hash_key("k1"), "key_prefix": "k1"}),
                 gateway_id=gw.id)
    live = LiveConfig(store.path)
    client = UpstreamClient()
    d = Dispatcher(live, client, Relay(), Settings())
    yield NS(d=d, live=live, mock=mock, upstreams=upstreams)
    await client.close()
    await mock.stop()


BODY = b'{"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}'


async def ask(d, name):
    return await d.handle(method="POST", path=f"/{name}/v1/chat/completions", host="alpha.example.com",
                          headers={"x-api-key": "k1", "content-type": "application/json"}, body=BODY)


@pytest.mark.parametrize("name", ["host", "userinfo", "long"])
async def test_a_broken_stored_target_fails_over_and_opens_its_breaker(world, name):
    replies = [await ask(world.d, name) for _ in range(10)]
    assert [r.status for r in replies] == [200] * 10
    assert [r.attempts for r in replies[:3]] == [["openai:connect", "openai:200"]] * 3
    assert all(r.attempts == ["openai:200"] for r in replies[3:])  # the breaker opened after its threshold
    key = f"{world.upstreams[name].id}/broken"
    assert world.live.health.state(key) == "open"
    assert world.mock.stats()["total"] == 10  # every request reached the good target's chat path only
    assert {r["path"] for r in world.mock.requests()} == {"/v1/chat/completions"}


async def test_an_unexpected_error_in_an_attempt_is_a_failed_attempt(world, monkeypatch, caplog):
    real = attempt.once

    async def flaky(req, client):
        if req.target.id == "broken":
            raise RuntimeError("bug with sk-good inside")
        return await real(req, client)

    monkeypatch.setattr(attempt, "once", flaky)
    with caplog.at_level(logging.WARNING, "aigw.dispatch"):
        replies = [await ask(world.d, "bug") for _ in range(2)]
    assert [r.status for r in replies] == [200, 200]
    assert replies[0].attempts == ["openai:connect", "openai:200"]
    assert len([r for r in caplog.records if "cannot be called" in r.getMessage()]) == 1
    assert world.live.health.snapshot(f"{world.upstreams['bug'].id}/broken")["failures"] == 2
