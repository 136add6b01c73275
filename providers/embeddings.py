"""OpenAI-format embeddings (`POST …/embeddings`) for every family that has them: the caller's request parsed
once, the upstream request for an OpenAI / Azure / OpenAI-compatible or Gemini target, and the answer back in
OpenAI's shape. Pure (no I/O).

OpenAI-family targets get the caller's body with the target's model (an OpenAI-compatible server only the fields
below, without `encoding_format`); Gemini gets `:embedContent` (one input) or `:batchEmbedContents` (several).
Whatever the target answered, the caller gets the encoding it asked for: a list of floats, or (`"base64"`, the
openai SDK's default) base64 of little-endian float32. See docs/translation.md, "Embeddings and model lists".
"""
from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from . import registry
from .api import checked_model, upstream_headers
from .canonical import CanonicalRequest, Usage, dumps, want
from .errors import GatewayError, error_shape, invalid, retry_headers
from .gemini import GeminiBackend, usage_from as gemini_usage
from .interface import Backend, Reply, TargetSpec, UpstreamRequest
from .jsonsafe import loads_request
from .openai_backend import OpenAIBackend
from .openai_passthrough import OpenAIPassthrough
from .openai_wire import usage_from as openai_usage

PATH_SUFFIX = "/embeddings"
ENCODINGS = ("float", "base64")
# The request fields of OpenAI's embeddings API: all an OpenAI-compatible server is sent.
FIELDS = ("model", "input", "dimensions", "encoding_format", "user")
# Gemini's batchEmbedContents takes at most this many requests: a larger input is for another target.
GEMINI_MAX_BATCH = 100
_CHAT_SUFFIX = "/chat/completions"
_GEMINI_CHAT_METHODS = (":streamGenerateContent", ":generateContent")
_JSON = {"content-type": "application/json"}
# A backend's path() reads a canonical request only for its stream flag: an embeddings call never streams.
_NOT_STREAMING = CanonicalRequest(ingress=registry.DEFAULT_INGRESS, model=None)


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    """An OpenAI embeddings request, checked. Exactly one of `texts` / `tokens` holds the inputs, in order."""
    model: str | None
    texts: tuple[str, ...] | None
    tokens: tuple[tuple[int, ...], ...] | None
    dimensions: int | None
    encoding_format: str | None  # as the caller gave it; None means float
    user: str | None
    raw: Mapping[str, Any]       # the caller's body, for OpenAI-family targets

    @property
    def count(self) -> int:
        return len(self.texts if self.texts is not None else self.tokens or ())

    @property
    def base64(self) -> bool:
        return self.encoding_format == "base64"


def is_embeddings_path(path: str) -> bool:
    """Whether a request path is an embeddings endpoint (`/v1/embeddings`, `/openai/deployments/d/embeddings`)."""
    return path.split("?", 1)[0].rstrip("/").endswith(PATH_SUFFIX)


def _token_ids(value: list, where: str) -> tuple[int, ...]:
    if not value:
        raise invalid(f"'{where}' must not be an empty array", param="input")
    if not all(type(t) is int and t >= 0 for t in value):
        raise invalid(f"'{where}' must hold non-negative integer token ids", param="input")
    return tuple(value)


def _inputs(value: Any) -> tuple[tuple[str, ...] | None, tuple[tuple[int, ...], ...] | None]:
    """`input`: a string, strings, one token array or token arrays; nothing empty."""
    if isinstance(value, str):
        if not value:
            raise invalid("'input' must not be an empty string", param="input")
        return (value,), None
    if not isinstance(value, list) or not value:
        raise invalid("'input' must be a non-empty string, array of strings, array of token ids or array of token "
                      "id arrays", param="input")
    if all(isinstance(v, str) for v in value):
        if not all(value):
            raise invalid("'input' must not hold an empty string", param="input")
        return tuple(value), None
    if all(isinstance(v, list) for v in value):
        return None, tuple(_token_ids(v, f"input[{i}]") for i, v in enumerate(value))
    if all(type(v) is int for v in value):
        return None, (_token_ids(value, "input"),)
    raise invalid("'input' mixes strings, token ids and token arrays", param="input")


def parse_embeddings_request(body: bytes) -> EmbeddingsRequest:
    """The caller's body → EmbeddingsRequest; anything malformed is a GatewayError(400) in OpenAI's terms."""
    obj = loads_request(body)
    if not isinstance(obj, dict):
        raise invalid("request body must be a JSON object")
    if "input" not in obj:
        raise invalid("'input' is a required property", param="input")
    model = want(obj, "model", (str,), "a string")
    texts, tokens = _inputs(obj["input"])
    dimensions = want(obj, "dimensions", (int,), "a positive integer")
    if dimensions is not None and dimensions < 1:
        raise invalid("'dimensions' must be a positive integer", param="dimensions")
    encoding = want(obj, "encoding_format", (str,), "a string")
    if encoding is not None and encoding not in ENCODINGS:
        raise invalid(f"'encoding_format' must be one of {', '.join(ENCODINGS)}", param="encoding_format")
    user = want(obj, "user", (str,), "a string")
    return EmbeddingsRequest(model=model or None, texts=texts, tokens=tokens, dimensions=dimensions,
                             encoding_format=encoding, user=user, raw=obj)


# ------------------------------------------------------------------ requests
def _family(provider: str) -> Backend:
    backend = registry.backend(provider)
    if not isinstance(backend, (OpenAIBackend, GeminiBackend)):
        raise invalid(f"{provider} targets have no embeddings API", param="model")
    return backend


def _path(backend: Backend, target: TargetSpec, model: str, method: str) -> str:
    """A target's `path` is its chat endpoint: the embeddings endpoint beside it (`…/chat/completions` →
    `…/embeddings`, `…:generateContent` → `…:embedContent`), else the provider's own."""
    base, _, query = (target.path or "").partition("?")
    if isinstance(backend, GeminiBackend):
        chat = next((m for m in _GEMINI_CHAT_METHODS if m in base), None)
        path = base.replace(chat, ":" + method) if chat else "/v1beta/models/{model}:" + method
        query = "&".join(q for q in query.split("&") if q and q != "alt=sse") if chat else ""
    elif base.endswith(_CHAT_SUFFIX):
        path = base[: -len(_CHAT_SUFFIX)] + PATH_SUFFIX
    else:
        path, query = backend.default_path[: -len(_CHAT_SUFFIX)] + PATH_SUFFIX, ""
    return backend.path(_NOT_STREAMING, replace(target, path=path + ("?" + query if query else "")), model)


def _gemini_content(text: str, req: EmbeddingsRequest) -> dict[str, Any]:
    out: dict[str, Any] = {"content": {"parts": [{"text": text}]}}
    if req.dimensions is not None:
        out["outputDimensionality"] = req.dimensions
    return out


def _gemini_body(req: EmbeddingsRequest, model: str) -> tuple[str, dict[str, Any]]:
    if req.texts is None:
        raise invalid("Gemini embeds text only: token-id inputs need an OpenAI-family target", param="input")
    if len(req.texts) == 1:
        return "embedContent", _gemini_content(req.texts[0], req)
    if len(req.texts) > GEMINI_MAX_BATCH:
        raise invalid(f"Gemini embeds at most {GEMINI_MAX_BATCH} inputs per request, got {len(req.texts)}",
                      param="input")
    return "batchEmbedContents", {"requests": [{"model": f"models/{model}", **_gemini_content(t, req)}
                                               for t in req.texts]}


def _openai_body(req: EmbeddingsRequest, model: str, backend: OpenAIBackend) -> dict[str, Any]:
    chat = backend.passthrough_for(OpenAIPassthrough.ingress)
    if isinstance(chat, OpenAIPassthrough) and chat.fields is not None:
        # A server that rejects fields it does not know (OpenAI-compatible): only OpenAI's fields, and floats
        # (not every such server encodes base64; the gateway does).
        body = {k: req.raw[k] for k in FIELDS if k in req.raw and k != "encoding_format"}
    else:
        body = dict(req.raw)
    body["model"] = model
    return body


def build_embeddings_request(req: EmbeddingsRequest, target: TargetSpec) -> UpstreamRequest:
    """The upstream call for one target. GatewayError(400): this target cannot serve the request (another may)."""
    backend = _family(target.provider)
    model = checked_model(target.model or req.model)
    if isinstance(backend, GeminiBackend):
        method, body = _gemini_body(req, model)
    else:
        method, body = "embeddings", _openai_body(req, model, backend)
    return UpstreamRequest("POST", _path(backend, target, model, method), upstream_headers(backend, target),
                           dumps(body), False)


# ------------------------------------------------------------------ answers
def _encode(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")


def _decode(data: str) -> list[float]:
    raw = base64.b64decode(data, validate=True)
    if len(raw) % 4:
        raise ValueError("base64 embedding is not a whole number of float32 values")
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def _vector(value: Any, want_base64: bool) -> Any:
    """One embedding in the caller's encoding: the value itself when it already is, else converted."""
    if isinstance(value, str):
        return value if want_base64 else _decode(value)
    if not isinstance(value, list) or not all(type(v) in (int, float) for v in value):
        raise ValueError("an embedding is neither a list of numbers nor a base64 string")
    return _encode(value) if want_base64 else value


def _bad_answer(provider: str) -> GatewayError:
    return GatewayError(502, "api_error", f"{provider} returned an embeddings answer of an unexpected shape")


def _error(provider: str, status: int, headers: Mapping[str, str] | None, body: bytes) -> Reply:
    err = registry.backend(provider).parse_error(status, body)
    out = body if error_shape(body) == "openai" else registry.error_client(None).error_body(err)
    return Reply(err.status, {**_JSON, **retry_headers(headers)}, out)


def _usage_obj(usage: Usage | None) -> dict[str, int]:
    tokens = usage.prompt_tokens if usage is not None else 0
    return {"prompt_tokens": tokens, "total_tokens": tokens}


def _from_openai(req: EmbeddingsRequest, obj: Any, body: bytes, model: str, backend: Backend) -> Reply:
    """An OpenAI-family answer: verbatim when it is already what the caller's SDK parses, else normalised."""
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise ValueError("no data list")
    usage = openai_usage(obj.get("usage"))
    reported = backend.model_of(obj)
    changed = obj.get("object") != "list" or reported is None or usage is None
    items = []
    for i, d in enumerate(data):
        vector = _vector(d.get("embedding"), req.base64)
        index = d.get("index") if type(d.get("index")) is int else i
        changed |= vector is not d.get("embedding") or index != d.get("index") or d.get("object") != "embedding"
        items.append({**d, "object": "embedding", "index": index, "embedding": vector})
    if not changed:
        return Reply(200, dict(_JSON), body, usage, reported)
    out = {**obj, "object": "list", "data": items, "model": reported or model,
           "usage": obj["usage"] if usage is not None else _usage_obj(None)}
    return Reply(200, dict(_JSON), dumps(out), usage, reported)


def _from_gemini(req: EmbeddingsRequest, obj: Any, model: str) -> Reply:
    """`{"embedding": {"values"}}` / `{"embeddings": [{"values"}]}` → OpenAI's list; usage from usageMetadata when
    Gemini sent one (it usually does not: then none is reported)."""
    if not isinstance(obj, dict):
        raise ValueError("not an object")
    found = obj.get("embeddings") if "embeddings" in obj else [obj.get("embedding")]
    if not isinstance(found, list) or len(found) != req.count or not all(isinstance(e, dict) for e in found):
        raise ValueError("embeddings do not match the inputs")
    usage = gemini_usage(obj.get("usageMetadata"))
    data = [{"object": "embedding", "index": i, "embedding": _vector(e.get("values"), req.base64)}
            for i, e in enumerate(found)]
    out = {"object": "list", "data": data, "model": model, "usage": _usage_obj(usage)}
    return Reply(200, dict(_JSON), dumps(out), usage, None)


def translate_embeddings_response(req: EmbeddingsRequest, provider: str, model: str | None, status: int,
                                  headers: Mapping[str, str] | None, body: bytes) -> Reply:
    """A provider's answer to `build_embeddings_request` → the caller's OpenAI answer (errors in OpenAI's format).
    `model` is the one the request named (Gemini's answer names none). Reply.usage: what the provider reported,
    None when it reported nothing."""
    backend = _family(provider)
    if status >= 400 or status < 200:
        return _error(provider, status, headers, body)
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise GatewayError(502, "api_error", f"{provider} returned a response that is not valid JSON") from None
    try:
        if isinstance(backend, GeminiBackend):
            return _from_gemini(req, obj, model or req.model or "")
        return _from_openai(req, obj, body, model or req.model or "", backend)
    except (ValueError, TypeError, OverflowError, binascii.Error, struct.error):
        raise _bad_answer(provider) from None
