"""The CRUD endpoints every resource shares, generated from one :class:`Resource` description.

Gateways, upstreams, services and rules differ only in their model, how they are shown and how a payload is
prepared before storing (upstreams mask and restore credentials); the handlers themselves are written once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel, ValidationError

from store.models import Entity

from .errors import validation_error
from .inputs import bool_arg, get_store, json_body, page

API_PREFIX = "/api/v1"


def _plain_view(entity: Entity) -> dict:
    return entity.model_dump(mode="json")


def _unchanged(entity: Entity, previous: Entity | None) -> Entity:
    return entity


@dataclass(frozen=True)
class Resource:
    """One admin resource backed by one store table."""

    kind: str  # store table, also the URL segment
    model: type[Entity]
    label: str  # singular, for messages and OpenAPI summaries
    #: How a stored entity is shown (upstreams mask credentials).
    view: Callable[[Entity], dict] = _plain_view
    #: Last step before storing: ``(validated payload, stored version or None on create) -> entity``.
    prepare: Callable[[Entity, Entity | None], Entity] = _unchanged
    #: Methods on the item URL (keys have no PUT).
    item_methods: tuple[str, ...] = field(default=("GET", "PUT", "DELETE"))
    #: OpenAPI schemas where they differ from ``model`` (keys are created from ApiKeyCreate, shown as ApiKeyView).
    request_schema: type[BaseModel] | None = None
    response_schema: type[BaseModel] | None = None
    created_schema: type[BaseModel] | None = None
    #: False when the resource registers its own POST (keys: the payload is not the stored model).
    generic_create: bool = True
    #: The payload of the resource's own PATCH on the item (keys: name, active, limits), None when it has none.
    update_schema: type[BaseModel] | None = None

    @property
    def scoped(self) -> bool:
        return self.kind != "gateways"

    @property
    def collection_rule(self) -> str:
        return f"/gateways/<gateway_id>/{self.kind}" if self.scoped else f"/{self.kind}"

    @property
    def item_rule(self) -> str:
        return f"{self.collection_rule}/<entity_id>"

    def parse(self, payload: dict) -> Entity:
        try:
            return self.model.from_payload(payload)
        except ValidationError as exc:
            raise validation_error(exc, self.label) from None


def _created(body: dict) -> Response:
    response = jsonify(body)
    response.status_code = 201
    return response


def crud_blueprint(resource: Resource) -> Blueprint:
    """A blueprint with POST/GET on the collection and GET/PUT/DELETE on the item."""
    bp = Blueprint(resource.kind, __name__, url_prefix=API_PREFIX)

    def create(gateway_id: str | None = None) -> Response:
        entity = resource.prepare(resource.parse(json_body()), None)
        stored = get_store().create(resource.kind, entity, gateway_id=gateway_id)
        return _created(resource.view(stored))

    def list_(gateway_id: str | None = None) -> Response:
        offset, limit = page()
        entities = get_store().list(resource.kind, gateway_id=gateway_id, offset=offset, limit=limit)
        return jsonify([resource.view(entity) for entity in entities])

    def get(entity_id: str, gateway_id: str | None = None) -> Response:
        return jsonify(resource.view(get_store().get(resource.kind, entity_id, gateway_id=gateway_id)))

    def replace(entity_id: str, gateway_id: str | None = None) -> Response:
        store = get_store()
        payload = resource.parse(json_body())
        previous = store.get(resource.kind, entity_id, gateway_id=gateway_id)
        stored = store.replace(resource.kind, entity_id, resource.prepare(payload, previous), gateway_id=gateway_id)
        return jsonify(resource.view(stored))

    def delete(entity_id: str, gateway_id: str | None = None) -> Response:
        cascade = bool_arg("cascade") if not resource.scoped else False
        get_store().delete(resource.kind, entity_id, gateway_id=gateway_id, cascade=cascade)
        return Response(status=204)

    if resource.generic_create:
        bp.add_url_rule(resource.collection_rule, "create", create, methods=["POST"])
    bp.add_url_rule(resource.collection_rule, "list", list_, methods=["GET"])
    handlers = {"GET": get, "PUT": replace, "DELETE": delete}
    for method in resource.item_methods:
        bp.add_url_rule(resource.item_rule, method.lower(), handlers[method], methods=[method])
    return bp
