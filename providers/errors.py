"""Gateway errors: kinds, statuses, and reading the error bodies of every provider family.

One `GatewayError` carries a provider-neutral *kind*; `parse_error_body` turns any upstream error body back
into a kind (protocols.md §1.6, §2.5, §4.6, TV-10). Each client format renders a kind in its own module
(openai_wire.error_obj, anthropic_wire.error_obj).
"""
from __future__ import annotations

import json
from typing import Any, Mapping

KINDS = (
    "invalid_request", "authentication", "permission", "not_found", "request_too_large",
    "rate_limit", "overloaded", "api_error", "timeout", "unavailable",
)

DEFAULT_STATUS = {
    "invalid_request": 400, "authentication": 401, "permission": 403, "not_found": 404,
    "request_too_large": 413, "rate_limit": 429, "overloaded": 529, "api_error": 500,
    "timeout": 504, "unavailable": 503,
}

# Anthropic's own table (§2.5). 503 has no Anthropic twin; "overloaded_error" is the closest (TV-10).
ANTHROPIC_TYPE = {
    "invalid_request": "invalid_request_error", "authentication": "authentication_error",
    "permission": "permission_error", "not_found": "not_found_error",
    "request_too_large": "request_too_large", "rate_limit": "rate_limit_error",
    "overloaded": "overloaded_error", "api_error": "api_error", "timeout": "api_error",
    "unavailable": "overloaded_error",
}


class GatewayError(Exception):
    """An error to report to the client in its own protocol; `status` is the HTTP status to use."""

    def __init__(self, status: int | None, kind: str, message: str, *, param: str | None = None,
                 code: str | None = None, retry_after: str | None = None,
                 upstream_type: str | None = None) -> None:
        if kind not in DEFAULT_STATUS:
            kind = "api_error"
        super().__init__(message)
        self.status = int(status) if status else DEFAULT_STATUS[kind]
        self.kind = kind
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after
        # The provider's own error type string ("overloaded_error", "RESOURCE_EXHAUSTED"...), kept so an
        # OpenAI-format answer can repeat a recognisable type instead of a generic one.
        self.upstream_type = upstream_type

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.kind!r}, {self.message!r})"


def invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, "invalid_request", message, param=param)


def kind_for_status(status: int) -> str:
    if status == 400 or status == 422 or status == 409:
        return "invalid_request"
    return {401: "authentication", 403: "permission", 404: "not_found", 413: "request_too_large",
            429: "rate_limit", 529: "overloaded", 503: "unavailable", 504: "timeout",
            408: "timeout"}.get(status, "invalid_request" if 400 <= status < 500 else "api_error")


ANTHROPIC_TYPE_TO_KIND = {v: k for k, v in ANTHROPIC_TYPE.items() if k not in ("timeout", "unavailable")}
_GEMINI_STATUS_TO_KIND = {
    "INVALID_ARGUMENT": "invalid_request", "FAILED_PRECONDITION": "invalid_request",
    "OUT_OF_RANGE": "invalid_request", "UNAUTHENTICATED": "authentication",
    "PERMISSION_DENIED": "permission", "NOT_FOUND": "not_found",
    "RESOURCE_EXHAUSTED": "rate_limit", "UNAVAILABLE": "unavailable",
    "DEADLINE_EXCEEDED": "timeout", "INTERNAL": "api_error", "CANCELLED": "api_error",
}


def parse_error_body(status: int, body: bytes | str | Mapping | None) -> GatewayError:
    """Any upstream error body (OpenAI, Anthropic, Gemini, Mistral, HTML, empty) → GatewayError.

    The status is kept as given except for Gemini's "bad API key" 400, which is an authentication
    failure (§4.6) and must look like one to the client and to the addon's health logic.
    """
    obj: Any = body
    if isinstance(body, (bytes, bytearray, str)):
        try:
            obj = json.loads(body) if body else None
        except (ValueError, UnicodeDecodeError):
            obj = None
    kind = kind_for_status(status)
    message = None
    utype = code = param = None
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):  # Gemini non-SSE stream form
        obj = obj[0]
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict):
            message = err.get("message")
            if isinstance(err.get("status"), str):  # Gemini: {"error":{"code","message","status"}}
                utype = err["status"]
                kind = _GEMINI_STATUS_TO_KIND.get(utype, kind)
                if "API_KEY_INVALID" in json.dumps(err.get("details") or []) or (
                        utype == "INVALID_ARGUMENT" and isinstance(message, str)
                        and "API key not valid" in message):
                    kind, status = "authentication", 401
                by_status = kind_for_status(status)
                if kind != by_status and (kind == "rate_limit" or by_status not in ("invalid_request", "api_error")):
                    # The HTTP status names a specific kind (413, 429, 504...): it wins over a generic
                    # gRPC status string, so the client's error type agrees with the status it gets.
                    kind = by_status
            else:
                utype = err.get("type") if isinstance(err.get("type"), str) else None
                code = err.get("code") if isinstance(err.get("code"), str) else None
                param = err.get("param") if isinstance(err.get("param"), str) else None
                if obj.get("type") == "error" and utype in ANTHROPIC_TYPE_TO_KIND:
                    kind = ANTHROPIC_TYPE_TO_KIND[utype]
                    if kind == "overloaded" and status != 529:
                        kind = kind_for_status(status) if status >= 400 else kind
        elif isinstance(err, str):
            message = err
        elif obj.get("object") == "error" or "message" in obj:  # Mistral-style top-level error
            message = obj.get("message") if isinstance(obj.get("message"), str) else None
            utype = obj.get("type") if isinstance(obj.get("type"), str) else None
            code = obj.get("code") if isinstance(obj.get("code"), str) else None
    if not isinstance(message, str) or not message:
        text = ""
        if isinstance(body, (bytes, bytearray)):
            text = body[:200].decode("utf-8", "replace").strip()
        elif isinstance(body, str):
            text = body[:200].strip()
        message = f"upstream returned HTTP {status}" + (f": {text}" if text else "")
    return GatewayError(status, kind, message, param=param, code=code, upstream_type=utype)


def retry_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Copy the retry hints both SDKs read (openai: retry-after-ms, retry-after, x-should-retry)."""
    out: dict[str, str] = {}
    if not headers:
        return out
    for k, v in headers.items():
        lk = k.lower()
        if lk in ("retry-after", "retry-after-ms", "x-should-retry"):
            out[lk] = v
    return out


def error_shape(body: bytes) -> str | None:
    """The family whose error format `body` already is: "anthropic", "openai" or None."""
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
