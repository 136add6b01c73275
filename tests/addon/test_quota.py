"""Provider quota headers (addon/quota.py): OpenAI's duration format both ways, what an answer's headers say is
exhausted and for how long, and the QuotaBoard that keeps those blocks (injected clocks: no sleeps)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

from addon.quota import (
    DEFAULT_BLOCK_S, MAX_BLOCK_S, QUOTA_HEADERS, QuotaBoard, exhausted_for, format_duration, parse_duration,
)

WALL = datetime(2026, 12, 2, 10, 0, 0, tzinfo=UTC).timestamp()


def rfc3339(seconds_from_wall: float, *, z: bool = True) -> str:
    at = datetime.fromtimestamp(WALL + seconds_from_wall, UTC)
    text = at.isoformat()
    return text.replace("+00:00", "Z") if z else text


class Clocks:
    """A monotonic clock and a wall clock that move together (and can be set apart)."""

    def __init__(self, mono: float = 1000.0, wall: float = WALL) -> None:
        self.mono, self.wall_now = mono, wall

    def clock(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.wall_now

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_now += seconds


@pytest.fixture
def clocks():
    return Clocks()


@pytest.fixture
def board(clocks):
    return QuotaBoard(clock=clocks.clock, wall=clocks.wall)


# ------------------------------------------------------------------------------------------- parse_duration
@pytest.mark.parametrize("text, seconds", [
    ("1s", 1.0), ("6m0s", 360.0), ("1h2m3.5s", 3723.5), ("20ms", 0.02), ("0s", 0.0), ("1h", 3600.0),
    ("1m30s", 90.0), ("59.5s", 59.5), ("2h0m0s", 7200.0), ("10m5ms", 600.005), ("1.5m", 90.0),
    ("  2s  ", 2.0), ("0.25s", 0.25), ("999ms", 0.999),
])
def test_parse_duration_openai_forms(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize("text, seconds", [("2", 2.0), ("0.5", 0.5), (" 30 ", 30.0), ("0", 0.0), ("-3", 0.0)])
def test_parse_duration_bare_number_of_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "   ", "x", "soon", "1x", "1S", "1s x", "x1s", "1s2", "s", "ms", "1 s",
                                  "1h 2m", "1d", "-1s", "1,5s", "--"])
def test_parse_duration_garbage_is_none(text):
    assert parse_duration(text) is None


@pytest.mark.parametrize("text", ["inf", "nan", "infinity", "1e999"])
def test_parse_duration_non_finite_is_none(text):
    assert parse_duration(text) is None


# ------------------------------------------------------------------------------------------ format_duration
@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (-5, "0s"), (0.0001, "1ms"), (0.02, "20ms"), (0.0201, "21ms"), (0.5, "500ms"), (0.999, "999ms"),
    (1, "1s"), (1.5, "1.5s"), (12.3456, "12.346s"), (59, "59s"), (60, "1m0s"), (61.2, "1m2s"), (360, "6m0s"),
    (3599.5, "1h0m0s"), (3600, "1h0m0s"), (3661.2, "1h1m2s"), (7200, "2h0m0s"), (86400, "24h0m0s"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.001, 0.02, 0.3333, 0.75, 1.0, 1.25, 7.1234, 42.0, 59.999, 60.0, 90.5, 360.0,
                                     3599.0, 3723.5, 86399.1])
def test_format_then_parse_round_trip(seconds):
    back = parse_duration(format_duration(seconds))
    assert back is not None
    if seconds < 1:
        assert seconds <= back < seconds + 0.001 + 1e-12     # rounded up to the next millisecond
    elif seconds < 60:
        assert back == pytest.approx(seconds, abs=0.0005)    # three decimals
    else:
        assert back == math.ceil(seconds)                    # whole seconds, rounded up


@pytest.mark.parametrize("text", ["1s", "6m0s", "20ms", "1h2m3s", "1.5s"])
def test_parse_then_format_round_trip(text):
    assert format_duration(parse_duration(text)) == text


# ---------------------------------------------------------------------------------------------- exhausted_for
def test_quota_headers_cover_openai_and_anthropic():
    assert [h for h, _, _ in QUOTA_HEADERS] == [
        "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
        "anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-output-tokens-remaining"]


def test_nothing_said_is_none():
    assert exhausted_for({}, WALL) is None
    assert exhausted_for({"content-type": "application/json"}, WALL) is None


def test_openai_something_left_is_none():
    headers = {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "1s",
               "x-ratelimit-remaining-tokens": "1000", "x-ratelimit-reset-tokens": "6m0s"}
    assert exhausted_for(headers, WALL) is None


def test_openai_requests_exhausted():
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s",
               "x-ratelimit-remaining-tokens": "1000", "x-ratelimit-reset-tokens": "6m0s"}
    assert exhausted_for(headers, WALL) == (1.5, "x-ratelimit-remaining-requests")


def test_openai_the_longest_exhausted_wins():
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20ms",
               "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}
    assert exhausted_for(headers, WALL) == (360.0, "x-ratelimit-remaining-tokens")


def test_negative_or_fractional_zero_remaining_counts_as_exhausted():
    assert exhausted_for({"x-ratelimit-remaining-tokens": "-3", "x-ratelimit-reset-tokens": "2s"}, WALL) == \
        (2.0, "x-ratelimit-remaining-tokens")
    assert exhausted_for({"x-ratelimit-remaining-tokens": "0.0", "x-ratelimit-reset-tokens": "2s"}, WALL) == \
        (2.0, "x-ratelimit-remaining-tokens")
    assert exhausted_for({"x-ratelimit-remaining-tokens": "0.5", "x-ratelimit-reset-tokens": "2s"}, WALL) is None


def test_unreadable_remaining_is_ignored():
    assert exhausted_for({"x-ratelimit-remaining-requests": "lots", "x-ratelimit-reset-requests": "1s"}, WALL) is None


@pytest.mark.parametrize("reset", [None, "", "whenever"])
def test_exhausted_without_a_readable_reset_backs_off_the_default(reset):
    headers = {"x-ratelimit-remaining-requests": "0"}
    if reset is not None:
        headers["x-ratelimit-reset-requests"] = reset
    assert exhausted_for(headers, WALL) == (DEFAULT_BLOCK_S, "x-ratelimit-remaining-requests")
    assert DEFAULT_BLOCK_S == 1.0


def test_a_reset_beyond_the_cap_is_not_believed_beyond_it():
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30h0m0s"}
    assert exhausted_for(headers, WALL) == (MAX_BLOCK_S, "x-ratelimit-remaining-requests")
    assert MAX_BLOCK_S == 3600.0


def test_anthropic_rfc3339_reset():
    headers = {"anthropic-ratelimit-requests-remaining": "0",
               "anthropic-ratelimit-requests-reset": rfc3339(42),
               "anthropic-ratelimit-tokens-remaining": "9000",
               "anthropic-ratelimit-tokens-reset": rfc3339(5)}
    assert exhausted_for(headers, WALL) == (pytest.approx(42.0), "anthropic-ratelimit-requests-remaining")


def test_anthropic_offset_form_and_fractional_seconds():
    at = (datetime.fromtimestamp(WALL, UTC) + timedelta(seconds=7.25)).astimezone(timezone(timedelta(hours=2)))
    headers = {"anthropic-ratelimit-output-tokens-remaining": "0", "anthropic-ratelimit-output-tokens-reset":
               at.isoformat()}
    wait, why = exhausted_for(headers, WALL)
    assert wait == pytest.approx(7.25) and why == "anthropic-ratelimit-output-tokens-remaining"


def test_anthropic_input_tokens_longest_of_several():
    headers = {"anthropic-ratelimit-input-tokens-remaining": "0",
               "anthropic-ratelimit-input-tokens-reset": rfc3339(30),
               "anthropic-ratelimit-tokens-remaining": "0",
               "anthropic-ratelimit-tokens-reset": rfc3339(10)}
    assert exhausted_for(headers, WALL) == (pytest.approx(30.0), "anthropic-ratelimit-input-tokens-remaining")


def test_anthropic_reset_in_the_past_is_zero():
    headers = {"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": rfc3339(-10)}
    assert exhausted_for(headers, WALL) == (0.0, "anthropic-ratelimit-requests-remaining")


@pytest.mark.parametrize("reset", ["2026-12-02T10:00:42", "not a time", "42s"])
def test_anthropic_reset_without_zone_or_unreadable_backs_off_the_default(reset):
    headers = {"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": reset}
    assert exhausted_for(headers, WALL) == (DEFAULT_BLOCK_S, "anthropic-ratelimit-requests-remaining")


def test_anthropic_reset_capped():
    headers = {"anthropic-ratelimit-tokens-remaining": "0", "anthropic-ratelimit-tokens-reset": rfc3339(86400)}
    assert exhausted_for(headers, WALL) == (MAX_BLOCK_S, "anthropic-ratelimit-tokens-remaining")


def test_header_names_must_be_lower_case():
    assert exhausted_for({"X-RateLimit-Remaining-Requests": "0"}, WALL) is None


# ------------------------------------------------------------------------------------------------ QuotaBoard
def test_board_learns_a_block_and_releases_it_at_the_reset(board, clocks):
    board.learn("u/a", {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s"})
    assert board.blocked_for("u/a") == pytest.approx(1.5)
    assert board.blocked_for("u/b") is None
    clocks.advance(1.0)
    assert board.blocked_for("u/a") == pytest.approx(0.5)
    clocks.advance(0.5)
    assert board.blocked_for("u/a") is None
    assert board.export() == {}


def test_board_export_names_wall_time_and_why(board, clocks):
    board.learn("u/a", {"anthropic-ratelimit-tokens-remaining": "0",
                        "anthropic-ratelimit-tokens-reset": rfc3339(20)})
    board.block("u/b", 5, "limits.requests")
    assert board.export() == {
        "u/a": {"until": pytest.approx(WALL + 20), "why": "anthropic-ratelimit-tokens-remaining"},
        "u/b": {"until": WALL + 5, "why": "limits.requests"},
    }
    clocks.advance(5)
    assert board.export() == {"u/a": {"until": pytest.approx(WALL + 20), "why": "anthropic-ratelimit-tokens-remaining"}}
    clocks.advance(15)
    assert board.export() == {}


def test_board_block_uses_the_monotonic_clock_not_the_wall(board, clocks):
    board.block("u/a", 10, "limits.tokens")
    clocks.wall_now += 1000  # the wall clock jumps (NTP): the block does not end
    assert board.blocked_for("u/a") == 10
    clocks.mono += 10
    assert board.blocked_for("u/a") is None


def test_board_block_of_zero_or_less_is_nothing(board):
    board.block("u/a", 0, "x")
    board.block("u/b", -1, "x")
    assert board.blocked_for("u/a") is None and board.blocked_for("u/b") is None and board.export() == {}


def test_board_quota_again_unblocks(board):
    board.learn("u/a", {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "60s"})
    assert board.blocked_for("u/a") == 60
    board.learn("u/a", {"x-ratelimit-remaining-requests": "99", "x-ratelimit-reset-requests": "1s"})
    assert board.blocked_for("u/a") is None


def test_board_an_answer_saying_nothing_keeps_the_block(board):
    board.learn("u/a", {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "60s"})
    board.learn("u/a", {"content-type": "application/json"})
    assert board.blocked_for("u/a") == 60


def test_board_a_newer_answer_replaces_the_block(board):
    board.learn("u/a", {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "60s"})
    board.learn("u/a", {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "5s"})
    assert board.blocked_for("u/a") == 5
    assert board.export()["u/a"]["why"] == "x-ratelimit-remaining-tokens"


def test_board_unbounded_reset_is_capped(board):
    board.learn("u/a", {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "100h0m0s"})
    assert board.blocked_for("u/a") == MAX_BLOCK_S


def test_board_forget_keeps_only_live_keys(board):
    for key in ("u/a", "u/b", "v/c"):
        board.block(key, 30, "limits.requests")
    board.forget(["u/b", "v/c", "w/never"])
    assert board.blocked_for("u/a") is None
    assert board.blocked_for("u/b") == 30 and board.blocked_for("v/c") == 30
    assert set(board.export()) == {"u/b", "v/c"}
    board.forget([])
    assert board.export() == {}


def test_board_provider_headers_do_not_lift_a_configured_limit_block(board):
    board.block("u/a", 60, "limits.requests")
    board.learn("u/a", {"x-ratelimit-remaining-requests": "4999", "x-ratelimit-reset-requests": "12ms"})
    assert board.blocked_for("u/a") == 60
