"""Database-less mode: the configuration file itself is the configuration (``aigw up --config``).

:class:`ConfigFileLoader` is the data plane's second snapshot source, with the interface of
:class:`store.snapshot.SnapshotLoader` (``current``, ``changed()``, ``reload()``): the file is parsed and resolved
with nothing stored (ids derived from names, so they are the same at every load) and indexed by the same
``Snapshot.from_data``. An invalid edit keeps the last good configuration and logs the problem with its line.

:class:`ConfigFileStore` is what the admin API reads in that mode: the Store's read methods over the same file,
and ``read_only`` saying why writes are refused (the admin app answers them 405).
"""

from __future__ import annotations

import builtins
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone

from ..errors import NotFound
from ..models import Entity
from ..repo import KINDS
from ..snapshot import FileSignature, Snapshot
from .errors import ConfigError
from .resolve import State, resolve
from .source import read_file

log = logging.getLogger(__name__)


def load_state(path: str, env: Mapping[str, str] | None = None) -> State:
    """The entities the file at ``path`` describes (database-less ids). Raises ConfigError."""
    source = read_file(path, env)
    state = resolve(source).state()
    try:
        stamp = datetime.fromtimestamp(os.stat(path).st_mtime, timezone.utc).replace(microsecond=0)
    except OSError:
        return state
    for kind, entities in state.entities.items():
        state.entities[kind] = [e.model_copy(update={"created_at": stamp, "updated_at": stamp}) for e in entities]
    return state


def snapshot_of(state: State, signature: FileSignature = None) -> Snapshot:
    tables = {kind: {str(i): e.model_dump(mode="json") for i, e in enumerate(entities, 1)}
              for kind, entities in state.entities.items()}
    return Snapshot.from_data(tables, signature)


def _signature(path: str) -> FileSignature:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class ConfigFileLoader:
    """Keeps the latest good Snapshot of a configuration file (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._current = Snapshot()
        self._state = State()
        self._seen: FileSignature | bool = False
        self.error: ConfigError | None = None  # the problem of the file as it is now, if any
        self._lock = threading.Lock()
        self.reload()

    @property
    def current(self) -> Snapshot:
        return self._current

    @property
    def state(self) -> State:
        return self._state

    def changed(self) -> bool:
        return _signature(self.path) != self._seen

    def reload(self) -> Snapshot:
        with self._lock:
            signature = _signature(self.path)
            try:
                state = load_state(self.path)
            except ConfigError as exc:
                first = self._seen is False
                self._seen = signature
                self.error = exc
                if first:
                    log.error("aigw: %s; no configuration loaded", exc)
                else:
                    log.warning("aigw: %s; keeping the last good configuration", exc)
                return self._current
            except Exception:  # never take the proxy down over a file: keep serving what was good
                self._seen = signature
                log.exception("aigw: cannot load %s; keeping the last good configuration", self.path)
                return self._current
            was_broken = self.error is not None
            self._seen, self.error, self._state = signature, None, state
            self._current = snapshot_of(state, signature)
            counts = ", ".join(f"{len(state.entities[k])} {k}" for k in KINDS)
            # After a broken edit was reported, say (as loudly) that it is fixed.
            log.log(logging.WARNING if was_broken else logging.INFO, "aigw: configuration %s from %s (%s)",
                    "valid again, serving it" if was_broken else "loaded", self.path, counts)
            return self._current


class ConfigFileStore:
    """The Store's read API over a configuration file, for a read-only admin API (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.loader = ConfigFileLoader(path)
        self.path = self.loader.path
        self.read_only = (f"the configuration is the file {self.path} (aigw up --config): the admin API is "
                          "read-only; edit the file, it is reloaded live")

    def _state(self) -> State:
        if self.loader.changed():
            self.loader.reload()
        return self.loader.state

    @contextmanager
    def transaction(self) -> Iterator[None]:
        yield  # reads only: every read is of one parsed version of the file

    def get(self, kind: str, entity_id: str, *, gateway_id: str | None = None) -> Entity:
        state = self._state()
        self._require_gateway(state, kind, gateway_id)
        for entity in state.entities[kind]:
            if entity.id == entity_id and (kind == "gateways" or getattr(entity, "gateway_id") == gateway_id):
                return entity
        raise NotFound(KINDS[kind].label, entity_id)

    def list(self, kind: str, *, gateway_id: str | None = None, offset: int = 0,
             limit: int | None = None) -> builtins.list[Entity]:
        state = self._state()
        self._require_gateway(state, kind, gateway_id)
        found = state.entities[kind] if kind == "gateways" else state.children(kind, gateway_id or "")
        return found[offset: None if limit is None else offset + limit]

    @staticmethod
    def _require_gateway(state: State, kind: str, gateway_id: str | None) -> None:
        if kind == "gateways":
            return
        if gateway_id is None:
            raise TypeError(f"{kind} are scoped by gateway: pass gateway_id")
        if not any(g.id == gateway_id for g in state.entities["gateways"]):
            raise NotFound("gateway", gateway_id)
