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

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator


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


from .base import Entity, GatewayScoped, Model, _takes_int  # noqa: F401  (re-exported)
from .upstream import (  # noqa: F401  (re-exported: the one import path for every model)
    ActiveHealthCheck, Credentials, Failover, HealthChecks, Pricing, Sticky, Target, Upstream,
)
from .limits import (  # noqa: F401  (re-exported)
    BUDGET_PERIODS, WINDOW_SECONDS, Budget, KeyLimits, RateLimit, TargetLimits,
)


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
    limits: KeyLimits | None = Field(default=None, description="aigw: the default limits of each of the "
                                                               "gateway's keys (each key counts on its own)")
    reasoning_content: StrictBool = Field(default=False, description=(
        "aigw: show the model's reasoning to OpenAI-format callers as `message.reasoning_content` (streams: "
        "`delta.reasoning_content`), the field DeepSeek and vLLM use, when a provider of another family returns it "
        "(Anthropic thinking, Gemini thoughts)"))

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
    limits: KeyLimits | None = None

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


class ApiKeyUpdate(Model):
    """Payload of ``PATCH /gateways/{gid}/keys/{kid}``: the fields given replace the stored ones (``limits: null``
    removes the key's own limits). The key itself, its hash and prefix never change: rotate by creating a new one."""

    name: NonEmptyStr | None = None
    active: StrictBool | None = None
    limits: KeyLimits | None = None


class ApiKeyView(Model):
    """What the admin API shows of a stored key: never the key or its hash."""

    id: str
    gateway_id: str | None = None
    name: str
    key_prefix: str
    expires_at: UtcDatetime | None = None
    active: bool = True
    limits: KeyLimits | None = None
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
    limits: KeyLimits | None = None

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
