"""Limits: request and token rates, concurrency and budgets for keys (gateway defaults), rates for targets.

Re-exported by store/models.py, the one import path for every model. Enforcement is the proxy's
(addon/limiter.py); these models only say what the limits are and validate them like every other field.

A rate is ``{"limit": N, "window": "minute"}`` or the shorthand string ``"N/minute"`` (also ``"N per minute"``),
over a sliding window of one second, minute, hour or day. A budget counts tokens and/or cost (from the targets'
``pricing``) per calendar day or month in UTC.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self

from pydantic import BeforeValidator, Field, model_validator

from .base import Model
from .fields import MAX_JSON_INT, StrictFloat, StrictInt

#: Rate windows and their length in seconds: the one list the models, the limiter and the docs use.
WINDOW_SECONDS: dict[str, int] = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
Window = Literal["second", "minute", "hour", "day"]
#: Budget periods (calendar, UTC).
BUDGET_PERIODS: tuple[str, ...] = ("day", "month")
BudgetPeriod = Literal["day", "month"]

_SHORTHAND = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*([a-z]+?)s?\s*$")

PositiveInt = Annotated[StrictInt, Field(gt=0, le=MAX_JSON_INT)]


def _rate_shorthand(value: Any) -> Any:
    """``"60/minute"``, ``"60 per minute"`` and ``"1000/hours"`` → ``{"limit": 60, "window": "minute"}``."""
    if not isinstance(value, str):
        return value
    match = _SHORTHAND.match(value.lower())
    if match is None or match.group(2) not in WINDOW_SECONDS:
        raise ValueError(f"a rate is {{\"limit\": N, \"window\": ...}} or \"N/<window>\" with a window of "
                         f"{', '.join(WINDOW_SECONDS)}; got {value!r}")
    return {"limit": int(match.group(1)), "window": match.group(2)}


class RateLimit(Model):
    """At most ``limit`` units (requests or tokens) in any sliding ``window``."""

    limit: PositiveInt
    window: Window = "minute"

    @property
    def seconds(self) -> int:
        return WINDOW_SECONDS[self.window]


RATE_SHORTHAND_PATTERN = r"^\s*\d+\s*(/|per)\s*(second|minute|hour|day)s?\s*$"
Rate = Annotated[RateLimit, BeforeValidator(
    _rate_shorthand,
    json_schema_input_type=RateLimit | Annotated[str, Field(pattern=RATE_SHORTHAND_PATTERN,
                                                            examples=["60/minute", "1000 per hour"])])]


class Budget(Model):
    """What a key may spend per calendar ``period`` (UTC): tokens (prompt + completion, as providers report
    them) and/or cost (from the serving target's ``pricing``; requests to targets without pricing cost nothing)."""

    period: BudgetPeriod = "month"
    tokens: PositiveInt | None = None
    cost: Annotated[StrictFloat, Field(gt=0, le=1e12)] | None = Field(
        default=None, description="Spend cap in the pricing currency (USD)")
    prefer_lowest_cost_below: Annotated[StrictFloat, Field(gt=0, lt=1)] | None = Field(
        default=None, description="When less than this share of the budget is left, the key's requests go to the "
                                  "cheapest healthy target first (the lowest-cost order), whatever the upstream's "
                                  "algorithm")

    @model_validator(mode="after")
    def _something_to_count(self) -> Self:
        if self.tokens is None and self.cost is None:
            raise ValueError("a budget needs tokens, cost or both")
        return self


class TargetLimits(Model):
    """A provider account's own limits, so traffic moves to other targets before the provider answers 429."""

    requests: Rate | None = None
    tokens: Rate | None = Field(default=None, description="Prompt + completion tokens as the provider reports "
                                                          "them, debited when each answer (or stream) ends")

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in type(self).model_fields)


class KeyLimits(TargetLimits):
    """What one client key may use. On a gateway: the default of each of its keys (every key counts on its own);
    a key's own fields override the gateway's field by field."""

    concurrent: PositiveInt | None = Field(default=None, description="Requests (streams included) in flight at once")
    budget: Budget | None = None

    def over(self, defaults: KeyLimits | None) -> KeyLimits:
        """These limits on top of a gateway's defaults."""
        if defaults is None:
            return self
        own = {name: value for name in type(self).model_fields if (value := getattr(self, name)) is not None}
        return defaults.model_copy(update=own)
