"""``/api/v1/gateways/{gid}/keys``: client API keys. The plaintext is in the creation response and nowhere else;
keys cannot be edited (rotate by creating a new one and deleting the old)."""

from __future__ import annotations

from flask import Response, jsonify
from pydantic import ValidationError

from store.models import ApiKey, ApiKeyCreate, ApiKeyCreated, ApiKeyView, Entity

from .crud import Resource, crud_blueprint
from .errors import validation_error
from .inputs import get_store, json_body


def _key_view(entity: Entity) -> dict:
    assert isinstance(entity, ApiKey)
    return entity.view().model_dump(mode="json")


RESOURCE = Resource(
    kind="keys",
    model=ApiKey,
    label="key",
    view=_key_view,
    item_methods=("GET", "DELETE"),
    generic_create=False,
    request_schema=ApiKeyCreate,
    response_schema=ApiKeyView,
    created_schema=ApiKeyCreated,
)
bp = crud_blueprint(RESOURCE)


@bp.post(RESOURCE.collection_rule)
def create_key(gateway_id: str) -> Response:
    try:
        request = ApiKeyCreate.model_validate(json_body())
    except ValidationError as exc:
        raise validation_error(exc, "key") from None
    key, plaintext = get_store().create_key(gateway_id, request)
    created = ApiKeyCreated(**key.view().model_dump(), key=plaintext)
    response = jsonify(created.model_dump(mode="json"))
    response.status_code = 201
    return response
