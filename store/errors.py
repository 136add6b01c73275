"""Errors raised by the repository. The admin API maps each class to one HTTP status."""

from __future__ import annotations

from pydantic import ValidationError


class StoreError(Exception):
    """Base class. ``details`` follows the admin error shape: ``[{"loc": ..., "msg": ...}]``."""

    def __init__(self, message: str, details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class NotFound(StoreError):
    """No such entity (or it belongs to another gateway, which callers must not be able to tell apart)."""

    def __init__(self, kind: str, entity_id: str) -> None:
        super().__init__(f"{kind} {entity_id!r} not found")
        self.kind = kind
        self.entity_id = entity_id


class Conflict(StoreError):
    """The write contradicts stored state: a duplicate unique value, or a delete of something still referenced."""


class InvalidReference(StoreError):
    """A field names an entity that does not exist in the same gateway (a client error on that field)."""

    def __init__(self, loc: str, message: str) -> None:
        super().__init__(message, [{"loc": loc, "msg": message}])


class StoreUnavailable(StoreError):
    """The store cannot be used right now: the lock is held too long, or the file is unreadable."""


def summarize_validation_error(exc: ValidationError) -> str:
    """One line for logs and messages: the count and the first location/message, never the input values (a
    stored record holds provider credentials)."""
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    first = errors[0]
    return f"{len(errors)} validation error(s), first: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
