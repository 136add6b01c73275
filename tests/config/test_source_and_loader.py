"""The file reader (bounds, YAML 1.2 scalars, ${VAR}), the JSON Schema, and the database-less snapshot source."""

from __future__ import annotations

import logging
import os

import pytest

from store.config import ConfigError, ConfigFileLoader, json_schema, parse_yaml, resolve
from store.config.source import MAX_DEPTH
from tests.e2e.harness import ROOT

MIN = "gateways:\n  - name: gw\n    subdomain: gw\n"


def test_yaml_12_scalars_dates_and_norway_stay_strings():
    src = parse_yaml("a: 2023-06-01\nb: on\nc: no\nd: true\ne: 010\nf: 1e3\ng: ~\n")
    assert src.data == {"a": "2023-06-01", "b": "on", "c": "no", "d": True, "e": "010", "f": 1000.0, "g": None}


def test_env_substitution_typed_when_unquoted_string_when_quoted_defaults_and_escapes():
    env = {"PORT": "8080", "NAME": "x"}
    src = parse_yaml('a: ${PORT}\nb: "${PORT}"\nc: ${MISSING:-7}\nd: pre-${NAME}-post\ne: $${NAME}\n', env=env)
    assert src.data == {"a": 8080, "b": "8080", "c": 7, "d": "pre-x-post", "e": "${NAME}"}
    assert ("a",) in src.interpolated and ("e",) not in src.interpolated
    with pytest.raises(ConfigError, match=r"<config>:1:4: a: environment variable NOPE is not set"):
        parse_yaml("a: ${NOPE}\n", env={})
    with pytest.raises(ConfigError, match="is empty"):
        parse_yaml("a: ${EMPTY}\n", env={"EMPTY": ""})
    with pytest.raises(ConfigError, match="malformed reference"):
        parse_yaml("a: ${1x}\n", env={})


def test_anchors_and_merge_keys_work_within_bounds():
    text = ("defaults: &t {provider: openai, weight: 2}\n"
            "list: [*t, {<<: *t, weight: 5}]\n")
    assert parse_yaml(text).data["list"] == [{"provider": "openai", "weight": 2}, {"provider": "openai", "weight": 5}]


def test_recursive_alias_deep_nesting_and_several_documents_are_refused():
    with pytest.raises(ConfigError, match="recursive"):
        parse_yaml("a: &a [*a]\n")
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_DEPTH}|exceeded maximum nesting depth"):
        parse_yaml("a: " + "[" * 100_000 + "]" * 100_000 + "\n")  # flow: libyaml's own bound may come first
    deep = "".join(" " * i + "k:\n" for i in range(100)) + " " * 100 + "v\n"
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_DEPTH}"):
        parse_yaml(deep)
    with pytest.raises(ConfigError, match="YAML"):
        parse_yaml("a: 1\n---\nb: 2\n")
    with pytest.raises(ConfigError, match="empty"):
        parse_yaml("   \n")


def test_top_level_and_version_are_checked():
    with pytest.raises(ConfigError, match=r"<config>:1:1: gatways: unknown field 'gatways'"):
        resolve(parse_yaml("gatways: []\n"))
    with pytest.raises(ConfigError, match="unsupported version 2"):
        resolve(parse_yaml("version: 2\ngateways: []\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        resolve(parse_yaml("- a\n"))
    with pytest.raises(ConfigError, match="refer to the upstream by name|names the upstream instead"):
        resolve(parse_yaml(MIN + "    services:\n      - {name: s, upstream_id: abc}\n"))


def test_ids_are_derived_from_names_and_stable():
    text = MIN + "    upstreams:\n      - {name: u, targets: [{provider: openai}, {provider: openai}]}\n"
    first = [(i.entity.id, getattr(i.entity, "targets", None)) for i in resolve(parse_yaml(text)).items]
    again = [(i.entity.id, getattr(i.entity, "targets", None)) for i in resolve(parse_yaml(text)).items]
    assert first == again
    targets = first[1][1]
    assert len({t.id for t in targets}) == 2
    edited = text.replace("{provider: openai}, {", "{provider: openai, weight: 9}, {")
    assert [t.id for t in resolve(parse_yaml(edited)).items[1].entity.targets] == [t.id for t in targets]


def test_a_plaintext_key_from_the_environment_is_hashed_and_never_kept():
    text = MIN + "    keys:\n      - {name: k, key: '${TEAM_KEY}'}\n"
    key = resolve(parse_yaml(text, env={"TEAM_KEY": "aigw-team-key-0123456789"})).items[1].entity
    assert key.key_prefix == "aigw-team" and "aigw-team-key-0123456789" not in key.model_dump_json()
    with pytest.raises(ConfigError, match="at least 16"):
        resolve(parse_yaml(text, env={"TEAM_KEY": "short"}))


def test_schema_is_generated_from_the_models_and_covers_new_fields():
    schema = json_schema()
    gateway = schema["$defs"]["Gateway"]
    assert {"upstreams", "services", "rules", "keys", "name", "subdomain"} <= set(gateway["properties"])
    assert not {"id", "created_at", "gateway_id"} & set(gateway["properties"])
    service = schema["$defs"]["Service"]
    assert "upstream" in service["properties"] and "upstream_id" not in service["properties"]
    assert schema["$defs"]["Target"]["additionalProperties"] is False
    assert "key" in schema["$defs"]["ApiKey"]["properties"]
    from store.models import ApiKey, Target

    for model, name in ((Target, "Target"), (ApiKey, "ApiKey")):  # every model field is in the schema
        assert set(model.model_fields) - {"id", "gateway_id", "created_at", "updated_at"} <= \
            set(schema["$defs"][name]["properties"])


@pytest.mark.parametrize("name", ["trustgate-guide.yaml", "trustgate-guide-mock.yaml"])
def test_the_examples_are_valid(name, monkeypatch):
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.setenv(var, "sk-test")
    monkeypatch.setenv("AIGW_KEY", "aigw-example-key-0123456789")
    from store.config import read_file

    desired = resolve(read_file(ROOT / "examples" / name))
    assert [i.kind for i in desired.items] == ["gateways", "upstreams", "services", "rules", "keys"]


def test_loader_keeps_the_last_good_snapshot_and_says_where_the_edit_is_wrong(tmp_path, caplog):
    path = tmp_path / "gateway.yaml"
    good = MIN + ("    upstreams:\n      - {name: u, targets: [{provider: openai, weight: 1}]}\n"
                  "    services:\n      - {name: s, upstream: u}\n    rules:\n      - {path: /v1, service: s}\n")
    path.write_text(good)
    loader = ConfigFileLoader(path)
    snap = loader.current
    assert snap.gateway_by_subdomain("gw") is not None and loader.error is None
    rule = snap.match_rule(snap.gateway_by_subdomain("gw").id, "/v1/chat/completions", "POST")
    assert snap.upstream(snap.service(rule.service_id).upstream_id).targets[0].weight == 1
    assert not loader.changed()

    path.write_text(good.replace("weight: 1", "weight: x1"))
    assert loader.changed()
    with caplog.at_level(logging.WARNING):
        assert loader.reload() is snap
    assert "gateway.yaml:5:" in caplog.text and "keeping the last good configuration" in caplog.text
    assert loader.error is not None and not loader.changed()

    path.write_text(good.replace("weight: 1", "weight: 7"))
    new = loader.reload()
    assert new is not snap and loader.error is None
    assert next(iter(new.upstreams_by_id.values())).targets[0].weight == 7
    assert set(new.upstreams_by_id) == set(snap.upstreams_by_id)  # same ids: health and balancers carry over
    os.unlink(path)
    assert loader.reload() is new  # a vanished file keeps what was served
