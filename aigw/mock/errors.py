"""Provider-shaped errors: ApiError, the status → (type, code, message) tables of each provider, their bodies."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .common import ANTHROPIC, GEMINI, OPENAI, _dumps, _rid


class ApiError(Exception):
    """A provider error; rendered into the body format of the provider that raised it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        etype: str | None = None,
        param: str | None = None,
        code: str | None = None,
        details: list | None = None,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.etype = etype
        self.param = param
        self.code = code
        self.details = details
        self.headers = headers or {}
        self.body = body  # explicit body override (fault rules)


_OPENAI_STATUS = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory",
          "Country, region, or territory not supported"),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    408: ("invalid_request_error", None, "Request timed out."),
    409: ("invalid_request_error", None, "Conflict."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("service_unavailable_error", "server_is_overloaded", "The server is overloaded or not ready yet."),
    504: ("server_error", None, "Gateway timeout."),
    529: ("server_error", "server_is_overloaded", "The server is overloaded or not ready yet."),
}
_ANTHROPIC_STATUS = {
    400: ("invalid_request_error", "Bad request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timeout"),
    529: ("overloaded_error", "Overloaded"),
}
_GEMINI_STATUS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    409: ("ABORTED", "The operation was aborted."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    499: ("CANCELLED", "The operation was cancelled."),
    500: ("INTERNAL", "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
    529: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
}


# The status a provider uses for "overloaded" (also the error carried by in-stream error events).
OVERLOADED_STATUS = {OPENAI: 503, ANTHROPIC: 529, GEMINI: 503}


def status_error(provider: str, status: int, message: str | None = None) -> ApiError:
    """The error a provider would send for ``status`` (used by fault rules)."""
    if provider == ANTHROPIC:
        etype, msg = _ANTHROPIC_STATUS.get(status, ("api_error" if status >= 500 else "invalid_request_error",
                                                    "Error"))
        return ApiError(status, message or msg, etype=etype)
    if provider == GEMINI:
        etype, msg = _GEMINI_STATUS.get(status, ("INTERNAL" if status >= 500 else "FAILED_PRECONDITION", "Error"))
        return ApiError(status, message or msg, etype=etype)
    etype, code, msg = _OPENAI_STATUS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, "Error."))
    return ApiError(status, message or msg, etype=etype, code=code)


def _openai_error_body(e: ApiError) -> dict:
    return {"error": {"message": e.message, "type": e.etype or "invalid_request_error", "param": e.param,
                      "code": e.code}}


def _anthropic_error_body(e: ApiError) -> dict:
    return {"type": "error", "error": {"type": e.etype or "invalid_request_error", "message": e.message},
            "request_id": "req_" + _rid()}


def _gemini_error_body(e: ApiError) -> dict:
    err: dict[str, Any] = {"code": e.status, "message": e.message,
                           "status": e.etype or _GEMINI_STATUS.get(e.status, ("UNKNOWN",))[0]}
    if e.details:
        err["details"] = e.details
    return {"error": err}


_ERROR_BODY = {OPENAI: _openai_error_body, ANTHROPIC: _anthropic_error_body, GEMINI: _gemini_error_body}


def error_response(provider: str, e: ApiError) -> web.Response:
    if e.body is not None:
        text = e.body if isinstance(e.body, str) else _dumps(e.body)
    else:
        text = _dumps(_ERROR_BODY[provider](e))
    headers = {"content-type": "application/json"}
    headers.update(e.headers)
    return web.Response(status=e.status, text=text, headers=headers)
