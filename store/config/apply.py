"""Carrying out a plan: all of it or none of it, through the store's lock and atomic write.

The store is read, the file resolved against it, the plan made and executed inside one ``Store.transaction()``:
nobody writes in between, every change goes through the repository's own create/replace/delete (its uniqueness
and reference checks, its timestamps), and the file is replaced once at the end — or, on any error, not at all.
The proxy keeps serving throughout: it reads the old file until the new one is in place, then reloads.

Order: deletes of keys and rules first (nothing references them), then whole pruned gateways (so their subdomains
are free), then creates and updates, referenced kinds before referrers, then deletes of services and upstreams
(once nothing points at them any more).
"""

from __future__ import annotations

from typing import Any

from ..errors import Conflict, StoreError
from .errors import ConfigError, Problem, dotted
from .plan import Change, Plan, make_plan
from .resolve import State, resolve
from .shape import CHILDREN
from .source import Source


def plan_or_apply(store: Any, source: Source, *, prune: bool = False, dry_run: bool = False) -> Plan:
    """The plan of applying ``source`` to ``store``; carried out unless ``dry_run``. Raises ConfigError."""
    with store.transaction():
        current = State.from_store(store)
        desired = resolve(source, current)
        plan = make_plan(desired, current, prune=prune)
        if not dry_run and not plan.empty:
            _execute(store, plan, source)
            plan.applied = True
    return plan


def _execute(store: Any, plan: Plan, source: Source) -> None:
    pruned_gateways = {c.entity.id for c in plan.changes if c.action == "delete" and c.kind == "gateways"}

    def deletes(kind: str, *, in_pruned: bool | None = None) -> list[Change]:
        return [c for c in plan.changes if c.action == "delete" and c.kind == kind and (
            in_pruned is None or (getattr(c.entity, "gateway_id", None) in pruned_gateways) == in_pruned)]

    def writes(kind: str) -> list[Change]:
        return [c for c in plan.changes if c.action in ("create", "update") and c.kind == kind]

    order: list[Change] = [*deletes("keys"), *deletes("rules")]
    order += [*deletes("services", in_pruned=True), *deletes("upstreams", in_pruned=True), *deletes("gateways")]
    for kind in ("gateways", *CHILDREN):
        order += writes(kind)
    order += [*deletes("services", in_pruned=False), *deletes("upstreams", in_pruned=False)]
    for change in order:
        _one(store, change, source)


def _one(store: Any, change: Change, source: Source) -> None:
    entity = change.entity
    gateway_id = None if change.kind == "gateways" else getattr(entity, "gateway_id")
    try:
        if change.action == "create":
            store.create(change.kind, entity, gateway_id=gateway_id)
        elif change.action == "update":
            store.replace(change.kind, entity.id, entity, gateway_id=gateway_id)
        else:
            store.delete(change.kind, entity.id, gateway_id=gateway_id)
    except StoreError as exc:
        where = source.position(change.path) if change.path else None
        problem = Problem(dotted(change.path), f"cannot {change.action} {change.what}: {exc.message}",
                          *(where or (None, None)))
        raise ConfigError(problem, source=source.name, status=409 if isinstance(exc, Conflict) else 400) from None
