"""``/api/v1/gateways/{gid}/services``: what rules route to (an upstream of the gateway, or an endpoint)."""

from store.models import Service

from .crud import Resource, crud_blueprint

RESOURCE = Resource(kind="services", model=Service, label="service")
bp = crud_blueprint(RESOURCE)
