"""``/api/v1/gateways/{gid}/keys``: client API keys. The plaintext is in the creation response and nowhere else.
A key's name, active flag and limits can be changed (PATCH); the key itself cannot (rotate by creating a new one
and deleting the old)."""

from __future__ import annotations

from flask import Response, jsonify
from pydantic import ValidationError

from store.models import ApiKey, ApiKeyCreate, ApiKeyCreated, ApiKeyUpdate, ApiKeyView, Entity

from .crud import Resource, crud_blueprint
from .errors import ApiError, validation_error
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
    update_schema=ApiKeyUpdate,
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


@bp.patch(RESOURCE.item_rule)
def update_key(gateway_id: str, entity_id: str) -> Response:
    payload = json_body()
    try:
        update = ApiKeyUpdate.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(exc, "key") from None
    changes = {name: getattr(update, name) for name in ApiKeyUpdate.model_fields if name in payload}
    for name in ("name", "active"):
        if name in changes and changes[name] is None:
            raise ApiError(400, f"invalid key: {name} cannot be null", [{"loc": name, "msg": "cannot be null"}])
    store = get_store()
    with store.transaction():  # read and write as one: two PATCHes at once both land
        current = store.get("keys", entity_id, gateway_id=gateway_id)
        stored = store.replace("keys", entity_id, current.model_copy(update=changes), gateway_id=gateway_id)
    return jsonify(_key_view(stored))
