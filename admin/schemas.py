"""Response-only shapes of the admin API (request shapes are the store models). Used for the OpenAPI document
and, for health, to read the proxy's published file defensively."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    loc: str = Field(description='Dotted path of the offending field, e.g. "targets.0.weight"')
    msg: str


class ErrorBody(BaseModel):
    error: str = Field(description="One line a person can act on")
    details: list[ErrorDetail] = Field(default_factory=list)


class PublishedTargetHealth(BaseModel):
    """One entry of the proxy's health file; anything malformed there reads as "unknown"."""

    model_config = ConfigDict(extra="ignore")

    state: Literal["closed", "open", "half_open"]
    consecutive_failures: int = 0
    last_error: str | None = None
    last_error_at: str | None = None
    cooldown_remaining_s: float = 0.0
    ewma_ttfb_ms: float | None = None
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    quota_exhausted_until: str | None = None
    quota_reason: str | None = None
    source: Literal["shared"] | None = None
    origin: str | None = None
    origin_reason: str | None = None


class TargetHealth(BaseModel):
    target_id: str
    provider: str | None
    host: str | None
    port: int | None
    state: Literal["closed", "open", "half_open", "unknown"] = Field(
        description='"unknown": the proxy has published nothing for this target (not running, or not used yet)'
    )
    consecutive_failures: int | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    cooldown_remaining_s: float | None = None
    ewma_ttfb_ms: float | None = None
    in_flight: int | None = None
    requests: int | None = None
    failures: int | None = None
    quota_exhausted_until: str | None = Field(
        default=None, description="Until when (RFC 3339) the target is skipped as out of quota: its configured "
                                  "limits, or what its provider's rate-limit headers said")
    quota_reason: str | None = Field(default=None, description='What said so: "limits.requests", '
                                                               '"limits.tokens" or the provider header')
    source: Literal["shared"] | None = Field(
        default=None, description='"shared": the circuit state is another proxy process\'s verdict, received through '
                                  'Redis (docs/shared-state.md); absent: this process\'s own')
    origin: str | None = Field(default=None, description="The proxy process whose verdict it is (source shared)")
    origin_reason: str | None = Field(default=None, description="Why that process opened the circuit")


class UpstreamHealth(BaseModel):
    upstream_id: str
    published_at: str | None = Field(description="When the proxy last published health (RFC 3339), if ever")
    stale: bool = Field(description="True when nothing was published in the last 5 seconds")
    targets: list[TargetHealth]


class WorkerHealth(UpstreamHealth):
    """What one proxy worker process (``aigw up --workers N``) published for the upstream."""

    worker: str = Field(description="The worker id")


class MergedUpstreamHealth(UpstreamHealth):
    workers: list[WorkerHealth] = Field(
        default_factory=list,
        description="Per worker process, when several publish (aigw up --workers N); empty for a single process")
