"""Limit models (store/limits.py): every field validated strictly, the rate shorthand, budgets, KeyLimits.over,
and limits on gateways, keys and targets surviving a JSON round trip."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from store.fields import MAX_JSON_INT
from store.models import (
    WINDOW_SECONDS, ApiKey, ApiKeyCreate, ApiKeyUpdate, Budget, Gateway, KeyLimits, RateLimit, Target, TargetLimits,
)


def errors(cls, payload) -> list[tuple[tuple, str, str]]:
    with pytest.raises(ValidationError) as caught:
        cls.model_validate(payload)
    return [(tuple(e["loc"]), e["type"], e["msg"]) for e in caught.value.errors()]


# ------------------------------------------------------------------------------------------------ RateLimit
def test_window_seconds_are_the_four_windows():
    assert WINDOW_SECONDS == {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


@pytest.mark.parametrize("window, seconds", list(WINDOW_SECONDS.items()))
def test_rate_limit_seconds_follow_the_window(window, seconds):
    rate = RateLimit.model_validate({"limit": 7, "window": window})
    assert (rate.limit, rate.window, rate.seconds) == (7, window, seconds)


def test_rate_limit_window_defaults_to_minute():
    rate = RateLimit.model_validate({"limit": 5})
    assert rate.window == "minute" and rate.seconds == 60


@pytest.mark.parametrize("limit", [0, -1, MAX_JSON_INT + 1])
def test_rate_limit_out_of_bounds(limit):
    (loc, kind, _), = errors(RateLimit, {"limit": limit})
    assert loc == ("limit",)
    assert kind == ("less_than_equal" if limit > 0 else "greater_than")


def test_rate_limit_largest_json_int_is_accepted():
    assert RateLimit.model_validate({"limit": MAX_JSON_INT}).limit == MAX_JSON_INT


@pytest.mark.parametrize("limit", [True, False, "60", 60.5, None, [60]])
def test_rate_limit_is_strictly_an_int(limit):
    (loc, kind, _), = errors(RateLimit, {"limit": limit})
    assert loc == ("limit",) and kind == "int_type"


def test_integral_float_is_the_integer():
    rate = RateLimit.model_validate({"limit": 60.0})
    assert rate.limit == 60 and type(rate.limit) is int


def test_rate_limit_needs_a_limit():
    (loc, kind, _), = errors(RateLimit, {"window": "minute"})
    assert loc == ("limit",) and kind == "missing"


@pytest.mark.parametrize("window", ["week", "minutes", "Minute", "", "month"])
def test_unknown_window_is_refused_naming_the_known_ones(window):
    (loc, kind, msg), = errors(RateLimit, {"limit": 1, "window": window})
    assert loc == ("window",) and kind == "literal_error"
    assert msg == "Input should be 'second', 'minute', 'hour' or 'day'"


# ------------------------------------------------------------------------------------------------- shorthand
@pytest.mark.parametrize("text, limit, window", [
    ("60/minute", 60, "minute"),
    ("60 per minute", 60, "minute"),
    ("1000/hours", 1000, "hour"),
    ("5/second", 5, "second"),
    ("5/seconds", 5, "second"),
    ("3/day", 3, "day"),
    ("2 per days", 2, "day"),
    ("  7 / hour  ", 7, "hour"),
    ("10/MINUTE", 10, "minute"),
    ("10 PER Hour", 10, "hour"),
])
def test_shorthand_forms(text, limit, window):
    lim = TargetLimits.model_validate({"requests": text, "tokens": text})
    assert lim.requests == RateLimit(limit=limit, window=window)
    assert lim.tokens == RateLimit(limit=limit, window=window)


@pytest.mark.parametrize("text", ["60/min", "60/week", "60/months", "abc", "/minute", "60/", "60", "1.5/minute",
                                  "-1/minute", "60 minute", "60//minute", "60/ss", "sixty/minute", ""])
def test_bad_shorthand_is_refused_with_the_format(text):
    (loc, kind, msg), = errors(TargetLimits, {"requests": text})
    assert loc == ("requests",) and kind == "value_error"
    assert msg == ('Value error, a rate is {"limit": N, "window": ...} or "N/<window>" with a window of second, '
                   f"minute, hour, day; got {text!r}")


def test_shorthand_zero_is_refused_by_the_limit_bound():
    (loc, kind, _), = errors(TargetLimits, {"requests": "0/minute"})
    assert loc == ("requests", "limit") and kind == "greater_than"


def test_shorthand_beyond_json_ints_is_refused():
    (loc, kind, _), = errors(TargetLimits, {"tokens": f"{MAX_JSON_INT + 1}/day"})
    assert loc == ("tokens", "limit") and kind == "less_than_equal"


@pytest.mark.parametrize("value", [60, 60.0, True, ["60/minute"]])
def test_a_rate_is_an_object_or_a_string(value):
    (loc, kind, _), = errors(TargetLimits, {"requests": value})
    assert loc == ("requests",) and kind == "model_type"


# ---------------------------------------------------------------------------------------------------- Budget
def test_budget_needs_tokens_or_cost():
    for payload in ({}, {"period": "day"}, {"period": "month", "prefer_lowest_cost_below": 0.5},
                    {"tokens": None, "cost": None}):
        (loc, kind, msg), = errors(Budget, payload)
        assert loc == () and kind == "value_error"
        assert msg == "Value error, a budget needs tokens, cost or both"


def test_budget_with_tokens_cost_or_both():
    assert Budget.model_validate({"tokens": 10}) == Budget(period="month", tokens=10)
    assert Budget.model_validate({"cost": 2}).cost == 2.0
    both = Budget.model_validate({"period": "day", "tokens": 1, "cost": 0.5})
    assert (both.period, both.tokens, both.cost) == ("day", 1, 0.5)


def test_budget_period_default_and_known_periods():
    assert Budget.model_validate({"tokens": 1}).period == "month"
    assert Budget.model_validate({"tokens": 1, "period": "day"}).period == "day"
    (loc, kind, msg), = errors(Budget, {"tokens": 1, "period": "week"})
    assert loc == ("period",) and kind == "literal_error" and msg == "Input should be 'day' or 'month'"


@pytest.mark.parametrize("tokens, kind", [(0, "greater_than"), (-5, "greater_than"), (True, "int_type"),
                                          ("10", "int_type"), (1.5, "int_type"),
                                          (MAX_JSON_INT + 1, "less_than_equal")])
def test_budget_tokens_positive_ints_only(tokens, kind):
    (loc, got, _), = errors(Budget, {"tokens": tokens})
    assert loc == ("tokens",) and got == kind


@pytest.mark.parametrize("cost, kind", [(0, "greater_than"), (-1.0, "greater_than"), ("2", "float_type"),
                                        (True, "float_type"), (float("inf"), "finite_number"),
                                        (float("nan"), "finite_number"), (1e12 + 1e6, "less_than_equal")])
def test_budget_cost_bounds_and_strict_type(cost, kind):
    (loc, got, _), = errors(Budget, {"cost": cost})
    assert loc == ("cost",) and got == kind


@pytest.mark.parametrize("share, kind", [(0, "greater_than"), (0.0, "greater_than"), (1, "less_than"),
                                         (1.0, "less_than"), (1.5, "less_than"), (-0.1, "greater_than"),
                                         ("0.5", "float_type")])
def test_prefer_lowest_cost_below_is_strictly_between_0_and_1(share, kind):
    (loc, got, _), = errors(Budget, {"cost": 1, "prefer_lowest_cost_below": share})
    assert loc == ("prefer_lowest_cost_below",) and got == kind


@pytest.mark.parametrize("share", [1e-9, 0.5, 0.999999])
def test_prefer_lowest_cost_below_inside_the_bounds(share):
    assert Budget.model_validate({"tokens": 5, "prefer_lowest_cost_below": share}).prefer_lowest_cost_below == share


# ------------------------------------------------------------------------------------------------- KeyLimits
@pytest.mark.parametrize("concurrent, kind", [(0, "greater_than"), (-1, "greater_than"), ("1", "int_type"),
                                              (True, "int_type"), (2.5, "int_type")])
def test_concurrent_positive_ints_only(concurrent, kind):
    (loc, got, _), = errors(KeyLimits, {"concurrent": concurrent})
    assert loc == ("concurrent",) and got == kind


def test_an_invalid_nested_budget_names_its_path():
    (loc, kind, _), = errors(KeyLimits, {"budget": {"tokens": 0}})
    assert loc == ("budget", "tokens") and kind == "greater_than"


def test_empty():
    assert KeyLimits().empty and TargetLimits().empty
    assert not KeyLimits(concurrent=1).empty
    assert not KeyLimits.model_validate({"budget": {"tokens": 1}}).empty
    assert not TargetLimits.model_validate({"tokens": "1/second"}).empty


def test_target_limits_have_no_key_only_fields():
    assert set(TargetLimits.model_fields) == {"requests", "tokens"}
    assert set(KeyLimits.model_fields) == {"requests", "tokens", "concurrent", "budget"}


def test_over_none_is_itself():
    own = KeyLimits.model_validate({"requests": "5/minute"})
    assert own.over(None) is own


def test_over_takes_each_own_field_and_the_defaults_for_the_rest():
    defaults = KeyLimits.model_validate({"requests": "100/minute", "tokens": "1000/hour", "concurrent": 4,
                                         "budget": {"period": "day", "tokens": 10_000}})
    own = KeyLimits.model_validate({"requests": "5/second", "budget": {"cost": 3}})
    merged = own.over(defaults)
    assert merged.requests == RateLimit(limit=5, window="second")           # own
    assert merged.tokens == RateLimit(limit=1000, window="hour")            # default
    assert merged.concurrent == 4                                           # default
    assert merged.budget == Budget(period="month", cost=3.0)                # own, whole (not merged with the default)
    # Neither input changed (frozen models).
    assert defaults.requests.limit == 100 and own.tokens is None


@pytest.mark.parametrize("field", ["requests", "tokens", "concurrent", "budget"])
def test_over_field_by_field(field):
    values = {"requests": RateLimit(limit=1, window="day"), "tokens": RateLimit(limit=2, window="second"),
              "concurrent": 3, "budget": Budget(tokens=4)}
    defaults = KeyLimits(requests=RateLimit(limit=10), tokens=RateLimit(limit=20), concurrent=30,
                         budget=Budget(cost=40.0))
    merged = KeyLimits(**{field: values[field]}).over(defaults)
    for name in KeyLimits.model_fields:
        assert getattr(merged, name) == (values[name] if name == field else getattr(defaults, name)), name


def test_over_empty_own_is_the_defaults():
    defaults = KeyLimits(concurrent=2)
    assert KeyLimits().over(defaults) == defaults


def test_over_empty_defaults_is_the_own():
    own = KeyLimits(concurrent=2, tokens=RateLimit(limit=9))
    assert own.over(KeyLimits()) == own


# ------------------------------------------------------------------------------------------------ round trips
LIMITS = {"requests": "60/minute", "tokens": {"limit": 5000, "window": "hour"}, "concurrent": 2,
          "budget": {"period": "day", "tokens": 100000, "cost": 12.5, "prefer_lowest_cost_below": 0.2}}
DUMPED = {"requests": {"limit": 60, "window": "minute"}, "tokens": {"limit": 5000, "window": "hour"},
          "concurrent": 2,
          "budget": {"period": "day", "tokens": 100000, "cost": 12.5, "prefer_lowest_cost_below": 0.2}}


def test_gateway_limits_round_trip():
    gw = Gateway.from_payload({"name": "g", "subdomain": "team", "limits": LIMITS})
    dumped = gw.model_dump(mode="json")
    assert dumped["limits"] == DUMPED
    again = Gateway.model_validate(dumped)
    assert again.limits == gw.limits and again.model_dump(mode="json") == dumped


def test_gateway_without_limits():
    gw = Gateway.from_payload({"name": "g", "subdomain": "team"})
    assert gw.limits is None and gw.model_dump(mode="json")["limits"] is None


def test_invalid_gateway_limits_are_refused():
    with pytest.raises(ValidationError) as caught:
        Gateway.from_payload({"name": "g", "subdomain": "team", "limits": {"requests": "60/fortnight"}})
    assert [tuple(e["loc"]) for e in caught.value.errors()] == [("limits", "requests")]


def test_api_key_limits_round_trip():
    key = ApiKey.model_validate({"name": "k", "key_hash": "0" * 64, "key_prefix": "aigw-abcd", "limits": LIMITS})
    dumped = key.model_dump(mode="json")
    assert dumped["limits"] == DUMPED
    again = ApiKey.model_validate(dumped)
    assert again.limits == key.limits
    assert again.model_dump(mode="json") == dumped
    assert key.view().limits == key.limits


def test_api_key_create_and_update_carry_limits():
    create = ApiKeyCreate.model_validate({"name": "k", "limits": LIMITS})
    assert create.model_dump(mode="json")["limits"] == DUMPED
    assert ApiKeyCreate.model_validate(create.model_dump(mode="json")) == create
    update = ApiKeyUpdate.model_validate({"limits": {"concurrent": 1}})
    assert update.limits == KeyLimits(concurrent=1) and update.name is None and update.active is None
    assert ApiKeyUpdate.model_validate(update.model_dump(mode="json")) == update


def test_api_key_update_is_strict():
    assert [loc for loc, _, _ in errors(ApiKeyUpdate, {"name": ""})] == [("name",)]
    assert [kind for _, kind, _ in errors(ApiKeyUpdate, {"active": "yes"})] == ["bool_type"]
    assert [loc for loc, _, _ in errors(ApiKeyUpdate, {"limits": {"requests": "x"}})] == [("limits", "requests")]


def test_target_limits_round_trip():
    payload = {"provider": "openai", "credentials": {"api_key": "sk-test-0123456789abcdef"},
               "limits": {"requests": "3/hour", "tokens": "40000 per minute"}}
    t = Target.model_validate(payload)
    dumped = t.model_dump(mode="json")
    assert dumped["limits"] == {"requests": {"limit": 3, "window": "hour"},
                                "tokens": {"limit": 40000, "window": "minute"}}
    assert Target.model_validate(dumped).limits == t.limits


def test_target_limits_ignore_key_only_fields():
    t = Target.model_validate({"provider": "openai", "credentials": {"api_key": "sk-test-0123456789abcdef"},
                               "limits": {"requests": "1/second", "concurrent": 3}})
    assert t.model_dump(mode="json")["limits"] == {"requests": {"limit": 1, "window": "second"}, "tokens": None}
