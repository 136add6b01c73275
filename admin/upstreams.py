"""``/api/v1/gateways/{gid}/upstreams``: target pools, plus ``…/{uid}/health`` (what the proxy sees: with several
proxy worker processes, their published health merged, and a per-worker breakdown in ``workers``).

Credentials are write-only: responses mask them, and a PUT carrying the masked value back keeps the secret.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from flask import Response, current_app, jsonify
from pydantic import Field, ValidationError

from store.health_file import merge_health, read_all_health, target_key
from store.models import Entity, Target, Upstream, format_rfc3339

from .crud import Resource, crud_blueprint
from .masking import masked_upstream, restore_masked_secrets
from .inputs import get_store
from .schemas import MergedUpstreamHealth, PublishedTargetHealth, TargetHealth, UpstreamHealth, WorkerHealth

#: Health older than this means the proxy stopped publishing (it publishes every second).
STALE_AFTER_S = 5.0
HEALTH_PATH_CONFIG = "AIGW_HEALTH_PATH"


def _view(entity: Entity) -> dict:
    assert isinstance(entity, Upstream)
    return masked_upstream(entity)


def _prepare(entity: Entity, previous: Entity | None) -> Entity:
    assert isinstance(entity, Upstream) and (previous is None or isinstance(previous, Upstream))
    return restore_masked_secrets(entity, previous)


RESOURCE = Resource(kind="upstreams", model=Upstream, label="upstream", view=_view, prepare=_prepare)
bp = crud_blueprint(RESOURCE)


@bp.get(f"{RESOURCE.item_rule}/health")
def upstream_health(gateway_id: str, entity_id: str) -> Response:
    upstream = get_store().get("upstreams", entity_id, gateway_id=gateway_id)
    assert isinstance(upstream, Upstream)
    docs = read_all_health(current_app.config.get(HEALTH_PATH_CONFIG))
    return jsonify(merged_upstream_health(upstream, docs, now=time.time()).model_dump(mode="json"))


def merged_upstream_health(upstream: Upstream, docs: dict[str | None, dict[str, Any]], *,
                           now: float) -> MergedUpstreamHealth:
    """The upstream's health over every process's document (``read_all_health``): merged, and per worker."""
    merged = build_upstream_health(upstream, merge_health(list(docs.values()), fresh_within=STALE_AFTER_S), now=now)
    workers = [WorkerHealth(worker=worker, **build_upstream_health(upstream, doc, now=now).model_dump())
               for worker, doc in docs.items() if worker is not None]
    return MergedUpstreamHealth(**merged.model_dump(), workers=workers)


def build_upstream_health(upstream: Upstream, doc: dict[str, Any] | None, *, now: float) -> UpstreamHealth:
    """Join the upstream's targets with the proxy's published state (``doc`` from ``read_health``)."""
    published = (doc or {}).get("targets", {})
    written_at = doc["written_at"] if doc else None
    return UpstreamHealth(
        upstream_id=upstream.id,
        published_at=format_rfc3339(datetime.fromtimestamp(written_at, timezone.utc)) if written_at else None,
        stale=written_at is None or now - written_at > STALE_AFTER_S,
        targets=[
            _target_health(target, published.get(target_key(upstream.id, target.id))) for target in upstream.targets
        ],
    )


def _target_health(target: Target, entry: Any) -> TargetHealth:
    identity = {"target_id": target.id, "provider": target.provider, "host": target.host, "port": target.port}
    try:
        state = PublishedTargetHealth.model_validate(entry)
    except ValidationError:
        return TargetHealth(**identity, state="unknown")
    return TargetHealth(**identity, **state.model_dump())
