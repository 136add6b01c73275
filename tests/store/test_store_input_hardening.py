"""Model-level hardening found by fuzzing the admin API: every bad value is a ValidationError (a 400), never another
exception (a 500), and nothing accepted can poison the store file."""

import json
import math

import pytest
from pydantic import ValidationError

from store.models import MAX_JSON_INT, ApiKeyCreate, Failover, Gateway, Rule, Target, Upstream


@pytest.mark.parametrize("methods", [[{}], [[]], [{"a": 1}, "GET"], [None], [1.5]])
def test_unhashable_or_non_string_methods_are_a_validation_error(methods):
    with pytest.raises(ValidationError) as info:
        Rule.from_payload({"path": "/", "service_id": "s", "methods": methods})
    assert info.value.errors()[0]["loc"][0] == "methods"


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_floats_are_refused(value):
    with pytest.raises(ValidationError):
        Failover.model_validate({"connect_timeout": value})


def test_accepted_floats_serialise_to_standard_json(store, build):
    gateway = store.create("gateways", build.gateway())
    upstream = build.upstream(failover={"connect_timeout": 1e308, "total_timeout": 5e-324})
    store.create("upstreams", upstream, gateway_id=gateway.id)
    with open(store.path, encoding="utf-8") as handle:
        json.loads(handle.read(), parse_constant=lambda name: pytest.fail(f"{name} in the store file"))
    assert store.list("upstreams", gateway_id=gateway.id)[0].failover.connect_timeout == 1e308


@pytest.mark.parametrize("value, ok", [(MAX_JSON_INT, True), (MAX_JSON_INT + 1, False), (10**400, False)],
                         ids=["max", "max+1", "10**400"])
def test_integers_stay_json_safe(value, ok):
    if ok:
        assert Target.model_validate({"provider": "openai", "weight": value}).weight == value
    else:
        with pytest.raises(ValidationError):
            Target.model_validate({"provider": "openai", "weight": value})


@pytest.mark.parametrize("value, expected", [(3.0, 3), (1e2, 100), (-0.0, 0)])
def test_integral_floats_are_integers(value, expected):
    target = Target.model_validate({"provider": "openai", "weight": value})
    assert target.weight == expected and type(target.weight) is int


@pytest.mark.parametrize("value", [3.5, "3", True, False, None, [3]])
def test_other_non_integers_are_refused(value):
    with pytest.raises(ValidationError):
        Target.model_validate({"provider": "openai", "weight": value})


def test_float_fields_keep_floats():
    assert Failover.model_validate({"connect_timeout": 2.5}).connect_timeout == 2.5
    assert Failover.model_validate({"max_attempts": 2.0}).max_attempts == 2


@pytest.mark.parametrize(
    "target",
    [{"provider": "openai", "headers": {"X-A": "v\r\nX-B: injected"}},
     {"provider": "openai", "headers": {"Bad Name": "v"}},
     {"provider": "openai", "credentials": {"header_name": "x-api-key", "header_value": "k\n"}},
     {"provider": "openai", "credentials": {"header_name": "x api key", "header_value": "k"}},
     {"provider": "openai", "credentials": {"api_key": "sk-\x00"}}],
)
def test_header_checks_apply_to_new_input_but_old_records_stay_loadable(target):
    payload = {"name": "u", "targets": [target]}
    with pytest.raises(ValidationError):
        Upstream.from_payload(payload)
    assert Upstream.model_validate(payload).targets[0].provider == "openai"  # a stored record loads as before


@pytest.mark.parametrize("subdomain", ["\u212a", "\u0130", "ß"])
def test_subdomain_lowercasing_is_ascii_only(subdomain):
    with pytest.raises(ValidationError):
        Gateway.from_payload({"name": "g", "subdomain": subdomain})


@pytest.mark.parametrize("expires_at", [4102444800, 4102444800.0, True, ["2099-01-01"]])
def test_key_expiry_must_be_a_string(expires_at):
    with pytest.raises(ValidationError) as info:
        ApiKeyCreate.model_validate({"name": "k", "expires_at": expires_at})
    assert info.value.errors()[0]["loc"] == ("expires_at",)
