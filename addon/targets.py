"""Where a target is and what goes with every call to it: origin, URL, credential headers, header policy.

Attempts (addon/attempt.py) and active probes (addon/probes.py) reach a target through the same functions, so
a probe goes exactly where traffic goes: same host check, same IPv6 brackets, same credentials. The URL is sent
as built (`UpstreamClient.send` uses `URL(..., encoded=True)`). See docs/architecture.md.
"""

from __future__ import annotations

from functools import lru_cache

from collections.abc import Mapping

import providers
from store.keys import KEY_PREFIX
from addon.ingress import header_items
from addon.upstream import HOP_BY_HOP
from providers import GatewayError
from store.models import Service, Target
from store.validation import host_problem

Origin = tuple[str, str, int]  # (scheme, host, port)


def endpoint_target(service: Service) -> Target:
    """An `endpoint` service as the one target it has: its fixed origin and path, untranslated, no credentials."""
    return Target.model_construct(id=service.id, host=service.host, port=service.port, protocol=service.protocol,
                                  path=service.path)


@lru_cache(maxsize=4096)
def _stored_host_problem(host: str) -> str | None:
    """host_problem for configured hosts (a bounded set): checked once, not on every request."""
    return host_problem(host)


def target_origin(target: Target) -> Origin:
    """(scheme, host, port) of a target. A stored host that is no bare name or IP address (a record written
    before the admin API checked hosts) raises GatewayError(502): for the dispatcher, a failed attempt."""
    if target.host:
        problem = _stored_host_problem(target.host)
        if problem:
            raise GatewayError(502, "api_error", f"target misconfigured: {problem}")
        scheme = target.protocol or "https"
        return scheme, target.host, target.port or (443 if scheme == "https" else 80)
    if target.provider:
        return providers.default_origin(target.provider)
    raise GatewayError(503, "unavailable", "A target has neither a provider nor a host.")


def origin_url(origin: Origin, path: str) -> str:
    """The URL of `path` (already escaped, query included) at `origin`; an IPv6 literal gets its brackets.

    A path must start with "/": anything else would run into the authority ("host:443@elsewhere/")."""
    if not path.startswith("/"):
        raise GatewayError(502, "api_error", "target misconfigured: a path must start with '/'")
    scheme, host, port = origin
    netloc = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{scheme}://{netloc}:{port}{path}"


def target_url(target: Target, path: str) -> str:
    """The URL of `path` at `target` (see `target_origin` and `origin_url` for what is refused)."""
    return origin_url(target_origin(target), path)


def credential_headers(target: Target) -> dict[str, str]:
    """The target's own headers and credentials, for calls the providers layer does not build (passthrough, probes)."""
    headers = {**(target.headers or {}),
               **providers.auth_headers(target.provider or "openai-compatible", target.credentials)}
    # Framing headers of a record stored before the admin API refused them: the gateway frames the request.
    return {k: v for k, v in headers.items()
            if not providers.is_framing_header(k)}


# Request headers never copied to an untranslated upstream call: hop-by-hop and framing ones (the body is sent
# decoded, so Content-Encoding goes too), the caller's gateway key, and Accept-Encoding (aiohttp negotiates).
_NOT_FORWARDED = HOP_BY_HOP | {"x-api-key", "x-tg-api-key", "accept-encoding"}


def passthrough_headers(caller_headers: Mapping[str, str], target: Target, gateway_key: str | None) -> dict[str, str]:
    """Caller headers minus hop-by-hop ones and the caller's gateway key (`routing.client_key`, computed once per
    request), plus the target's headers and credentials.

    An `Authorization` header is the caller's own (e.g. its provider key) unless it carries the gateway key or any
    gateway key (`aigw-…`: another gateway's key is no provider's credential either)."""
    headers = {}
    for k, v in header_items(caller_headers):  # one pass (mitmproxy's Headers.items() is quadratic)
        lk = k.lower()
        if lk in _NOT_FORWARDED or (lk == "authorization" and (
                (gateway_key and gateway_key in v) or KEY_PREFIX in v)):
            continue
        headers[k] = v
    headers.update(credential_headers(target))
    return headers
