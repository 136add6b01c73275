"""Routing rules over a fake snapshot: gateway by Host, else by key; key checks; longest rule; model mapping."""

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace as NS

import pytest
from mitmproxy import http

from addon import routing
from providers import GatewayError
from store.keys import hash_key
from store.models import ApiKey

NOW = datetime(2026, 11, 25, tzinfo=timezone.utc)


class FakeSnap:
    def __init__(self):
        self.gws = {"g1": NS(id="g1", subdomain="alpha", status="active"),
                    "g2": NS(id="g2", subdomain="beta", status="active")}
        def key(kid, gid, plain, **kw):
            return ApiKey(id=kid, gateway_id=gid, name=kid, key_hash=hash_key(plain), key_prefix=plain[:4], **kw)

        self.keys = {hash_key("k1"): key("key1", "g1", "k1"),
                     hash_key("k2"): key("key2", "g2", "k2"),
                     hash_key("old"): key("key3", "g1", "old", expires_at=NOW - timedelta(1)),
                     hash_key("off"): key("key4", "g1", "off", active=False)}
        self.rules = {"g1": [NS(path="/v1", service_id="s1", methods=["POST"], strip_path=False)]}
        self.services = {"s1": NS(id="s1", type="upstream", upstream_id="u1")}
        self.upstreams = {"u1": NS(id="u1", targets=[NS(id="t1")])}

    def gateway(self, gid):
        return self.gws.get(gid)

    def gateway_by_subdomain(self, label):
        return next((g for g in self.gws.values() if g.subdomain == label), None)

    def key_by_hash(self, h):
        return self.keys.get(h)

    def match_rule(self, gid, path, method):
        for r in self.rules.get(gid, []):
            if (path == r.path or path.startswith(r.path + "/")) and method in r.methods:
                return r
        return None

    def service(self, sid):
        return self.services.get(sid)

    def upstream(self, uid):
        return self.upstreams.get(uid)


def resolve(host, headers, path="/v1/chat/completions", method="POST", **kw):
    return routing.resolve(FakeSnap(), host=host, headers=headers, path=path, method=method, now=NOW, **kw)


def test_gateway_by_host_subdomain_and_by_key():
    assert resolve("alpha.example.com", {"x-api-key": "k1"}).gateway.id == "g1"
    assert resolve("127.0.0.1:8081", {"authorization": "Bearer k1"}).gateway.id == "g1"
    assert resolve("localhost", {"x-api-key": "k1"}).upstream.id == "u1"


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "nope"}, {"x-api-key": "old"}, {"x-api-key": "off"},
                                     {"authorization": "Basic k1"}, {"x-api-key": "k2"}])
def test_bad_keys_are_401(headers):
    with pytest.raises(GatewayError) as err:
        resolve("alpha.example.com", headers)
    assert err.value.status == 401


def test_no_rule_is_404():
    with pytest.raises(GatewayError) as err:
        resolve("alpha.example.com", {"x-api-key": "k1"}, path="/v2/chat")
    assert err.value.status == 404
    with pytest.raises(GatewayError) as err:
        resolve("alpha.example.com", {"x-api-key": "k1"}, method="GET")
    assert err.value.status == 404


def test_subdomain_with_base_domain():
    assert routing.subdomain_of("alpha.gw.example.com", "gw.example.com") == "alpha"
    assert routing.subdomain_of("alpha.other.com", "gw.example.com") is None
    assert routing.subdomain_of("your-subdomain.example.com:8081") == "your-subdomain"
    assert routing.subdomain_of("10.0.0.1") is None


def test_model_mapping():
    t = NS(models=["gpt-4", "gpt-3.5-turbo"], default_model="gpt-4")
    assert routing.map_model("gpt-3.5-turbo", t) == "gpt-3.5-turbo"
    assert routing.map_model("claude-x", t) == "gpt-4"
    assert routing.map_model(None, t) == "gpt-4"
    assert routing.map_model("m", NS(models=[], default_model=None)) == "m"


def test_forwarded_path_strip():
    rule = NS(path="/ai", strip_path=True)
    assert routing.forwarded_path("/ai/v1/x?a=1", rule, "/base") == "/base/v1/x?a=1"
    assert routing.forwarded_path("/ai/v1/x", NS(path="/ai", strip_path=False), None) == "/ai/v1/x"


def test_trustgate_key_header_is_accepted_before_a_jwt_bearer():
    # TrustGate's guide sends X-TG-API-Key together with `Authorization: Bearer <JWT>`.
    route = resolve("alpha.example.com", {"x-tg-api-key": "k1", "authorization": "Bearer some.jwt.token"})
    assert route.gateway.id == "g1"


def test_gateway_keys_never_reach_a_provider_in_the_query():
    """Fuzz finding: `?key=<gateway key>` on an untranslated call was forwarded to the provider."""
    rule = NS(path="/pt", strip_path=False)
    assert routing.forwarded_path("/pt/x?key=aigw-secret&alt=json", rule, None) == "/pt/x?alt=json"
    assert routing.forwarded_path("/pt/x?a=1&api_key=aigw%2Dsecret", rule, None) == "/pt/x?a=1"
    assert routing.forwarded_path("/pt/x?key=provider-key", rule, None) == "/pt/x?key=provider-key"


def test_no_gateway_key_in_forwarded_authorization():
    """Fuzz finding: another gateway's key in Authorization was forwarded when the caller authenticated with
    X-Api-Key."""
    from addon.targets import passthrough_headers
    from store.models import Target

    target = Target(id="t", host="127.0.0.1", port=1, protocol="http")
    out = passthrough_headers({"x-api-key": "aigw-mine", "authorization": "Bearer aigw-other", "x-keep": "1"},
                              target, "aigw-mine")
    assert "authorization" not in {k.lower() for k in out} and out["x-keep"] == "1"
    out = passthrough_headers({"x-api-key": "aigw-mine", "authorization": "Bearer sk-own-provider-key"},
                              target, "aigw-mine")
    assert out["authorization"] == "Bearer sk-own-provider-key"


@pytest.mark.parametrize("fields,key", [
    ([(b"X-Api-Key", b"k1")], "k1"),
    ([(b"x-api-key", b"k1"), (b"X-API-KEY", b"k2")], "k1, k2"),  # repeated fields fold, as Headers.get does
    ([(b"Authorization", b"Bearer  jwt "), (b"X-TG-API-Key", b" k3 ")], "k3"),
    ([(b"X-Api-Key", b"  "), (b"authorization", b"bearer tok")], "tok"),
    ([(b"Authorization", b"Basic abc")], None),
    ([(b"Authorization", b"Bearer")], None),
    ([], None),
])
def test_client_key_reads_headers_and_mappings_alike(fields, key):
    h = http.Headers(fields)
    assert routing.client_key(h) == key
    assert routing.client_key({k.lower(): v for k, v in h.items()}) == key  # a plain mapping: its own get


# -- RouteCache: resolve remembered per snapshot -----------------------------------------------------------------
class CountingSnap(FakeSnap):
    def __init__(self):
        super().__init__()
        self.lookups = 0

    def key_by_hash(self, h):
        self.lookups += 1
        return super().key_by_hash(h)


def test_route_cache_answers_like_resolve_and_looks_up_once():
    cache, snap = routing.RouteCache(), CountingSnap()
    args = dict(host="alpha.example.com", path="/v1/chat/completions", method="POST", now=NOW)
    first = cache.resolve(snap, headers={"x-api-key": "k1"}, **args)
    again = cache.resolve(snap, headers={"authorization": "Bearer k1"}, **args)
    plain = routing.resolve(snap, headers={"x-api-key": "k1"}, **args)
    assert (first.gateway, first.key, first.rule, first.service, first.upstream) == \
           (again.gateway, again.key, again.rule, again.service, again.upstream) == \
           (plain.gateway, plain.key, plain.rule, plain.service, plain.upstream)
    assert first.presented_key == again.presented_key == "k1"
    assert snap.lookups == 2  # the cache's first resolve and the plain one: the second request was a hit
    assert all("k1" not in repr(k) for k in cache._routes) and all(r.presented_key == "" for r in cache._routes.values())


def test_route_cache_rechecks_the_key_in_time_and_starts_over_with_a_new_snapshot():
    cache, snap = routing.RouteCache(), CountingSnap()
    soon = NOW + timedelta(hours=1)
    snap.keys[hash_key("k1")] = snap.keys[hash_key("k1")].model_copy(update={"expires_at": soon})
    args = dict(host="alpha.example.com", headers={"x-api-key": "k1"}, path="/v1/chat/completions", method="POST")
    assert cache.resolve(snap, now=NOW, **args).key.id == "key1"
    with pytest.raises(GatewayError) as err:
        cache.resolve(snap, now=soon + timedelta(seconds=1), **args)  # cached, but the key expired since
    assert err.value.status == 401
    other = CountingSnap()
    del other.keys[hash_key("k1")]
    with pytest.raises(GatewayError):
        cache.resolve(other, now=NOW, **args)  # another snapshot: nothing of the old one is used
    assert other.lookups == 1


def test_route_cache_keeps_successes_only_and_is_bounded(monkeypatch):
    cache, snap = routing.RouteCache(), CountingSnap()
    for bad in ("nope", "old", "off"):
        with pytest.raises(GatewayError):
            cache.resolve(snap, host="alpha.example.com", headers={"x-api-key": bad}, path="/v1/x", method="POST",
                          now=NOW)
    assert not cache._routes
    monkeypatch.setattr(routing.RouteCache, "MAX_ROUTES", 3)
    for i in range(7):
        cache.resolve(snap, host="alpha.example.com", headers={"x-api-key": "k1"}, path=f"/v1/p{i}", method="POST",
                      now=NOW)
        assert len(cache._routes) <= 3
