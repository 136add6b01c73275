"""Fault rules: what the mock does instead of (or on the way to) a normal answer.

Fault rules (``set_faults([...])`` / ``POST /_mock/faults``), checked in order; the first live matching rule is
used and, when it has ``times``, one use is consumed::

    {"match": {"path_contains": str, "stream": bool, "provider": "openai"|"anthropic"|"gemini", "model": str},
     "times": int,                        # default: forever
     # actions (at least one; they combine in this order):
     "delay": seconds,                    # wait before anything is sent (large = hang)
     "close": true,                       # drop the TCP connection without a response
     "status": int, "retry_after": "7", "body": dict|str, "headers": {...},   # provider-shaped error
                                          #   (headers without status: added to the normal answer)
     "first_token_delay": seconds,        # headers now, first event (JSON: the body) after the wait
     "stall_after": k, "stall": seconds,  # k events, silence, then the rest (JSON: half the body, silence, rest)
     "cut_after": k,                      # k events, then drop the connection, never the terminal event
                                          #   (JSON: headers and half the body, then drop)
     "error_event_after": k,              # k events, then the provider's in-stream error, then end
     "trickle_after": k,                  # streams: k events, then bytes without any newline: `trickle_chunk`
     "trickle_chunk": n, "trickle_interval": s, "trickle_bytes": n}  # bytes (default 1) every s seconds
                                          #   (default 1), `trickle_bytes` in all (default: until the client
                                          #   leaves), then the connection is dropped
                                          #   (JSON: the provider's overloaded status error instead)

An event is one SSE message (``message_start``, ``ping`` and ``[DONE]`` count). Faults apply to the provider
endpoints and ``/v1/models``, never to ``/healthz`` or ``/_mock/``; they take effect before authentication
and validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from .common import PROVIDERS

_RULE_KEYS = {"match", "times", "status", "retry_after", "body", "headers", "close", "delay", "first_token_delay",
              "cut_after", "stall_after", "stall", "error_event_after", "trickle_after", "trickle_chunk",
              "trickle_interval", "trickle_bytes"}
_MATCH_KEYS = {"path_contains", "stream", "provider", "model"}


@dataclass(slots=True)
class FaultRule:
    path_contains: str | None = None
    stream: bool | None = None
    provider: str | None = None
    model: str | None = None
    times: int | None = None  # remaining uses; None = forever
    status: int | None = None
    retry_after: str | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False
    delay: float = 0.0
    first_token_delay: float = 0.0
    cut_after: int | None = None
    stall_after: int | None = None
    stall: float = 0.0
    error_event_after: int | None = None
    trickle_after: int | None = None
    trickle_chunk: int = 1
    trickle_interval: float = 1.0
    trickle_bytes: int | None = None

    def matches(self, provider: str, path: str, stream: bool, model: Any) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.path_contains is not None and self.path_contains not in path:
            return False
        if self.provider is not None and self.provider != provider:
            return False
        if self.model is not None and self.model != model:
            return False
        return self.stream is None or self.stream == stream

    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        match = {k: getattr(self, k) for k in _MATCH_KEYS if getattr(self, k) is not None}
        if match:
            out["match"] = match
        for k in ("times", "status", "retry_after", "body", "cut_after", "stall_after", "error_event_after",
                  "trickle_after", "trickle_bytes"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        for k in ("delay", "first_token_delay", "stall"):
            if getattr(self, k):
                out[k] = getattr(self, k)
        if self.close:
            out["close"] = True
        if self.headers:
            out["headers"] = dict(self.headers)
        return out


def _nonneg(rule: dict, key: str, kind: type) -> Any:
    v = rule.get(key)
    if v is None:
        return None
    ok = isinstance(v, (int, float)) if kind is float else isinstance(v, int)
    if isinstance(v, bool) or not ok or v < 0:
        raise ValueError(f"fault rule: {key!r} must be a non-negative {kind.__name__}, got {v!r}")
    return kind(v)


def parse_fault(rule: Any) -> FaultRule:
    """Validate one fault rule (see the module docstring) and return it as a FaultRule."""
    if not isinstance(rule, dict):
        raise ValueError(f"fault rule must be an object, got {type(rule).__name__}")
    unknown = set(rule) - _RULE_KEYS
    if unknown:
        raise ValueError(f"fault rule: unknown keys {sorted(unknown)}")
    match = rule.get("match") or {}
    if not isinstance(match, dict) or set(match) - _MATCH_KEYS:
        raise ValueError(f"fault rule: 'match' must be an object with keys among {sorted(_MATCH_KEYS)}")
    if match.get("provider") not in (None, *PROVIDERS):
        raise ValueError(f"fault rule: match.provider must be one of {PROVIDERS}")
    if match.get("stream") not in (None, True, False):
        raise ValueError("fault rule: match.stream must be a boolean")
    status = rule.get("status")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599):
        raise ValueError(f"fault rule: 'status' must be an HTTP status code, got {status!r}")
    headers = rule.get("headers") or {}
    if not isinstance(headers, dict):
        raise ValueError("fault rule: 'headers' must be an object")
    if rule.get("close") not in (None, True, False):
        raise ValueError("fault rule: 'close' must be a boolean")
    fr = FaultRule(
        path_contains=match.get("path_contains"), stream=match.get("stream"), provider=match.get("provider"),
        model=match.get("model"), times=_nonneg(rule, "times", int), status=status,
        retry_after=None if rule.get("retry_after") is None else str(rule["retry_after"]),
        body=rule.get("body"), headers={str(k): str(v) for k, v in headers.items()}, close=bool(rule.get("close")),
        delay=_nonneg(rule, "delay", float) or 0.0, first_token_delay=_nonneg(rule, "first_token_delay", float) or 0.0,
        cut_after=_nonneg(rule, "cut_after", int), stall_after=_nonneg(rule, "stall_after", int),
        stall=_nonneg(rule, "stall", float) or 0.0, error_event_after=_nonneg(rule, "error_event_after", int),
        trickle_after=_nonneg(rule, "trickle_after", int), trickle_chunk=_nonneg(rule, "trickle_chunk", int) or 1,
        trickle_interval=_nonneg(rule, "trickle_interval", float) if "trickle_interval" in rule else 1.0,
        trickle_bytes=_nonneg(rule, "trickle_bytes", int),
    )
    if not (fr.status or fr.close or fr.delay or fr.first_token_delay or fr.cut_after is not None
            or fr.stall_after is not None or fr.error_event_after is not None or fr.trickle_after is not None
            or fr.headers):
        raise ValueError("fault rule: needs an action (status, headers, close, delay, first_token_delay, "
                         "cut_after, stall_after, error_event_after)")
    if fr.stall_after is not None and not fr.stall:
        raise ValueError("fault rule: 'stall_after' needs 'stall' (seconds)")
    return fr


def parse_faults(rules: Iterable[Any]) -> list[FaultRule]:
    if isinstance(rules, dict) or not isinstance(rules, (list, tuple)):
        raise ValueError("faults must be a JSON list of rules")
    return [parse_fault(r) for r in rules]
