"""From a parsed file to the entities it means: validated by the store models (with the admin API's input checks),
names resolved to ids, ids kept stable.

Ids: an entity that matches a stored one by identity (store/config/shape.py) keeps the stored id, so keys, usage
and health stay attached; a new one gets an id derived from its names (uuid5), so the same file always gives the
same ids (a database-less proxy keeps usage and health across restarts and edits). A target without ``id`` takes
the id of the stored target with the same provider and origin, else one derived from its upstream and origin.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ..keys import display_prefix, hash_key
from ..models import INPUT_CONTEXT, Entity, Gateway, Target, Upstream, new_id
from ..repo import KINDS
from .errors import ConfigError
from .shape import CHILDREN, PLAINTEXT_KEY, SERVER_FIELDS, TOP_LEVEL, VERSION, check_entity_fields, identity, \
    references
from .source import Source

#: Namespace of derived ids (uuid5).
ID_NAMESPACE = uuid.UUID("5b0e3c1e-8f5a-4d0c-9a53-6a1c0f1e2a77")
#: A plaintext key from the environment must be at least this long (aigw's own keys are 48 characters).
MIN_PLAINTEXT_KEY = 16


@dataclass(frozen=True)
class Item:
    """One entity the file asks for."""

    kind: str
    entity: Entity
    identity: str
    gateway: str  # the gateway's name ("" for a gateway)
    path: tuple  # where it is in the file


@dataclass
class State:
    """Entities by kind, in order (the store's creation order, or the file's)."""

    entities: dict[str, list[Entity]] = field(default_factory=lambda: {kind: [] for kind in KINDS})

    @classmethod
    def from_store(cls, store: Any) -> State:
        """Every entity of a store (anything with the Store's ``list``), gateway by gateway."""
        state = cls()
        for gateway in store.list("gateways"):
            state.entities["gateways"].append(gateway)
            for kind in CHILDREN:
                state.entities[kind].extend(store.list(kind, gateway_id=gateway.id))
        return state

    def ids(self) -> set[str]:
        return {entity.id for entities in self.entities.values() for entity in entities}

    def children(self, kind: str, gateway_id: str) -> list[Entity]:
        return [e for e in self.entities[kind] if getattr(e, "gateway_id", None) == gateway_id]


@dataclass
class Desired:
    """What the file asks for, in file order."""

    items: list[Item]
    source: Source

    def state(self) -> State:
        state = State()
        for item in self.items:
            state.entities[item.kind].append(item.entity)
        return state


def derived_id(*parts: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, "\0".join(parts)))


def resolve(source: Source, current: State | None = None) -> Desired:
    """Validate the whole file and resolve it against ``current`` (None: nothing stored, as without a database).
    Raises :class:`ConfigError` naming the first problem and its position."""
    return _Resolver(source, current or State()).run()


class _Resolver:
    def __init__(self, source: Source, current: State) -> None:
        self.source = source
        self.current = current
        self.taken = current.ids()
        self.items: list[Item] = []
        self.key_hashes: dict[str, tuple] = {}

    def error(self, path: tuple, msg: str) -> ConfigError:
        return self.source.error(path, msg)

    def run(self) -> Desired:
        data = self.source.data
        if not isinstance(data, dict):
            raise self.error((), f"the file must be a mapping with 'gateways', not {_kind_of(data)}")
        for name in data:
            if name not in TOP_LEVEL:
                raise ConfigError(self.source.problem((name,), f"unknown field {name!r} (known: "
                                                               f"{', '.join(TOP_LEVEL)})", at_key=True),
                                  source=self.source.name)
        if data.get("version", VERSION) != VERSION:
            raise self.error(("version",), f"unsupported version {data.get('version')!r}; this aigw reads "
                                           f"version {VERSION}")
        gateways = self._list(data.get("gateways"), ("gateways",))
        seen: dict[str, tuple] = {}
        for index, raw in enumerate(gateways):
            path = ("gateways", index)
            raw = self._mapping(raw, path)
            check_entity_fields(self.source, "gateways", raw, path)
            gateway = self._validate("gateways", {k: v for k, v in raw.items() if k not in CHILDREN}, path)
            assert isinstance(gateway, Gateway)
            if gateway.name in seen:
                raise self.error((*path, "name"), f"duplicate gateway name {gateway.name!r} (also at "
                                                  f"{_where(self.source, seen[gateway.name])})")
            seen[gateway.name] = path
            stored = self._match("gateways", self.current.entities["gateways"], gateway.name, path)
            gid = self._id(stored, "gateways", gateway.name)
            self.items.append(Item("gateways", gateway.model_copy(update={"id": gid}), gateway.name, "", path))
            self._children(raw, path, gateway.name, gid, stored)
        return Desired(self.items, self.source)

    def _children(self, raw: dict, path: tuple, gateway_name: str, gid: str, stored_gateway: Entity | None) -> None:
        names: dict[str, dict[str, str]] = {kind: {} for kind in CHILDREN}
        for kind in CHILDREN:
            stored = self.current.children(kind, stored_gateway.id) if stored_gateway is not None else []
            seen: dict[str, tuple] = {}
            for index, item in enumerate(self._list(raw.get(kind), (*path, kind))):
                item_path = (*path, kind, index)
                item = self._mapping(item, item_path)
                check_entity_fields(self.source, kind, item, item_path)
                payload = self._payload(kind, item, item_path, names)
                entity = self._validate(kind, payload, item_path)
                ident = identity(kind, entity)
                if ident in seen:
                    what = "key (the same key_hash)" if kind == "keys" else f"{KINDS[kind].label} {ident!r}"
                    raise self.error(item_path, f"duplicate {what} in gateway {gateway_name!r} (also at "
                                                f"{_where(self.source, seen[ident])})")
                seen[ident] = item_path
                if kind == "keys":
                    self._unique_key(ident, item_path)
                match = self._match(kind, stored, ident, item_path)
                eid = self._id(match, kind, gateway_name, ident)
                if isinstance(entity, Upstream):
                    entity = _with_target_ids(entity, item.get("targets"), match, eid)
                entity = entity.model_copy(update={"id": eid, "gateway_id": gid})
                if kind in names:
                    names[kind][str(getattr(entity, "name"))] = eid
                self.items.append(Item(kind, entity, ident, gateway_name, item_path))

    def _payload(self, kind: str, raw: dict, path: tuple, names: dict[str, dict[str, str]]) -> dict:
        payload = dict(raw)
        for ref in references(kind):
            if ref.name not in payload:
                continue
            target = payload.pop(ref.name)
            ref_path = (*path, ref.name)
            if not isinstance(target, str) or not target:
                raise self.error(ref_path, f"{ref.name} must be the name of a {KINDS[ref.table].label}")
            known = names[ref.table]
            if target not in known:
                listed = ", ".join(repr(n) for n in known) or "none"
                raise self.error(ref_path, f"no {KINDS[ref.table].label} named {target!r} in this gateway "
                                           f"(defined before it: {listed})")
            payload[ref.field] = known[target]
        if kind == "keys" and PLAINTEXT_KEY in payload:
            payload.update(self._plaintext_key(payload, path))
        return payload

    def _plaintext_key(self, payload: dict, path: tuple) -> dict:
        plaintext = payload.pop(PLAINTEXT_KEY)
        key_path = (*path, PLAINTEXT_KEY)
        if "key_hash" in payload or "key_prefix" in payload:
            raise self.error(key_path, "give key (from the environment) or key_hash and key_prefix, not both")
        if not isinstance(plaintext, str) or len(plaintext) < MIN_PLAINTEXT_KEY:
            raise self.error(key_path, f"key must be a string of at least {MIN_PLAINTEXT_KEY} characters")
        if key_path not in self.source.interpolated:
            raise self.error(key_path, "a plaintext key must come from the environment (key: ${TEAM_KEY}); a key "
                                       "written in the file is a leaked key. Or give key_hash and key_prefix")
        return {"key_hash": hash_key(plaintext), "key_prefix": display_prefix(plaintext)}

    def _unique_key(self, key_hash: str, path: tuple) -> None:
        if key_hash in self.key_hashes:
            raise self.error(path, f"the same key (key_hash) is in two gateways (also at "
                                   f"{_where(self.source, self.key_hashes[key_hash])})")
        self.key_hashes[key_hash] = path

    def _validate(self, kind: str, payload: dict, path: tuple) -> Entity:
        model = KINDS[kind].model
        clean = {k: v for k, v in payload.items() if k not in SERVER_FIELDS}
        try:
            return model.model_validate(clean, context=INPUT_CONTEXT)
        except ValidationError as exc:
            renames = {ref.field: ref.name for ref in references(kind)}
            problems = []
            for error in exc.errors(include_url=False, include_input=False, include_context=True):
                loc = tuple(renames.get(p, p) if isinstance(p, str) else p for p in error["loc"])
                msg = error["msg"]
                if error["type"] == "value_error" and "error" in error.get("ctx", {}):
                    msg = str(error["ctx"]["error"])  # our validators' own words, without "Value error, "
                problems.append(self.source.problem((*path, *loc), msg))
            raise ConfigError(problems, source=self.source.name) from None

    def _match(self, kind: str, stored: list[Entity], ident: str, path: tuple) -> Entity | None:
        found = [entity for entity in stored if identity(kind, entity) == ident]
        if len(found) > 1:
            ids = ", ".join(entity.id for entity in found)
            raise ConfigError(self.source.problem(path, f"the store holds {len(found)} {kind} that are "
                                                        f"{ident!r} ({ids}): rename or delete all but one first"),
                              source=self.source.name, status=409)
        return found[0] if found else None

    def _id(self, stored: Entity | None, kind: str, *names: str) -> str:
        if stored is not None:
            return stored.id
        candidate = derived_id(kind, *names)
        if candidate in self.taken:  # a stored entity was renamed away from these names: no clash
            candidate = new_id()
        self.taken.add(candidate)
        return candidate

    def _list(self, value: Any, path: tuple) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(path, f"{path[-1]} must be a list, not {_kind_of(value)}")
        return value

    def _mapping(self, value: Any, path: tuple) -> dict:
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping of fields, not {_kind_of(value)}")
        return value


def _with_target_ids(upstream: Upstream, raw_targets: Any, stored: Entity | None, upstream_id: str) -> Upstream:
    """Give each target the file did not give an ``id`` a stable one (see the module docstring)."""
    raw = raw_targets if isinstance(raw_targets, list) else []
    missing = [i for i, item in enumerate(raw) if not (isinstance(item, dict) and "id" in item)]
    if not missing:
        return upstream
    targets = list(upstream.targets)
    claimed = {t.id for i, t in enumerate(targets) if i not in missing}
    pool = [t for t in stored.targets if t.id not in claimed] if isinstance(stored, Upstream) else []
    counts: dict[tuple, int] = {}
    for index in missing:
        target = targets[index]
        origin = _origin(target)
        same = next((t for t in pool if _origin(t) == origin), None)
        if same is not None:
            pool.remove(same)
            tid = same.id
        else:
            counts[origin] = counts.get(origin, 0) + 1
            tid = derived_id("targets", upstream_id, *map(str, origin), str(counts[origin]))
            while tid in claimed:
                tid = derived_id("targets", tid)
        claimed.add(tid)
        targets[index] = target.model_copy(update={"id": tid})
    return upstream.model_copy(update={"targets": targets})


def _origin(target: Target) -> tuple:
    return target.provider, target.protocol, target.host, target.port, target.path


def _kind_of(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "empty"}.get(type(value),
                                                                                       type(value).__name__)


def _where(source: Source, path: tuple) -> str:
    position = source.position(path)
    return f"line {position[0]}" if position else ".".join(map(str, path))


