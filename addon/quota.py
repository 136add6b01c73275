"""What providers say about their own remaining quota, learned from their answers' headers.

OpenAI (and OpenAI-compatible servers, Azure) send ``x-ratelimit-remaining-{requests,tokens}`` with
``x-ratelimit-reset-{requests,tokens}`` as durations (``"1s"``, ``"6m0s"``, ``"20ms"``); Anthropic sends
``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{remaining,reset}`` with the reset as an RFC 3339
time. A target whose provider says nothing is left is skipped like an open circuit until the reset it named, so
traffic moves to the other targets before the provider starts answering 429.

Pure logic on one event loop; ``clock`` (monotonic) and ``wall`` (epoch) are injectable for tests.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

# A provider naming a reset further away than this is not believed beyond it: the block is re-learned then.
MAX_BLOCK_S = 3600.0
# "0 remaining" with no (readable) reset: back off this long, then let the next answer say more.
DEFAULT_BLOCK_S = 1.0

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}

# (remaining header, reset header, reset format) per limit, lower-case.
_OPENAI = tuple((f"x-ratelimit-remaining-{what}", f"x-ratelimit-reset-{what}", "duration")
                for what in ("requests", "tokens"))
_ANTHROPIC = tuple((f"anthropic-ratelimit-{what}-remaining", f"anthropic-ratelimit-{what}-reset", "time")
                   for what in ("requests", "tokens", "input-tokens", "output-tokens"))
QUOTA_HEADERS = _OPENAI + _ANTHROPIC
#: The `why` of a block set by a target's own configured limits (addon/limiter.py), which answers do not lift.
CONFIGURED = "limits."


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations: ``"1s"``, ``"6m0s"``, ``"1h2m3.5s"``, ``"20ms"`` → seconds; None if unreadable."""
    text = text.strip()
    if not text:
        return None
    total, end = 0.0, 0
    for match in _DURATION.finditer(text):
        if match.start() != end:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        end = match.end()
    if end != len(text):
        try:
            seconds = float(text)  # a bare number of seconds
        except ValueError:
            return None
        return max(0.0, seconds) if math.isfinite(seconds) else None
    return total


def format_duration(seconds: float) -> str:
    """Seconds → the same duration format (``"20ms"``, ``"1.5s"``, ``"6m0s"``, ``"1h0m0s"``)."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms" if seconds > 0 else "0s"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"


def _reset_in(value: str | None, form: str, wall: float) -> float | None:
    if not value:
        return None
    if form == "duration":
        return parse_duration(value)
    try:
        at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if at.tzinfo is None:
        return None
    return max(0.0, at.timestamp() - wall)


def exhausted_for(headers: Mapping[str, str], wall: float) -> tuple[float, str] | None:
    """How long the answer's provider says nothing is left, and of what; None when it says something is left
    (or says nothing). ``headers`` must have lower-case names."""
    longest: tuple[float, str] | None = None
    for remaining_h, reset_h, form in QUOTA_HEADERS:
        remaining = headers.get(remaining_h)
        if remaining is None:
            continue
        try:
            left = float(remaining)
        except ValueError:
            continue
        if left > 0:
            continue
        wait = _reset_in(headers.get(reset_h), form, wall)
        wait = DEFAULT_BLOCK_S if wait is None else min(wait, MAX_BLOCK_S)
        if longest is None or wait > longest[0]:
            longest = (wait, remaining_h)
    return longest


@dataclass(slots=True)
class Block:
    until: float     # monotonic
    until_wall: float
    why: str         # the header that said so, or the configured limit


class QuotaBoard:
    """Per target key: until when it is out of quota (learned from its answers, or a configured limit that
    refused). Read on every plan, so lookups are one dict access."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._clock, self._wall = clock, wall
        self._blocks: dict[str, Block] = {}

    def learn(self, key: str, headers: Mapping[str, str]) -> None:
        """Read one provider answer's headers (lower-case names)."""
        found = exhausted_for(headers, self._wall())
        if found is None:
            block = self._blocks.get(key)
            if block is not None and not block.why.startswith(CONFIGURED) \
                    and any(h in headers for h, _, _ in QUOTA_HEADERS):
                del self._blocks[key]  # the provider says there is quota again (a configured limit's block stays)
            return
        self.block(key, found[0], found[1])

    def block(self, key: str, seconds: float, why: str) -> None:
        if seconds <= 0:
            return
        self._blocks[key] = Block(self._clock() + seconds, self._wall() + seconds, why)

    def blocked_for(self, key: str) -> float | None:
        """Seconds until `key` may be tried again, or None when it may be tried now."""
        block = self._blocks.get(key)
        if block is None:
            return None
        left = block.until - self._clock()
        if left <= 0:
            del self._blocks[key]
            return None
        return left

    def forget(self, live_keys: Iterable[str]) -> None:
        keep = set(live_keys)
        for key in [k for k in self._blocks if k not in keep]:
            del self._blocks[key]

    def export(self) -> dict[str, dict[str, object]]:
        """For the health file: the keys out of quota now."""
        now = self._clock()
        return {key: {"until": b.until_wall, "why": b.why}
                for key, b in self._blocks.items() if b.until > now}
