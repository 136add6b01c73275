"""Persistence: the pydantic schema of every admin entity, the TinyDB-backed repository (atomic, multi-process
safe) and the immutable Snapshot the data plane reads. No Flask, no mitmproxy."""

from .errors import Conflict, InvalidReference, NotFound, StoreError, StoreUnavailable
from .repo import Store
from .snapshot import Snapshot, SnapshotLoader

__all__ = [
    "Conflict",
    "InvalidReference",
    "NotFound",
    "Snapshot",
    "SnapshotLoader",
    "Store",
    "StoreError",
    "StoreUnavailable",
]
