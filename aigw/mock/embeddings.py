"""Embeddings: OpenAI's ``POST /v1/embeddings`` (also Azure's ``/openai/deployments/{d}/embeddings``) and Gemini's
``:embedContent`` / ``:batchEmbedContents``, validated as strictly as the real APIs.

Vectors are deterministic: seeded by (model, input), unit length, every value exactly a float32 (so the float
and the base64 answers hold the same numbers). OpenAI's native size is 1536, Gemini's 3072; ``dimensions`` /
``outputDimensionality`` shorten them. Usage (OpenAI only; Gemini's embeddings answer reports none):
``ceil(chars / 4)`` per text, the array length per token array.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
from typing import Any

from aiohttp import web

from .common import _BAD_JSON, GEMINI, OPENAI, Answer, _dumps, _json_type, _rid
from .errors import ApiError
from .plan import _ntokens

OPENAI_DIM, GEMINI_DIM = 1536, 3072
OPENAI_MAX_INPUTS, GEMINI_MAX_BATCH = 2048, 100
_OA_FIELDS = frozenset({"model", "input", "dimensions", "encoding_format", "user"})
_GM_FIELDS = frozenset({"model", "content", "taskType", "task_type", "title", "outputDimensionality",
                        "output_dimensionality"})
GEMINI_EMBED_METHODS = ("embedContent", "batchEmbedContents")


def vector(model: str, text: str, dim: int) -> list[float]:
    """The mock's embedding of `text` by `model`: deterministic, unit length, float32-exact."""
    rng = random.Random(hashlib.sha256(f"{model}\0{text}".encode()).digest())
    raw = [rng.uniform(-1.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return list(struct.unpack(f"<{dim}f", struct.pack(f"<{dim}f", *(v / norm for v in raw))))


# ---------------------------------------------------------------------------------------------------- OpenAI
def _oa_invalid(message: str, param: str | None = "input", code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, etype="invalid_request_error", param=param, code=code)


def _oa_inputs(value: Any) -> list[tuple[str, int]]:
    """`input` → (what is embedded, its token count) per input; OpenAI's rules on types and emptiness."""
    if value is None:
        raise _oa_invalid("Missing required parameter: 'input'.", code="missing_required_parameter")
    if isinstance(value, str):
        value = [value]
    elif not isinstance(value, list):
        raise _oa_invalid(f"Invalid type for 'input': expected one of a string or array, but got {_json_type(value)} "
                          "instead.", code="invalid_type")
    if not value:
        raise _oa_invalid("'$.input' is invalid. Please check the API reference: "
                          "https://platform.openai.com/docs/api-reference.")
    if len(value) > OPENAI_MAX_INPUTS:
        raise _oa_invalid(f"'$.input' is invalid: an array must hold at most {OPENAI_MAX_INPUTS} items.")
    if all(type(v) is int for v in value):
        value = [value]  # one token array
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str) and item:
            out.append((item, _ntokens(len(item))))
        elif isinstance(item, list) and item and all(type(t) is int and t >= 0 for t in item):
            out.append((" ".join(map(str, item)), len(item)))
        else:
            raise _oa_invalid(f"'$.input[{i}]' is invalid. Please check the API reference: "
                              "https://platform.openai.com/docs/api-reference.")
    return out


def validate_openai_embeddings(body: Any, *, require_model: bool = True) -> list[tuple[str, int]]:
    if body is _BAD_JSON or not isinstance(body, dict):
        raise _oa_invalid("We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                          "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
                          "sent was not valid JSON.)", param=None, code=None)
    for name in body:
        if name not in _OA_FIELDS:
            raise _oa_invalid(f"Unrecognized request argument supplied: {name}", param=None, code=None)
    model = body.get("model")
    if require_model and model is None:
        raise _oa_invalid("Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    if model is not None and not isinstance(model, str):
        raise _oa_invalid(f"Invalid type for 'model': expected a string, but got {_json_type(model)} instead.",
                          param="model", code="invalid_type")
    dims = body.get("dimensions")
    if dims is not None and (type(dims) is not int or not 1 <= dims <= OPENAI_DIM):
        raise _oa_invalid(f"Invalid value for 'dimensions': expected an integer from 1 to {OPENAI_DIM}.",
                          param="dimensions")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise _oa_invalid(f"Invalid value: '{fmt}'. Supported values are: 'float' and 'base64'.",
                          param="encoding_format")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _oa_invalid(f"Invalid type for 'user': expected a string, but got {_json_type(user)} instead.",
                          param="user", code="invalid_type")
    return _oa_inputs(body.get("input"))


def _encoded(values: list[float], fmt: Any) -> Any:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode() if fmt == "base64" else values


# ---------------------------------------------------------------------------------------------------- Gemini
def _gm_invalid(message: str) -> ApiError:
    return ApiError(400, message, etype="INVALID_ARGUMENT")


def _gm_request(req: Any, where: str) -> tuple[str, int | None]:
    """One EmbedContentRequest → (its text, outputDimensionality)."""
    if not isinstance(req, dict):
        raise _gm_invalid(f"Invalid JSON payload received. Invalid value at '{where}'")
    for name in req:
        if name not in _GM_FIELDS:
            raise _gm_invalid(f"Invalid JSON payload received. Unknown name \"{name}\" at '{where}': Cannot find "
                              "field.")
    content = req.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list) or not parts:
        raise _gm_invalid(f"* {where}.content.parts: contents.parts must not be empty.\n")
    texts = []
    for part in parts:
        if not isinstance(part, dict) or set(part) != {"text"} or not isinstance(part["text"], str):
            raise _gm_invalid(f"* {where}.content.parts: only text parts can be embedded.\n")
        texts.append(part["text"])
    if not "".join(texts).strip():
        raise _gm_invalid("* EmbedContentRequest.content: contents must not be empty.\n")
    dims = req.get("outputDimensionality", req.get("output_dimensionality"))
    if dims is not None and (type(dims) is not int or not 1 <= dims <= GEMINI_DIM):
        raise _gm_invalid(f"* {where}.output_dimensionality: must be between 1 and {GEMINI_DIM}.\n")
    return "".join(texts), dims


def validate_gemini_embeddings(body: Any, model: str, method: str) -> list[tuple[str, int | None]]:
    if body is _BAD_JSON or not isinstance(body, dict):
        raise _gm_invalid("Invalid JSON payload received. Unexpected token.")
    if method == "embedContent":
        return [_gm_request(body, "EmbedContentRequest")]
    for name in body:
        if name != "requests":
            raise _gm_invalid(f"Invalid JSON payload received. Unknown name \"{name}\": Cannot find field.")
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise _gm_invalid("* BatchEmbedContentsRequest.requests: requests must not be empty.\n")
    if len(requests) > GEMINI_MAX_BATCH:
        raise _gm_invalid(f"* BatchEmbedContentsRequest.requests: at most {GEMINI_MAX_BATCH} requests can be in one "
                          "batch.\n")
    out = []
    for i, req in enumerate(requests):
        where = f"BatchEmbedContentsRequest.requests[{i}]"
        item = _gm_request(req, where)
        if req.get("model") != f"models/{model}":
            raise _gm_invalid(f"* {where}.model: the model of each request must match the model in the URL "
                              f"(models/{model}).\n")
        out.append(item)
    return out


class EmbeddingsEndpoint:
    """The embeddings endpoints. Mixed into MockProvider (server.py), which provides ``_serve``, ``_auth_ok``,
    ``_bearer``, ``_check_model`` and ``_gemini_auth``."""

    async def _openai_embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, OPENAI, lambda _b: False, self._openai_embeddings_answer)

    async def _openai_embeddings_answer(self, request: web.Request, body: Any, rec: dict) -> Answer:
        azure = request.path.startswith("/openai/deployments/")
        if azure and "api-version" not in request.query:
            return web.json_response({"error": {"code": "404", "message": "Resource not found"}}, status=404)
        if not self._auth_ok(self._bearer(request), request.headers.get("api-key") if azure else None):
            if azure:
                return web.json_response({"error": {"code": "401", "message": "Access denied due to invalid "
                                                    "subscription key or wrong API endpoint."}}, status=401)
            raise ApiError(401, "Incorrect API key provided.", etype="invalid_request_error", code="invalid_api_key")
        inputs = validate_openai_embeddings(body, require_model=not azure)
        model = request.match_info["deployment"] if azure else body["model"]
        if not self._check_model(model):
            raise ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                           etype="invalid_request_error", code="model_not_found")
        dim, fmt = body.get("dimensions") or OPENAI_DIM, body.get("encoding_format")
        data = [{"object": "embedding", "index": i, "embedding": _encoded(vector(model, text, dim), fmt)}
                for i, (text, _n) in enumerate(inputs)]
        tokens = sum(n for _t, n in inputs)
        answer = {"object": "list", "data": data, "model": model,
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return web.Response(text=_dumps(answer), content_type="application/json",
                            headers={"x-request-id": "req_" + _rid(), "openai-processing-ms": "1"})

    async def _gemini_embed(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, GEMINI, lambda _b: False, self._gemini_embed_answer)

    async def _gemini_embed_answer(self, request: web.Request, body: Any, rec: dict) -> Answer:
        self._gemini_auth(request)
        model, _, method = request.match_info["target"].partition(":")
        inputs = validate_gemini_embeddings(body, model, method)
        if not self._check_model(model):
            raise ApiError(404, f"models/{model} is not found for API version v1beta, or is not supported for "
                                f"{method}. Call ListModels to see the list of available models and their supported "
                                "methods.", etype="NOT_FOUND")
        values = [{"values": vector(model, text, dims or GEMINI_DIM)} for text, dims in inputs]
        answer = {"embedding": values[0]} if method == "embedContent" else {"embeddings": values}
        return web.Response(text=_dumps(answer), content_type="application/json")
