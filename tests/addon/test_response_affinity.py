"""addon/response_affinity.py: the bounded id → target map, and how it reduces a plan."""

from __future__ import annotations

import json

import pytest

import providers
from addon.attempt import Answer, Inbound
from addon.response_affinity import ResponseAffinity, answered, referenced_id, restrict
from providers import GatewayError
from store.models import Rule, Target, Upstream


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Health:
    def state(self, key: str) -> str:
        return "open"


def _target(tid: str, provider: str | None) -> Target:
    return Target.model_construct(id=tid, provider=provider)


OA1, OA2, AN = _target("t1", "openai"), _target("t2", "openai"), _target("t3", "anthropic")
UP = Upstream.model_construct(id="up", targets=[OA1, OA2, AN])


def _canon(**extra):
    return providers.parse_request("openai-responses", json.dumps({"model": "m", "input": "x", **extra}).encode())


def _restrict(targets, aff, *, path="/v1/responses", method="POST", canon=None, upstream=UP):
    return restrict(targets, upstream=upstream, scope="up", method=method, path=path, canon=canon, health=Health(),
                    affinity=aff)


def test_lru_and_ttl():
    clock = Clock()
    aff = ResponseAffinity(max_entries=2, ttl=10, clock=clock)
    aff.remember("r1", "up/t1")
    aff.remember("r2", "up/t2")
    assert aff.owner("r1") == "up/t1"  # r1 is now the most recently used
    aff.remember("r3", "up/t1")
    assert aff.owner("r2") is None and len(aff) == 2
    clock.t = 10
    assert aff.owner("r1") is None and aff.owner("r3") is None and len(aff) == 0


def test_referenced_id():
    assert referenced_id("POST", "/v1/responses", _canon(previous_response_id="resp_1")) == ("resp_1", "previous_response_id")
    assert referenced_id("POST", "/v1/responses", _canon()) is None
    for p in ("/v1/responses/resp_9", "/v1/responses/resp_9/cancel", "/v1/responses/resp_9/input_items?limit=2"):
        assert referenced_id("GET", p, None) == ("resp_9", "path")
    assert referenced_id("POST", "/v1/chat/completions", None) is None


def test_plan_reduced_to_the_owner_or_to_openai_targets():
    aff = ResponseAffinity()
    plan = [OA1, AN, OA2]
    assert _restrict(plan, aff, canon=_canon()) == plan  # names no stored response
    assert _restrict(plan, aff, canon=_canon(previous_response_id="r")) == [OA1, OA2]  # owner unknown
    aff.remember("r", "up/t2")
    assert _restrict(plan, aff, canon=_canon(previous_response_id="r")) == [OA2]
    assert _restrict(plan, aff, path="/v1/responses/r", method="GET") == [OA2]
    assert _restrict(plan, aff, canon=_canon(), upstream=None) == plan  # endpoint services: untouched


def test_clear_errors():
    aff = ResponseAffinity()
    aff.remember("r", "up/t2")
    with pytest.raises(GatewayError) as e:  # the owner's circuit is open: it is not in the plan
        _restrict([OA1, AN], aff, canon=_canon(previous_response_id="r"))
    assert e.value.status == 503 and "'t2'" in e.value.message and "circuit open" in e.value.message
    aff.remember("gone", "up/t9")
    with pytest.raises(GatewayError) as e:
        _restrict([OA1], aff, canon=_canon(previous_response_id="gone"))
    assert e.value.status == 409
    only_anthropic = Upstream.model_construct(id="up", targets=[AN])
    with pytest.raises(GatewayError) as e:
        _restrict([AN], aff, canon=_canon(previous_response_id="x"), upstream=only_anthropic)
    assert e.value.status == 400 and e.value.param == "previous_response_id"
    with pytest.raises(GatewayError) as e:
        _restrict([AN], aff, path="/v1/responses/x", method="GET", upstream=only_anthropic)
    assert e.value.status == 404
    with pytest.raises(GatewayError) as e:  # OpenAI targets exist but none is available
        _restrict([AN], aff, canon=_canon(previous_response_id="x"))
    assert e.value.status == 503


def _inbound(method="POST", path="/v1/responses", canon=None) -> Inbound:
    return Inbound(method=method, path=path, headers={}, body=b"", rule=Rule.model_construct(), canon=canon,
                   gateway_key=None)


def test_answered_records_openai_answers_only():
    aff = ResponseAffinity()
    body = json.dumps({"object": "response", "id": "resp_a"}).encode()
    answered(_inbound(canon=_canon()), "up/t1", OA1, Answer(200, {}, body), affinity=aff)
    assert aff.owner("resp_a") == "up/t1"
    answered(_inbound(canon=_canon()), "up/t3", AN, Answer(200, {}, b'{"object":"response","id":"resp_b"}'),
             affinity=aff)
    answered(_inbound(canon=_canon(store=False)), "up/t1", OA1, Answer(200, {}, b'{"object":"response","id":"c"}'),
             affinity=aff)
    assert aff.owner("resp_b") is None and aff.owner("c") is None
    events = b'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_s"}}\n\n'
    answered(_inbound(canon=_canon(stream=True)), "up/t2", OA2, Answer(200, {}, events, events=True), affinity=aff)
    assert aff.owner("resp_s") == "up/t2"
    answered(_inbound("DELETE", "/v1/responses/resp_a"), "up/t1", OA1, Answer(200, {}, b"{}"), affinity=aff)
    assert aff.owner("resp_a") is None
