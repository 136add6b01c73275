"""Pure translation between client formats (OpenAI Chat Completions, Anthropic Messages) and provider
targets (OpenAI, Azure OpenAI, OpenAI-compatible, Anthropic, Gemini). No I/O: bytes and dicts in,
bytes and dicts out. Hub and spoke over providers/canonical.py.

Public API used by addon/:

    GatewayError(status, kind, message, *, param=None, code=None, retry_after=None)
    ingress_for_path(path) -> "openai" | "anthropic" | None
    parse_request(ingress, body, headers=None) -> CanonicalRequest   (.model, .stream, .ingress)
    TargetSpec(provider, model, path=None, credentials=None, headers={}, api_version=None, max_tokens_default=None)
    UpstreamRequest(method, path, headers, body, stream)
    build_upstream_request(req, target) -> UpstreamRequest
    default_origin(provider) -> (scheme, host, port)
    auth_headers(provider, api_key | credentials) -> {header: value}
    Reply(status, headers, body)
    translate_response(req, provider, status, headers, body, *, now=None, new_id=None) -> Reply
    error_reply(ingress, err) -> Reply
    open_stream(req, provider, *, now=None, new_id=None) -> StreamTranslator
        .feed(bytes) -> bytes   .finish() -> bytes   .abort(message, kind="api_error") -> bytes
        .committed  .upstream_error  .done

`now` (a clock returning epoch seconds) and `new_id` (prefix -> id) are injectable so that outputs
are reproducible in tests; defaults are time.time and random hex ids.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import quote

from . import anthropic as _anthropic
from . import gemini as _gemini
from . import openai as _openai
from .canonical import CanonicalRequest, IdFactory, default_new_id, dumps
from .errors import GatewayError, error_body, parse_error_body, retry_headers
from .streaming import StreamTranslator

__all__ = [
    "GatewayError", "CanonicalRequest", "TargetSpec", "UpstreamRequest", "Reply", "StreamTranslator",
    "ingress_for_path", "parse_request", "build_upstream_request", "default_origin", "auth_headers",
    "translate_response", "error_reply", "open_stream", "PROVIDERS",
]

PROVIDERS = ("openai", "azure", "openai-compatible", "anthropic", "gemini")
AZURE_API_VERSION = "2024-10-21"
ANTHROPIC_VERSION = "2023-06-01"
_JSON = {"content-type": "application/json"}


@dataclass
class TargetSpec:
    provider: str
    model: str | None
    path: str | None = None
    credentials: Any = None          # {"header_name", "header_value"} | {"api_key"} | model with those attrs
    headers: dict = field(default_factory=dict)
    api_version: str | None = None
    max_tokens_default: int | None = None


@dataclass
class UpstreamRequest:
    method: str
    path: str
    headers: dict
    body: bytes
    stream: bool


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes


def _family(provider: str) -> str:
    if provider in _openai.FAMILY:
        return "openai"
    if provider in ("anthropic", "gemini"):
        return provider
    raise GatewayError(500, "api_error", f"unknown provider '{provider}'")


# ------------------------------------------------------------------ requests
def ingress_for_path(path: str) -> str | None:
    p = path.split("?", 1)[0].rstrip("/")
    if p.endswith("/chat/completions"):
        return "openai"
    if p.endswith("/messages"):
        return "anthropic"
    return None


# Client headers that carry request semantics and go on to a target of the client's own family.
# (anthropic-beta switches features on: a same-family request is served from the client's body,
# whose beta fields mean nothing upstream without the header.)
FORWARDED_CLIENT_HEADERS = {"anthropic": ("anthropic-beta",)}


def parse_request(ingress: str, body: bytes, headers: Mapping[str, str] | None = None) -> CanonicalRequest:
    """`headers` are the client's request headers (optional): the ones in FORWARDED_CLIENT_HEADERS
    are kept on the request and sent to same-family targets."""
    req = _parse_request(ingress, body)
    wanted = FORWARDED_CLIENT_HEADERS.get(ingress, ())
    if headers and wanted:
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


def _parse_request(ingress: str, body: bytes) -> CanonicalRequest:
    from .jsonsafe import loads_request  # strict: NaN/Infinity, nesting > 128, lone surrogates are 400s
    obj = loads_request(body)
    if not isinstance(obj, dict):
        raise GatewayError(400, "invalid_request", "request body must be a JSON object")
    parse = {"openai": _openai.parse_request, "anthropic": _anthropic.parse_request}.get(ingress)
    if parse is None:
        raise GatewayError(404, "not_found", f"unknown ingress format '{ingress}'")
    try:
        return parse(obj)
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as e:
        # A shape the field checks did not anticipate: still the client's fault, never a 500.
        raise GatewayError(400, "invalid_request", f"malformed request body: {e}") from None


def _cred(credentials: Any, key: str) -> Any:
    if credentials is None:
        return None
    if isinstance(credentials, Mapping):
        return credentials.get(key)
    return getattr(credentials, key, None)


def _auth_headers(provider: str, credentials: Any) -> dict[str, str]:
    name, value = _cred(credentials, "header_name"), _cred(credentials, "header_value")
    if name and value is not None:
        return {str(name): str(value)}
    key = _cred(credentials, "api_key")
    if not key:
        return {}
    if provider == "azure":
        return {"api-key": key}
    if provider == "anthropic":
        return {"x-api-key": key}
    if provider == "gemini":
        return {"x-goog-api-key": key}
    return {"authorization": f"Bearer {key}"}


def auth_headers(provider: str, credentials: Any) -> dict[str, str]:
    """The auth header for a target's credentials — a plain API key, or `{header_name, header_value}` /
    `{api_key}` as a mapping or the store's model (also used by the addon for passthrough and probes)."""
    if isinstance(credentials, str):
        credentials = {"api_key": credentials}
    return _auth_headers(provider, credentials)


# A model id as it may appear anywhere (the request body): visible ASCII, bounded. Real ids hold "/" and ":"
# (`meta-llama/Llama-3.1-8B`, `llama3:8b`, `openai/gpt-4o:free`).
_MODEL_ID = re.compile(r"[\x21-\x7e]{1,256}")
# A model id that becomes one path segment (Gemini model, Azure deployment): no "/", "?", "#", "%", no dot segment.
_MODEL_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:@+~-]{0,255}")
# Framing and hop-by-hop headers: the gateway frames the upstream request itself; a target's header or
# credential with one of these names (a record stored before the admin API refused them) is dropped.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "host", "upgrade",
                              "te", "trailer", "trailers", "content-encoding"})


def _framing_header(name: str) -> bool:
    name = name.lower()
    return name in _FRAMING_HEADERS or name.startswith("proxy-")


def _model_segment(model: str, provider: str) -> str:
    """The model as one percent-escaped path segment; a model that is no plausible id is the caller's 400."""
    if not _MODEL_SEGMENT.fullmatch(model):
        raise GatewayError(400, "invalid_request",
                           f"model {model[:80]!r} is not a valid {provider} model id (letters, digits and "
                           "'.', '_', '-', ':', '@', '+', '~'; no '/'; at most 256 characters)", param="model",
                           code="invalid_model")
    return quote(model, safe=":@+~")


def _path(req: CanonicalRequest, target: TargetSpec, model: str) -> str:
    provider, path = target.provider, target.path
    if provider in ("gemini", "azure") and "{model}" in (path or "{model}"):
        model = _model_segment(model, provider)
    if provider == "gemini":
        path = path or "/v1beta/models/{model}:generateContent"
        if req.stream and ":generateContent" in path:
            path = path.replace(":generateContent", ":streamGenerateContent")
        if req.stream and ":streamGenerateContent" in path and "alt=sse" not in path:
            path += ("&" if "?" in path else "?") + "alt=sse"
        return path.replace("{model}", model)
    if provider == "azure":
        path = (path or "/openai/deployments/{model}/chat/completions").replace("{model}", model)
        if "api-version=" not in path and "/openai/v1/" not in path:
            path += ("&" if "?" in path else "?") + "api-version=" + quote(target.api_version or AZURE_API_VERSION,
                                                                           safe="")
        return path
    if path:
        return path
    return "/v1/messages" if provider == "anthropic" else "/v1/chat/completions"


def build_upstream_request(req: CanonicalRequest, target: TargetSpec) -> UpstreamRequest:
    provider = target.provider
    family = _family(provider)
    model = target.model or req.model
    if not model:
        raise GatewayError(400, "invalid_request", "no model given and the target has no default model", param="model")
    if not _MODEL_ID.fullmatch(model):
        raise GatewayError(400, "invalid_request", f"model {model[:80]!r} is not a valid model id (visible ASCII "
                           "characters, at most 256)", param="model", code="invalid_model")
    try:
        if family == "openai":
            body = _openai.build_body(req, provider, model)
        elif family == "anthropic":
            body = _anthropic.build_body(req, model, target.max_tokens_default)
        else:
            body = _gemini.build_body(req)
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as e:
        raise GatewayError(400, "invalid_request", f"request cannot be translated for {provider}: {e}") from None
    headers = {"content-type": "application/json"}
    headers.update(_auth_headers(provider, target.credentials))
    if provider == "anthropic":
        headers["anthropic-version"] = ANTHROPIC_VERSION
    if family == req.ingress:
        headers.update(req.client_headers)
    for k, v in (target.headers or {}).items():
        if provider == "anthropic" and k.lower() == "anthropic-version":
            headers.pop("anthropic-version", None)
        headers[k] = v
    for k in [k for k in headers if _framing_header(k)]:
        del headers[k]
    if req.stream:
        headers["accept"] = "text/event-stream"
        headers["accept-encoding"] = "identity"
    return UpstreamRequest("POST", _path(req, target, model), headers, dumps(body), req.stream)


def default_origin(provider: str) -> tuple[str, str, int]:
    origins = {"openai": ("https", "api.openai.com", 443), "anthropic": ("https", "api.anthropic.com", 443),
               "gemini": ("https", "generativelanguage.googleapis.com", 443)}
    if provider in origins:
        return origins[provider]
    raise GatewayError(503, "unavailable", f"{provider} target needs host")


# ------------------------------------------------------------------ responses
def error_reply(ingress: str, err: GatewayError) -> Reply:
    headers = dict(_JSON)
    if err.retry_after:
        headers["retry-after"] = str(err.retry_after)
    return Reply(err.status, headers, error_body(ingress, err))


def translate_response(req: CanonicalRequest, provider: str, status: int, headers: Mapping[str, str] | None,
                       body: bytes, *, now: Callable[[], float] | None = None,
                       new_id: IdFactory | None = None) -> Reply:
    family = _family(provider)
    new_id = new_id or default_new_id
    if status >= 400 or status < 200:
        err = parse_error_body(status, body)
        if req.ingress == family == _error_shape(body):
            out_body = body  # already the client's format: keep request_id and wording verbatim
        else:
            out_body = error_body(req.ingress, err)
        return Reply(err.status, {**_JSON, **retry_headers(headers)}, out_body)
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise GatewayError(502, "api_error", f"{provider} returned a response that is not valid JSON") from None
    if family == req.ingress:
        if family == "openai":
            if _openai.normalize_response(obj, int((now or time.time)())):
                body = dumps(obj)
        elif not isinstance(obj, dict) or obj.get("type") != "message":
            raise GatewayError(502, "api_error", "anthropic returned a malformed message")
        return Reply(status, dict(_JSON), body)
    try:
        if family == "openai":
            resp = _openai.parse_response(obj, new_id, req.tool_names)
        elif family == "anthropic":
            resp = _anthropic.parse_response(obj)
        else:
            resp = _gemini.parse_response(obj, new_id, req.tool_names,
                                          single_call=req.parallel_tool_calls is False)
    except (TypeError, AttributeError, KeyError, ValueError, IndexError):
        raise GatewayError(502, "api_error", f"{provider} returned a response of an unexpected shape") from None
    if family == "gemini" and req.model and not resp.model:
        resp.model = req.model
    if req.ingress == "openai":
        created = int((now or time.time)())
        if not resp.id.startswith(("chatcmpl", "msg_")):
            resp.id = "chatcmpl-" + resp.id
        out = _openai.render_response(resp, req, created)
    else:
        out = _anthropic.render_response(resp, new_id)
    return Reply(status, dict(_JSON), dumps(out))


def _error_shape(body: bytes) -> str | None:
    """The family whose error format `body` already is (then it can go to the client verbatim)."""
    if body[:1] != b"{":
        return None
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    err = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(err, dict) or not isinstance(err.get("message"), str):
        return None
    if obj.get("type") == "error" and isinstance(err.get("type"), str):
        return "anthropic"
    if "status" not in err:  # Gemini errors carry a status string; OpenAI's do not
        return "openai"
    return None


def open_stream(req: CanonicalRequest, provider: str, *, now: Callable[[], float] | None = None,
                new_id: IdFactory | None = None) -> StreamTranslator:
    family = _family(provider)
    new_id = new_id or default_new_id
    if req.ingress == family == "openai":
        pt = _openai.OpenAIPassthrough(req)
        return StreamTranslator(pt, pt)
    if req.ingress == family == "anthropic":
        pt = _anthropic.AnthropicPassthrough()
        return StreamTranslator(pt, pt)
    if req.ingress == "openai":
        sink: Any = _openai.OpenAISink(req, int((now or time.time)()), new_id)
    else:
        sink = _anthropic.AnthropicSink(new_id)
    if family == "openai":
        source: Any = _openai.OpenAISource(sink, new_id, req.tool_names)
    elif family == "anthropic":
        source = _anthropic.AnthropicSource(sink)
    else:
        source = _gemini.GeminiSource(sink, new_id, req.model, req.tool_names,
                                      single_call=req.parallel_tool_calls is False)
    return StreamTranslator(source, sink)
