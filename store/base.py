"""The base classes of every store model: frozen, extra-ignoring, integral floats accepted for ints; entities
with server-owned ids and timestamps. See store/models.py."""

from __future__ import annotations

from functools import cache
from types import UnionType
from typing import Annotated, Any, ClassVar, Self, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


from .fields import (
    INPUT_CONTEXT,
    UtcDatetime,
    new_id,
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


