"""What one request's attempts came to: the tally the failover loop keeps, and the caller's answer when no target
served (pure; addon/dispatch.py runs the loop)."""

from __future__ import annotations

from dataclasses import dataclass, field

from addon.attempt import Reason
from providers import GatewayError


@dataclass(slots=True)
class Tally:
    """What the attempts so far came to."""
    attempts: list[str] = field(default_factory=list)  # X-Gateway-Attempts labels
    reasons: list[Reason] = field(default_factory=list)
    retry_afters: list[float] = field(default_factory=list)
    unsupported: GatewayError | None = None


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: let the breaker use its own cool-down


def exhausted(reasons: list[Reason], retry_afters: list[float], attempts: list[str]) -> GatewayError:
    """The caller's answer when no target served: 429 when all were rate-limited (shortest Retry-After),
    504 when all timed out, 502 otherwise; 503 when none could be tried."""
    chain = ",".join(attempts) or "none"
    if not reasons:
        return GatewayError(503, "unavailable", "No target available.")
    if all(r == Reason.RATE_LIMITED for r in reasons):
        wait = min(retry_afters) if retry_afters else 1.0
        return GatewayError(429, "rate_limit", f"Every target is rate-limited (attempts: {chain}).",
                            code="rate_limit_exceeded", retry_after=str(max(1, int(round(wait)))))
    if all(r == Reason.TIMEOUT for r in reasons):
        return GatewayError(504, "timeout", f"Every target timed out (attempts: {chain}).")
    return GatewayError(502, "api_error", f"Every target failed (attempts: {chain}).")
