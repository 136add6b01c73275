"""``/api/v1/config``: the whole configuration as one document (docs/config.md).

``GET`` exports it (YAML, or JSON with ``Accept: application/json``); ``POST`` takes a YAML or JSON document and
answers the plan — what applying it creates, updates and deletes — carrying it out unless ``dry_run=true``
(``prune=true`` also deletes what the document does not name). The work is store/config's, the same as
``aigw config``; ``${VAR}`` in the document reads the admin server's environment.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from store.config import MAX_BYTES, ConfigError, export, parse_json, parse_yaml, plan_or_apply

from .crud import API_PREFIX
from .errors import ApiError, error_response
from .inputs import bool_arg, get_store

CONFIG_RULE = "/config"
YAML = "application/yaml"
YAML_TYPES = (YAML, "application/x-yaml", "text/yaml", "text/x-yaml")

bp = Blueprint("config", __name__, url_prefix=API_PREFIX)


@bp.errorhandler(ConfigError)
def _config_error(exc: ConfigError) -> Response:
    return error_response(exc.status, str(exc), exc.details())


@bp.get(CONFIG_RULE)
def get_config() -> Response:
    accept = request.accept_mimetypes
    best = accept.best_match([YAML, "application/json", *YAML_TYPES[1:]]) if accept else YAML
    if best is None:
        raise ApiError(406, f"this document is YAML ({YAML}) or JSON (application/json); ask for one in Accept")
    exported = export(get_store())
    if best == "application/json":
        return Response(exported.json(), mimetype="application/json")
    return Response(exported.yaml(), mimetype=best, content_type=f"{best}; charset=utf-8")


@bp.post(CONFIG_RULE)
def post_config() -> Response:
    dry_run = bool_arg("dry_run")
    prune = bool_arg("prune")
    mimetype = request.mimetype or ""
    is_json = mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))
    if not is_json and mimetype not in YAML_TYPES:
        raise ApiError(415, f"send the document as YAML ('Content-Type: {YAML}') or JSON "
                            "('Content-Type: application/json')")
    request.max_content_length = MAX_BYTES  # a whole configuration: larger than any one entity
    raw = request.get_data(cache=False)
    if request.content_length is None and len(raw) >= MAX_BYTES:
        raise RequestEntityTooLarge()  # chunked: werkzeug stops reading at the limit instead of failing
    source = (parse_json if is_json else parse_yaml)(raw, name="body")
    plan = plan_or_apply(get_store(), source, prune=prune, dry_run=dry_run)
    return jsonify({**plan.to_dict(), "text": plan.render()})


def refuse_writes(reason: str) -> Response | None:
    """The read-only mode's before-request check: any write under /api/v1 is a 405 saying why."""
    if request.path.startswith(API_PREFIX) and request.method not in ("GET", "HEAD", "OPTIONS"):
        response = error_response(405, reason)
        response.headers["Allow"] = "GET, HEAD"
        return response
    return None


# ------------------------------------------------------------------------------------------------------------
# OpenAPI (merged into admin/openapi.py's document)
# ------------------------------------------------------------------------------------------------------------

_FIELD = {"type": "object", "properties": {"path": {"type": "string", "description": 'e.g. "targets.0.weight"'},
                                           "old": {}, "new": {},
                                           "secret": {"type": "boolean", "description": "Credentials: not shown"}},
          "required": ["path"]}
PLAN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "applied": {"type": "boolean", "description": "False for a dry run or an empty plan"},
        "prune": {"type": "boolean"},
        "summary": {"type": "object", "properties": {name: {"type": "integer"} for name in
                                                     ("create", "update", "delete", "unchanged", "kept")}},
        "changes": {"type": "array", "items": {"type": "object", "properties": {
            "action": {"enum": ["create", "update", "delete"]}, "kind": {"type": "string"},
            "gateway": {"type": ["string", "null"]}, "name": {"type": "string"}, "id": {"type": "string"},
            "fields": {"type": "array", "items": _FIELD}}}},
        "kept": {"type": "array", "description": "Stored entities the document does not name (prune=false)",
                 "items": {"type": "object"}},
        "text": {"type": "string", "description": "The plan as `aigw config apply` prints it"},
    },
}


def openapi_paths(errors: Any, error: Any) -> dict[str, Any]:
    """The path item of /config; ``errors(*statuses)`` is openapi.py's standard error responses and
    ``error(description)`` one error response."""
    document = {"schema": {"type": "string", "description": "The configuration file (docs/config.md; JSON "
                                                            "Schema: aigw config schema)"}}
    flag = {"in": "query", "schema": {"type": "boolean", "default": False}}
    return {API_PREFIX + CONFIG_RULE: {
        "get": {"summary": "Export the whole configuration (names, not ids; credentials as ${VAR})",
                "operationId": "export_config",
                "responses": {"200": {"description": "The configuration document",
                                      "content": {YAML: document, "application/json": {"schema": {"type": "object"}}}},
                              "406": error("Accept names neither YAML nor JSON"), **errors(409)}},
        "post": {"summary": "Plan, and unless dry_run carry out atomically, a whole configuration",
                 "operationId": "apply_config",
                 "parameters": [{"name": "dry_run", **flag, "description": "Answer the plan, change nothing"},
                                {"name": "prune", **flag, "description": "Also delete what the document omits"}],
                 "requestBody": {"required": True, "content": {YAML: document,
                                                               "application/json": {"schema": {"type": "object"}}}},
                 "responses": {"200": {"description": "The plan (carried out unless dry_run)",
                                       "content": {"application/json": {"schema": PLAN_SCHEMA}}},
                               "405": error("Read-only: the proxy serves a configuration file (aigw up --config)"),
                               **errors(400, 404, 409, 413, 415)}},
    }}

