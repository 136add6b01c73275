"""Control plane: the Flask admin API (``/api/v1``) over the store. Never imported by the data plane."""

from .app import create_app
from .server import AdminServer, InsecureBindError, check_bind, run_forever, serve

__all__ = ["AdminServer", "InsecureBindError", "check_bind", "create_app", "run_forever", "serve"]
