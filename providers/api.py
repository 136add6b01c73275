"""The public functions of providers/ (see __init__): lookups in the registry, plus the rules every provider
shares (model ids, header order and framing headers, which exceptions become which errors)."""
from __future__ import annotations

import re
import time
from typing import Any, Callable, Mapping

from . import registry
from .canonical import CanonicalRequest, IdFactory, Usage, default_new_id, dumps
from .jsoncodec import loads
from .errors import GatewayError, retry_headers
from .interface import Backend, Reply, TargetSpec, UpstreamRequest
from .jsonsafe import loads_request
from .streaming import StreamTranslator

_JSON = {"content-type": "application/json"}
# What a translator raises on a shape its field checks did not anticipate.
_SHAPE_ERRORS = (TypeError, AttributeError, KeyError, ValueError, IndexError)

# A model id as it may appear anywhere (the request body): visible ASCII, bounded. Real ids hold "/" and ":"
# (`meta-llama/Llama-3.1-8B`, `llama3:8b`, `openai/gpt-4o:free`).
_MODEL_ID = re.compile(r"[\x21-\x7e]{1,256}")
# Framing and hop-by-hop headers: the gateway frames the upstream request itself; a target's header or
# credential with one of these names (a record stored before the admin API refused them) is dropped.
# The one list: the admin API refuses these names (store/models.py), the addon never copies them between
# connections (addon/upstream.py, addon/targets.py).
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "host", "upgrade",
                             "te", "trailer", "trailers", "content-encoding"})


def is_framing_header(name: str) -> bool:
    """A framing or hop-by-hop header (`FRAMING_HEADERS` or `proxy-*`): the gateway sets those itself."""
    name = name.lower()
    return name in FRAMING_HEADERS or name.startswith("proxy-")


# ------------------------------------------------------------------ requests
def ingress_for_path(path: str) -> str | None:
    return registry.ingress_for_path(path)


def parse_request(ingress: str, body: bytes, headers: Mapping[str, str] | None = None) -> CanonicalRequest:
    """`headers` are the client's request headers (optional): the ones its format forwards
    (Client.forwarded_headers) are kept on the request and sent to same-family targets."""
    obj = loads_request(body)  # strict: NaN/Infinity, nesting > 128, lone surrogates are 400s
    if not isinstance(obj, dict):
        raise GatewayError(400, "invalid_request", "request body must be a JSON object")
    client = registry.client(ingress)
    try:
        req = client.parse_request(obj)
    except _SHAPE_ERRORS as e:
        # A shape the field checks did not anticipate: still the client's fault, never a 500.
        raise GatewayError(400, "invalid_request", f"malformed request body: {e}") from None
    wanted = client.forwarded_headers
    if headers is not None and wanted:  # (not `if headers`: len() of mitmproxy's Headers folds every name)
        # One pass over the fields: mitmproxy's Headers.items() rescans every field per name (quadratic).
        fields = getattr(headers, "fields", None)
        pairs = (((k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                  for k, v in fields if k.decode("latin-1").lower() in wanted)
                 if fields is not None else headers.items())
        for k, v in pairs:
            lk = k.lower()
            if lk in wanted:  # repeated fields fold with ", ", as Headers.items() does
                req.client_headers[lk] = f"{req.client_headers[lk]}, {v}" if lk in req.client_headers else v
    return req


def auth_headers(provider: str, credentials: Any) -> dict[str, str]:
    """The auth header for a target's credentials — a plain API key, or `{header_name, header_value}` /
    `{api_key}` as a mapping or the store's model (also used by the addon for passthrough and probes)."""
    if isinstance(credentials, str):
        credentials = {"api_key": credentials}
    return registry.backend_or_generic(provider).auth_headers(credentials)


def checked_model(model: str | None) -> str:
    """The model an upstream request names: present and a plausible id, else the caller's 400."""
    if not model:
        raise GatewayError(400, "invalid_request", "no model given and the target has no default model", param="model")
    if not _MODEL_ID.fullmatch(model):
        raise GatewayError(400, "invalid_request", f"model {model[:80]!r} is not a valid model id (visible ASCII "
                           "characters, at most 256)", param="model", code="invalid_model")
    return model


def upstream_headers(backend: Backend, target: TargetSpec, client_headers: Mapping[str, str] | None = None
                     ) -> dict[str, str]:
    """The headers of a JSON request to `backend`: content type, auth, version headers, the client's forwarded
    ones (same family only), then the target's own (which replace a version header of the same name); framing
    headers are never taken from configuration."""
    headers = {"content-type": "application/json"}
    headers.update(backend.auth_headers(target.credentials))
    headers.update(backend.version_headers)
    if client_headers:
        headers.update(client_headers)
    for k, v in (target.headers or {}).items():
        if k.lower() in backend.version_headers:
            headers.pop(k.lower(), None)
        headers[k] = v
    for k in [k for k in headers if is_framing_header(k)]:
        del headers[k]
    return headers


def build_upstream_request(req: CanonicalRequest, target: TargetSpec) -> UpstreamRequest:
    provider = target.provider
    backend, same_family = registry.route(req.ingress, provider)
    model = checked_model(target.model or req.model)
    if same_family is None:
        registry.client(req.ingress).check_translatable(req, provider)  # 400: not for this target
    try:
        body = (same_family if same_family is not None else backend).build_body(req, model, target)
    except _SHAPE_ERRORS as e:
        raise GatewayError(400, "invalid_request", f"request cannot be translated for {provider}: {e}") from None
    headers = upstream_headers(backend, target, req.client_headers if same_family is not None else None)
    if req.stream:
        headers["accept"] = "text/event-stream"
        headers["accept-encoding"] = "identity"
    path = same_family.path(backend, req, target, model) if same_family is not None else \
        backend.path(req, target, model)
    return UpstreamRequest("POST", path, headers, dumps(body), req.stream)


def default_origin(provider: str) -> tuple[str, str, int]:
    backend = registry.BACKENDS.get(provider)
    if backend is None:
        raise GatewayError(503, "unavailable", f"{provider} target needs host")
    return backend.default_origin()


# ------------------------------------------------------------------ responses
def error_reply(ingress: str | None, err: GatewayError) -> Reply:
    """An error in the caller's format; `ingress` None (a path naming no format): the default ingress's."""
    headers = dict(_JSON)
    if err.retry_after:
        headers["retry-after"] = str(err.retry_after)
    return Reply(err.status, headers, registry.error_client(ingress).error_body(err))


def translate_response(req: CanonicalRequest, provider: str, status: int, headers: Mapping[str, str] | None,
                       body: bytes, *, now: Callable[[], float] | None = None,
                       new_id: IdFactory | None = None) -> Reply:
    backend, same_family = registry.route(req.ingress, provider)
    new_id = new_id or default_new_id
    if status >= 400 or status < 200:
        err = backend.parse_error(status, body)
        if same_family is not None and same_family.verbatim_error(body):
            out_body = body  # already the client's format: keep request_id and wording verbatim
        else:
            out_body = registry.error_client(req.ingress).error_body(err)
        return Reply(err.status, {**_JSON, **retry_headers(headers)}, out_body)
    try:
        obj = loads(body)
    except (ValueError, UnicodeDecodeError):
        raise GatewayError(502, "api_error", f"{provider} returned a response that is not valid JSON") from None
    # What the provider names as the serving model: read before a translation fills in the requested one.
    model = backend.model_of(obj)
    if same_family is not None:
        out_body = same_family.response_body(obj, body, now or time.time)
        return Reply(status, dict(_JSON), out_body, same_family.usage_of(backend, obj), model)
    try:
        resp = backend.parse_response(obj, req, new_id)
    except _SHAPE_ERRORS:
        raise GatewayError(502, "api_error", f"{provider} returned a response of an unexpected shape") from None
    out = registry.client(req.ingress).render_response(resp, req, now or time.time, new_id)
    return Reply(status, dict(_JSON), dumps(out), resp.usage, model)


def usage_from_body(provider: str, body: bytes) -> Usage | None:
    """The usage in a successful JSON answer of `provider`'s family that is passed through untranslated (an
    endpoint no ingress format serves, e.g. embeddings); None for anything else. Never raises."""
    backend = registry.BACKENDS.get(provider) if isinstance(provider, str) else None
    if backend is None or not body:
        return None
    try:
        return backend.usage_of(loads(body))
    except (ValueError, RecursionError, TypeError):
        return None


def open_stream(req: CanonicalRequest, provider: str, *, now: Callable[[], float] | None = None,
                new_id: IdFactory | None = None) -> StreamTranslator:
    backend, same_family = registry.route(req.ingress, provider)
    new_id = new_id or default_new_id
    if same_family is not None:
        relay = same_family.relay(req)
        return StreamTranslator(relay, relay)
    sink = registry.client(req.ingress).stream_sink(req, now or time.time, new_id)
    return StreamTranslator(backend.stream_source(sink, req, new_id), sink)
