"""Client keys: plaintext exactly once, hash at rest, no editing."""

from datetime import datetime, timedelta, timezone

from store.keys import hash_key

API = "/api/v1"
VIEW_FIELDS = {"id", "gateway_id", "name", "key_prefix", "expires_at", "active", "limits", "created_at"}


def test_create_shows_plaintext_once(client, store, gid, guide):
    created = client.post(f"{API}/gateways/{gid}/keys", json=guide.key)
    assert created.status_code == 201
    assert set(created.json) == VIEW_FIELDS | {"key"}
    plaintext = created.json["key"]
    assert created.json["key_prefix"] == plaintext[:9]
    key_id = created.json["id"]

    fetched = client.get(f"{API}/gateways/{gid}/keys/{key_id}")
    assert fetched.status_code == 200 and set(fetched.json) == VIEW_FIELDS
    listed = client.get(f"{API}/gateways/{gid}/keys")
    assert [set(k) for k in listed.json] == [VIEW_FIELDS]
    for response in (fetched, listed):
        assert plaintext.encode() not in response.data and b"key_hash" not in response.data

    assert store.get("keys", key_id, gateway_id=gid).key_hash == hash_key(plaintext)
    with open(store.path) as handle:
        assert plaintext not in handle.read()


def test_expiry_is_kept(client, gid):
    expires = (datetime.now(timezone.utc) + timedelta(days=30)).replace(microsecond=0)
    created = client.post(f"{API}/gateways/{gid}/keys", json={"name": "k", "expires_at": expires.isoformat()})
    assert created.status_code == 201
    assert created.json["expires_at"] == expires.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert created.json["active"] is True


def test_delete_and_no_put(client, gid, guide):
    key_id = client.post(f"{API}/gateways/{gid}/keys", json=guide.key).json["id"]
    assert client.put(f"{API}/gateways/{gid}/keys/{key_id}", json=guide.key).status_code == 405
    assert client.delete(f"{API}/gateways/{gid}/keys/{key_id}").status_code == 204
    assert client.get(f"{API}/gateways/{gid}/keys/{key_id}").status_code == 404
    assert client.get(f"{API}/gateways/{gid}/keys").json == []


def test_server_owned_fields_in_payload_are_ignored(client, gid):
    created = client.post(f"{API}/gateways/{gid}/keys",
                          json={"name": "k", "key": "aigw-chosen", "key_hash": "0" * 64, "id": "mine"})
    assert created.status_code == 201
    assert created.json["key"] != "aigw-chosen" and created.json["id"] != "mine"
