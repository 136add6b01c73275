"""The data plane's read-only view of the store.

The proxy must never touch the file on its event loop (TinyDB parses the whole file per query), so it works
from a :class:`Snapshot`: immutable, indexed for the lookups a request needs, built once per file change by a
:class:`SnapshotLoader` (off the loop). ``changed()`` is a single ``os.stat``, cheap enough to call per request
or per tick.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from .errors import summarize_validation_error
from .models import ApiKey, Entity, Gateway, Rule, Service, Upstream
from .repo import KINDS, parse_store_bytes

log = logging.getLogger(__name__)

#: (st_ino, st_size, st_mtime_ns) of the file a snapshot was built from; None when there was no file.
FileSignature = tuple[int, int, int] | None


def _signature(stat: os.stat_result) -> tuple[int, int, int]:
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class Snapshot:
    """Every entity of the store, indexed. Build with :meth:`from_data`; never mutated afterwards."""

    gateways_by_id: Mapping[str, Gateway] = field(default_factory=lambda: MappingProxyType({}))
    gateways_by_subdomain: Mapping[str, Gateway] = field(default_factory=lambda: MappingProxyType({}))
    upstreams_by_id: Mapping[str, Upstream] = field(default_factory=lambda: MappingProxyType({}))
    services_by_id: Mapping[str, Service] = field(default_factory=lambda: MappingProxyType({}))
    keys_by_hash: Mapping[str, ApiKey] = field(default_factory=lambda: MappingProxyType({}))
    #: Active rules per gateway, longest path first (ties: creation order), so the first match is the answer.
    rules_by_gateway: Mapping[str, tuple[Rule, ...]] = field(default_factory=lambda: MappingProxyType({}))
    signature: FileSignature = None

    @classmethod
    def from_data(cls, data: dict[str, Any] | None, signature: FileSignature = None) -> Snapshot:
        """Index a parsed store file. A record that fails validation (a hand edit) is skipped with a warning
        rather than taking every other gateway down with it."""
        tables = {name: _load_table(name, (data or {}).get(name, {})) for name in KINDS}
        gateways = [g for g in tables["gateways"] if isinstance(g, Gateway)]
        rules: dict[str, list[Rule]] = {}
        for rule in tables["rules"]:
            if isinstance(rule, Rule) and rule.active and rule.gateway_id is not None:
                rules.setdefault(rule.gateway_id, []).append(rule)
        return cls(
            gateways_by_id=MappingProxyType({g.id: g for g in gateways}),
            gateways_by_subdomain=MappingProxyType({g.subdomain: g for g in gateways}),
            upstreams_by_id=MappingProxyType({u.id: u for u in tables["upstreams"] if isinstance(u, Upstream)}),
            services_by_id=MappingProxyType({s.id: s for s in tables["services"] if isinstance(s, Service)}),
            keys_by_hash=MappingProxyType({k.key_hash: k for k in tables["keys"] if isinstance(k, ApiKey)}),
            rules_by_gateway=MappingProxyType(
                # sorted() is stable, so equal-length paths keep creation order.
                {gid: tuple(sorted(rs, key=lambda r: len(r.path), reverse=True)) for gid, rs in rules.items()}
            ),
            signature=signature,
        )

    def gateway(self, gateway_id: str) -> Gateway | None:
        return self.gateways_by_id.get(gateway_id)

    def gateway_by_subdomain(self, label: str) -> Gateway | None:
        """The gateway for the first Host label (case-insensitive, as DNS is)."""
        return self.gateways_by_subdomain.get(label.lower())

    def key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key record, active or not: check :meth:`ApiKey.usable_at` per request (expiry is time-based)."""
        return self.keys_by_hash.get(key_hash)

    def match_rule(self, gateway_id: str, path: str, method: str) -> Rule | None:
        """The longest active rule whose path is a prefix of ``path`` on a segment boundary and that lists the
        method. A query string, if present, is ignored."""
        path = path.split("?", 1)[0]
        for rule in self.rules_by_gateway.get(gateway_id, ()):
            if rule.matches(path, method):
                return rule
        return None

    def service(self, service_id: str) -> Service | None:
        return self.services_by_id.get(service_id)

    def upstream(self, upstream_id: str) -> Upstream | None:
        return self.upstreams_by_id.get(upstream_id)

    def upstreams(self) -> tuple[Upstream, ...]:
        """Every upstream (e.g. to publish health for all targets)."""
        return tuple(self.upstreams_by_id.values())


def _load_table(name: str, raw_table: Any) -> list[Entity]:
    model = KINDS[name].model
    entities: list[Entity] = []
    if not isinstance(raw_table, dict):
        log.warning("store table %r is not an object; ignoring it", name)
        return entities
    for doc in raw_table.values():
        try:
            entities.append(model.model_validate(doc))
        except ValidationError as exc:
            record_id = doc.get("id") if isinstance(doc, dict) else None
            log.warning("skipping invalid %s record %r: %s", KINDS[name].label, record_id,
                        summarize_validation_error(exc))
    return entities


class SnapshotLoader:
    """Keeps the latest good :class:`Snapshot` of the store file at ``path``.

    A missing, corrupt or half-written file never raises: the previous snapshot stays current and a warning
    says why. ``reload()`` may run in a worker thread; swapping ``current`` is a single reference assignment.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._current = Snapshot()
        self._seen: FileSignature | bool = False  # False: never looked; None: looked, no file
        self._reload_lock = threading.Lock()
        self.reload()

    @property
    def current(self) -> Snapshot:
        return self._current

    def _stat(self) -> FileSignature:
        try:
            return _signature(os.stat(self.path))
        except FileNotFoundError:
            return None

    def changed(self) -> bool:
        """Whether the file differs (inode, size or mtime) from the last one looked at. One ``os.stat``."""
        return self._stat() != self._seen

    def reload(self) -> Snapshot:
        """Rebuild from the file and return the current snapshot (the old one if the file is unusable).

        The signature is taken with ``fstat`` on the same open file that is parsed, so it describes exactly the
        bytes read even if the file is replaced meanwhile. A broken file is remembered, so ``changed()`` stays
        false (no warning storm) until the file changes again.
        """
        with self._reload_lock:
            try:
                with open(self.path, "rb") as handle:
                    signature = _signature(os.fstat(handle.fileno()))
                    raw = handle.read()
            except FileNotFoundError:
                if self._seen is False:
                    log.info("no store file at %s yet; starting with an empty configuration", self.path)
                elif self._seen is not None:
                    log.warning("store file %s does not exist; keeping the current configuration", self.path)
                self._seen = None
                return self._current
            except OSError as exc:
                log.warning("cannot read store file %s (%s); keeping the current configuration", self.path, exc)
                return self._current
            self._seen = signature
            if not raw.strip():
                # The store never writes an empty file (atomic replace); an empty one is truncated or brand new.
                log.warning("store file %s is empty; keeping the current configuration", self.path)
                return self._current
            try:
                data = parse_store_bytes(raw)
            except ValueError as exc:
                log.warning("store file %s is unreadable (%s); keeping the current configuration", self.path, exc)
                return self._current
            self._current = Snapshot.from_data(data, signature)
            return self._current
