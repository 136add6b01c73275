"""``GET /api/v1/openapi.json``: the OpenAPI 3.1 document, generated from the same pydantic models and resource
descriptions that drive validation and routing, so it cannot drift from the code."""

from __future__ import annotations

from functools import cache
from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from store.models import ApiKeyCreate, ApiKeyCreated, ApiKeyUpdate, ApiKeyView, Gateway, Rule, Service, Upstream
from store.usage_report import GROUP_BY, UsageReport

from . import config, gateways, keys, rules, services, upstreams, usage
from .crud import API_PREFIX, Resource
from .inputs import DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET
from .schemas import ErrorBody, MergedUpstreamHealth

bp = Blueprint("openapi", __name__, url_prefix=API_PREFIX)

RESOURCES: tuple[Resource, ...] = (
    gateways.RESOURCE,
    upstreams.RESOURCE,
    services.RESOURCE,
    rules.RESOURCE,
    keys.RESOURCE,
)
_SCHEMA_MODELS: tuple[type[BaseModel], ...] = (
    Gateway, Upstream, Service, Rule, ApiKeyCreate, ApiKeyCreated, ApiKeyUpdate, ApiKeyView, ErrorBody,
    MergedUpstreamHealth, UsageReport,
)
_REF = "#/components/schemas/{model}"


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(openapi_document())


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "Malformed JSON or invalid fields",
        401: "Missing or wrong admin token",
        404: "Unknown id (or an id of another gateway)",
        409: "Conflict: duplicate unique value, or still referenced",
        413: "Body larger than 1 MiB",
        415: "Body is not JSON",
        503: "The store is locked or unreadable; retry later",
    }
    return {str(status): _json(_ref(ErrorBody), reasons[status]) for status in (*statuses, 401, 503)}


def _path_params(resource: Resource, item: bool) -> list[dict[str, Any]]:
    names = (["gateway_id"] if resource.scoped else []) + (["entity_id"] if item else [])
    schema = {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}
    return [{"name": name, "in": "path", "required": True, "schema": schema} for name in names]


def _links(resource: Resource) -> dict[str, Any]:
    """OpenAPI links from a create response to the operations on what it created (and, for a gateway, to the
    operations on its children), so clients and test generators can follow the ids."""
    scope = {"gateway_id": "$request.path.gateway_id"} if resource.scoped else {}
    links = {
        f"{method.lower()}_{resource.label}": {
            "operationId": f"{_VERBS[method]}_{resource.label}",
            "parameters": {**scope, "entity_id": "$response.body#/id"},
        }
        for method in resource.item_methods
    }
    if not resource.scoped:
        for child in RESOURCES:
            if child.scoped:
                for verb, name in (("create", child.label), ("list", child.kind)):
                    links[f"{verb}_{name}"] = {"operationId": f"{verb}_{name}",
                                               "parameters": {"gateway_id": "$response.body#/id"}}
    return links


_VERBS = {"GET": "get", "PUT": "replace", "DELETE": "delete"}


def _openapi_path(rule: str) -> str:
    return API_PREFIX + rule.replace("<", "{").replace(">", "}")


def _resource_paths(resource: Resource) -> dict[str, Any]:
    request_model = resource.request_schema or resource.model
    response_model = resource.response_schema or resource.model
    created_model = resource.created_schema or resource.model
    paging = [
        {"name": "offset", "in": "query",
         "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}},
        {"name": "limit", "in": "query",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
    ]
    body = {"required": True, "content": {"application/json": {"schema": _ref(request_model)}}}
    collection = {
        "parameters": _path_params(resource, item=False),
        "post": {
            "summary": f"Create a {resource.label}",
            "operationId": f"create_{resource.label}",
            "requestBody": body,
            "responses": {"201": {**_json(_ref(created_model), f"The created {resource.label}"),
                                  "links": _links(resource)},
                          **_errors(400, 404, 409, 413, 415)},
        },
        "get": {
            "summary": f"List {resource.kind}",
            "operationId": f"list_{resource.kind}",
            "parameters": paging,
            "responses": {"200": _json({"type": "array", "items": _ref(response_model)}, f"A page of {resource.kind}"),
                          **_errors(400, 404)},
        },
    }
    item: dict[str, Any] = {"parameters": _path_params(resource, item=True)}
    if "GET" in resource.item_methods:
        item["get"] = {"summary": f"Get a {resource.label}", "operationId": f"get_{resource.label}",
                       "responses": {"200": _json(_ref(response_model), f"The {resource.label}"), **_errors(404)}}
    if "PUT" in resource.item_methods:
        item["put"] = {"summary": f"Replace a {resource.label}", "operationId": f"replace_{resource.label}",
                       "requestBody": body,
                       "responses": {"200": _json(_ref(response_model), f"The stored {resource.label}"),
                                     **_errors(400, 404, 409, 413, 415)}}
    if resource.update_schema is not None:
        item["patch"] = {"summary": f"Change some fields of a {resource.label}",
                         "operationId": f"update_{resource.label}",
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": _ref(resource.update_schema)}}},
                         "responses": {"200": _json(_ref(response_model), f"The stored {resource.label}"),
                                       **_errors(400, 404, 409, 413, 415)}}
    if "DELETE" in resource.item_methods:
        delete: dict[str, Any] = {"summary": f"Delete a {resource.label}", "operationId": f"delete_{resource.label}",
                                  "responses": {"204": {"description": "Deleted"},
                                                **_errors(*((404, 409) if resource.scoped else (400, 404, 409)))}}
        if not resource.scoped:
            delete["parameters"] = [{"name": "cascade", "in": "query", "description": "Also delete its children",
                                     "schema": {"type": "boolean", "default": False}}]
        item["delete"] = delete
    return {_openapi_path(resource.collection_rule): collection, _openapi_path(resource.item_rule): item}


def _usage_paths() -> dict[str, Any]:
    """The usage endpoints (admin/usage.py): a gateway's, grouped, and a key's, per day."""
    day = {"type": "string", "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$"}
    days = [
        {"name": "from", "in": "query", "schema": day,
         "description": f"First UTC day, inclusive; default: {usage.DEFAULT_RANGE_DAYS - 1} days before to"},
        {"name": "to", "in": "query", "schema": day,
         "description": f"Last UTC day, inclusive; default: today. At most {usage.MAX_RANGE_DAYS} days in all"},
    ]
    ids = {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}
    report = _json(_ref(UsageReport), "Totals and one row per group")
    return {
        _openapi_path(usage.GATEWAY_USAGE_RULE): {
            "parameters": [{"name": "gateway_id", "in": "path", "required": True, "schema": ids}],
            "get": {"summary": "A gateway's token usage and estimated cost, grouped",
                    "operationId": "get_gateway_usage",
                    "parameters": [*days, {"name": "group_by", "in": "query",
                                           "schema": {"enum": list(GROUP_BY), "default": usage.DEFAULT_GROUP_BY}}],
                    "responses": {"200": report, **_errors(400, 404)}},
        },
        _openapi_path(usage.KEY_USAGE_RULE): {
            "parameters": [{"name": name, "in": "path", "required": True, "schema": ids}
                           for name in ("gateway_id", "key_id")],
            "get": {"summary": "A key's token usage and estimated cost, per day", "operationId": "get_key_usage",
                    "parameters": days, "responses": {"200": report, **_errors(400, 404)}},
        },
    }


@cache
def openapi_document() -> dict[str, Any]:
    """Built once per process: it depends only on code."""
    _, definitions = models_json_schema([(model, "validation") for model in _SCHEMA_MODELS], ref_template=_REF)
    paths: dict[str, Any] = {}
    for resource in RESOURCES:
        paths.update(_resource_paths(resource))
    paths[_openapi_path(upstreams.RESOURCE.item_rule) + "/health"] = {
        "parameters": _path_params(upstreams.RESOURCE, item=True),
        "get": {"summary": "Each target's health as the proxy sees it", "operationId": "get_upstream_health",
                "responses": {"200": _json(_ref(MergedUpstreamHealth), "Per-target state, merged over the proxy processes"), **_errors(404)}},
    }
    paths.update(_usage_paths())
    paths.update(config.openapi_paths(_errors, lambda description: _json(_ref(ErrorBody), description)))
    paths[API_PREFIX + "/openapi.json"] = {
        "get": {"summary": "This document", "operationId": "get_openapi",
                "responses": {"200": {"description": "OpenAPI 3.1 document",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "aigw admin API", "version": "1",
                 "description": "Gateways -> upstreams (targets) -> services -> rules -> API keys."},
        "servers": [{"url": "/"}],
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer",
                                               "description": "Only when the admin token is configured"}},
        },
        "security": [{}, {"adminToken": []}],
        "paths": paths,
    }
