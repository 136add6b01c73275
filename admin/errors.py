"""JSON errors for every failure, in the one shape the API promises:
``{"error": "<one line a person can act on>", "details": [{"loc": "targets.0.weight", "msg": "..."}]}``.

Nothing may fall through to Flask's HTML error pages or a traceback: HTTP errors, validation errors, store errors
and unexpected exceptions all get a handler here.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from store.errors import Conflict, InvalidReference, NotFound, StoreError, StoreUnavailable

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answer decided by a view (bad query parameter, masked secret sent back, ...)."""

    def __init__(self, status: int, message: str, details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []


def error_response(status: int, message: str, details: list[dict[str, str]] | None = None) -> Response:
    response = jsonify({"error": message, "details": details or []})
    response.status_code = status
    return response


def validation_details(exc: ValidationError, loc_prefix: str = "") -> list[dict[str, str]]:
    """pydantic errors as ``{"loc", "msg"}`` items. Inputs are never echoed: they may be credentials."""
    details = []
    for error in exc.errors(include_url=False, include_input=False, include_context=True):
        loc = ".".join(str(part) for part in error["loc"])
        if loc_prefix:
            loc = f"{loc_prefix}.{loc}" if loc else loc_prefix
        message = error["msg"]
        if error["type"] == "value_error" and "error" in error.get("ctx", {}):
            message = str(error["ctx"]["error"])  # our own validators' messages, without "Value error, "
        details.append({"loc": loc or "body", "msg": message})
    return details


def validation_error(exc: ValidationError, what: str) -> ApiError:
    """A 400 whose one-line message names the first problem and how many more there are."""
    details = validation_details(exc)
    first = details[0]
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return ApiError(400, f"invalid {what}: {first['loc']}: {first['msg']}{more}", details)


_STORE_STATUS: dict[type[StoreError], int] = {
    NotFound: 404,
    Conflict: 409,
    InvalidReference: 400,
    StoreUnavailable: 503,
}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.details)

    @app.errorhandler(StoreError)
    def _store_error(exc: StoreError) -> Response:
        status = next((code for cls, code in _STORE_STATUS.items() if isinstance(exc, cls)), 500)
        if status >= 500:
            log.error("store error: %s", exc.message)
        return error_response(status, exc.message, exc.details)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        allow = exc.get_response().headers.get("Allow") if status == 405 else None
        messages = {
            404: "no such endpoint; the API lives under /api/v1 (see /api/v1/openapi.json)",
            405: f"method {request.method} is not allowed here; allowed: {allow}",
            413: f"request body too large (limit {app.config.get('MAX_CONTENT_LENGTH')} bytes)",
        }
        message = messages.get(status) or _one_line(exc.description) or exc.name
        response = error_response(status, message)
        if allow:
            response.headers["Allow"] = allow
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error in admin API")
        return error_response(500, "internal error; see the admin server log")


def _one_line(text: Any) -> str:
    return " ".join(str(text or "").split())
