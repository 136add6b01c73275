"""Pure translation between client formats (OpenAI Chat Completions, Anthropic Messages) and provider
targets (OpenAI, Azure OpenAI, OpenAI-compatible, Anthropic, Gemini). No I/O: bytes and dicts in,
bytes and dicts out. Hub and spoke over providers/canonical.py.

Public API used by addon/:

    GatewayError(status, kind, message, *, param=None, code=None, retry_after=None)
    ingress_for_path(path) -> "openai" | "anthropic" | "openai-responses" | None
    parse_request(ingress, body, headers=None) -> CanonicalRequest   (.model, .stream, .ingress)
    TargetSpec(provider, model, path=None, credentials=None, headers={}, api_version=None, max_tokens_default=None)
    UpstreamRequest(method, path, headers, body, stream)
    build_upstream_request(req, target) -> UpstreamRequest
    default_origin(provider) -> (scheme, host, port)
    auth_headers(provider, api_key | credentials) -> {header: value}
    Reply(status, headers, body, usage=None, model=None)   usage: Usage | None, model: str | None (reported)
    translate_response(req, provider, status, headers, body, *, now=None, new_id=None) -> Reply
    usage_from_body(provider, body) -> Usage | None   (an untranslated JSON answer; never raises)
    Usage(prompt_tokens, completion_tokens, cache_read, cache_write, reasoning)  (.total, .uncached_input)
    error_reply(ingress, err) -> Reply
    is_embeddings_path(path) -> bool;  parse_embeddings_request(body) -> EmbeddingsRequest  (.model, .count)
    build_embeddings_request(req, target) -> UpstreamRequest   (OpenAI family, Gemini; 400: not for this target)
    translate_embeddings_response(req, provider, model, status, headers, body) -> Reply   (OpenAI's shape)
    response_id_in_body(body) / response_id_in_events(data) -> str | None   (a Responses answer's id)
    RESPONSES_INGRESS; serves_natively(ingress, provider) -> bool   (pass-through, not the hub)
    open_stream(req, provider, *, now=None, new_id=None) -> StreamTranslator
        .feed(bytes) -> bytes   .finish() -> bytes   .abort(message, kind="api_error") -> bytes
        .committed  .upstream_error  .done  .usage -> Usage | None  .model -> str | None

`now` (a clock returning epoch seconds) and `new_id` (prefix -> id) are injectable so that outputs
are reproducible in tests; defaults are time.time and random hex ids.

`PROVIDERS` (provider names) and `INGRESSES` (client formats) are the only lists of names: registry.py maps
them to the family objects (interface.py: Client, Backend, Passthrough); api.py implements the functions.
"""

from __future__ import annotations

from .api import (
    FRAMING_HEADERS, auth_headers, build_upstream_request, default_origin, error_reply, ingress_for_path,
    is_framing_header, open_stream, parse_request, translate_response, usage_from_body,
)
from .canonical import CanonicalRequest, Usage
from .embeddings import (
    EmbeddingsRequest, build_embeddings_request, is_embeddings_path, parse_embeddings_request,
    translate_embeddings_response,
)
from .errors import GatewayError
from .interface import Reply, TargetSpec, UpstreamRequest
from .registry import INGRESSES, PROVIDERS, serves_natively
from .responses_wire import INGRESS as RESPONSES_INGRESS
from .responses_passthrough import response_id_in_body, response_id_in_events
from .streaming import StreamTranslator

__all__ = [
    "GatewayError", "CanonicalRequest", "TargetSpec", "UpstreamRequest", "Reply", "StreamTranslator", "Usage",
    "ingress_for_path", "parse_request", "build_upstream_request", "default_origin", "auth_headers",
    "translate_response", "error_reply", "open_stream", "PROVIDERS", "INGRESSES", "FRAMING_HEADERS",
    "is_framing_header", "usage_from_body", "EmbeddingsRequest", "is_embeddings_path", "parse_embeddings_request",
    "build_embeddings_request", "translate_embeddings_response", "response_id_in_body", "response_id_in_events",
    "RESPONSES_INGRESS", "serves_natively",
]
