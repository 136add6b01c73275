"""What applying a file would change: per entity create / update / delete, with the changed fields.

Entities are matched by id (resolve gave every entity that matches a stored one by identity the stored id).
Changes are computed on the file form (references by name), so a plan reads like a diff of the file; provider
credentials are compared but never shown. Without ``prune`` a stored entity the file does not name is kept (and
listed as such); with it, it is deleted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from ..models import Entity
from ..repo import KINDS
from .resolve import Desired, State
from .shape import CHILDREN, file_form, identity, label

Action = Literal["create", "update", "delete"]
#: Fields whose values a plan never shows.
SECRET_FIELDS = frozenset({"credentials"})
_SYMBOL = {"create": "+", "update": "~", "delete": "-"}
MAX_SHOWN = 80


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any = None
    new: Any = None
    secret: bool = False

    def to_dict(self) -> dict[str, Any]:
        if self.secret:
            return {"path": self.path, "secret": True}
        return {"path": self.path, "old": self.old, "new": self.new}

    def render(self) -> str:
        if self.secret:
            return f"{self.path}: (secret changed)"
        return f"{self.path}: {_show(self.old)} → {_show(self.new)}"


@dataclass(frozen=True)
class Change:
    action: Action
    kind: str
    gateway: str  # the gateway's name ("" for a gateway itself)
    name: str
    entity: Entity  # the desired entity (create, update) or the stored one (delete)
    fields: tuple[FieldChange, ...] = ()
    path: tuple = ()  # where the entity is in the file (create, update)

    @property
    def what(self) -> str:
        where = f"{self.gateway}/" if self.gateway else ""
        return f"{KINDS[self.kind].label} {where}{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "kind": KINDS[self.kind].label, "gateway": self.gateway or None,
                "name": self.name, "id": self.entity.id, "fields": [f.to_dict() for f in self.fields]}


@dataclass(frozen=True)
class Kept:
    kind: str
    gateway: str
    name: str
    id: str


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0
    kept: list[Kept] = field(default_factory=list)
    prune: bool = False
    applied: bool = False

    @property
    def empty(self) -> bool:
        return not self.changes

    def count(self, action: Action) -> int:
        return sum(1 for change in self.changes if change.action == action)

    def summary(self) -> dict[str, int]:
        return {"create": self.count("create"), "update": self.count("update"), "delete": self.count("delete"),
                "unchanged": self.unchanged, "kept": len(self.kept)}

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "prune": self.prune, "summary": self.summary(),
                "changes": [change.to_dict() for change in self.changes],
                "kept": [{"kind": KINDS[k.kind].label, "gateway": k.gateway or None, "name": k.name, "id": k.id}
                         for k in self.kept]}

    def render(self) -> str:
        """Text for people: one line per entity, one indented line per changed field, then a summary."""
        lines: list[str] = []
        for change in self.changes:
            lines.append(f"{_SYMBOL[change.action]} {change.action} {change.what}")
            lines.extend(f"    {f.render()}" for f in change.fields)
        if self.kept:
            lines.append(f"= kept (not in the file; --prune deletes them): {len(self.kept)}")
            lines.extend(f"    {KINDS[k.kind].label} {k.gateway + '/' if k.gateway else ''}{k.name}"
                         for k in self.kept[:20])
            if len(self.kept) > 20:
                lines.append(f"    … and {len(self.kept) - 20} more")
        s = self.summary()
        verb = "Applied" if self.applied else ("No changes" if self.empty else "Plan")
        lines.append(f"{verb}: {s['create']} to create, {s['update']} to update, {s['delete']} to delete, "
                     f"{s['unchanged']} unchanged" + (f", {s['kept']} kept" if self.kept else "") + ".")
        return "\n".join(lines)


def make_plan(desired: Desired, current: State, *, prune: bool) -> Plan:
    plan = Plan(prune=prune)
    stored = {(kind, e.id): e for kind, entities in current.entities.items() for e in entities}
    stored_names = _names(current)
    wanted_names = _names(desired.state())
    wanted_ids: set[tuple[str, str]] = set()
    for item in desired.items:
        wanted_ids.add((item.kind, item.entity.id))
        before = stored.get((item.kind, item.entity.id))
        after_form = file_form(item.kind, item.entity, wanted_names, defaults=True)
        name = label(item.kind, item.entity)
        if before is None:
            plan.changes.append(Change("create", item.kind, item.gateway, name, item.entity, path=item.path))
            continue
        fields = tuple(diff(file_form(item.kind, before, stored_names, defaults=True), after_form))
        if fields:
            plan.changes.append(Change("update", item.kind, item.gateway, name, item.entity, fields, item.path))
        else:
            plan.unchanged += 1
    gateway_names = {g.id: str(getattr(g, "name")) for g in current.entities["gateways"]}
    for kind in ("gateways", *CHILDREN):
        for entity in current.entities[kind]:
            if (kind, entity.id) in wanted_ids:
                continue
            gateway = "" if kind == "gateways" else gateway_names.get(getattr(entity, "gateway_id", ""), "?")
            if prune:
                plan.changes.append(Change("delete", kind, gateway, label(kind, entity), entity))
            else:
                plan.kept.append(Kept(kind, gateway, label(kind, entity), entity.id))
    return plan


def _names(state: State) -> dict[str, str]:
    """id -> name of everything a reference can name."""
    return {e.id: identity(kind, e) for kind in ("upstreams", "services") for e in state.entities[kind]}


def diff(old: Any, new: Any, path: str = "", secret: bool = False) -> list[FieldChange]:
    """The changed leaves between two JSON values, as dotted paths (lists of objects item by item)."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[FieldChange] = []
        for name in [*old, *(k for k in new if k not in old)]:
            sub = f"{path}.{name}" if path else str(name)
            changes.extend(diff(old.get(name), new.get(name), sub, secret or name in SECRET_FIELDS))
        return changes
    if isinstance(old, list) and isinstance(new, list) and any(isinstance(v, (dict, list)) for v in old + new):
        changes = [c for i, (a, b) in enumerate(zip(old, new)) for c in diff(a, b, f"{path}.{i}", secret)]
        longer = old if len(old) > len(new) else new
        for i in range(min(len(old), len(new)), len(longer)):
            gone, added = (longer[i], None) if longer is old else (None, longer[i])
            changes.append(FieldChange(f"{path}.{i}", _redact(gone), _redact(added)))
        return changes
    if secret:
        return [FieldChange(path, secret=True)]
    return [FieldChange(path, _redact(old), _redact(new))]


def _redact(value: Any) -> Any:
    """The value with every secret field's content replaced (what a plan may show)."""
    if isinstance(value, dict):
        return {k: ("(secret)" if k in SECRET_FIELDS and v is not None else _redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"
