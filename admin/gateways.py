"""``/api/v1/gateways``: tenants, selected by Host subdomain. DELETE takes ``?cascade=true``."""

from store.models import Gateway

from .crud import Resource, crud_blueprint

RESOURCE = Resource(kind="gateways", model=Gateway, label="gateway")
bp = crud_blueprint(RESOURCE)
