"""Reading requests: the JSON body and the paging parameters, with a 4xx for every way they can be wrong."""

from __future__ import annotations

import json
from typing import Any

from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from store import Store
from store.validation import unique_keys

from .errors import ApiError

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Far beyond any table, and within what JSON clients represent exactly.
MAX_OFFSET = 2**53 - 1
STORE_EXTENSION = "aigw.store"


def get_store() -> Store:
    """The store injected by ``create_app`` (no module globals)."""
    return current_app.extensions[STORE_EXTENSION]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def json_body() -> dict[str, Any]:
    """The request body as a JSON object: 415 unless JSON, 413 when too large, 400 when unparsable or not an
    object."""
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not (mimetype.startswith("application/") and mimetype.endswith("+json")):
        raise ApiError(415, "send the body as JSON with 'Content-Type: application/json'")
    raw = request.get_data(cache=False)  # raises 413 when Content-Length is beyond MAX_CONTENT_LENGTH
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and len(raw) >= limit:
        # Chunked upload: werkzeug stops reading at the limit instead of failing, so a full read means "too big".
        raise RequestEntityTooLarge()
    if not raw.strip():
        raise ApiError(400, "request body is empty; expected a JSON object")
    try:
        # RFC 8259: JSON on the wire is UTF-8 (json.loads on bytes would also guess UTF-16/32); a BOM is tolerated.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not UTF-8 JSON") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=unique_keys)
    except ValueError as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"expected a JSON object, got {type(body).__name__}",
                       [{"loc": "body", "msg": "must be a JSON object"}])
    return body


def page() -> tuple[int, int]:
    """``(offset, limit)`` from the query string: 0 <= offset <= 2**53 - 1, 1 <= limit <= 1000 (default 100)."""
    offset = _int_arg("offset", 0, minimum=0, maximum=MAX_OFFSET)
    limit = _int_arg("limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
    return offset, limit


def _int_arg(name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
    # The length check comes first: int() refuses strings of over 4300 digits with a ValueError.
    valid = raw.isascii() and raw.isdigit() and len(raw) <= 20
    if not valid or not (minimum <= int(raw) and (maximum is None or int(raw) <= maximum)):
        message = f"{name} must be an integer {bounds}"
        raise ApiError(400, message, [{"loc": f"query.{name}", "msg": message}])
    return int(raw)


def bool_arg(name: str, default: bool = False) -> bool:
    raw = request.args.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    message = f"{name} must be true or false"
    raise ApiError(400, message, [{"loc": f"query.{name}", "msg": message}])
