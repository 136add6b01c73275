"""What one gateway request came to: the record the dispatcher fills and the observers read.

One `RequestRecord` per client request, finished once — when a whole answer is returned, or when a committed
stream ends (its usage is known only then). Observers (`addon/metrics.py`, `addon/accesslog.py`,
`store/usage.py`'s book) get the finished record; none of them may block the event loop or raise into the
request path. Nothing here holds a secret or a prompt: the key is its id and display prefix, bodies never appear.
See docs/architecture.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

from providers import Usage

if TYPE_CHECKING:
    from addon.limiter import Ticket
    from addon.wire import WireCapture
    from store.models import Pricing


@dataclass(slots=True)
class TokenUsage:
    """Tokens a provider reported for one answer (0 when it reported none)."""
    input_tokens: int = 0       # everything the model read, cached tokens included (OpenAI's prompt_tokens)
    output_tokens: int = 0      # reasoning tokens included
    cached_tokens: int = 0      # of input_tokens, read from the provider's prompt cache
    reported: bool = False      # the provider reported usage at all

    @classmethod
    def of(cls, usage: Usage | None) -> TokenUsage:
        """From the canonical usage a translation reported (None: the provider reported none)."""
        if usage is None:
            return cls()
        return cls(usage.prompt_tokens, usage.completion_tokens, usage.cache_read, True)

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens,
                          self.cached_tokens + other.cached_tokens, self.reported or other.reported)


@dataclass(slots=True)
class AttemptRecord:
    """One upstream attempt: which target, and how it went."""
    target_id: str
    provider: str               # provider family, "passthrough" for an untranslated endpoint
    outcome: str                # "ok", or an attempt.Reason value ("connect", "timeout", "5xx", "429", ...),
                                # "unsupported", "error" (a provider answer returned to the caller as is)
    status: int | None          # the provider's HTTP status, None when none was received
    seconds: float              # from sending to the answer (non-stream) or the commit point (stream)
    wire: WireCapture | None = None  # what went over the wire (aigw_attempt_flows on), for the attempt flows


@dataclass(slots=True)
class RequestRecord:
    """Everything an operator may see about one request. Filled as the request goes; `finish` closes it."""
    request_id: str
    started: float = field(default_factory=time.time)        # epoch seconds
    started_mono: float = field(default_factory=time.perf_counter)
    method: str = ""
    path: str = ""                                           # without the query string
    ingress: str | None = None                               # "openai", "anthropic", None for other paths
    gateway_id: str | None = None
    gateway: str | None = None                               # gateway name
    rule_id: str | None = None
    service_id: str | None = None
    upstream_id: str | None = None
    upstream: str | None = None                              # upstream name
    key_id: str | None = None
    key_prefix: str | None = None                            # the key's display prefix, never the key
    requested_model: str | None = None
    served_model: str | None = None                          # what the target was asked for (after mapping)
    provider: str | None = None                              # the serving target's provider family
    target_id: str | None = None                             # the serving target
    status: int = 0                                          # what the caller got
    stream: bool = False
    attempts: list[AttemptRecord] = field(default_factory=list)
    fail_open: bool = False
    ttft_s: float | None = None                              # streams: request start to first content sent
    upstream_s: float = 0.0                                  # time spent waiting on providers
    duration_s: float = 0.0                                  # request start to the last byte handed to mitmproxy
    usage: TokenUsage = field(default_factory=TokenUsage)
    pricing: Pricing | None = None                           # the serving target's, when it has one
    cost: float | None = None                                # estimated from usage and pricing (finish)
    error_class: str | None = None                           # the gateway error kind when status >= 400
    stream_error: str | None = None                          # why a committed stream ended badly
    ticket: Ticket | None = None                             # what it took from its limits, settled when finished

    @property
    def failovers(self) -> int:
        """Attempts that failed before the one that answered (or all of them when none did)."""
        return max(0, len(self.attempts) - 1) if self.target_id else len(self.attempts)

    @property
    def overhead_s(self) -> float:
        """What the gateway itself added: the request's time minus the time spent waiting on providers (for a
        stream, up to its commit point)."""
        end = self.ttft_s if self.stream and self.ttft_s is not None else self.duration_s
        return max(0.0, end - self.upstream_s)

    @property
    def status_class(self) -> str:
        return f"{self.status // 100}xx" if self.status else "none"
