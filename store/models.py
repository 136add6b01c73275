"""Pydantic v2 models: the single source of truth for every admin entity (reference/api.md).

The same classes validate admin payloads, are what the store persists (``model_dump(mode="json")``) and are what
the data plane reads from the Snapshot, so a rule is written once. Every model is frozen (the Snapshot hands
them to many coroutines) and ignores unknown fields (TrustGate's guide sends extras such as
``provider_options``; those must never turn into a 400).

Validation here must be *stateless*: a record that was valid when stored must stay loadable forever. Checks that
depend on time or on other records (a key's ``expires_at`` in the future, a service's upstream existing, unique
names) live in :class:`ApiKeyCreate` and in the repository respectively.
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import cache
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Self, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .validation import HEADER_NAME, HEADER_VALUE_FORBIDDEN, check_header

from .fields import (  # noqa: F401  (re-exported: the models' vocabularies)
    ALGORITHMS,
    ALGORITHM_ALIASES,
    AbsolutePath,
    Algorithm,
    DNS_LABEL,
    HTTP_METHODS,
    HttpMethod,
    INPUT_CONTEXT,
    MAX_JSON_INT,
    NonEmptyStr,
    PROVIDERS,
    Protocol,
    Provider,
    RETRY_CONDITIONS,
    RetryCondition,
    STICKY_HASH_ON,
    StrictBool,
    StrictFloat,
    StrictInt,
    TARGET_ID,
    UtcDatetime,
    _absolute_path,
    _ascii_lowercase,
    _check_host,
    _check_path,
    _is_input,
    _lowercase,
    format_rfc3339,
    new_id,
    to_utc,
    utc_now,
)


# --------------------------------------------------------------------------------------------------------------
# Base classes
# --------------------------------------------------------------------------------------------------------------


@cache
def _takes_int(model: type[BaseModel], field_name: str) -> bool:
    """Whether the field is an int (possibly optional) and not also a float."""

    def kinds(annotation: Any) -> set[Any]:
        if get_origin(annotation) is Annotated:
            return kinds(get_args(annotation)[0])
        if get_origin(annotation) in (Union, UnionType):
            return set().union(*(kinds(arg) for arg in get_args(annotation)))
        return {annotation}

    found = kinds(model.model_fields[field_name].annotation)
    return int in found and float not in found


class Model(BaseModel):
    """Frozen, extra-ignoring base for every value object."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    @field_validator("*", mode="before")
    @classmethod
    def _integral_float(cls, value: Any, info: ValidationInfo) -> Any:
        """``50.0`` is the integer 50 in JSON (and JSON Schema): accepted for an int field; ``50.5`` is not."""
        if isinstance(value, float) and value.is_integer() and info.field_name and _takes_int(cls, info.field_name):
            return int(value)
        return value


class Entity(Model):
    """A top-level record with a server-owned identity and timestamps.

    ``SERVER_FIELDS`` are owned by the repository: they are dropped from client payloads (a client cannot
    choose an id or back-date ``created_at``) and filled in when the record is stored.
    """

    SERVER_FIELDS: ClassVar[frozenset[str]] = frozenset({"id", "gateway_id", "created_at", "updated_at"})

    id: str = Field(default_factory=new_id, json_schema_extra={"readOnly": True}, description="Server-generated id")
    created_at: UtcDatetime = Field(default_factory=utc_now, json_schema_extra={"readOnly": True})
    updated_at: UtcDatetime = Field(default_factory=utc_now, json_schema_extra={"readOnly": True})

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Self:
        """Validate a client payload, ignoring any server-owned fields it carries."""
        return cls.model_validate(
            {k: v for k, v in payload.items() if k not in cls.SERVER_FIELDS}, context=INPUT_CONTEXT
        )


class GatewayScoped(Entity):
    """An entity that belongs to one gateway (everything but the gateway itself)."""

    gateway_id: str | None = Field(default=None, json_schema_extra={"readOnly": True})


# --------------------------------------------------------------------------------------------------------------
# Gateway
# --------------------------------------------------------------------------------------------------------------


class Gateway(Entity):
    """A tenant: selected by the first label of the request's Host header."""

    name: NonEmptyStr
    subdomain: Annotated[
        str,
        Field(strict=True, description="DNS label, unique across gateways",
              json_schema_extra={"pattern": f"^{DNS_LABEL.pattern}$"}),
    ]
    status: Literal["active", "inactive"] = "active"

    @field_validator("subdomain", mode="before")
    @classmethod
    def _normalise_subdomain(cls, value: Any) -> Any:
        return _ascii_lowercase(value)

    @field_validator("subdomain")
    @classmethod
    def _check_subdomain(cls, value: str) -> str:
        if not DNS_LABEL.fullmatch(value):
            raise ValueError(
                "subdomain must be a DNS label: 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
            )
        return value


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


# --------------------------------------------------------------------------------------------------------------
# Service and Rule
# --------------------------------------------------------------------------------------------------------------


class Service(GatewayScoped):
    """What a rule routes to: an upstream of the same gateway, or a fixed endpoint."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"properties": {"type": {"const": "upstream"}, "upstream_id": {"type": "string"}}, "required": ["upstream_id"]},
        {"properties": {"type": {"const": "endpoint"}, "host": {"type": "string"}, "port": {"type": "integer"},
                        "protocol": {"type": "string"}},
         "required": ["type", "host", "port", "protocol"]},
    ]})

    name: NonEmptyStr
    type: Annotated[Literal["upstream", "endpoint"], BeforeValidator(_lowercase)] = "upstream"
    upstream_id: NonEmptyStr | None = None
    host: NonEmptyStr | None = None
    port: Annotated[StrictInt, Field(ge=1, le=65535)] | None = None
    protocol: Protocol | None = None
    path: AbsolutePath | None = None
    description: str | None = None
    tags: list[str] = Field(default_factory=list)


    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _check_host(value, info)

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _check_path(value, info)

    @model_validator(mode="after")
    def _fields_for_type(self) -> Self:
        if self.type == "upstream" and self.upstream_id is None:
            raise ValueError("a service of type 'upstream' needs upstream_id")
        if self.type == "endpoint":
            missing = [name for name in ("host", "port", "protocol") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"a service of type 'endpoint' needs {', '.join(missing)}")
        return self


class Rule(GatewayScoped):
    """Routes requests whose path starts with ``path`` (on a segment boundary) and whose method is listed."""

    name: str | None = None
    path: Annotated[str, Field(strict=True, min_length=1, json_schema_extra={"pattern": "^/"})]
    service_id: NonEmptyStr
    methods: Annotated[list[HttpMethod], Field(min_length=1)] = Field(
        default_factory=lambda: list(HTTP_METHODS), description="Defaults to every method"
    )
    strip_path: StrictBool = False
    active: StrictBool = True
    retry_attempts: Annotated[StrictInt, Field(gt=0)] | None = None

    @field_validator("path")
    @classmethod
    def _normalise_path(cls, value: str) -> str:
        # "/v1/" and "/v1" mean the same prefix; matching is on segment boundaries.
        return _absolute_path(value).rstrip("/") or "/"

    @field_validator("methods", mode="before")
    @classmethod
    def _normalise_methods(cls, value: Any) -> Any:
        if isinstance(value, list):
            upper = [item.strip().upper() if isinstance(item, str) else item for item in value]
            if all(isinstance(item, str) for item in upper):
                return list(dict.fromkeys(upper))  # de-duplicate, keep order
            return upper  # a non-string item: pydantic reports it (and it may be unhashable: no dict.fromkeys)
        return value

    def matches(self, path: str, method: str) -> bool:
        """Segment-boundary prefix match: ``/v1`` matches ``/v1`` and ``/v1/chat`` but not ``/v1x``."""
        if method.upper() not in self.methods:
            return False
        if self.path == "/" or path == self.path:
            return True
        return path.startswith(self.path) and path[len(self.path)] == "/"


# --------------------------------------------------------------------------------------------------------------
# API keys
# --------------------------------------------------------------------------------------------------------------


class ApiKeyCreate(Model):
    """Payload of ``POST /gateways/{gid}/keys``."""

    name: NonEmptyStr
    expires_at: UtcDatetime | None = None

    @field_validator("expires_at", mode="before")
    @classmethod
    def _rfc3339_string(cls, value: Any) -> Any:
        # pydantic would read a number as a Unix time (seconds or milliseconds, by size): too easy to get wrong.
        if value is not None and not isinstance(value, (str, datetime)):
            raise ValueError('expires_at must be an RFC 3339 string, e.g. "2030-01-01T00:00:00Z"')
        return value

    @field_validator("expires_at")
    @classmethod
    def _in_future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value <= utc_now():
            raise ValueError("expires_at must be in the future")
        return value


class ApiKeyView(Model):
    """What the admin API shows of a stored key: never the key or its hash."""

    id: str
    gateway_id: str | None = None
    name: str
    key_prefix: str
    expires_at: UtcDatetime | None = None
    active: bool = True
    created_at: UtcDatetime


class ApiKeyCreated(ApiKeyView):
    """The creation response: the only time the plaintext ``key`` is ever shown."""

    key: str


class ApiKey(GatewayScoped):
    """A client key as stored: sha256 of the plaintext plus a short prefix for people to recognise it."""

    SERVER_FIELDS: ClassVar[frozenset[str]] = Entity.SERVER_FIELDS | {"key_hash", "key_prefix"}

    name: NonEmptyStr
    key_hash: str
    key_prefix: str
    expires_at: UtcDatetime | None = None
    active: StrictBool = True

    def usable_at(self, now: datetime | None = None) -> bool:
        """Active and not expired. Time-dependent, so checked per request, not baked into the Snapshot."""
        if not self.active:
            return False
        return self.expires_at is None or self.expires_at > (now or utc_now())

    def view(self) -> ApiKeyView:
        return ApiKeyView.model_validate(self.model_dump(include=set(ApiKeyView.model_fields)))


#: Every stored entity type by its table name (also the URL segment of its admin resource).
ENTITY_TABLES: dict[str, type[Entity]] = {
    "gateways": Gateway,
    "upstreams": Upstream,
    "services": Service,
    "rules": Rule,
    "keys": ApiKey,
}
