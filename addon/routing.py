"""Request routing: from (Host, key, path, method) to the upstream that serves it.

Pure functions over the immutable store Snapshot, so every rule is unit-testable without a proxy. Failures are
raised as ``providers.GatewayError`` with the status codes of the proxy contract (401 key, 404 gateway/rule).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping

from addon.ingress import header_values
from providers import GatewayError
from store.keys import KEY_PREFIX, hash_key
from store.models import ApiKey, Gateway, Rule, Service, Target, Upstream
from store.snapshot import Snapshot


@dataclass(slots=True)  # not frozen: built per request (a frozen __init__ costs ~6x)
class Route:
    gateway: Gateway
    key: ApiKey
    rule: Rule
    service: Service
    upstream: Upstream | None  # None for an `endpoint` service (one fixed, untranslated target)
    presented_key: str = ""    # the gateway key the caller sent (never forwarded; read once, here)


KEY_HEADERS = ("x-tg-api-key", "x-api-key")  # X-TG-API-Key: what TrustGate's own guide sends
_KEY_FIELDS = (*KEY_HEADERS, "authorization")  # read in one pass (client_key)


def client_key(headers: Mapping[str, str]) -> str | None:
    """The caller's gateway key: X-TG-API-Key / X-Api-Key, else `Authorization: Bearer <key>`."""
    *keys, auth = header_values(headers, _KEY_FIELDS)
    for key in keys:
        if key and key.strip():
            return key.strip()
    scheme, _, value = (auth or "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def subdomain_of(host: str, base_domain: str = "") -> str | None:
    """`your-subdomain.example.com` → `your-subdomain`; a bare name, an IP or localhost names no gateway."""
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal
        return None
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    host = host.rstrip(".")
    if base_domain:
        base = base_domain.strip(".").lower()
        if host.endswith("." + base):
            label = host[: -len(base) - 1]
            return label if label and "." not in label else None
        return None
    if "." not in host or host.replace(".", "").isdigit():
        return None
    return host.split(".", 1)[0]


@dataclass(slots=True)  # not frozen: built per request (a frozen __init__ costs ~6x)
class Caller:
    """Who is asking: the gateway the Host (or else the key) names, and the caller's usable key of it."""
    gateway: Gateway
    key: ApiKey
    presented_key: str


def authenticate(snapshot: Snapshot, *, host: str, headers: Mapping[str, str], base_domain: str = "",
                 now: datetime | None = None) -> Caller:
    """Find the gateway and check the key; raise GatewayError(401/404) otherwise."""
    now = now or datetime.now(timezone.utc)
    label = subdomain_of(host, base_domain)
    gateway = snapshot.gateway_by_subdomain(label) if label else None

    presented = client_key(headers)
    if not presented:
        raise GatewayError(401, "authentication", "Missing API key: send it in X-Api-Key or Authorization: Bearer.",
                           code="invalid_api_key")
    key = snapshot.key_by_hash(hash_key(presented))
    if key is None or not key.usable_at(now):
        raise GatewayError(401, "authentication", "Invalid, expired or inactive API key.", code="invalid_api_key")
    if gateway is None:
        gateway = snapshot.gateway(key.gateway_id)
        if gateway is None:
            raise GatewayError(404, "not_found", "No gateway serves this host.", code="gateway_not_found")
    elif key.gateway_id != gateway.id:
        # A key of another gateway is as good as no key here.
        raise GatewayError(401, "authentication", "Invalid, expired or inactive API key.", code="invalid_api_key")
    if gateway.status != "active":
        raise GatewayError(404, "not_found", "This gateway is inactive.", code="gateway_not_found")
    return Caller(gateway=gateway, key=key, presented_key=presented)


def resolve(snapshot: Snapshot, *, host: str, headers: Mapping[str, str], path: str, method: str,
            base_domain: str = "", now: datetime | None = None) -> Route:
    """Find gateway, check the key, match the rule; raise GatewayError(401/404) otherwise."""
    caller = authenticate(snapshot, host=host, headers=headers, base_domain=base_domain, now=now)
    gateway, key, presented = caller.gateway, caller.key, caller.presented_key
    check_request_path(path)
    rule = snapshot.match_rule(gateway.id, path.split("?", 1)[0], method)
    if rule is None:
        raise GatewayError(404, "not_found", f"No rule of this gateway matches {method} {path.split('?', 1)[0]}.",
                           code="route_not_found")
    service = snapshot.service(rule.service_id)
    if service is None:
        raise GatewayError(503, "unavailable", "The rule's service no longer exists.")
    upstream = None
    if service.type == "upstream":
        upstream = snapshot.upstream(service.upstream_id)
        if upstream is None or not upstream.targets:
            raise GatewayError(503, "unavailable", "The service's upstream has no targets.")
    return Route(gateway=gateway, key=key, rule=rule, service=service, upstream=upstream, presented_key=presented)


class RouteCache:
    """`resolve`, remembered per snapshot: what a (Host, key, path, method) resolves to cannot change until the
    configuration does — but for the key's `usable_at` (it may expire), checked on every hit. Kept by the key's
    hash (no plaintext key is held), successes only (a flood of unknown keys adds nothing), at most MAX_ROUTES
    entries (then it starts over)."""

    MAX_ROUTES = 4096

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._routes: dict[tuple[str, str, str, str, str], Route] = {}

    def resolve(self, snapshot: Snapshot, *, host: str, headers: Mapping[str, str], path: str, method: str,
                base_domain: str = "", now: datetime | None = None) -> Route:
        presented = client_key(headers)
        if not presented:
            return resolve(snapshot, host=host, headers=headers, path=path, method=method, base_domain=base_domain,
                           now=now)
        if snapshot is not self._snapshot:
            self._snapshot, self._routes = snapshot, {}
        entry = (host, hash_key(presented), path, method, base_domain)
        hit = self._routes.get(entry)
        if hit is not None and hit.key.usable_at(now or datetime.now(timezone.utc)):
            return Route(hit.gateway, hit.key, hit.rule, hit.service, hit.upstream, presented)
        route = resolve(snapshot, host=host, headers=headers, path=path, method=method, base_domain=base_domain,
                        now=now)
        if len(self._routes) >= self.MAX_ROUTES:
            self._routes.clear()
        self._routes[entry] = Route(route.gateway, route.key, route.rule, route.service, route.upstream)
        return route


# What a request path may hold: RFC 3986 pchar and "/" (percent-escapes checked separately).
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
# A query is forwarded as is: visible ASCII without "#" (a fragment would be cut off on the way out).
_QUERY_CHARS = re.compile(r"[\x21-\x22\x24-\x7e]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Encoded "/", "\\", "%" and NUL: a provider that decodes them (once or twice) sees other segments than the
# ones matched.
_ENCODED_SEPARATOR = re.compile(r"%(2[Ff]|5[Cc]|25|00)")


def request_path_problem(path: str) -> str | None:
    """Why a request target (path and query) is refused, or None when it is forwarded as is.

    The rule is matched on the raw path and the same raw path goes upstream (never re-normalised), so every
    form a server could resolve differently from a plain prefix is refused rather than normalised: dot segments
    (also percent-encoded, any case), empty segments ("//"), backslashes, encoded "/", "\\", "%" or NUL, malformed
    escapes, and anything outside RFC 3986 path characters."""
    base, _, query = path.partition("?")
    if not base.startswith("/"):
        return "the request path must start with '/'"
    if not _PATH_CHARS.fullmatch(base) or not _QUERY_CHARS.fullmatch(query):
        return "the request path holds characters that must be percent-encoded (or a '#', a '\\' or whitespace)"
    if _BAD_ESCAPE.search(base):
        return "the request path holds a malformed percent-escape"
    if _ENCODED_SEPARATOR.search(base):
        return "the request path holds an encoded '/', '\\', '%' or NUL"
    segments = base.split("/")[1:]
    for i, segment in enumerate(segments):
        if segment == "" and i != len(segments) - 1:
            return "the request path holds an empty segment ('//')"
        if segment.lower().replace("%2e", ".") in (".", ".."):
            return "the request path holds a '.' or '..' segment"
    return None


def check_request_path(path: str) -> None:
    """Raise GatewayError(400) for a path that could reach a provider path its rule does not cover."""
    problem = request_path_problem(path)
    if problem:
        raise GatewayError(400, "invalid_request", f"Refused: {problem}.", code="invalid_path")


def map_model(requested: str | None, target: Target) -> str | None:
    """A requested model listed in the target's `models` is kept; any other (or none) becomes `default_model`."""
    if requested and requested in (target.models or ()):
        return requested
    return target.default_model or requested


def serves_model(target: Target, model: str) -> bool:
    """Whether a target names `model` (in `models`, or as its `default_model`)."""
    return model in (target.models or ()) or model == target.default_model


def for_model(targets: list[Target], model: str | None) -> list[Target]:
    """The plan for a request of `model`, in plan order: a target that does not name the model is dropped when
    another target *of its provider* does (that provider's own model is meant: an upstream mixing chat and
    embedding models sends each request to the targets of its model). Targets of other providers stay candidates
    with their default model, as the TrustGate guide balances `gpt-4` over OpenAI and Anthropic. Unchanged when no
    target names the model, or no model was asked for."""
    if not model:
        return targets
    naming = {t.provider for t in targets if serves_model(t, model)}
    if not naming:
        return targets
    return [t for t in targets if t.provider not in naming or serves_model(t, model)]


def _without_gateway_keys(query: str) -> str:
    """The query minus any parameter whose value is a gateway key (a caller that put its key in `?key=`): a
    gateway key never reaches a provider."""
    if KEY_PREFIX not in query and "aigw%2d" not in query.lower():
        return query
    kept = [p for p in query.split("&") if not unquote_plus(p.partition("=")[2]).strip().startswith(KEY_PREFIX)]
    return "&".join(kept)


def forwarded_path(path: str, rule: Rule, target_path: str | None) -> str:
    """Path for an untranslated (provider-less) target: optional strip of the rule prefix, then the target's path.

    The caller's path is kept byte for byte (it passed `check_request_path`): no decoding, no normalising, so the
    path the rule matched is the path that goes out. A query in the target's path comes first, then the caller's."""
    base, _, query = path.partition("?")
    query = _without_gateway_keys(query)
    if rule.strip_path:
        prefix = rule.path.rstrip("/")
        base = base[len(prefix):] if base.startswith(prefix) else base
    if target_path:
        target_base, _, target_query = target_path.partition("?")
        base = target_base.rstrip("/") + ("/" + base.lstrip("/") if base.strip("/") else "")
        query = "&".join(q for q in (target_query, query) if q)
    if not base.startswith("/"):
        base = "/" + base
    return base + ("?" + query if query else "")
