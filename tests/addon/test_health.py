"""Passive health: circuit transitions, windows, Retry-After, credential errors, fail-open, export."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from addon.health import HealthBoard, HealthPolicy

K = "up1/t1"


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def board(clock: FakeClock) -> HealthBoard:
    return HealthBoard(clock=clock, wall=lambda: 1_764_000_000.5)


def fail(board: HealthBoard, policy: HealthPolicy, n: int = 1, key: str = K, **kw) -> None:
    for _ in range(n):
        board.begin(key, policy)
        board.failure(key, policy, "upstream 503", **kw)
        board.end(key)


def ok(board: HealthBoard, policy: HealthPolicy, n: int = 1, key: str = K, ttfb: float | None = None) -> None:
    for _ in range(n):
        board.begin(key, policy)
        board.success(key, policy, ttfb)
        board.end(key)


P = HealthPolicy(threshold=3, interval=60.0)


# -- policy -------------------------------------------------------------------------------------------------

def test_policy_defaults_and_from_model():
    assert HealthPolicy.from_model(None) == HealthPolicy()
    hc = SimpleNamespace(passive=False, threshold=5, interval=30, error_ratio=0.5, min_requests=20, active=None)
    assert HealthPolicy.from_model(hc) == HealthPolicy(False, 5, 30.0, 0.5, 20)
    assert HealthPolicy.from_model({"threshold": 2}) == HealthPolicy(threshold=2)
    assert HealthPolicy.from_model(SimpleNamespace(passive=True)) == HealthPolicy()


@pytest.mark.parametrize("kw", [{"threshold": 0}, {"interval": 0}, {"error_ratio": 0}, {"error_ratio": 1.5},
                                {"min_requests": 0}])
def test_policy_rejects_nonsense(kw):
    with pytest.raises(ValueError):
        HealthPolicy(**kw)


# -- opening -------------------------------------------------------------------------------------------------

def test_unknown_key_is_closed_and_allocates_nothing(board):
    assert board.is_available(K, P)
    assert board.state(K) == "closed"
    assert board.in_flight(K) == 0 and board.ewma_ttfb(K) is None
    assert board.export() == {}


def test_threshold_failures_within_interval_open(board, clock):
    fail(board, P, 2)
    assert board.state(K) == "closed" and board.is_available(K, P)
    clock.advance(59)
    fail(board, P)
    assert board.state(K) == "open"
    assert not board.is_available(K, P)


def test_failures_outside_the_window_do_not_open(board, clock):
    fail(board, P, 2)
    clock.advance(61)
    fail(board, P)
    assert board.state(K) == "closed"
    clock.advance(1)
    fail(board, P)  # the first two fell out of the window: 2 failures in the last 60 s
    assert board.state(K) == "closed"
    fail(board, P)
    assert board.state(K) == "open"


def test_success_resets_the_failure_run(board):
    fail(board, P, 2)
    ok(board, P)
    fail(board, P, 2)
    assert board.state(K) == "closed"
    assert board.snapshot(K)["consecutive_failures"] == 2
    fail(board, P)
    assert board.state(K) == "open"


def test_threshold_one(board):
    fail(board, HealthPolicy(threshold=1))
    assert board.state(K) == "open"


# -- cool-down, half-open, trial -----------------------------------------------------------------------------

def test_cooldown_then_exactly_one_trial_then_success_closes(board, clock):
    fail(board, P, 3)
    clock.advance(59.9)
    assert not board.is_available(K, P)
    clock.advance(0.1)
    assert board.state(K) == "half_open"
    assert board.is_available(K, P)
    board.begin(K, P)  # the trial
    assert board.state(K) == "half_open"
    assert not board.is_available(K, P)  # exactly one trial in flight
    board.success(K, P, 0.2)
    board.end(K)
    assert board.state(K) == "closed"
    assert board.is_available(K, P)
    # the recovered circuit starts from a clean slate
    fail(board, P, 2)
    assert board.state(K) == "closed"


def test_trial_failure_reopens_for_a_full_cooldown(board, clock):
    fail(board, P, 3)
    clock.advance(60)
    board.begin(K, P)
    board.failure(K, P, "timeout")
    board.end(K)
    assert board.state(K) == "open"
    assert board.snapshot(K)["cooldown_remaining_s"] == 60.0
    clock.advance(59)
    assert not board.is_available(K, P)
    clock.advance(1)
    assert board.is_available(K, P)


def test_trial_without_verdict_releases_the_slot(board, clock):
    """A cancelled trial (client went away) must not leave the circuit stuck half-open forever."""
    fail(board, P, 3)
    clock.advance(60)
    board.begin(K, P)
    assert not board.is_available(K, P)
    board.end(K)
    assert board.state(K) == "half_open"
    assert board.is_available(K, P)


def test_credential_error_during_trial_releases_the_slot(board, clock):
    fail(board, P, 3)
    clock.advance(60)
    board.begin(K, P)
    board.failure(K, P, "401 from provider", health=False)
    board.end(K)
    assert board.state(K) == "half_open" and board.is_available(K, P)


def test_fail_open_request_to_cooling_circuit_counts_as_trial(board, clock):
    fail(board, P, 3)
    clock.advance(10)
    board.begin(K, P)  # the caller went fail-open
    board.success(K, P)
    board.end(K)
    assert board.state(K) == "closed"


def test_failures_while_open_do_not_extend_cooldown(board, clock):
    fail(board, P, 3)
    clock.advance(30)
    board.failure(K, P, "straggler 502")  # a request started before the circuit opened
    assert board.snapshot(K)["cooldown_remaining_s"] == 30.0


# -- Retry-After ---------------------------------------------------------------------------------------------

def test_retry_after_opens_immediately_for_that_long(board, clock):
    fail(board, P, retry_after_s=120)
    assert board.state(K) == "open"
    clock.advance(119)
    assert not board.is_available(K, P)
    clock.advance(1)
    assert board.is_available(K, P)


@pytest.mark.parametrize(("given", "expected"), [(0, 1.0), (0.2, 1.0), (7200, 3600.0), (5.5, 5.5)])
def test_retry_after_is_bounded(board, given, expected):
    fail(board, P, retry_after_s=given)
    assert board.snapshot(K)["cooldown_remaining_s"] == expected


def test_longer_retry_after_extends_but_shorter_never_shortens(board, clock):
    fail(board, P, retry_after_s=100)
    board.failure(K, P, "429", retry_after_s=10)
    assert board.snapshot(K)["cooldown_remaining_s"] == 100.0
    board.failure(K, P, "429", retry_after_s=300)
    assert board.snapshot(K)["cooldown_remaining_s"] == 300.0


# -- what never opens ----------------------------------------------------------------------------------------

def test_credential_errors_are_visible_but_never_open(board, clock):
    for _ in range(50):
        board.failure(K, P, "403 Forbidden", health=False)
    assert board.state(K) == "closed" and board.is_available(K, P)
    snap = board.snapshot(K)
    assert snap["last_error"] == "403 Forbidden"
    assert snap["failures"] == 50 and snap["consecutive_failures"] == 0
    # ... and they do not feed the error ratio either
    ratio = HealthPolicy(threshold=1000, error_ratio=0.5, min_requests=5)
    for _ in range(10):
        board.failure(K, ratio, "401", health=False)
    assert board.state(K) == "closed"


def test_credential_429_with_retry_after_and_health_false_does_not_open(board):
    board.failure(K, P, "401", health=False, retry_after_s=30)
    assert board.state(K) == "closed"


def test_passive_false_records_but_never_opens(board):
    off = HealthPolicy(passive=False, threshold=1)
    fail(board, off, 10, retry_after_s=60)
    assert board.state(K) == "closed" and board.is_available(K, off)
    snap = board.snapshot(K)
    assert snap["failures"] == 10 and snap["consecutive_failures"] == 10 and snap["last_error"] == "upstream 503"


def test_passive_false_ignores_an_already_open_circuit(board):
    fail(board, P, 3)
    assert not board.is_available(K, P)
    assert board.is_available(K, HealthPolicy(passive=False))


# -- error ratio ---------------------------------------------------------------------------------------------

RATIO = HealthPolicy(threshold=1000, interval=60.0, error_ratio=0.5, min_requests=10)


def test_error_ratio_needs_min_requests(board):
    # alternate so the consecutive rule never fires: 4 failures out of 8 is 50% but below min_requests
    for _ in range(4):
        ok(board, RATIO)
        fail(board, RATIO)
    assert board.state(K) == "closed"
    ok(board, RATIO)
    fail(board, RATIO)  # 5/10 = 50% with 10 samples
    assert board.state(K) == "open"


def test_error_ratio_below_threshold_stays_closed(board):
    for _ in range(20):
        ok(board, RATIO, 2)
        fail(board, RATIO)  # 33%
    assert board.state(K) == "closed"


def test_error_ratio_window_slides(board, clock):
    for _ in range(4):
        ok(board, RATIO)
        fail(board, RATIO)
    clock.advance(61)  # those 8 outcomes fall out of the window
    ok(board, RATIO)
    fail(board, RATIO)
    assert board.state(K) == "closed"
    assert board.snapshot(K)["failures"] == 5


def test_error_ratio_does_not_trip_on_scattered_failures_of_a_busy_target(board):
    """The consecutive rule alone: 3 failures in a minute among 1000 successes keep the target in."""
    for _ in range(3):
        ok(board, P, 300)
        fail(board, P)
    assert board.state(K) == "closed"


# -- in-flight, EWMA ---------------------------------------------------------------------------------------

def test_in_flight_counts_real_requests(board):
    for _ in range(3):
        board.begin(K, P)
    assert board.in_flight(K) == 3
    board.end(K)
    assert board.in_flight(K) == 2
    for _ in range(5):
        board.end(K)
    assert board.in_flight(K) == 0  # never negative


def test_ewma_ttfb(board):
    ok(board, P, ttfb=1.0)
    assert board.ewma_ttfb(K) == 1.0
    ok(board, P, ttfb=2.0)
    assert board.ewma_ttfb(K) == pytest.approx(1.3)
    ok(board, P)  # no measurement: unchanged
    assert board.ewma_ttfb(K) == pytest.approx(1.3)
    assert board.snapshot(K)["ewma_ttfb_ms"] == 1300.0


# -- fail-open order -----------------------------------------------------------------------------------------

def test_fail_open_order_least_recently_failed_first(board, clock):
    for key in ("u/a", "u/b", "u/c"):
        fail(board, P, 3, key=key)
        clock.advance(5)
    board.failure("u/a", P, "straggler 502")  # started before a opened: does not extend its cool-down
    assert board.fail_open_order(["u/c", "u/a", "u/b"]) == ["u/a", "u/b", "u/c"]
    assert board.fail_open_order(["u/c", "u/new", "u/b"]) == ["u/new", "u/b", "u/c"]


def test_fail_open_trial_failure_rearms_the_cooldown(board, clock):
    fail(board, P, 3)
    clock.advance(30)
    fail(board, P)  # a fail-open request (begin on an open circuit) that failed
    assert board.snapshot(K)["cooldown_remaining_s"] == 60.0


def test_fail_open_order_prefers_the_target_back_soonest(board, clock):
    fail(board, P, key="u/limited", retry_after_s=3600)  # failed first, but asked for an hour
    clock.advance(5)
    fail(board, P, 3, key="u/broken")
    assert board.fail_open_order(["u/limited", "u/broken"]) == ["u/broken", "u/limited"]


# -- export, forget ------------------------------------------------------------------------------------------

def test_snapshot_and_export_shape(board, clock):
    fail(board, P, 3)
    ok(board, P, key="u/x", ttfb=0.25)
    board.begin("u/x", P)
    doc = board.export()
    assert set(doc) == {K, "u/x"}
    assert doc[K] == {
        "state": "open",
        "consecutive_failures": 3,
        "last_error": "upstream 503",
        "last_error_at": "2025-11-24T16:00:00.500Z",
        "cooldown_remaining_s": 60.0,
        "ewma_ttfb_ms": None,
        "in_flight": 0,
        "requests": 3,
        "failures": 3,
    }
    assert doc["u/x"]["state"] == "closed" and doc["u/x"]["in_flight"] == 1
    assert doc["u/x"]["ewma_ttfb_ms"] == 250.0 and doc["u/x"]["last_error_at"] is None
    # a copy: later changes do not show through (it is handed to a writer thread)
    fail(board, P, key="u/x")
    assert doc["u/x"]["failures"] == 0
    assert board.snapshot("u/never") == {
        "state": "closed", "consecutive_failures": 0, "last_error": None, "last_error_at": None,
        "cooldown_remaining_s": 0.0, "ewma_ttfb_ms": None, "in_flight": 0, "requests": 0, "failures": 0,
    }


def test_forget_drops_unconfigured_keys(board):
    fail(board, P, key="u/a")
    fail(board, P, key="u/b")
    board.forget({"u/a"})
    assert set(board.export()) == {"u/a"}
    board.forget([])
    assert board.export() == {}


def test_many_trials_over_time_admit_one_at_a_time(board, clock):
    """Concurrency simulation: 20 callers ask at once after the cool-down; exactly one gets in."""
    fail(board, P, 3)
    clock.advance(60)
    admitted = Counter()
    for _ in range(20):
        if board.is_available(K, P):
            board.begin(K, P)
            admitted["trial"] += 1
    assert admitted["trial"] == 1


# -- active probes ------------------------------------------------------------------------------------------

PROBED = HealthPolicy(threshold=2, interval=10.0, active=True)


def test_policy_reads_active_enabled():
    assert HealthPolicy.from_model({"active": {"enabled": True, "path": "/v1/models"}}).active is True
    assert HealthPolicy.from_model({"active": {"enabled": False}}).active is False
    assert HealthPolicy.from_model(SimpleNamespace(active=SimpleNamespace(enabled=True))).active is True
    assert HealthPolicy.from_model(SimpleNamespace(active=None)).active is False
    assert HealthPolicy().breaker and HealthPolicy(passive=False, active=True).breaker
    assert not HealthPolicy(passive=False).breaker


def test_probe_failures_open_like_request_failures(board):
    for _ in range(2):
        board.failure(K, PROBED, "probe: HTTP 500", probe=True)
    assert board.state(K) == "open"
    assert board.snapshot(K)["last_error"] == "probe: HTTP 500"


def test_probe_success_closes_only_after_the_cooldown(board, clock):
    fail(board, PROBED, 2)
    assert board.probe_success(K, PROBED) is False  # resting: a probe never cuts the cool-down short
    assert board.state(K) == "open"
    clock.advance(10.0)
    assert board.probe_success(K, PROBED) is True  # stands in for the trial: no caller has to risk it
    assert board.state(K) == "closed"
    assert board.is_available(K, PROBED)
    snap = board.snapshot(K)
    assert snap["consecutive_failures"] == 0 and snap["ewma_ttfb_ms"] is None


def test_probe_success_never_shortens_a_retry_after(board, clock):
    board.failure(K, PROBED, "HTTP 429", retry_after_s=30)
    clock.advance(10.0)
    assert board.probe_success(K, PROBED) is False
    assert board.state(K) == "open"
    clock.advance(20.0)
    assert board.probe_success(K, PROBED) is True


def test_probe_success_leaves_a_running_trial_to_decide(board, clock):
    fail(board, PROBED, 2)
    clock.advance(10.0)
    board.begin(K, PROBED)  # a caller's request is the trial
    assert board.probe_success(K, PROBED) is False
    board.failure(K, PROBED, "HTTP 500")
    board.end(K)
    assert board.state(K) == "open"  # the real request failed: the probe's word did not overrule it


def test_probe_success_does_not_reset_a_closed_failure_run(board):
    """A healthy model list in front of a failing completion endpoint must not keep the circuit closed."""
    fail(board, PROBED, 1)
    assert board.probe_success(K, PROBED) is False
    fail(board, PROBED, 1)
    assert board.state(K) == "open"


def test_probe_success_makes_the_key_known(board):
    assert board.export() == {}
    board.probe_success(K, PROBED)
    assert board.export()[K]["state"] == "closed" and board.export()[K]["requests"] == 0


def test_probes_enforce_the_circuit_when_passive_is_off(board, clock):
    probes_only = HealthPolicy(passive=False, threshold=2, interval=10.0, active=True)
    fail(board, probes_only, 3)  # live traffic failures are recorded, never judged
    assert board.state(K) == "closed"
    board.failure(K, probes_only, "probe: ConnectionRefusedError", probe=True)
    assert board.state(K) == "open"
    assert not board.is_available(K, probes_only)
    clock.advance(10.0)
    assert board.probe_success(K, probes_only) and board.is_available(K, probes_only)


def test_passive_off_and_probes_off_never_open_on_probe_failures(board):
    off = HealthPolicy(passive=False)
    for _ in range(5):
        board.failure(K, off, "probe: HTTP 500", probe=True)
    assert board.state(K) == "closed"
