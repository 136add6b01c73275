"""Shared fixtures of the config-as-code tests: a store, the admin app over it, the guide's setup through the admin
API (the five calls of shared/reference/trustgate-guide.md, plus a second gateway), and a clean environment."""

from __future__ import annotations

import pytest

from admin import create_app
from store import Store

API = "/api/v1"
SECRETS = {"OPENAI_API_KEY": "your-openai-key", "ANTHROPIC_API_KEY": "your-anthropic-key"}


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "data" / "aigw.json")


@pytest.fixture
def client(store):
    return create_app(store).test_client()


@pytest.fixture
def env(monkeypatch):
    """No stray AIGW_* or provider variables from the machine; returns monkeypatch for setting some."""
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_API_KEY_2", "TEAM_KEY", "AIGW_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def ok(response, *statuses):
    assert response.status_code in (statuses or (200, 201, 204)), (response.status_code, response.get_data(True))
    return response.get_json(silent=True)


def guide_setup(client) -> dict:
    """The guide's five calls, verbatim payloads (step 5 without the past expires_at), then a second gateway with
    its own upstream (api_key credentials, sticky, failover), endpoint service, named rule and a key."""
    gw = ok(client.post(f"{API}/gateways", json={"name": "multi-provider-gateway", "subdomain": "your-subdomain"}))
    up = ok(client.post(f"{API}/gateways/{gw['id']}/upstreams", json={
        "name": "ai-providers-upstream", "algorithm": "round-robin",
        "targets": [
            {"path": "/v1/chat/completions", "provider": "openai", "weight": 50, "priority": 1,
             "default_model": "gpt-4", "models": ["gpt-3.5-turbo", "gpt-4"],
             "credentials": {"header_name": "Authorization", "header_value": "Bearer your-openai-key"}},
            {"path": "/v1/messages", "provider": "anthropic", "weight": 50, "priority": 1,
             "default_model": "claude-3-sonnet", "models": ["claude-3-sonnet"],
             "headers": {"anthropic-version": "2023-06-01"},
             "credentials": {"header_name": "x-api-key", "header_value": "your-anthropic-key"}}],
        "health_checks": {"passive": True, "threshold": 3, "interval": 60}}))
    svc = ok(client.post(f"{API}/gateways/{gw['id']}/services", json={
        "name": "ai-chat-service", "description": "Load balanced AI chat completion service",
        "upstream_id": up["id"], "type": "upstream", "tags": ["ai", "chat"]}))
    rule = ok(client.post(f"{API}/gateways/{gw['id']}/rules", json={
        "path": "/v1", "service_id": svc["id"], "methods": ["POST"], "strip_path": False, "active": True}))
    key = ok(client.post(f"{API}/gateways/{gw['id']}/keys", json={"name": "test-key"}))

    gw2 = ok(client.post(f"{API}/gateways", json={"name": "second", "subdomain": "second", "status": "inactive"}))
    up2 = ok(client.post(f"{API}/gateways/{gw2['id']}/upstreams", json={
        "name": "gemini-pool", "algorithm": "sticky", "sticky": {"hash_on": "header:X-Session-Id", "ttl": 60},
        "targets": [{"provider": "gemini", "default_model": "gemini-2.0-flash", "credentials": {"api_key": "gm-1"}},
                    {"provider": "openai", "weight": 3, "credentials": {"api_key": "sk-second"},
                     "pricing": {"input_per_million": 3.0, "output_per_million": 15.0}}],
        "failover": {"retry_on": ["connect", "5xx"], "max_attempts": 2}}))
    ok(client.post(f"{API}/gateways/{gw2['id']}/services", json={"name": "pool", "upstream_id": up2["id"]}))
    ok(client.post(f"{API}/gateways/{gw2['id']}/services", json={
        "name": "fixed", "type": "endpoint", "host": "127.0.0.1", "port": 9000, "protocol": "http"}))
    services = {s["name"]: s["id"] for s in ok(client.get(f"{API}/gateways/{gw2['id']}/services"))}
    ok(client.post(f"{API}/gateways/{gw2['id']}/rules", json={"name": "chat", "path": "/v1/chat/",
                                                              "service_id": services["pool"], "retry_attempts": 2}))
    ok(client.post(f"{API}/gateways/{gw2['id']}/rules", json={"path": "/fixed", "service_id": services["fixed"],
                                                              "methods": ["GET", "post"], "active": False}))
    ok(client.post(f"{API}/gateways/{gw2['id']}/keys", json={"name": "ci", "expires_at": "2099-01-01T00:00:00Z"}))
    return {"gateway": gw, "upstream": up, "service": svc, "rule": rule, "key": key, "gateway2": gw2}
