"""Field types, vocabularies and admin-input checks shared by the store models (store/models.py): strict
numbers, timestamps, ids, the provider/algorithm/retry vocabularies, and validators that apply to admin input only.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Callable, Literal, get_args

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, ValidationInfo

from providers import PROVIDERS as _PROVIDERS

from .validation import host_problem, path_problem


# --------------------------------------------------------------------------------------------------------------
# Shared field types
# --------------------------------------------------------------------------------------------------------------

#: Strict numbers: ``"5"`` or ``true`` for a weight is a client bug worth a 400, not something to guess at.
#: Integers stay within what every JSON client represents exactly (2**53 - 1): a bigger weight, port or interval
#: is a typo, and would overflow float arithmetic (time-outs, schedules) in the data plane.
MAX_JSON_INT = 2**53 - 1
StrictInt = Annotated[int, Field(strict=True, le=MAX_JSON_INT)]
#: ``1e400`` parses to infinity; it would be stored as the non-JSON ``Infinity``.
StrictFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
StrictBool = Annotated[bool, Field(strict=True)]
NonEmptyStr = Annotated[str, Field(strict=True, min_length=1)]


def utc_now() -> datetime:
    """Current time, aware UTC, truncated to the millisecond precision timestamps are stored with (so a returned
    record equals the same record read back)."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def to_utc(value: datetime) -> datetime:
    """Normalise to UTC; a naive datetime is taken to already be UTC (lenient with hand-written payloads)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def format_rfc3339(value: datetime) -> str:
    """RFC 3339 UTC with millisecond precision and a ``Z`` suffix, e.g. ``2026-01-02T03:04:05.678Z``."""
    return to_utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: A timestamp: accepted as RFC 3339 (any offset), held as aware UTC, always written as ``...Z``.
UtcDatetime = Annotated[
    datetime,
    AfterValidator(to_utc),
    PlainSerializer(format_rfc3339, return_type=str, when_used="json"),
]


def new_id() -> str:
    """Server-generated identifier (uuid4, canonical text form)."""
    return str(uuid.uuid4())


# --------------------------------------------------------------------------------------------------------------
# Known vocabularies
# --------------------------------------------------------------------------------------------------------------

#: The provider names come from the translation layer's registry (providers/ is pure; store may import it).
PROVIDERS: tuple[str, ...] = _PROVIDERS
Provider = Literal[PROVIDERS]  # type: ignore[valid-type]  # Literal[("a", "b")] is Literal["a", "b"]

#: Load-balancing algorithms: the one list the models, the balancer and the OpenAPI document use.
Algorithm = Literal["round-robin", "weighted-round-robin", "random", "least-connections", "latency-aware", "sticky",
                    "lowest-cost"]
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)
ALGORITHM_ALIASES: dict[str, str] = {"least-conn": "least-connections"}

HTTP_METHODS: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

RETRY_CONDITIONS: tuple[str, ...] = ("connect", "timeout", "5xx", "429", "401", "403")
RetryCondition = Literal["connect", "timeout", "5xx", "429", "401", "403"]

DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
#: Target ids end up in health keys ``"<upstream_id>/<target_id>"`` and in response headers: no slashes or spaces.
TARGET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
#: ``header:<Name>`` (an HTTP token) or ``api_key``.
STICKY_HASH_ON = re.compile(r"api_key|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _lowercase(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _ascii_lowercase(value: Any) -> Any:
    """Lower-case ASCII only: ``str.lower`` maps some non-ASCII letters to ASCII (KELVIN SIGN -> ``k``)."""
    return _lowercase(value) if isinstance(value, str) and value.isascii() else value


def _absolute_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("path must start with '/'")
    return value


#: A URL path (target, endpoint service or rule): starts with "/".
AbsolutePath = Annotated[str, AfterValidator(_absolute_path), Field(json_schema_extra={"pattern": "^/"})]
#: How a target or endpoint is reached; "HTTPS" and " http " mean the same.
Protocol = Annotated[Literal["http", "https"], BeforeValidator(_lowercase)]


#: Validation context of client payloads (``Entity.from_payload``): checks added after records were stored are
#: applied to new input only, so older stored records stay loadable.
INPUT_CONTEXT = {"admin_input": True}


def _is_input(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("admin_input"))


def _admin_check(problem: Callable[[str], str | None]) -> Callable[[str | None, ValidationInfo], str | None]:
    """A field validator applying `problem` to admin input only (stored records stay loadable)."""

    def check(value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and _is_input(info):
            why = problem(value)
            if why:
                raise ValueError(why)
        return value

    return check


_check_path = _admin_check(path_problem)
_check_valid_host = _admin_check(host_problem)


def _check_host(value: str | None, info: ValidationInfo) -> str | None:
    """Admin input: a valid host, IPv6 kept without brackets (the URL gets them when it is built)."""
    value = _check_valid_host(value, info)
    return value[1:-1] if value is not None and _is_input(info) and value.startswith("[") else value
