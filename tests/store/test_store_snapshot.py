"""Snapshot indexes and the loader's resilience to missing, corrupt and changing files."""

import json
import logging
import os

import pytest

from store import Snapshot, SnapshotLoader
from store.keys import hash_key
from store.models import ApiKeyCreate, Upstream


@pytest.fixture
def populated(store, build):
    """A gateway with two services and rules /, /v1, /v1/messages (GET only) and an inactive /v1/chat."""
    gateway = store.create("gateways", build.gateway("team-a"))
    upstream = store.create("upstreams", build.upstream(), gateway_id=gateway.id)
    service = store.create("services", build.service(upstream.id), gateway_id=gateway.id)
    other_service = store.create("services", build.service(upstream.id, name="other"), gateway_id=gateway.id)
    rules = {
        "/": store.create("rules", build.rule(service.id, path="/"), gateway_id=gateway.id),
        "/v1": store.create("rules", build.rule(service.id, path="/v1"), gateway_id=gateway.id),
        "/v1/messages": store.create(
            "rules", build.rule(other_service.id, path="/v1/messages", methods=["GET"]), gateway_id=gateway.id
        ),
        "/v1/chat": store.create(
            "rules", build.rule(other_service.id, path="/v1/chat", active=False), gateway_id=gateway.id
        ),
    }
    key, plaintext = store.create_key(gateway.id, ApiKeyCreate(name="k"))
    return {"gateway": gateway, "upstream": upstream, "service": service, "rules": rules, "key": key,
            "plaintext": plaintext}


def test_lookups(store, populated):
    snapshot = SnapshotLoader(store.path).current
    gateway = populated["gateway"]
    assert snapshot.gateway(gateway.id) == gateway
    assert snapshot.gateway_by_subdomain("TEAM-A") == gateway
    assert snapshot.gateway_by_subdomain("nobody") is None
    assert snapshot.key_by_hash(hash_key(populated["plaintext"])) == populated["key"]
    assert snapshot.key_by_hash(hash_key("wrong")) is None
    assert snapshot.service(populated["service"].id) == populated["service"]
    assert snapshot.upstream(populated["upstream"].id) == populated["upstream"]
    assert snapshot.upstreams() == (populated["upstream"],)


def test_credentials_keep_plaintext_for_the_data_plane(store, populated):
    upstream = SnapshotLoader(store.path).current.upstream(populated["upstream"].id)
    assert isinstance(upstream, Upstream)
    assert upstream.targets[0].credentials.api_key == "sk-test-0123456789abcdef"


@pytest.mark.parametrize(
    "path, method, expected",
    [
        ("/v1/chat/completions", "POST", "/v1"),  # /v1/chat is inactive
        ("/v1/messages", "POST", "/v1"),  # /v1/messages is GET-only
        ("/v1/messages", "GET", "/v1/messages"),  # / and /v1 are POST-only
        ("/v1/messages/batches?x=1", "get", "/v1/messages"),
        ("/v1x", "POST", "/"),
        ("/v1", "POST", "/v1"),
        ("/other", "POST", "/"),
        ("/other", "PUT", None),
    ],
)
def test_match_rule_longest_active_prefix(store, populated, path, method, expected):
    rules = populated["rules"]
    match = SnapshotLoader(store.path).current.match_rule(populated["gateway"].id, path, method)
    assert match == (rules[expected] if expected else None)


def test_match_rule_unknown_gateway(store, populated):
    assert SnapshotLoader(store.path).current.match_rule("nope", "/v1", "POST") is None


def test_snapshot_is_immutable(store, populated):
    snapshot = SnapshotLoader(store.path).current
    with pytest.raises(Exception):
        snapshot.gateways_by_id = {}
    with pytest.raises(TypeError):
        snapshot.gateways_by_id["x"] = populated["gateway"]


def test_changed_and_reload(store, populated, build):
    loader = SnapshotLoader(store.path)
    assert loader.changed() is False
    before = loader.current
    store.create("gateways", build.gateway("team-b"))
    assert loader.changed() is True
    assert loader.current is before  # nothing happens until reload
    after = loader.reload()
    assert after is loader.current and after.gateway_by_subdomain("team-b") is not None
    assert loader.changed() is False


def test_missing_file_gives_empty_snapshot(tmp_path, caplog):
    # A first start before the admin API wrote anything is normal: said, but not as a warning.
    with caplog.at_level(logging.INFO):
        loader = SnapshotLoader(tmp_path / "absent.json")
    assert loader.current.gateways_by_id == {}
    assert "no store file" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loader.changed() is False


def test_file_disappearing_later_is_a_warning(store, populated, caplog):
    loader = SnapshotLoader(store.path)
    good = loader.current
    os.remove(store.path)
    with caplog.at_level(logging.WARNING):
        assert loader.changed() is True
        assert loader.reload() is good
    assert "does not exist" in caplog.text


@pytest.mark.parametrize("content", [b'{"gateways": {"1": {"na', b"\x00\x00\x00", b"[1, 2]", b"", b"\xff\xfe"])
def test_unreadable_file_keeps_last_good_snapshot(store, populated, caplog, content):
    loader = SnapshotLoader(store.path)
    good = loader.current
    with open(store.path, "wb") as handle:
        handle.write(content)
    assert loader.changed() is True
    with caplog.at_level(logging.WARNING):
        assert loader.reload() is good
    assert "keeping the current configuration" in caplog.text
    assert loader.changed() is False  # the broken file is remembered: no warning storm
    store_data = populated["gateway"].model_dump(mode="json")
    with open(store.path + ".new", "w") as handle:
        json.dump({"gateways": {"1": store_data}}, handle)
    os.replace(store.path + ".new", store.path)
    assert loader.changed() is True and loader.reload() is not good


def test_deleted_file_keeps_last_good_snapshot(store, populated):
    loader = SnapshotLoader(store.path)
    good = loader.current
    os.unlink(store.path)
    assert loader.changed() is True
    assert loader.reload() is good


def test_invalid_record_is_skipped_not_fatal(tmp_path, caplog, build):
    gateway = build.gateway().model_dump(mode="json")
    path = tmp_path / "db.json"
    path.write_text(json.dumps({"gateways": {"1": gateway, "2": {"id": "bad", "subdomain": "-"}}}))
    with caplog.at_level(logging.WARNING):
        snapshot = SnapshotLoader(path).current
    assert list(snapshot.gateways_by_id) == [gateway["id"]]
    assert "skipping invalid gateway record 'bad'" in caplog.text


def test_warnings_never_contain_secrets(tmp_path, caplog, build):
    upstream = build.upstream().model_dump(mode="json")
    upstream["targets"][0]["weight"] = "heavy"  # invalid, next to a credential
    path = tmp_path / "db.json"
    path.write_text(json.dumps({"upstreams": {"1": upstream}}))
    with caplog.at_level(logging.WARNING):
        SnapshotLoader(path)
    assert "targets.0.weight" in caplog.text
    assert "sk-test" not in caplog.text


def test_empty_snapshot_defaults():
    snapshot = Snapshot()
    assert snapshot.match_rule("g", "/", "GET") is None and snapshot.upstreams() == ()
