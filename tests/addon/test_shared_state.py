"""Shared circuit states and sticky pins: the board's hook and apply_shared (pure), the wire format, and two
SharedState instances over one real redis-server (transitions, re-sync, pins, an outage and its end)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from types import SimpleNamespace

import pytest

from addon.balancer import Balancer
from addon.health import CLOSED, HALF_OPEN, OPEN, HealthBoard, HealthPolicy, Transition
from addon.limit_store import LimitStore
from addon.shared_state import MAX_MESSAGE, Message, SharedState, process_identity

K = "up1/t1"
P = HealthPolicy(threshold=2, interval=30)
WALL = 1_764_000_000.0


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def open_circuit(board: HealthBoard, key: str = K) -> None:
    for _ in range(P.threshold):
        board.begin(key, P)
        board.failure(key, P, "upstream 503")
        board.end(key)


# -- the board's side (pure) ---------------------------------------------------------------------------------

def test_the_board_tells_its_own_transitions_once_each():
    clock = Clock()
    board = HealthBoard(clock=clock, wall=lambda: WALL + clock.t)
    heard: list[Transition] = []
    board.on_transition = heard.append
    open_circuit(board)
    assert heard == [Transition(K, OPEN, WALL + 1000 + 30, "upstream 503")]
    clock.t += 30
    board.begin(K, P)  # the trial
    board.success(K, P)
    board.end(K)
    assert [t.state for t in heard] == [OPEN, HALF_OPEN, CLOSED]
    board.begin(K, P)
    board.success(K, P)  # nothing moves: nothing told
    assert len(heard) == 3


def test_a_listener_that_raises_never_breaks_the_request_path(caplog):
    board = HealthBoard()

    def broken(_t: Transition) -> None:
        raise RuntimeError("boom")

    board.on_transition = broken
    open_circuit(board)
    assert board.state(K) == OPEN and "listener failed" in caplog.text


def test_a_shared_open_circuit_is_out_here_without_a_failure_and_never_echoed():
    clock = Clock()
    board = HealthBoard(clock=clock, wall=lambda: WALL + clock.t - 1000)
    heard: list[Transition] = []
    board.on_transition = heard.append
    assert board.apply_shared(Transition(K, OPEN, WALL + 5, "upstream 500"), "proc-b")
    assert not board.is_available(K, P) and heard == []
    snap = board.snapshot(K)
    assert snap["state"] == OPEN and snap["failures"] == 0 and snap["consecutive_failures"] == 0
    assert snap["source"] == "shared" and snap["origin"] == "proc-b" and snap["origin_reason"] == "upstream 500"
    assert snap["cooldown_remaining_s"] == 5.0
    # A shorter cool-down from elsewhere does not cut this one short; a past one is ignored.
    assert not board.apply_shared(Transition(K, OPEN, WALL + 2), "proc-c")
    assert not board.apply_shared(Transition("up1/t2", OPEN, WALL - 1), "proc-c")
    clock.t += 5
    assert board.is_available(K, P)
    board.begin(K, P)  # this process's own trial: its transition again, told
    assert heard == [Transition(K, HALF_OPEN)] and "source" not in board.snapshot(K)


def test_a_shared_close_closes_and_half_open_changes_nothing():
    board = HealthBoard()
    open_circuit(board)
    assert not board.apply_shared(Transition(K, HALF_OPEN), "proc-b")
    assert board.state(K) == OPEN
    assert board.apply_shared(Transition(K, CLOSED), "proc-b")
    assert board.state(K) == CLOSED and board.is_available(K, P)
    assert board.snapshot(K)["origin"] == "proc-b"
    assert not board.apply_shared(Transition("up1/other", CLOSED), "proc-b")  # unknown: nothing allocated
    assert set(board.export()) == {K}


def test_a_shared_open_during_a_local_trial_leaves_no_stuck_circuit():
    clock = Clock()
    board = HealthBoard(clock=clock, wall=lambda: WALL + clock.t - 1000)
    open_circuit(board)
    clock.t += 30
    board.begin(K, P)  # trial in flight
    board.apply_shared(Transition(K, OPEN, WALL + 40), "proc-b")
    board.success(K, P)
    board.end(K)
    assert board.state(K) == OPEN
    clock.t += 40
    assert board.is_available(K, P)
    board.begin(K, P)
    board.success(K, P)
    assert board.state(K) == CLOSED


def test_own_open_lists_only_this_process_s_cooling_circuits():
    clock = Clock()
    board = HealthBoard(clock=clock, wall=lambda: WALL + clock.t - 1000)
    open_circuit(board, "u/mine")
    board.apply_shared(Transition("u/theirs", OPEN, WALL + 10), "proc-b")
    assert [t.key for t in board.own_open()] == ["u/mine"]
    clock.t += 31
    assert board.own_open() == []


# -- the wire format ---------------------------------------------------------------------------------------------

def test_messages_round_trip_and_anything_else_is_ignored():
    m = Message("a:1", Transition(K, OPEN, WALL + 1.5, "x" * 1000))
    back = Message.decode(m.encode().encode())
    assert back is not None and back.origin == "a:1" and back.change.until == WALL + 1.5
    assert back.change.reason == "x" * 300  # bounded
    for raw in (b"not json", b"[]", b'{"o":"a","k":"u/t","s":"weird"}', b'{"o":"a","k":"u/t","s":"open"}',
                b'{"o":"","k":"u/t","s":"closed"}', b'{"o":"a","k":"u/t","s":"open","u":"soon"}',
                b"\xff\xfe", b"{" + b" " * MAX_MESSAGE + b"}"):
        assert Message.decode(raw) is None, raw


def test_process_identity_is_unique_and_names_the_worker():
    a, b = process_identity("w3"), process_identity("w3")
    assert a != b and a.startswith("w3:") and str(os.getpid()) in a


# -- the balancer's side ---------------------------------------------------------------------------------------

def test_balancer_tells_its_pins_and_adopts_one_made_elsewhere():
    targets = [SimpleNamespace(id=name, weight=1, priority=1) for name in ("a", "b", "c")]
    heard: list[tuple[str, str]] = []
    here = Balancer("sticky", targets)
    here.on_pin = lambda key, tid: heard.append((key, tid))
    pick = here.plan(available=lambda t: True, sticky_key="s1").order[0]
    assert heard == [("s1", pick.id)] and here.has_pin("s1")
    other = next(t for t in targets if t.id != pick.id)
    there = Balancer("sticky", targets)
    assert not there.has_pin("s1")
    there.adopt("s1", other.id)
    assert there.plan(available=lambda t: True, sticky_key="s1").order[0].id == other.id
    there.adopt("s1", pick.id)  # a live local pin is the fast path: never replaced
    assert there.plan(available=lambda t: True, sticky_key="s1").order[0].id == other.id


# -- over a real redis-server ------------------------------------------------------------------------------------

@pytest.fixture
def redis_server(tmp_path):
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    from aigw.procs import RedisProcess

    server = RedisProcess(tmp_path / "redis").start()
    yield server
    server.stop()


def _spawn(coro, *, name: str) -> asyncio.Task:
    return asyncio.get_running_loop().create_task(coro, name=name)


async def _until(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class Process:
    """One proxy process's side: a limit store (its Redis pool), a board, a SharedState."""

    def __init__(self, url: str, name: str, timeout: float = 0.5) -> None:
        self.errors = 0
        self.store = LimitStore(url, timeout=timeout)
        self.clock = Clock(time.monotonic())
        self.board = HealthBoard(clock=self.clock)
        self.shared = SharedState(self.store.client, self.board, timeout=timeout, identity=name, url=url,
                                  on_error=self._error)

    def _error(self) -> None:
        self.errors += 1

    async def start(self) -> Process:
        self.shared.start(_spawn)
        await asyncio.wait_for(self.shared.connected.wait(), 5)
        return self

    async def close(self) -> None:
        self.shared.stop()
        await self.store.close()


async def test_an_open_circuit_travels_and_so_does_its_close(redis_server):
    a, b = await Process(redis_server.url, "A").start(), await Process(redis_server.url, "B").start()
    try:
        open_circuit(a.board)
        await _until(lambda: not b.board.is_available(K, P), timeout=1.0)
        assert b.board.snapshot(K)["origin"] == "A" and b.board.snapshot(K)["failures"] == 0
        # B never echoes: A's circuit stays its own verdict.
        await asyncio.sleep(0.05)
        assert "origin" not in a.board.snapshot(K)
        # A process that starts later reads the open circuit from the hash.
        c = await Process(redis_server.url, "C").start()
        try:
            assert not c.board.is_available(K, P)
            a.clock.t += P.interval  # A's cool-down is over: its trial succeeds
            a.board.begin(K, P)
            a.board.success(K, P)
            a.board.end(K)
            await _until(lambda: b.board.state(K) == CLOSED and c.board.state(K) == CLOSED, timeout=1.0)
            assert await b.store.client.hlen(b.shared.open_hash) == 0
        finally:
            await c.close()
        assert a.errors == b.errors == 0
    finally:
        await a.close()
        await b.close()


async def test_sticky_pins_are_recalled_across_processes(redis_server):
    a, b = await Process(redis_server.url, "A").start(), await Process(redis_server.url, "B").start()
    try:
        assert await b.shared.recall("up1", "session-1") is None
        a.shared.pinned("up1", "session-1", "t2", 60)
        deadline = time.monotonic() + 1
        while await b.shared.recall("up1", "session-1") != "t2":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        ttl = await a.store.client.pttl(a.shared._pin_name("up1", "session-1"))
        assert 50_000 < ttl <= 60_000
        assert await b.shared.recall("up2", "session-1") is None  # per upstream
    finally:
        await a.close()
        await b.close()


async def test_an_outage_falls_back_to_local_state_and_re_syncs(redis_server, caplog):
    caplog.set_level(logging.INFO, "aigw.shared")
    a, b = await Process(redis_server.url, "A", 0.2).start(), await Process(redis_server.url, "B", 0.2).start()
    try:
        redis_server.stop()
        await _until(lambda: a.shared.down and b.shared.down, timeout=5)
        started = time.monotonic()
        assert await a.shared.recall("up1", "s") is None  # known down: at once
        assert time.monotonic() - started < 0.05
        open_circuit(a.board)  # dropped by the writer; kept locally
        assert a.board.state(K) == OPEN and b.board.state(K) == CLOSED
        assert a.errors >= 1
        redis_server.start()
        # Re-sync: A publishes its own open circuit again, B takes it.
        await _until(lambda: not b.board.is_available(K, P), timeout=10)
        assert "answers again" in caplog.text and not a.shared.down
        lost = [r for r in caplog.records if "shared state" in r.getMessage() and "unreachable" in r.getMessage()]
        assert len(lost) == 2  # once per process, however many calls failed
    finally:
        await a.close()
        await b.close()
