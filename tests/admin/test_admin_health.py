"""GET …/upstreams/{uid}/health joins the upstream's targets with the proxy's published health file."""

import time

import pytest

from admin import create_app
from store.health_file import target_key, write_health

API = "/api/v1"
PUBLISHED = {"state": "open", "consecutive_failures": 3, "last_error": "HTTP 503 from upstream",
             "last_error_at": "2026-01-01T00:00:00.000Z", "cooldown_remaining_s": 41.5, "ewma_ttfb_ms": 120.0,
             "in_flight": 2, "requests": 20, "failures": 4}
TARGET_FIELDS = {"target_id", "provider", "host", "port", "state", "consecutive_failures", "last_error",
                 "last_error_at", "cooldown_remaining_s", "ewma_ttfb_ms", "in_flight", "requests", "failures",
                 "quota_exhausted_until", "quota_reason", "source", "origin", "origin_reason"}


def health(client, gid, upstream):
    response = client.get(f"{API}/gateways/{gid}/upstreams/{upstream['id']}/health")
    assert response.status_code == 200
    return response.json


def test_nothing_published_is_unknown_and_stale(client, gid, upstream):
    body = health(client, gid, upstream)
    assert body["published_at"] is None and body["stale"] is True
    assert [t["state"] for t in body["targets"]] == ["unknown", "unknown"]
    assert [t["provider"] for t in body["targets"]] == ["openai", "anthropic"]
    assert all(set(t) == TARGET_FIELDS for t in body["targets"])


def test_published_state_per_target(client, gid, upstream, health_path):
    openai, anthropic = upstream["targets"]
    write_health(health_path, {"written_at": time.time(), "pid": 1,
                               "targets": {target_key(upstream["id"], openai["id"]): PUBLISHED,
                                           target_key("other-upstream", anthropic["id"]): PUBLISHED}})
    body = health(client, gid, upstream)
    assert body["stale"] is False and body["published_at"].endswith("Z")
    first, second = body["targets"]
    assert first == {"target_id": openai["id"], "provider": "openai", "host": None, "port": None, **PUBLISHED,
                     "quota_exhausted_until": None, "quota_reason": None, "source": None, "origin": None,
                     "origin_reason": None}
    assert second["state"] == "unknown"  # published for another upstream only


def test_state_received_from_another_process_says_so(client, gid, upstream, health_path):
    """A circuit another proxy process opened (shared through Redis) is shown with where it came from."""
    openai, _ = upstream["targets"]
    shared = {**PUBLISHED, "state": "open", "source": "shared", "origin": "w2-1a2b", "origin_reason": "HTTP 500"}
    write_health(health_path, {"written_at": time.time(), "pid": 1,
                               "targets": {target_key(upstream["id"], openai["id"]): shared}})
    first, _ = health(client, gid, upstream)["targets"]
    assert (first["state"], first["source"], first["origin"], first["origin_reason"]) == (
        "open", "shared", "w2-1a2b", "HTTP 500")


def test_old_file_is_stale(client, gid, upstream, health_path):
    write_health(health_path, {"written_at": time.time() - 6, "pid": 1, "targets": {}})
    assert health(client, gid, upstream)["stale"] is True


@pytest.mark.parametrize("entry", [{"state": "melting"}, "open", None, {"consecutive_failures": 1}])
def test_malformed_entries_read_as_unknown(client, gid, upstream, health_path, entry):
    key = target_key(upstream["id"], upstream["targets"][0]["id"])
    write_health(health_path, {"written_at": time.time(), "pid": 1, "targets": {key: entry}})
    assert health(client, gid, upstream)["targets"][0]["state"] == "unknown"


def test_corrupt_file_reads_as_nothing_published(client, gid, upstream, health_path):
    with open(health_path, "w") as handle:
        handle.write("{half")
    body = health(client, gid, upstream)
    assert body["stale"] is True and body["published_at"] is None


def test_without_health_path(store, gid, upstream):
    client = create_app(store).test_client()
    assert health(client, gid, upstream)["targets"][0]["state"] == "unknown"


def test_unknown_upstream_or_foreign_gateway_is_404(client, gid, upstream):
    assert client.get(f"{API}/gateways/{gid}/upstreams/nope/health").status_code == 404
    other = client.post(f"{API}/gateways", json={"name": "o", "subdomain": "o"}).json["id"]
    assert client.get(f"{API}/gateways/{other}/upstreams/{upstream['id']}/health").status_code == 404
