"""The admin API application factory."""

from __future__ import annotations

import hmac
import logging
import os

from flask import Flask, request

from store import Store

from . import config, gateways, keys, openapi, rules, services, upstreams, usage
from .crud import API_PREFIX
from .errors import ApiError, register_error_handlers
from .inputs import STORE_EXTENSION
from .upstreams import HEALTH_PATH_CONFIG
from .usage import USAGE_PATH_CONFIG

log = logging.getLogger(__name__)

#: Admin payloads are small; anything bigger is a mistake or an attack.
MAX_BODY_BYTES = 1024 * 1024


def create_app(
    store: Store,
    *,
    admin_token: str | None = None,
    health_path: str | os.PathLike[str] | None = None,
    usage_path: str | os.PathLike[str] | None = None,
) -> Flask:
    """Build the admin Flask app over ``store``.

    ``admin_token``: when set, every ``/api/v1`` call needs ``Authorization: Bearer <token>``.
    ``health_path``: the proxy's published health file (``store.health_file``), read by the health endpoint.
    ``usage_path``: the proxy's usage file (``store.usage.usage_path_for``), read by the usage endpoints.

    A store with a ``read_only`` reason (``store.config.ConfigFileStore``: the proxy serves a configuration file)
    makes the API read-only: every write answers 405 with that reason.
    """
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config[HEALTH_PATH_CONFIG] = os.fspath(health_path) if health_path is not None else None
    app.config[USAGE_PATH_CONFIG] = os.fspath(usage_path) if usage_path is not None else None
    # "/gateways/" is "/gateways", and "//" is not merged: werkzeug would answer either with a 308 redirect (an
    # HTML page, bypassing the JSON error handlers, and dropping a POST body in some clients).
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False
    app.json.sort_keys = False  # keep fields in model order: id, name, ... reads better than alphabetical
    app.extensions[STORE_EXTENSION] = store
    register_error_handlers(app)
    if admin_token:
        _require_token(app, admin_token)
    read_only = getattr(store, "read_only", None)
    if read_only:
        app.before_request(lambda: config.refuse_writes(read_only))
    for module in (gateways, upstreams, services, rules, keys, usage, config, openapi):
        app.register_blueprint(module.bp)
    return app


def _require_token(app: Flask, token: str) -> None:
    expected = f"Bearer {token}".encode("utf-8")

    @app.before_request
    def _check_token() -> None:
        if not request.path.startswith(API_PREFIX):
            return
        presented = request.headers.get("Authorization", "").encode("utf-8")
        if not hmac.compare_digest(presented, expected):  # constant time: no token oracle
            raise ApiError(401, "missing or wrong admin token; send 'Authorization: Bearer <token>'")
