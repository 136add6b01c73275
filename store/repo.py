"""The repository: every admin entity in one TinyDB JSON file, safe for many threads and many processes.

TinyDB's own JSONStorage rewrites the file in place (a concurrent reader can see half of it) and has no locking.
Here TinyDB keeps its file format and table API, but runs on :class:`AtomicJSONStorage`:

* every write happens inside :meth:`Store.transaction`, which holds a ``filelock`` on ``<path>.lock`` (several
  admin processes are safe) across the whole read-check-modify-write, so uniqueness and reference checks cannot
  race;
* inside a transaction the file is parsed once and every TinyDB operation works on that in-memory copy; at the end
  it is written once, to a temporary file that is fsynced and ``os.replace``d over the store. Readers therefore
  see the old or the new file and never a partial one, a writer killed mid-write leaves the old file intact, and
  a multi-record change (a cascading delete) is all-or-nothing;
* outside a transaction TinyDB reads straight from disk, so reads never block behind the lock.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from filelock import FileLock
from filelock import Timeout as LockTimeout
from pydantic import ValidationError
from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Document, Table

from .atomic import atomic_write_bytes, temp_prefix
from .errors import Conflict, InvalidReference, NotFound, StoreUnavailable, summarize_validation_error
from .keys import display_prefix, hash_key, new_key
from .models import ApiKey, ApiKeyCreate, Entity, Gateway, Rule, Service, Upstream, utc_now

log = logging.getLogger(__name__)

#: How long a write waits for another writer before giving up (a healthy write takes milliseconds).
LOCK_TIMEOUT_S = 30.0


def read_store_file(path: str) -> dict[str, Any] | None:
    """Parse the store file; ``None`` when it does not exist or is empty. Raises ``ValueError`` when corrupt."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return None
    return parse_store_bytes(raw)


def parse_store_bytes(raw: bytes) -> dict[str, Any] | None:
    """Decode the TinyDB document (``{table: {doc_id: doc}}``); ``None`` for an empty file."""
    if not raw.strip():
        return None
    data = json.loads(raw)
    if not isinstance(data, dict) or not all(isinstance(table, dict) for table in data.values()):
        raise ValueError("not a TinyDB document: expected {table: {doc_id: document}}")
    return data


class AtomicJSONStorage(Storage):
    """TinyDB storage that reads from disk, and writes only through a transaction (see the module docstring).

    Transaction state is per thread, so a thread reading outside a transaction never sees another thread's
    uncommitted changes.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._local = threading.local()

    def _pending(self) -> dict[str, Any] | None:
        return getattr(self._local, "data", None)

    def read(self) -> dict[str, dict[str, Any]] | None:
        pending = self._pending()
        if pending is not None:
            return pending
        try:
            return read_store_file(self._path)
        except ValueError as exc:
            raise StoreUnavailable(f"store file {self._path} is unreadable: {exc}") from exc

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        if not getattr(self._local, "writable", False):
            raise RuntimeError("store writes must happen inside Store.transaction()")
        self._local.data = data
        self._local.dirty = True

    @property
    def in_transaction(self) -> bool:
        return getattr(self._local, "writable", False)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Load once, let TinyDB work in memory, commit once. The caller holds the write lock."""
        self._local.data = self.read() or {}
        self._local.writable = True
        self._local.dirty = False
        try:
            yield
            if self._local.dirty:
                payload = json.dumps(self._local.data, ensure_ascii=False, separators=(",", ":"))
                atomic_write_bytes(self._path, payload.encode("utf-8"))
        finally:
            # On error nothing was written: dropping the in-memory copy is the rollback.
            self._local.data = None
            self._local.writable = False
            self._local.dirty = False

    @contextmanager
    def consistent_read(self) -> Iterator[None]:
        """Answer several TinyDB reads from one parse of the file (one version of it, and one parse, not N)."""
        if self._pending() is not None:
            yield
            return
        self._local.data = self.read() or {}
        try:
            yield
        finally:
            self._local.data = None

    def close(self) -> None:
        """Nothing held open between operations."""


class FieldsEqual:
    """A TinyDB query: every given field equals its value. Plain dict lookups (cheaper than ``Query()``
    trees over thousands of records), and not cacheable: other processes change the file under us."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self._items = tuple(fields.items())

    def __call__(self, doc: dict[str, Any]) -> bool:
        return all(doc.get(name) == value for name, value in self._items)

    def is_cacheable(self) -> bool:
        return False


@dataclass(frozen=True)
class Kind:
    """How the repository treats one table."""

    table: str
    model: type[Entity]
    label: str
    #: Field whose value must be unique: across all gateways for gateways, within the gateway otherwise.
    unique: str | None = None
    #: ``(field, table)`` pairs: the field must name an entity of that table in the same gateway.
    references: tuple[tuple[str, str], ...] = ()

    @property
    def scoped(self) -> bool:
        return self.table != "gateways"


KINDS: dict[str, Kind] = {
    kind.table: kind
    for kind in (
        Kind("gateways", Gateway, "gateway", unique="subdomain"),
        Kind("upstreams", Upstream, "upstream", unique="name"),
        Kind("services", Service, "service", references=(("upstream_id", "upstreams"),)),
        Kind("rules", Rule, "rule", references=(("service_id", "services"),)),
        Kind("keys", ApiKey, "key"),
    )
}
#: Children of a gateway, in the order a cascading delete removes them (referrers before what they reference).
GATEWAY_CHILDREN: tuple[str, ...] = ("keys", "rules", "services", "upstreams")


class Store:
    """CRUD for every entity, scoped by gateway.

    ``kind`` is a table name (``"gateways"``, ``"upstreams"``, ``"services"``, ``"rules"``, ``"keys"``); every
    method of a gateway-scoped kind takes ``gateway_id`` and answers :class:`NotFound` for the entity of another
    gateway exactly as for a missing one. Entities passed in are validated models; the store owns ``id`` (kept if
    the model carries one), ``gateway_id`` and the timestamps.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._db = TinyDB(self.path, storage=AtomicJSONStorage)
        self._thread_lock = threading.RLock()
        self._file_lock = FileLock(self.path + ".lock", timeout=LOCK_TIMEOUT_S)
        self._remove_orphan_temp_files()

    @property
    def _storage(self) -> AtomicJSONStorage:
        storage = self._db.storage
        assert isinstance(storage, AtomicJSONStorage)
        return storage

    def _table(self, name: str) -> Table:
        # A fresh Table each time: TinyDB caches query results and the next doc id per Table object, and both go
        # stale as soon as another process writes the file.
        return Table(self._db.storage, name, cache_size=0)

    # ----------------------------------------------------------------------------------------------------------
    # Transactions
    # ----------------------------------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the write lock and batch every write inside into one atomic file replacement.

        Re-entrant: Store methods called inside an outer transaction join it (so a caller can make several
        changes all-or-nothing).
        """
        with self._thread_lock:
            if self._storage.in_transaction:
                yield
                return
            try:
                self._file_lock.acquire()
            except LockTimeout as exc:
                raise StoreUnavailable(f"store is locked by another writer for over {LOCK_TIMEOUT_S:g}s") from exc
            try:
                with self._storage.transaction():
                    yield
            finally:
                self._file_lock.release()

    def _remove_orphan_temp_files(self) -> None:
        """Delete temp files left by writers that were killed mid-write. Safe only under the lock: no live
        writer of this store can be between creating its temp file and renaming it."""
        directory = os.path.dirname(os.path.abspath(self.path))
        prefix = temp_prefix(self.path)
        with self.transaction():
            for name in os.listdir(directory):
                if name.startswith(prefix):
                    try:
                        os.unlink(os.path.join(directory, name))
                    except FileNotFoundError:
                        pass

    # ----------------------------------------------------------------------------------------------------------
    # Generic CRUD
    # ----------------------------------------------------------------------------------------------------------

    def create(self, kind: str, entity: Entity, *, gateway_id: str | None = None) -> Entity:
        """Store a new entity; returns it as stored (with gateway_id and timestamps)."""
        spec = self._spec(kind, entity)
        with self.transaction():
            self._require_gateway(spec, gateway_id)
            table = self._table(spec.table)
            if self._find(table, entity.id) is not None:
                raise Conflict(f"{spec.label} {entity.id!r} already exists", [{"loc": "id", "msg": "already exists"}])
            now = utc_now()
            stored = self._stamp(spec, entity, entity.id, gateway_id, created_at=now, updated_at=now)
            self._check_constraints(spec, stored, gateway_id)
            table.insert(stored.model_dump(mode="json"))
            return stored

    def get(self, kind: str, entity_id: str, *, gateway_id: str | None = None) -> Entity:
        spec = KINDS[kind]
        with self._storage.consistent_read():
            self._require_gateway(spec, gateway_id)
            doc = self._find(self._table(spec.table), entity_id, gateway_id if spec.scoped else None)
        if doc is None:
            raise NotFound(spec.label, entity_id)
        return self._load(spec, doc)

    def list(
        self, kind: str, *, gateway_id: str | None = None, offset: int = 0, limit: int | None = None
    ) -> builtins.list[Entity]:
        """Entities in creation order, optionally one page of them."""
        spec = KINDS[kind]
        with self._storage.consistent_read():
            self._require_gateway(spec, gateway_id)
            docs = self._docs(self._table(spec.table), gateway_id if spec.scoped else None)
        end = None if limit is None else offset + limit
        return [self._load(spec, doc) for doc in docs[offset:end]]

    def replace(self, kind: str, entity_id: str, entity: Entity, *, gateway_id: str | None = None) -> Entity:
        """Full replacement (PUT): keeps id, gateway_id and created_at; bumps updated_at."""
        spec = self._spec(kind, entity)
        with self.transaction():
            self._require_gateway(spec, gateway_id)
            table = self._table(spec.table)
            doc = self._find(table, entity_id, gateway_id if spec.scoped else None)
            if doc is None:
                raise NotFound(spec.label, entity_id)
            created_at = self._load(spec, doc).created_at
            stored = self._stamp(spec, entity, entity_id, gateway_id, created_at=created_at, updated_at=utc_now())
            self._check_constraints(spec, stored, gateway_id)
            new_doc = stored.model_dump(mode="json")

            def overwrite(current: dict[str, Any]) -> None:
                current.clear()
                current.update(new_doc)

            table.update(overwrite, doc_ids=[doc.doc_id])
            return stored

    def delete(self, kind: str, entity_id: str, *, gateway_id: str | None = None, cascade: bool = False) -> None:
        """Delete an entity. Something still referenced is a :class:`Conflict` naming the referrers; a gateway
        with children is a conflict too, unless ``cascade`` (then the children go with it, atomically)."""
        spec = KINDS[kind]
        with self.transaction():
            self._require_gateway(spec, gateway_id)
            table = self._table(spec.table)
            doc = self._find(table, entity_id, gateway_id if spec.scoped else None)
            if doc is None:
                raise NotFound(spec.label, entity_id)
            if spec.table == "gateways":
                self._delete_children(entity_id, cascade)
            else:
                self._refuse_if_referenced(spec, entity_id, gateway_id)
            table.remove(doc_ids=[doc.doc_id])

    # ----------------------------------------------------------------------------------------------------------
    # API keys
    # ----------------------------------------------------------------------------------------------------------

    def create_key(self, gateway_id: str, request: ApiKeyCreate) -> tuple[ApiKey, str]:
        """Mint a key. Returns the stored record and the plaintext, which exists nowhere else afterwards."""
        plaintext = new_key()
        key = ApiKey(
            name=request.name,
            expires_at=request.expires_at,
            limits=request.limits,
            key_hash=hash_key(plaintext),
            key_prefix=display_prefix(plaintext),
        )
        stored = self.create("keys", key, gateway_id=gateway_id)
        assert isinstance(stored, ApiKey)
        return stored, plaintext

    # ----------------------------------------------------------------------------------------------------------
    # Internals
    # ----------------------------------------------------------------------------------------------------------

    @staticmethod
    def _spec(kind: str, entity: Entity) -> Kind:
        spec = KINDS[kind]
        if not isinstance(entity, spec.model):
            raise TypeError(f"{kind} stores {spec.model.__name__}, got {type(entity).__name__}")
        return spec

    @staticmethod
    def _stamp(
        spec: Kind, entity: Entity, entity_id: str, gateway_id: str | None, *, created_at: Any, updated_at: Any
    ) -> Entity:
        """The entity with its server-owned fields set (no re-validation needed: all values are typed)."""
        update: dict[str, Any] = {"id": entity_id, "created_at": created_at, "updated_at": updated_at}
        if spec.scoped:
            update["gateway_id"] = gateway_id
        return entity.model_copy(update=update)

    @staticmethod
    def _load(spec: Kind, doc: dict[str, Any]) -> Entity:
        try:
            return spec.model.model_validate(doc)
        except ValidationError as exc:
            message = f"stored {spec.label} {doc.get('id')!r} is invalid: {summarize_validation_error(exc)}"
            raise StoreUnavailable(message) from exc

    @staticmethod
    def _docs(table: Table, gateway_id: str | None = None, **equal: Any) -> builtins.list[Document]:
        """Documents in insertion order, of one gateway if given, whose fields equal ``equal``."""
        if gateway_id is not None:
            equal["gateway_id"] = gateway_id
        return table.search(FieldsEqual(equal)) if equal else table.all()

    @classmethod
    def _find(cls, table: Table, entity_id: str, gateway_id: str | None = None) -> Document | None:
        found = cls._docs(table, gateway_id, id=entity_id)
        return found[0] if found else None

    def _require_gateway(self, spec: Kind, gateway_id: str | None) -> None:
        if not spec.scoped:
            return
        if gateway_id is None:
            raise TypeError(f"{spec.table} are scoped by gateway: pass gateway_id")
        if self._find(self._table("gateways"), gateway_id) is None:
            raise NotFound("gateway", gateway_id)

    def _check_constraints(self, spec: Kind, entity: Entity, gateway_id: str | None) -> None:
        if spec.unique is not None:
            value = getattr(entity, spec.unique)
            scope = gateway_id if spec.scoped else None
            for doc in self._docs(self._table(spec.table), scope, **{spec.unique: value}):
                if doc.get("id") != entity.id:
                    scope = "" if not spec.scoped else " in this gateway"
                    message = f"{spec.unique} {value!r} is already used by {spec.label} {doc.get('id')}{scope}"
                    raise Conflict(message, [{"loc": spec.unique, "msg": message}])
        for field, target_table in spec.references:
            target_id = getattr(entity, field)
            if target_id is None:
                continue
            if self._find(self._table(target_table), target_id, gateway_id) is None:
                label = KINDS[target_table].label
                raise InvalidReference(field, f"{field}: no {label} {target_id!r} in this gateway")

    def _refuse_if_referenced(self, spec: Kind, entity_id: str, gateway_id: str | None) -> None:
        referrers: builtins.list[dict[str, str]] = []
        for other in KINDS.values():
            for field, target_table in other.references:
                if target_table != spec.table:
                    continue
                for doc in self._docs(self._table(other.table), gateway_id, **{field: entity_id}):
                    name = doc.get("name") or doc["id"]
                    referrers.append({"loc": f"{other.table}.{doc['id']}",
                                      "msg": f"{other.label} {name!r} references it through {field}"})
        if referrers:
            ids = ", ".join(item["loc"].split(".", 1)[1] for item in referrers)
            raise Conflict(
                f"{spec.label} {entity_id} is still referenced by {len(referrers)} record(s) ({ids}); "
                "delete or repoint them first",
                referrers,
            )

    def _delete_children(self, gateway_id: str, cascade: bool) -> None:
        children = {name: self._docs(self._table(name), gateway_id) for name in GATEWAY_CHILDREN}
        if not cascade:
            details = [
                {"loc": f"{name}.{doc['id']}", "msg": f"{KINDS[name].label} {doc.get('name') or doc['id']!r}"}
                for name, docs in children.items()
                for doc in docs
            ]
            if details:
                counts = ", ".join(f"{len(docs)} {name}" for name, docs in children.items() if docs)
                raise Conflict(
                    f"gateway {gateway_id} still has {counts}; delete them first or pass cascade=true", details
                )
            return
        for name, docs in children.items():
            if docs:
                self._table(name).remove(doc_ids=[doc.doc_id for doc in docs])
