"""Repository behaviour: CRUD scoped by gateway, conflicts, references, cascade, keys, atomicity."""

import json
import os

import pytest

from store import Conflict, InvalidReference, NotFound, Store, StoreUnavailable
from store.atomic import temp_prefix
from store.keys import hash_key
from store.models import ApiKeyCreate, Gateway, Service
from store.repo import AtomicJSONStorage


@pytest.fixture
def gateway(store, build):
    return store.create("gateways", build.gateway())


def test_file_is_tinydb_format(store, db_path, gateway):
    with open(db_path) as handle:
        data = json.load(handle)
    assert list(data["gateways"].values()) == [gateway.model_dump(mode="json")]


def test_create_get_list_roundtrip(store, gateway, build):
    assert store.get("gateways", gateway.id) == gateway
    second = store.create("gateways", build.gateway("team-b"))
    assert [g.id for g in store.list("gateways")] == [gateway.id, second.id]
    assert [g.id for g in store.list("gateways", offset=1, limit=5)] == [second.id]
    assert store.list("gateways", offset=0, limit=1) == [gateway]
    assert store.list("gateways", offset=10) == []


def test_a_second_store_on_the_same_file_sees_writes(store, db_path, gateway):
    assert Store(db_path).get("gateways", gateway.id) == gateway


def test_scoped_entities_carry_gateway_and_timestamps(store, gateway, build):
    upstream = store.create("upstreams", build.upstream(), gateway_id=gateway.id)
    assert upstream.gateway_id == gateway.id
    assert upstream.created_at == upstream.updated_at
    assert store.get("upstreams", upstream.id, gateway_id=gateway.id) == upstream


def test_other_gateways_entities_are_not_found(store, gateway, build):
    other = store.create("gateways", build.gateway("team-b"))
    upstream = store.create("upstreams", build.upstream(), gateway_id=gateway.id)
    with pytest.raises(NotFound):
        store.get("upstreams", upstream.id, gateway_id=other.id)
    with pytest.raises(NotFound):
        store.replace("upstreams", upstream.id, build.upstream(), gateway_id=other.id)
    with pytest.raises(NotFound):
        store.delete("upstreams", upstream.id, gateway_id=other.id)
    assert store.list("upstreams", gateway_id=other.id) == []


def test_unknown_gateway_is_not_found_for_children(store, build):
    with pytest.raises(NotFound, match="gateway"):
        store.list("upstreams", gateway_id="nope")
    with pytest.raises(NotFound, match="gateway"):
        store.create("upstreams", build.upstream(), gateway_id="nope")


def test_replace_keeps_identity_and_created_at(store, gateway, build):
    original = store.create("upstreams", build.upstream(), gateway_id=gateway.id)
    replaced = store.replace("upstreams", original.id, build.upstream(name="renamed"), gateway_id=gateway.id)
    assert (replaced.id, replaced.gateway_id, replaced.created_at) == (original.id, gateway.id, original.created_at)
    assert replaced.updated_at >= original.updated_at
    assert store.get("upstreams", original.id, gateway_id=gateway.id).name == "renamed"
    assert len(store.list("upstreams", gateway_id=gateway.id)) == 1


def test_duplicate_subdomain_conflicts(store, gateway, build):
    with pytest.raises(Conflict, match="subdomain"):
        store.create("gateways", build.gateway(subdomain=gateway.subdomain, name="other"))
    other = store.create("gateways", build.gateway("team-b"))
    with pytest.raises(Conflict):
        store.replace("gateways", other.id, build.gateway(subdomain=gateway.subdomain))
    # Replacing a gateway with its own subdomain is not a conflict with itself.
    assert store.replace("gateways", gateway.id, build.gateway(subdomain=gateway.subdomain, name="new")).name == "new"


def test_duplicate_upstream_name_conflicts_within_gateway_only(store, gateway, build):
    store.create("upstreams", build.upstream("pool"), gateway_id=gateway.id)
    with pytest.raises(Conflict, match="name 'pool'"):
        store.create("upstreams", build.upstream("pool"), gateway_id=gateway.id)
    other = store.create("gateways", build.gateway("team-b"))
    store.create("upstreams", build.upstream("pool"), gateway_id=other.id)


def test_service_must_reference_upstream_of_same_gateway(store, gateway, build):
    other = store.create("gateways", build.gateway("team-b"))
    foreign = store.create("upstreams", build.upstream(), gateway_id=other.id)
    with pytest.raises(InvalidReference) as exc_info:
        store.create("services", build.service(foreign.id), gateway_id=gateway.id)
    assert exc_info.value.details[0]["loc"] == "upstream_id"
    endpoint = Service.from_payload({"name": "e", "type": "endpoint", "host": "h", "port": 1, "protocol": "http"})
    assert store.create("services", endpoint, gateway_id=gateway.id).upstream_id is None


def test_rule_must_reference_service_of_same_gateway(store, gateway, build):
    with pytest.raises(InvalidReference) as exc_info:
        store.create("rules", build.rule("missing"), gateway_id=gateway.id)
    assert exc_info.value.details[0]["loc"] == "service_id"


def test_delete_referenced_upstream_and_service_conflicts(store, gateway, build):
    upstream = store.create("upstreams", build.upstream(), gateway_id=gateway.id)
    service = store.create("services", build.service(upstream.id), gateway_id=gateway.id)
    rule = store.create("rules", build.rule(service.id), gateway_id=gateway.id)
    with pytest.raises(Conflict) as exc_info:
        store.delete("upstreams", upstream.id, gateway_id=gateway.id)
    assert service.id in exc_info.value.message
    assert exc_info.value.details[0]["loc"] == f"services.{service.id}"
    with pytest.raises(Conflict) as exc_info:
        store.delete("services", service.id, gateway_id=gateway.id)
    assert rule.id in exc_info.value.message
    store.delete("rules", rule.id, gateway_id=gateway.id)
    store.delete("services", service.id, gateway_id=gateway.id)
    store.delete("upstreams", upstream.id, gateway_id=gateway.id)
    with pytest.raises(NotFound):
        store.get("upstreams", upstream.id, gateway_id=gateway.id)


def test_delete_gateway_with_children(store, gateway, build):
    upstream = store.create("upstreams", build.upstream(), gateway_id=gateway.id)
    service = store.create("services", build.service(upstream.id), gateway_id=gateway.id)
    store.create("rules", build.rule(service.id), gateway_id=gateway.id)
    store.create_key(gateway.id, ApiKeyCreate(name="k"))
    other = store.create("gateways", build.gateway("team-b"))
    kept = store.create("upstreams", build.upstream(), gateway_id=other.id)
    with pytest.raises(Conflict) as exc_info:
        store.delete("gateways", gateway.id)
    assert {d["loc"].split(".")[0] for d in exc_info.value.details} == {"upstreams", "services", "rules", "keys"}
    assert "cascade" in exc_info.value.message
    store.delete("gateways", gateway.id, cascade=True)
    for kind in ("upstreams", "services", "rules", "keys"):
        assert all(e.gateway_id != gateway.id for e in store.list(kind, gateway_id=other.id))
    with pytest.raises(NotFound):
        store.get("gateways", gateway.id)
    assert store.list("upstreams", gateway_id=other.id) == [kept]


def test_delete_empty_gateway(store, gateway):
    store.delete("gateways", gateway.id)
    assert store.list("gateways") == []


def test_keys_are_stored_hashed(store, db_path, gateway):
    key, plaintext = store.create_key(gateway.id, ApiKeyCreate(name="k"))
    assert plaintext.startswith("aigw-") and len(plaintext) > 40
    assert key.key_hash == hash_key(plaintext) and key.key_prefix == plaintext[:9]
    with open(db_path) as handle:
        assert plaintext not in handle.read()
    _, second = store.create_key(gateway.id, ApiKeyCreate(name="k2"))
    assert second != plaintext


def test_failed_transaction_writes_nothing(store, db_path, gateway, build):
    before = open(db_path, "rb").read()
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.create("gateways", build.gateway("team-b"))
            raise RuntimeError("abort")
    assert open(db_path, "rb").read() == before
    assert [g.id for g in store.list("gateways")] == [gateway.id]


def test_transaction_batches_writes(store, db_path, build):
    with store.transaction():
        store.create("gateways", build.gateway("a"))
        store.create("gateways", build.gateway("b"))
        assert not os.path.exists(db_path)  # nothing written until the batch commits
    assert len(store.list("gateways")) == 2


def test_writes_outside_a_transaction_are_refused(db_path):
    storage = AtomicJSONStorage(db_path)
    with pytest.raises(RuntimeError, match="transaction"):
        storage.write({})


def test_wrong_model_for_kind_is_a_programming_error(store, build):
    with pytest.raises(TypeError):
        store.create("gateways", build.upstream())
    with pytest.raises(TypeError):
        store.create("upstreams", build.upstream())  # no gateway_id


def test_corrupt_file_is_reported_not_overwritten(store, db_path, gateway, build):
    with open(db_path, "w") as handle:
        handle.write('{"gateways": {')
    with pytest.raises(StoreUnavailable):
        store.list("gateways")
    with pytest.raises(StoreUnavailable):
        store.create("gateways", build.gateway("team-b"))
    assert open(db_path).read() == '{"gateways": {'


def test_orphan_temp_files_are_cleaned_on_open(db_path, tmp_path):
    orphan = tmp_path / (temp_prefix(db_path) + "abc")
    orphan.write_text("{half")
    unrelated = tmp_path / "keep.txt"
    unrelated.write_text("x")
    Store(db_path)
    assert not orphan.exists() and unrelated.exists()


def test_store_file_is_private(store, db_path, gateway):
    assert os.stat(db_path).st_mode & 0o077 == 0  # it holds provider credentials


def test_gateway_model_roundtrip_is_exact(store, gateway):
    assert Gateway.model_validate(store.get("gateways", gateway.id).model_dump(mode="json")) == gateway
