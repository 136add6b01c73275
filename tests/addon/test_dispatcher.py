"""The dispatcher's decisions, against a fake upstream client (no sockets, no mitmdump).

Which failures move on and which go back to the caller, the attempt budget, fail-open, the 429 answer, the
stream commit point, and the health lease: begun once per attempt and ended exactly once on every path.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections import Counter
from dataclasses import dataclass

import aiohttp
import pytest
from yarl import URL

from addon.attempt import Reason
from addon.dispatch import Dispatcher, Reply, Settings
from addon.health import HealthBoard, HealthPolicy
from addon.live import LiveConfig
from addon.probes import Prober
from addon.relay import Parked
from addon.targets import origin_url, target_url
from addon.upstream import Attempt
from providers import GatewayError
from store import Store
from store.health_file import target_key
from store.keys import hash_key
from store.models import RETRY_CONDITIONS, ApiKey, Gateway, Rule, Service, Target, Upstream

KEY = "aigw-dispatcher-test-key"
PORTS = {"a": 9001, "b": 9002, "c": 9003}


# ------------------------------------------------------------------------------------------- fake upstream
HANG, CUT = object(), object()  # stream items: wait until closed / connection lost


class FakeContent:
    """aiohttp's StreamReader as the attempt and the stream read it: bytes items, a float waits that long (and
    what follows has not arrived yet for read_nowait), HANG, CUT, TRICKLE, an exception item is raised."""

    def __init__(self, items: list) -> None:
        self.items = list(items)
        self.closed = asyncio.Event()

    async def readany(self) -> bytes:
        while self.items:
            item = self.items.pop(0)
            if self.closed.is_set():
                raise aiohttp.ClientConnectionError("closed")
            if isinstance(item, float):
                await asyncio.sleep(item)
                continue
            if item is HANG:
                self.items.insert(0, HANG)
                await self.closed.wait()
                raise aiohttp.ClientConnectionError("closed")
            if item is CUT:
                raise aiohttp.ClientPayloadError("cut")
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Trickle):
                self.items.insert(0, item)
                await asyncio.sleep(item.every)
                return item.data
            return item
        return b""

    def at_eof(self) -> bool:  # aiohttp: the end arrived and every byte was read
        return not self.items

    def read_nowait(self) -> bytes:
        out = b""
        while self.items and isinstance(self.items[0], bytes):
            out += self.items.pop(0)
        return out


@dataclass
class Trickle:
    data: bytes = b"x"
    every: float = 0.01


class FakeResponse:
    def __init__(self, status: int, headers: dict[str, str], items: list) -> None:
        self.status = status
        self.headers = headers
        self.content = FakeContent(items)
        self.released = False

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.content.closed.set()


class FakeClient:
    """`UpstreamClient.send` by target port: each port has a list of behaviours (the last one repeats)."""

    def __init__(self) -> None:
        self.script: dict[int, list] = {}
        self.calls: list[Attempt] = []
        self.responses: list[FakeResponse] = []

    def on(self, name: str, *behaviours) -> None:
        self.script[PORTS[name]] = list(behaviours)

    def ports(self) -> list[int]:
        return [URL(c.url).port for c in self.calls]

    async def send(self, call: Attempt):
        self.calls.append(call)
        todo = self.script[URL(call.url).port]
        behaviour = todo.pop(0) if len(todo) > 1 else todo[0]
        if isinstance(behaviour, BaseException) or (isinstance(behaviour, type) and issubclass(behaviour,
                                                                                              BaseException)):
            raise behaviour
        resp = behaviour(call)
        if inspect.isawaitable(resp):
            resp = await resp
        self.responses.append(resp)
        return resp


CHAT = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def answer(status: int = 200, body: dict | None = None, headers: dict | None = None):
    data = json.dumps(body if body is not None else (CHAT if status < 400 else {"error": {"message": "no"}}))
    return lambda call: FakeResponse(status, {"content-type": "application/json", **(headers or {})},
                                     [data.encode()])


def chunk(delta: dict | None = None, finish: str | None = None) -> bytes:
    event = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4",
             "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


ROLE, TEXT, STOP, DONE = chunk({"role": "assistant"}), chunk({"content": "Hel"}), chunk(finish="stop"), \
    b"data: [DONE]\n\n"


def sse(*items):
    return lambda call: FakeResponse(200, {"content-type": "text/event-stream"}, list(items))


async def hang(call):
    await asyncio.Event().wait()


# ------------------------------------------------------------------------------------------------- the world
class CountingBoard(HealthBoard):
    """The real health board, counting every lease begun and ended."""

    def __init__(self, clock=None) -> None:
        super().__init__(**({"clock": clock} if clock else {}))
        self.begins: Counter = Counter()
        self.ends: Counter = Counter()

    def begin(self, key, policy):
        self.begins[key] += 1
        super().begin(key, policy)

    def end(self, key):
        self.ends[key] += 1
        super().end(key)


class FakeRelay:
    def __init__(self) -> None:
        self.parked: dict[str, Parked] = {}

    def park(self, parked: Parked) -> str:
        token = f"token-{len(self.parked)}"
        self.parked[token] = parked
        return token


@dataclass
class World:
    d: Dispatcher
    live: LiveConfig
    board: CountingBoard
    client: FakeClient
    relay: FakeRelay
    scope: str

    def key(self, name: str) -> str:
        return target_key(self.scope, name)

    @property
    def upstream(self) -> Upstream:
        return self.live.snapshot.upstream(self.scope)

    def leases_closed(self) -> bool:
        return self.board.begins == self.board.ends

    async def ask(self, *, stream: bool = False, model: str = "gpt-4", headers: dict | None = None) -> Reply:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
        return await self.d.handle(method="POST", path="/v1/chat/completions", host="alpha.example.com",
                                   headers={"x-api-key": KEY, "content-type": "application/json", **(headers or {})},
                                   body=body.encode())


def target(name: str, priority: int = 1, provider: str = "openai", **extra) -> dict:
    return {"id": name, "provider": provider, "host": "127.0.0.1", "port": PORTS[name], "protocol": "http",
            "priority": priority, "credentials": {"api_key": "sk-test"}, **extra}


@pytest.fixture
def build(tmp_path):
    def make(targets=(), *, failover=None, health=None, retry_attempts=None, endpoint=False, clock=None,
             **upstream) -> World:
        store = Store(tmp_path / "aigw.json")
        gw = store.create("gateways", Gateway.from_payload({"name": "g", "subdomain": "alpha"}))
        if endpoint:
            svc = store.create("services", Service.from_payload(
                {"name": "e", "type": "endpoint", "host": "127.0.0.1", "port": PORTS["a"], "protocol": "http"}),
                gateway_id=gw.id)
            scope = svc.id
        else:
            payload = {"name": "u", "targets": list(targets), "health_checks": health or {"threshold": 3},
                       **upstream}
            if failover:
                payload["failover"] = failover
            up = store.create("upstreams", Upstream.from_payload(payload), gateway_id=gw.id)
            svc = store.create("services", Service.from_payload({"name": "s", "upstream_id": up.id}),
                               gateway_id=gw.id)
            scope = up.id
        rule = {"path": "/v1", "service_id": svc.id}
        if retry_attempts:
            rule["retry_attempts"] = retry_attempts
        store.create("rules", Rule.from_payload(rule), gateway_id=gw.id)
        store.create("keys", ApiKey.model_validate({"name": "k", "key_hash": hash_key(KEY), "key_prefix": "aigw-"}),
                     gateway_id=gw.id)
        live = LiveConfig(str(store.path))
        live.health = board = CountingBoard(clock)
        client, relay = FakeClient(), FakeRelay()
        return World(Dispatcher(live, client, relay, Settings()), live, board, client, relay, scope)
    return make


def attempts(reply: Reply) -> str:
    return reply.headers["X-Gateway-Attempts"]


# ------------------------------------------------------------------------------------ what moves on, and not
FAILURES = {  # behaviour of the first target → its X-Gateway-Attempts label and retry_on condition
    "refused": (aiohttp.ClientConnectionError("refused"), "connect", "connect"),
    "oserror": (OSError("unreachable"), "connect", "connect"),
    "timeout": (TimeoutError(), "timeout", "timeout"),
    "408": (answer(408), "408", "timeout"),
    "500": (answer(500), "500", "5xx"),
    "503": (answer(503), "503", "5xx"),
    "429": (answer(429), "429", "429"),
    "401": (answer(401), "401", "401"),
    "403": (answer(403), "403", "403"),
    "cut": (lambda call: FakeResponse(200, {"content-type": "application/json"}, [b"{", CUT]), "cut", "connect"),
}


@pytest.mark.parametrize("failure", FAILURES)
async def test_every_retry_on_trigger_moves_on(build, failure):
    behaviour, label, _ = FAILURES[failure]
    w = build([target("a", 1), target("b", 2)])
    w.client.on("a", behaviour)
    w.client.on("b", answer())
    reply = await w.ask()
    assert reply.status == 200 and json.loads(reply.body)["choices"][0]["message"]["content"] == "hi"
    assert attempts(reply) == f"openai:{label},openai:200"
    assert reply.headers["X-Selected-Target"] == "b"
    assert w.leases_closed() and w.board.begins == {w.key("a"): 1, w.key("b"): 1}


@pytest.mark.parametrize("failure", FAILURES)
async def test_a_failure_outside_retry_on_goes_back_to_the_caller(build, failure):
    behaviour, label, condition = FAILURES[failure]
    others = [c for c in RETRY_CONDITIONS if c != condition]
    w = build([target("a", 1), target("b", 2)], failover={"retry_on": others})
    w.client.on("a", behaviour)
    w.client.on("b", answer())
    reply = await w.ask()
    assert attempts(reply) == f"openai:{label}" and w.client.ports() == [PORTS["a"]]
    if label.isdigit():
        assert reply.status == int(label)  # the provider's own answer, in the caller's format
        assert json.loads(reply.body)["error"]["message"] == "no"
    else:
        assert reply.status in (502, 504) and "error" in json.loads(reply.body)
    assert w.leases_closed()


@pytest.mark.parametrize("status", [400, 404, 409, 422])
async def test_other_4xx_are_the_callers_answer_and_no_health_failure(build, status):
    w = build([target("a", 1), target("b", 2)])
    w.client.on("a", answer(status))
    reply = await w.ask()
    assert reply.status == status and attempts(reply) == f"openai:{status}"
    assert w.client.ports() == [PORTS["a"]]
    assert w.board.snapshot(w.key("a"))["failures"] == 0 and w.leases_closed()


async def test_a_request_a_target_cannot_serve_moves_on_without_health(build):
    """A model id Gemini cannot put in its path is the caller's 400 for that target only (400 unsupported)."""
    w = build([target("a", 1, provider="gemini"), target("b", 2)])
    w.client.on("b", answer())
    reply = await w.ask(model="a/b")
    assert reply.status == 200 and attempts(reply) == "gemini:unsupported,openai:200"
    assert w.client.ports() == [PORTS["b"]]
    assert w.board.snapshot(w.key("a"))["failures"] == 0 and w.leases_closed()


async def test_when_no_target_can_serve_the_request_the_caller_gets_the_400(build):
    w = build([target("a", 1, provider="gemini")])
    reply = await w.ask(model="a/b")
    assert reply.status == 400 and json.loads(reply.body)["error"]["param"] == "model"
    assert w.client.calls == [] and w.leases_closed()


@pytest.mark.parametrize("status", [401, 403])
async def test_credential_errors_move_on_without_counting_for_health(build, status):
    w = build([target("a", 1), target("b", 2)], health={"threshold": 1})
    w.client.on("a", answer(status))
    w.client.on("b", answer())
    assert (await w.ask()).status == 200
    health = w.board.snapshot(w.key("a"))
    assert health["state"] == "closed" and health["consecutive_failures"] == 0
    assert (health["failures"], health["last_error"]) == (1, f"HTTP {status}")  # visible, not counted
    assert w.leases_closed()


async def test_a_counted_failure_opens_the_circuit(build):
    w = build([target("a", 1), target("b", 2)], health={"threshold": 1})
    w.client.on("a", answer(500))
    w.client.on("b", answer())
    await w.ask()
    assert w.board.state(w.key("a")) == "open" and w.board.snapshot(w.key("a"))["last_error"] == "HTTP 500"
    assert attempts(await w.ask()) == "openai:200"  # the open target is no longer planned


# ----------------------------------------------------------------------------------------------- budgets
async def test_max_attempts_caps_the_candidates(build):
    w = build([target("a", 1), target("b", 2), target("c", 3)], failover={"max_attempts": 2})
    for name in "abc":
        w.client.on(name, answer(500))
    reply = await w.ask()
    assert reply.status == 502 and attempts(reply) == "openai:500,openai:500"
    assert len(w.client.calls) == 2 and w.leases_closed()


async def test_the_rules_retry_attempts_caps_the_candidates(build):
    w = build([target("a", 1), target("b", 2), target("c", 3)], retry_attempts=1)
    for name in "abc":
        w.client.on(name, answer(503))
    reply = await w.ask()
    assert reply.status == 502 and attempts(reply) == "openai:503" and len(w.client.calls) == 1


async def test_total_timeout_ends_the_attempts(build):
    w = build([target("a", 1), target("b", 2)], failover={"total_timeout": 0.1})
    w.client.on("a", hang)
    w.client.on("b", answer())
    reply = await w.ask()
    assert reply.status == 504 and attempts(reply) == "openai:timeout"
    assert w.client.ports() == [PORTS["a"]]  # nothing was left for the next candidate
    assert "total_timeout" in w.board.snapshot(w.key("a"))["last_error"] and w.leases_closed()


async def test_every_target_timing_out_is_a_504_and_mixed_failures_a_502(build):
    w = build([target("a", 1), target("b", 2)])
    w.client.on("a", TimeoutError())
    w.client.on("b", TimeoutError(), answer(500))
    assert (await w.ask()).status == 504
    assert (await w.ask()).status == 502


async def test_every_target_rate_limited_is_a_429_with_the_shortest_retry_after(build):
    w = build([target("a", 1), target("b", 2)])
    w.client.on("a", answer(429, headers={"retry-after": "7"}))
    w.client.on("b", answer(429, headers={"retry-after": "3"}))
    reply = await w.ask()
    assert reply.status == 429 and reply.headers["retry-after"] == "3"
    assert attempts(reply) == "openai:429,openai:429"
    # The provider said when to come back: both circuits rest that long, whatever the threshold.
    assert w.board.state(w.key("a")) == "open" and w.board.state(w.key("b")) == "open"
    assert w.leases_closed()


async def test_fail_open_tries_every_target_when_all_are_out(build):
    w = build([target("a", 1), target("b", 2)], health={"threshold": 1})
    policy = w.live.policy(w.upstream)
    for name in "ab":
        w.board.failure(w.key(name), policy, "down")
    w.client.on("a", answer(500))
    w.client.on("b", answer())
    reply = await w.ask()
    assert reply.status == 200 and reply.fail_open and reply.headers["X-Gateway-Fail-Open"] == "true"
    assert len(w.client.calls) == 2 and w.leases_closed()


async def test_a_half_open_trial_taken_meanwhile_is_not_tried_again(build):
    """The plan saw b's cool-down over; while a failed, another request took b's single trial slot."""
    now = [1000.0]
    w = build([target("a", 1), target("b", 2)], health={"threshold": 1, "interval": 60}, clock=lambda: now[0])
    policy = w.live.policy(w.upstream)
    w.board.failure(w.key("b"), policy, "down")
    now[0] += 61  # b's rest is over: it admits one trial

    async def a_fails_while_b_is_taken(call):
        w.board.begin(w.key("b"), policy)  # someone else's trial
        raise OSError("refused")

    w.client.on("a", a_fails_while_b_is_taken)
    w.client.on("b", answer())
    reply = await w.ask()
    assert reply.status == 502 and attempts(reply) == "openai:connect"
    assert w.client.ports() == [PORTS["a"]]
    w.board.end(w.key("b"))
    assert w.leases_closed()


async def test_sticky_sessions_move_to_the_target_that_served_after_a_failover(build):
    calls = Counter()

    def first_call_fails(call):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("refused")
        return answer()(call)

    w = build([target("a"), target("b")], algorithm="sticky", sticky={"hash_on": "header:x-session"})
    w.client.on("a", first_call_fails)
    w.client.on("b", first_call_fails)
    assert attempts(await w.ask(headers={"x-session": "s1"})) == "openai:connect,openai:200"
    assert attempts(await w.ask(headers={"x-session": "s1"})) == "openai:200"
    first, served, again = w.client.ports()
    assert served != first and again == served


async def test_an_endpoint_service_is_passed_through_without_health(build):
    w = build(endpoint=True)
    w.client.on("a", answer())
    reply = await w.ask()
    assert reply.status == 200 and reply.provider == "passthrough" and attempts(reply) == "passthrough:200"
    assert w.client.calls[0].url == f"http://127.0.0.1:{PORTS['a']}/v1/chat/completions"
    assert KEY not in json.dumps(w.client.calls[0].headers)  # the gateway key is never forwarded
    assert not w.board.begins


# --------------------------------------------------------------------------------------- the commit point
def events(parts: list[bytes]) -> list:
    out = []
    for block in b"".join(parts).decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                out.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
    return out


async def pump(parked: Parked) -> list[bytes]:
    written: list[bytes] = []

    async def write(data: bytes) -> None:
        written.append(data)

    await parked.pump(write)
    return written


@pytest.mark.parametrize("before_content, label", [
    ((ROLE, CUT), "cut"),
    ((ROLE,), "cut"),  # ended before any content and without its terminal event
    ((ROLE, b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'), "5xx"),
    ((ROLE, HANG), "timeout"),  # no first token within first_token_timeout
])
async def test_a_stream_failing_before_its_first_content_fails_over(build, before_content, label):
    w = build([target("a", 1), target("b", 2)], failover={"first_token_timeout": 0.05})
    w.client.on("a", sse(*before_content))
    w.client.on("b", sse(ROLE, TEXT, STOP, DONE))
    reply = await w.ask(stream=True)
    assert reply.status == 200 and attempts(reply) == f"openai:{label},openai:200"
    assert reply.relay_token is None  # b's whole stream had arrived: sent in one piece
    assert events([reply.body])[-1] == "[DONE]" and w.leases_closed()


async def test_a_committed_stream_is_parked_with_its_final_status_and_headers(build):
    w = build([target("a", 1), target("b", 2)])
    w.client.on("a", answer(500))
    w.client.on("b", sse(ROLE, TEXT, 0.01, STOP, DONE))
    reply = await w.ask(stream=True)
    parked = w.relay.parked[reply.relay_token]
    headers = dict(parked.headers)
    assert parked.status == reply.status == 200 and headers == reply.headers
    assert headers["content-type"] == "text/event-stream" and headers["X-Gateway-Attempts"] == \
        "openai:500,openai:200" and headers["X-Selected-Target"] == "b"
    assert w.board.in_flight(w.key("b")) == 1  # the stream holds b's lease until it ends
    out = events(await pump(parked))
    assert out[1]["choices"][0]["delta"]["content"] == "Hel" and out[-1] == "[DONE]"
    assert w.board.in_flight(w.key("b")) == 0 and w.leases_closed()
    assert w.board.snapshot(w.key("b"))["ewma_ttfb_ms"] is not None  # a clean end is a success


async def test_reading_stops_at_the_terminal_event(build):
    w = build([target("a")])
    w.client.on("a", sse(ROLE, TEXT, 0.01, STOP, DONE, AssertionError("read past the terminal event")))
    reply = await w.ask(stream=True)
    assert events(await pump(w.relay.parked[reply.relay_token]))[-1] == "[DONE]"
    assert w.client.responses[0].content.closed.is_set() and w.leases_closed()


@pytest.mark.parametrize("after_content, failover, message, error_type, why", [
    ((CUT,), {}, "lost mid-stream", None, "stream cut after commit"),
    ((HANG,), {"idle_timeout": 0.05}, "mid-stream", "timeout_error", "stream idle timeout after commit"),
    ((Trickle(),), {"idle_timeout": 0.05}, "mid-stream", "timeout_error", "stream idle timeout after commit"),
    ((Trickle(),), {"total_timeout": 0.1}, "total_timeout", "timeout_error", "stream total timeout after commit"),
    ((b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n',), {}, "overloaded", None,
     "stream error after commit: overloaded"),
    ((), {}, None, None, "stream ended without its terminal event"),
])
async def test_a_failure_after_the_commit_point_is_an_error_event_and_a_health_failure(
        build, after_content, failover, message, error_type, why):
    w = build([target("a", 1), target("b", 2)], failover=failover)
    w.client.on("a", sse(ROLE, TEXT, 0.01, *after_content))
    reply = await w.ask(stream=True)
    assert reply.status == 200 and attempts(reply) == "openai:200"
    out = events(await pump(w.relay.parked[reply.relay_token]))
    assert out[1]["choices"][0]["delta"]["content"] == "Hel"  # the content came first
    if message is not None:
        assert message in out[-1]["error"]["message"]
        assert error_type is None or out[-1]["error"]["type"] == error_type
    assert w.board.snapshot(w.key("a"))["last_error"] == why
    assert len(w.client.calls) == 1 and w.leases_closed()  # never a failover once committed


async def test_an_untranslated_stream_commits_at_its_headers(build):
    w = build(endpoint=True)
    w.client.on("a", lambda call: FakeResponse(200, {"content-type": "text/event-stream", "x-up": "1"},
                                               [b"data: 1\n\n", 0.01, b"data: 2\n\n"]))
    reply = await w.ask(stream=True)
    parked = w.relay.parked[reply.relay_token]
    assert dict(parked.headers)["x-up"] == "1"
    assert b"".join(await pump(parked)) == b"data: 1\n\ndata: 2\n\n"


# ------------------------------------------------------------------------------------------ the stream lease
async def stream_world(build) -> tuple[World, Parked, Reply]:
    w = build([target("a")])
    w.client.on("a", sse(ROLE, TEXT, HANG))
    reply = await w.ask(stream=True)
    return w, w.relay.parked[reply.relay_token], reply


async def test_an_unclaimed_stream_is_abandoned_once(build):
    w, parked, _ = await stream_world(build)
    parked.on_abandon()
    parked.on_abandon()
    assert w.client.responses[0].content.closed.is_set()
    assert w.board.ends[w.key("a")] == 1 and w.leases_closed()
    assert w.board.snapshot(w.key("a"))["failures"] == 0


async def test_a_caller_hanging_up_ends_the_stream_without_blame(build):
    w, parked, reply = await stream_world(build)
    running = asyncio.create_task(pump(parked))
    await asyncio.sleep(0.01)
    reply.cancel()
    await asyncio.wait_for(running, 5)
    parked.on_abandon()  # the relay stopping later changes nothing
    assert w.board.ends[w.key("a")] == 1 and w.leases_closed()
    assert w.board.snapshot(w.key("a"))["failures"] == 0


async def test_a_caller_connection_lost_while_writing_ends_the_lease_once(build):
    w, parked, _ = await stream_world(build)

    async def write(data: bytes) -> None:
        raise ConnectionResetError

    with pytest.raises(ConnectionResetError):
        await parked.pump(write)
    assert w.board.ends[w.key("a")] == 1 and w.leases_closed()
    assert w.board.snapshot(w.key("a"))["failures"] == 0


async def test_an_unexpected_error_is_a_500_in_the_callers_format_and_ends_the_lease(build, monkeypatch):
    w = build([target("a")])
    w.client.on("a", answer())
    monkeypatch.setattr(Dispatcher, "_answer", staticmethod(lambda *a: 1 / 0))
    reply = await w.ask()
    assert reply.status == 500 and json.loads(reply.body)["error"]["message"] == "Internal gateway error."
    assert w.leases_closed()


async def test_an_oversized_answer_is_the_callers_502(build, monkeypatch):
    monkeypatch.setattr("addon.attempt.MAX_UPSTREAM_BODY", 10)
    w = build([target("a", 1), target("b", 2)])
    w.client.on("a", answer())
    reply = await w.ask()
    assert reply.status == 502 and "larger than the gateway accepts" in json.loads(reply.body)["error"]["message"]
    assert w.leases_closed()


# -------------------------------------------------------------------------------------- vocabulary, addressing
def test_failure_reasons_keep_their_wire_values_and_match_retry_on():
    assert [r.value for r in Reason] == ["connect", "timeout", "5xx", "429", "401", "403", "cut"]
    assert {r.trigger for r in Reason} == set(RETRY_CONDITIONS)


def test_urls_bracket_ipv6_and_refuse_a_path_that_would_change_the_authority():
    assert target_url(Target.model_construct(host="::1", port=8080, protocol="http"), "/v1/x%2F?a=%20") == \
        "http://[::1]:8080/v1/x%2F?a=%20"
    assert target_url(Target.model_construct(provider="openai"), "/v1/models") == "https://api.openai.com:443/v1/models"
    with pytest.raises(GatewayError):
        origin_url(("http", "h", 80), "@elsewhere/")


async def test_probes_are_addressed_like_attempts():
    sent = []

    class Client:
        async def send(self, call):
            sent.append(call)
            raise OSError("refused")

    board = CountingBoard()

    class Live:
        health = board

        def policy(self, upstream):
            return HealthPolicy()

    up = Upstream.model_validate({"id": "u", "name": "u", "targets": [
        {"id": "v6", "host": "::1", "port": 8080, "protocol": "http", "credentials": {"api_key": "sk-p"}}]})
    await Prober(lambda: Live(), Client()).probe(Live(), up, up.targets[0], "/v1/models?x=%2F", "u/v6")
    assert sent[0].url == "http://[::1]:8080/v1/models?x=%2F" and sent[0].method == "GET"
    assert {k.lower(): v for k, v in sent[0].headers.items()} == {"authorization": "Bearer sk-p"}
    assert board.snapshot("u/v6")["last_error"] == "probe: OSError"
