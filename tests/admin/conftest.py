import copy
from types import SimpleNamespace

import pytest

from admin import create_app
from store import Store

API = "/api/v1"

# The TrustGate guide "Load Balancing Between AI Providers", payloads verbatim (ids filled in per test).
GUIDE_GATEWAY = {"name": "multi-provider-gateway", "subdomain": "your-subdomain"}
GUIDE_UPSTREAM = {
    "name": "ai-providers-upstream",
    "algorithm": "round-robin",
    "targets": [
        {
            "path": "/v1/chat/completions",
            "provider": "openai",
            "weight": 50,
            "priority": 1,
            "default_model": "gpt-4",
            "models": ["gpt-3.5-turbo", "gpt-4"],
            "credentials": {"header_name": "Authorization", "header_value": "Bearer your-openai-key"},
        },
        {
            "path": "/v1/messages",
            "provider": "anthropic",
            "weight": 50,
            "priority": 1,
            "default_model": "claude-3-sonnet",
            "models": ["claude-3-sonnet"],
            "headers": {"anthropic-version": "2023-06-01"},
            "credentials": {"header_name": "x-api-key", "header_value": "your-anthropic-key"},
        },
    ],
    "health_checks": {"passive": True, "threshold": 3, "interval": 60},
}
GUIDE_SERVICE = {"name": "multi-provider-service", "type": "upstream", "description": "Load balanced AI service"}
GUIDE_RULE = {"path": "/v1", "methods": ["POST"], "strip_path": False, "active": True}
GUIDE_KEY = {"name": "multi-provider-key"}


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "aigw.json")


@pytest.fixture
def health_path(tmp_path):
    return str(tmp_path / "aigw.json.health.json")


@pytest.fixture
def app(store, health_path):
    return create_app(store, health_path=health_path)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def guide():
    """Fresh copies of the guide's payloads (tests may edit them)."""
    return SimpleNamespace(
        gateway=copy.deepcopy(GUIDE_GATEWAY),
        upstream=copy.deepcopy(GUIDE_UPSTREAM),
        service=copy.deepcopy(GUIDE_SERVICE),
        rule=copy.deepcopy(GUIDE_RULE),
        key=copy.deepcopy(GUIDE_KEY),
    )


@pytest.fixture
def gid(client, guide):
    response = client.post(f"{API}/gateways", json=guide.gateway)
    assert response.status_code == 201
    return response.json["id"]


@pytest.fixture
def upstream(client, gid, guide):
    response = client.post(f"{API}/gateways/{gid}/upstreams", json=guide.upstream)
    assert response.status_code == 201, response.json
    return response.json


@pytest.fixture
def service(client, gid, upstream, guide):
    response = client.post(f"{API}/gateways/{gid}/services", json={**guide.service, "upstream_id": upstream["id"]})
    assert response.status_code == 201, response.json
    return response.json


@pytest.fixture
def rule(client, gid, service, guide):
    response = client.post(f"{API}/gateways/{gid}/rules", json={**guide.rule, "service_id": service["id"]})
    assert response.status_code == 201, response.json
    return response.json
