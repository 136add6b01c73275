"""Export and apply against a real store: the round trip of the issue's "done when", idempotence, prune, stable
ids, atomicity, and provider credentials (never exported, never wiped by a missing variable)."""

from __future__ import annotations

import pytest

from store import Store
from store.config import ConfigError, export, parse_yaml, plan_or_apply

from .conftest import API, guide_setup, ok

ENV = {"OPENAI_API_KEY": "your-openai-key", "ANTHROPIC_API_KEY": "your-anthropic-key", "GEMINI_API_KEY": "gm-1",
       "OPENAI_API_KEY_2": "sk-second", "K": "aigw-0123456789abcdef"}


def _apply(store, text: str, env=ENV, **kw):
    return plan_or_apply(store, parse_yaml(text, name="gateway.yaml", env=env), **kw)


def _entities(store):
    return {kind: [e.model_dump(mode="json") for gw in store.list("gateways")
                   for e in ([gw] if kind == "gateways" else store.list(kind, gateway_id=gw.id))]
            for kind in ("gateways", "upstreams", "services", "rules", "keys")}


def test_round_trip_admin_api_export_wipe_apply_gives_an_identical_export(client, store, tmp_path, env):
    guide_setup(client)
    first = export(store).yaml()
    assert "your-openai-key" not in first and "sk-second" not in first and "gm-1" not in first
    assert "Bearer ${OPENAI_API_KEY}" in first and "${OPENAI_API_KEY_2}" in first and "${GEMINI_API_KEY}" in first
    assert "upstream: ai-providers-upstream" in first and "service: ai-chat-service" in first
    assert "_id" not in first  # names, not ids (target ids are identities, not references)

    wiped = Store(tmp_path / "fresh" / "aigw.json")
    plan = _apply(wiped, first)
    assert plan.applied and plan.summary()["create"] == 12 and plan.summary()["delete"] == 0
    assert export(wiped).yaml() == first
    # The credentials came back from the environment, exactly.
    before = {t.id: t.credentials for u in _all(store, "upstreams") for t in u.targets}
    after = {t.id: t.credentials for u in _all(wiped, "upstreams") for t in u.targets}
    assert before == after

    second = _apply(wiped, first)
    assert second.empty and not second.applied and second.unchanged == 12
    assert _apply(store, first).empty  # the export applied onto its own store changes nothing


def _all(store, kind):
    return [e for gw in store.list("gateways") for e in store.list(kind, gateway_id=gw.id)]


def test_apply_twice_writes_nothing_the_second_time(store, env):
    text = _guide_yaml()
    _apply(store, text)
    mtime = _mtime(store)
    assert _apply(store, text).empty
    assert _mtime(store) == mtime


def _mtime(store):
    import os

    return os.stat(store.path).st_mtime_ns


def _guide_yaml(weight: int = 50, extra_rule: str = "") -> str:
    return f"""
gateways:
  - name: gw
    subdomain: gw
    upstreams:
      - name: up
        targets:
          - {{provider: openai, weight: {weight}, credentials: {{api_key: sk-1}}}}
          - {{provider: anthropic, weight: 50}}
    services:
      - {{name: svc, upstream: up}}
    rules:
      - {{path: /v1, service: svc, methods: [POST]}}{extra_rule}
    keys:
      - {{name: k, key: "${{K}}"}}
"""


def test_an_edit_is_an_update_with_the_changed_fields_and_keeps_ids(store, env):
    _apply(store, _guide_yaml())
    before = _entities(store)
    plan = _apply(store, _guide_yaml(weight=80), dry_run=True)
    assert [(c.action, c.kind) for c in plan.changes] == [("update", "upstreams")]
    assert [f.render() for f in plan.changes[0].fields] == ["targets.0.weight: 50 → 80"]
    assert _entities(store) == before  # dry run
    _apply(store, _guide_yaml(weight=80))
    after = _entities(store)
    assert [u["id"] for u in after["upstreams"]] == [u["id"] for u in before["upstreams"]]
    assert [t["id"] for t in after["upstreams"][0]["targets"]] == [t["id"] for t in before["upstreams"][0]["targets"]]
    assert after["keys"] == before["keys"]
    assert after["upstreams"][0]["created_at"] == before["upstreams"][0]["created_at"]


def test_without_prune_nothing_is_deleted_with_prune_what_the_file_omits_goes(client, store, env):
    _apply(store, _guide_yaml())
    gid = store.list("gateways")[0].id
    ok(client.post(f"{API}/gateways/{gid}/keys", json={"name": "minted-by-api"}))
    ok(client.post(f"{API}/gateways", json={"name": "other", "subdomain": "other"}))
    smaller = _guide_yaml().replace("      - {path: /v1, service: svc, methods: [POST]}", "")
    plan = _apply(store, smaller)
    assert plan.count("delete") == 0 and len(plan.kept) == 3  # the rule, the API-minted key, the other gateway
    assert "--prune" in plan.render()
    assert len(store.list("rules", gateway_id=gid)) == 1
    plan = _apply(store, smaller, prune=True)
    assert sorted((c.action, c.kind, c.name.split(" (")[0]) for c in plan.changes) == [
        ("delete", "gateways", "other"), ("delete", "keys", "minted-by-api"), ("delete", "rules", "POST /v1")]
    assert store.list("rules", gateway_id=gid) == []
    assert [g.name for g in store.list("gateways")] == ["gw"]
    assert [k.name for k in store.list("keys", gateway_id=gid)] == ["k"]


def test_prune_removes_a_whole_gateway_and_frees_its_subdomain_for_a_new_one(store, env):
    _apply(store, _guide_yaml())
    moved = _guide_yaml().replace("name: gw\n", "name: renamed\n")
    with pytest.raises(ConfigError) as err:  # without prune the old gateway still holds the subdomain
        _apply(store, moved)
    assert err.value.status == 409 and "subdomain 'gw' is already used" in str(err.value)
    assert "gateway.yaml:3:" in str(err.value)
    plan = _apply(store, moved, prune=True)
    assert plan.applied and [g.name for g in store.list("gateways")] == ["renamed"]


def test_a_failing_apply_writes_nothing(store, env):
    _apply(store, _guide_yaml())
    from store.models import Gateway
    store.create("gateways", Gateway(name="squatter", subdomain="taken"))
    with open(store.path, "rb") as handle:
        before = handle.read()
    # Valid file, but its second gateway's subdomain collides with a stored one: the first gateway's changes
    # (a new weight) must not be written either.
    text = _guide_yaml(weight=99) + "  - {name: new, subdomain: taken}\n"
    with pytest.raises(ConfigError):
        _apply(store, text)
    with open(store.path, "rb") as handle:
        assert handle.read() == before


def test_an_exported_file_needs_its_variables_and_never_wipes_stored_credentials(client, store, env):
    guide_setup(client)
    exported = export(store).yaml()
    with open(store.path, "rb") as handle:
        before = handle.read()
    with pytest.raises(ConfigError) as err:
        _apply(store, exported, env={})
    assert "environment variable OPENAI_API_KEY is not set" in str(err.value)
    assert str(err.value).startswith("gateway.yaml:")
    with open(store.path, "rb") as handle:
        assert handle.read() == before
    assert _apply(store, exported).empty  # with the variables: nothing to change


def test_a_rotated_credential_is_an_update_whose_value_the_plan_never_shows(client, store, env):
    guide_setup(client)
    exported = export(store).yaml()
    plan = _apply(store, exported, env={**ENV, "OPENAI_API_KEY": "sk-rotated-secret"})
    assert [c.kind for c in plan.changes] == ["upstreams"]
    text = plan.render() + str(plan.to_dict())
    assert "sk-rotated-secret" not in text and "your-openai-key" not in text
    assert "credentials.header_value: (secret changed)" in text
    target = store.list("upstreams", gateway_id=store.list("gateways")[0].id)[0].targets[0]
    assert target.credentials.header_value == "Bearer sk-rotated-secret"


def test_adding_a_target_shows_the_new_item_without_its_secret(store, env):
    _apply(store, _guide_yaml())
    more = _guide_yaml().replace("          - {provider: anthropic, weight: 50}",
                                 "          - {provider: anthropic, weight: 50}\n"
                                 "          - {provider: gemini, credentials: {api_key: gm-secret-value}}")
    plan = _apply(store, more, dry_run=True)
    rendered = plan.render()
    assert "targets.2: (none) →" in rendered and "gm-secret-value" not in rendered


def test_ambiguous_names_in_the_store_are_refused_by_export_and_apply(client, store, env):
    ids = guide_setup(client)
    gid, uid = ids["gateway"]["id"], ids["upstream"]["id"]
    ok(client.post(f"{API}/gateways/{gid}/services", json={"name": "ai-chat-service", "upstream_id": uid}))
    with pytest.raises(ConfigError) as err:
        export(store)
    assert "two services" in str(err.value) and "rename one first" in str(err.value)
    text = "gateways:\n  - name: multi-provider-gateway\n    subdomain: your-subdomain\n    upstreams:\n" \
           "      - {name: u, targets: [{provider: openai}]}\n" \
           "    services:\n      - {name: ai-chat-service, upstream: u}\n"
    with pytest.raises(ConfigError) as err:
        _apply(store, text)
    assert err.value.status == 409 and "the store holds 2 services" in str(err.value)


def test_a_hand_written_target_without_id_keeps_the_stored_targets_id(client, store, env):
    import re

    ids = guide_setup(client)
    stored_ids = [t["id"] for t in ids["upstream"]["targets"]]
    text = export(store).yaml()
    # Drop every target id line: each target is then matched to the stored one by provider and origin.
    without_ids = re.sub(r"(?m)^(\s+)- id: .*\n\s+", lambda m: f"{m.group(1)}- ", text)
    assert "- id:" not in without_ids
    assert _apply(store, without_ids).empty
    gid = ids["gateway"]["id"]
    assert [t.id for t in store.list("upstreams", gateway_id=gid)[0].targets] == stored_ids
