"""``/api/v1/gateways/{gid}/rules``: path-prefix + method routing to a service."""

from store.models import Rule

from .crud import Resource, crud_blueprint

RESOURCE = Resource(kind="rules", model=Rule, label="rule")
bp = crud_blueprint(RESOURCE)
