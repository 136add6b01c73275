"""An upstream and its parts: targets (with credentials), health checks, failover, sticky sessions.

Re-exported by store/models.py, the one import path for every model."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self

from pydantic import BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .validation import HEADER_NAME, HEADER_VALUE_FORBIDDEN, check_header

from .fields import (
    ALGORITHM_ALIASES,
    AbsolutePath,
    Algorithm,
    NonEmptyStr,
    Protocol,
    Provider,
    RETRY_CONDITIONS,
    RetryCondition,
    STICKY_HASH_ON,
    StrictBool,
    StrictFloat,
    StrictInt,
    TARGET_ID,
    _check_host,
    _check_path,
    _is_input,
    _lowercase,
    new_id,
)


from .base import GatewayScoped, Model
from .limits import TargetLimits


# --------------------------------------------------------------------------------------------------------------
# Upstream and its parts
# --------------------------------------------------------------------------------------------------------------


class Credentials(Model):
    """How the gateway authenticates to a provider: an explicit header, or ``api_key`` in the provider's own
    header (``Authorization: Bearer`` for OpenAI, ``x-api-key`` for Anthropic, ...). Write-only in the admin API."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["header_name", "header_value"],
         "properties": {"header_name": {"type": "string", "pattern": f"^{HEADER_NAME.pattern}$"},
                        "header_value": {"type": "string", "pattern": "^[^\\x00-\\x08\\x0a-\\x1f\\x7f]+$"},
                        "api_key": {"type": "null"}}},
        {"required": ["api_key"],
         "properties": {"api_key": {"type": "string", "pattern": "^[^\\x00-\\x08\\x0a-\\x1f\\x7f]+$"},
                        "header_name": {"type": "null"}, "header_value": {"type": "null"}}},
    ]})

    header_name: NonEmptyStr | None = None
    header_value: NonEmptyStr | None = None
    api_key: NonEmptyStr | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        explicit = self.header_name is not None or self.header_value is not None
        if explicit and self.api_key is not None:
            raise ValueError("give either header_name/header_value or api_key, not both")
        if explicit and (self.header_name is None or self.header_value is None):
            raise ValueError("header_name and header_value must be given together")
        if not explicit and self.api_key is None:
            raise ValueError("credentials need header_name and header_value, or api_key")
        return self

    @model_validator(mode="after")
    def _valid_header(self, info: ValidationInfo) -> Self:
        if _is_input(info):
            if self.header_name is not None:
                check_header(self.header_name, self.header_value, "credentials header")
            if self.api_key is not None and HEADER_VALUE_FORBIDDEN.search(self.api_key):
                raise ValueError("api_key contains control characters (CR, LF, NUL, ...)")
        return self

    def secret(self) -> str:
        """The secret part, whichever form was used."""
        return self.api_key if self.api_key is not None else self.header_value  # type: ignore[return-value]


#: A price in currency units per million tokens. Capped so that no token count a provider reports can make a cost
#: overflow to infinity (which is not JSON); a million per million tokens is already one unit per token.
Price = Annotated[StrictFloat, Field(ge=0, le=1_000_000)]


class Pricing(Model):
    """aigw: what a target's tokens cost, per million tokens, for usage cost estimates. Not a secret: shown as
    stored. One fixed currency, so the costs of different targets add up."""

    input_per_million: Price
    output_per_million: Price
    cached_input_per_million: Price | None = Field(
        default=None, description="Price of input tokens read from the provider's prompt cache; "
                                  "defaults to input_per_million"
    )
    currency: Literal["USD"] = "USD"

    @property
    def cached_rate(self) -> float:
        """The effective price of cached input tokens."""
        if self.cached_input_per_million is None:
            return self.input_per_million
        return self.cached_input_per_million


class Target(Model):
    """One provider endpoint inside an upstream."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["provider"], "properties": {"provider": {"type": "string"}}},
        {"required": ["host", "port", "protocol"],
         "properties": {"host": {"type": "string"}, "port": {"type": "integer"}, "protocol": {"type": "string"}}},
    ]})

    id: Annotated[
        str,
        Field(strict=True, description="Kept when given (health state is keyed by it)",
              json_schema_extra={"pattern": f"^{TARGET_ID.pattern}$"}),
    ] = Field(
        default_factory=new_id
    )
    provider: Annotated[Provider, BeforeValidator(_lowercase)] | None = None
    path: AbsolutePath | None = Field(default=None,
                                      description="Provider endpoint; defaults to the provider's chat path")
    host: NonEmptyStr | None = None
    port: Annotated[StrictInt, Field(ge=1, le=65535)] | None = None
    protocol: Protocol | None = None
    weight: Annotated[StrictInt, Field(ge=0)] = 1
    priority: Annotated[StrictInt, Field(ge=1)] = 1
    models: list[NonEmptyStr] = Field(default_factory=list)
    default_model: NonEmptyStr | None = None
    headers: dict[str, str] = Field(default_factory=dict, json_schema_extra={
        "propertyNames": {"pattern": f"^{HEADER_NAME.pattern}$"},
        "additionalProperties": {"type": "string", "pattern": "^[^\\x00-\\x08\\x0a-\\x1f\\x7f]*$"},
    })
    credentials: Credentials | None = None
    description: str | None = None
    tags: list[str] = Field(default_factory=list)
    max_tokens_default: Annotated[StrictInt, Field(gt=0)] | None = Field(
        default=None, description="aigw: max_tokens sent when the provider requires one and the client gave none"
    )
    api_version: str | None = Field(default=None, description="aigw: Azure OpenAI api-version")
    pricing: Pricing | None = Field(default=None, description="aigw: token prices, for usage cost estimates and "
                                                              "the lowest-cost algorithm")
    limits: TargetLimits | None = Field(default=None, description="aigw: the provider account's rate limits; "
                                                                  "traffic moves to other targets before them")

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not TARGET_ID.fullmatch(value):
            raise ValueError("target id must be 1-64 characters of letters, digits, '.', '_', ':' or '-'")
        return value


    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if _is_input(info):
            for name, header_value in value.items():
                check_header(name, header_value, "header")
        return value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _check_host(value, info)

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _check_path(value, info)

    @field_validator("api_version")
    @classmethod
    def _check_api_version(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and _is_input(info) and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
            raise ValueError("api_version must be 1-64 letters, digits, '.', '_' or '-' (e.g. 2024-10-21)")
        return value

    @field_validator("default_model")
    @classmethod
    def _default_model_listed(cls, value: str | None, info: ValidationInfo) -> str | None:
        models = info.data.get("models")  # declared before default_model, so already validated (if valid)
        if value is not None and models and value not in models:
            raise ValueError(f"default_model {value!r} is not one of models {models}")
        return value

    @model_validator(mode="after")
    def _origin_without_provider(self) -> Self:
        if self.provider is None:
            missing = [name for name in ("host", "port", "protocol") if getattr(self, name) is None]
            if missing:
                raise ValueError(
                    f"a target without provider is forwarded untranslated and needs {', '.join(missing)}"
                )
        return self


class ActiveHealthCheck(Model):
    """Optional probing. Off by default: probes against paid APIs cost money."""

    enabled: StrictBool = False
    path: str = "/v1/models"
    interval: Annotated[StrictInt, Field(gt=0)] = 30

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str, info: ValidationInfo) -> str:
        # A probe carries the target's credentials: its path must not move it elsewhere ("@evil/…", "//host").
        return _check_path(value, info)


class HealthChecks(Model):
    """Passive health from live traffic (and, when enabled, active probes)."""

    passive: StrictBool = True
    threshold: Annotated[StrictInt, Field(gt=0, description="Failures that open the circuit")] = 3
    interval: Annotated[
        StrictInt, Field(gt=0, description="Seconds: failure window, and rest before a trial request")
    ] = 60
    error_ratio: Annotated[StrictFloat, Field(gt=0, le=1)] | None = None
    min_requests: Annotated[StrictInt, Field(gt=0)] = 10
    active: ActiveHealthCheck | None = None


class Failover(Model):
    """aigw: when to move on to the next target, and the per-attempt / per-request time limits (seconds)."""

    retry_on: list[RetryCondition] = Field(default_factory=lambda: list(RETRY_CONDITIONS))
    connect_timeout: Annotated[StrictFloat, Field(gt=0)] = 5.0
    # A non-stream answer's headers come only once the whole completion is generated: minutes for long ones.
    headers_timeout: Annotated[StrictFloat, Field(gt=0)] = 300.0
    # Reasoning models can think for a while before their first streamed token.
    first_token_timeout: Annotated[StrictFloat, Field(gt=0)] = 60.0
    idle_timeout: Annotated[StrictFloat, Field(gt=0)] = 60.0
    max_attempts: Annotated[StrictInt, Field(gt=0)] | None = None
    total_timeout: Annotated[StrictFloat, Field(gt=0)] | None = 600.0

    @field_validator("retry_on", mode="before")
    @classmethod
    def _normalise_conditions(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [_lowercase(str(item)) if isinstance(item, (str, int)) else item for item in value]
        return value


class Sticky(Model):
    """aigw: session affinity for the ``sticky`` algorithm."""

    hash_on: str = Field(default="api_key", description='"api_key" or "header:<Header-Name>"',
                         json_schema_extra={"pattern": f"^({STICKY_HASH_ON.pattern})$"})
    ttl: Annotated[StrictInt, Field(gt=0, description="Seconds an affinity is remembered")] = 300

    @field_validator("hash_on")
    @classmethod
    def _check_hash_on(cls, value: str) -> str:
        if not STICKY_HASH_ON.fullmatch(value):
            raise ValueError('hash_on must be "api_key" or "header:<Header-Name>"')
        return value


class Upstream(GatewayScoped):
    """A pool of targets and how to balance and fail over between them."""

    name: NonEmptyStr
    algorithm: Algorithm = "round-robin"
    targets: Annotated[list[Target], Field(min_length=1)]
    health_checks: HealthChecks = Field(default_factory=HealthChecks)
    failover: Failover = Field(default_factory=Failover)
    sticky: Sticky | None = Field(default=None, description="Defaults to {hash_on: api_key, ttl: 300} for sticky")
    tags: list[str] = Field(default_factory=list)

    @field_validator("algorithm", mode="before")
    @classmethod
    def _normalise_algorithm(cls, value: Any) -> Any:
        value = _lowercase(value)
        if isinstance(value, str):
            value = value.replace("_", "-")
            return ALGORITHM_ALIASES.get(value, value)
        return value

    @field_validator("targets")
    @classmethod
    def _unique_target_ids(cls, targets: list[Target]) -> list[Target]:
        seen: set[str] = set()
        for target in targets:
            if target.id in seen:
                raise ValueError(f"duplicate target id {target.id!r}")
            seen.add(target.id)
        return targets

    @model_validator(mode="after")
    def _sticky_defaults(self) -> Self:
        if self.algorithm == "sticky" and self.sticky is None:
            # Frozen model: set through __dict__ once, during validation, before anyone can observe it.
            self.__dict__["sticky"] = Sticky()
        return self

    def target(self, target_id: str) -> Target | None:
        return next((t for t in self.targets if t.id == target_id), None)


