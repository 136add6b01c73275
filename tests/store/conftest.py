from types import SimpleNamespace

import pytest

from store import Store
from store.models import Gateway, Rule, Service, Upstream


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "aigw.json")


@pytest.fixture
def store(db_path):
    return Store(db_path)


def make_gateway(subdomain="team-a", name="Team A"):
    return Gateway.from_payload({"name": name, "subdomain": subdomain})


def make_upstream(name="pool", **overrides):
    payload = {
        "name": name,
        "targets": [{"provider": "openai", "credentials": {"api_key": "sk-test-0123456789abcdef"}}],
        **overrides,
    }
    return Upstream.from_payload(payload)


def make_service(upstream_id, name="svc"):
    return Service.from_payload({"name": name, "type": "upstream", "upstream_id": upstream_id})


def make_rule(service_id, path="/v1", methods=("POST",), **overrides):
    return Rule.from_payload({"path": path, "service_id": service_id, "methods": list(methods), **overrides})


@pytest.fixture
def build():
    """Entity builders (a fixture, since test modules cannot import conftest)."""
    return SimpleNamespace(gateway=make_gateway, upstream=make_upstream, service=make_service, rule=make_rule)
