"""How one upstream's target failures are judged: its ``health_checks`` resolved once per snapshot (pure).

Split from addon/health.py, which re-exports it (``from addon.health import HealthPolicy`` is the usual import).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["HealthPolicy"]


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """How failures of one upstream's targets are judged (store's HealthChecks, resolved once per snapshot)."""

    passive: bool = True
    threshold: int = 3
    interval: float = 60.0
    error_ratio: float | None = None
    min_requests: int = 10
    active: bool = False  # active probes enabled: probe failures may open the circuit even when passive is off

    @property
    def breaker(self) -> bool:
        """Whether circuits are enforced at all (passive health from traffic, or active probes)."""
        return self.passive or self.active

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError("threshold must be >= 1")
        if self.interval <= 0:
            raise ValueError("interval must be > 0")
        if self.error_ratio is not None and not 0 < self.error_ratio <= 1:
            raise ValueError("error_ratio must be in (0, 1]")
        if self.min_requests < 1:
            raise ValueError("min_requests must be >= 1")

    @classmethod
    def from_model(cls, hc: Any) -> HealthPolicy:
        """Build from a pydantic HealthChecks (or a mapping); None or missing fields take the defaults."""
        if hc is None:
            return cls()
        get = hc.get if isinstance(hc, Mapping) else (lambda name, default: getattr(hc, name, default))
        d = cls()
        ratio = get("error_ratio", None)
        active = get("active", None)
        if isinstance(active, Mapping):
            active_on = bool(active.get("enabled", False))
        else:
            active_on = bool(getattr(active, "enabled", False)) if active is not None else False
        return cls(
            passive=bool(get("passive", d.passive)),
            threshold=int(get("threshold", d.threshold)),
            interval=float(get("interval", d.interval)),
            error_ratio=None if ratio is None else float(ratio),
            min_requests=int(get("min_requests", d.min_requests)),
            active=active_on,
        )
