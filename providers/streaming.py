"""The stream machinery shared by every (upstream, ingress) pair.

A `StreamTranslator` = SSE decoder → *source* (upstream family: SSE event → calls on the sink) →
*sink* (ingress family: canonical calls → SSE bytes). Sources and sinks only meet through the
canonical call vocabulary below, so every pair works without pair-specific code:

    start(id, model)  text(s)  refusal(s)  tool_start(i, id, name)  tool_args(i, fragment)
    thinking(s)  thinking_signature(sig)  redacted_thinking(data)
    usage(Usage)  finish(reason, stop_sequence)  end()  error(GatewayError)

The thinking calls carry a model's reasoning (a `ThinkingPart` as it streams); a sink whose format has no place
for it keeps the base class's no-ops.

`i` is the tool-call ordinal within the answer (0, 1, ...), the same meaning as OpenAI's
`tool_calls[].index`. Same-family pairs use relays (openai_passthrough.py / anthropic_passthrough.py) that
re-frame events without re-encoding them.
"""
from __future__ import annotations

from typing import Any, Callable

from .canonical import Usage
from .jsoncodec import loads
from .errors import GatewayError
from .sse import SSEDecoder, SSEEvent, SSEOverflow


class Sink:
    """Base for ingress encoders: collects output bytes and tracks commit/close state."""

    error_event: Callable[[GatewayError], bytes]  # the format's error event (a staticmethod)

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.committed = False     # content has been emitted: failover is no longer invisible
        self.closed = False        # terminal or error event emitted; nothing more may follow

    def take(self) -> bytes:
        if not self.out:
            return b""
        data = b"".join(self.out)
        self.out.clear()
        return data

    def thinking(self, s: str) -> None:
        """A fragment of the model's visible reasoning (not content: it does not commit the stream)."""

    def thinking_signature(self, signature: str) -> None:
        """The provider's signature closing the current reasoning block."""

    def redacted_thinking(self, data: str) -> None:
        """A reasoning block the provider sent encrypted, whole."""

    def trailer(self) -> None:
        """Called at upstream EOF after a clean end (OpenAI emits [DONE] there if not yet sent)."""

    def error(self, err: GatewayError) -> None:
        """`err` as the stream's last event: nothing is emitted after it."""
        if self.closed:
            return
        self.out.append(self.error_event(err))
        self.closed = True


INVALID = object()  # what Source.event_json gives for data that is not JSON


class Source:
    """Base for upstream decoders. A source keeps what the provider reported as it reads it: `reported_usage`
    (the latest, merged where the family reports in parts) and `reported_model` (the first model it names)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.done = False
        self.upstream_error: GatewayError | None = None
        self.at_eof = False
        self.reported_usage: Usage | None = None
        self.reported_model: str | None = None

    def invalid_event(self) -> None:
        # A last event cut off by EOF is a cut, not an upstream error: finish() reports it as such.
        if not self.at_eof:
            self.fail(GatewayError(502, "api_error", "upstream sent an invalid stream event"))

    def event_json(self, data: str) -> Any:
        """An event's data parsed as JSON; `INVALID` (after `invalid_event`) when it is not JSON."""
        try:
            return loads(data)
        except ValueError:
            self.invalid_event()
            return INVALID

    def event_object(self, data: str) -> dict | None:
        """An event's data as a JSON object; None when it is not JSON (reported by `event_json`) or not an
        object (ignored)."""
        obj = self.event_json(data)
        return obj if isinstance(obj, dict) else None

    def on_event(self, ev: SSEEvent) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def fail(self, err: GatewayError) -> None:
        self.upstream_error = err
        self.sink.error(err)


def _cut_error() -> GatewayError:
    return GatewayError(502, "api_error", "upstream stream ended before the response was complete")


class StreamTranslator:
    """Raw upstream bytes in (any chunking) → ingress-format SSE bytes out. See providers/__init__."""

    def __init__(self, source: Source, sink: Sink) -> None:
        self._dec = SSEDecoder()
        self._source = source
        self._sink = sink
        self._aborted = False

    @property
    def committed(self) -> bool:
        return self._sink.committed

    @property
    def upstream_error(self) -> GatewayError | None:
        return self._source.upstream_error

    @property
    def done(self) -> bool:
        return self._source.done

    @property
    def closed(self) -> bool:
        return self._sink.closed

    @property
    def usage(self) -> Usage | None:
        """The usage the provider reported so far (canonical), also when the caller's stream carries none;
        None while it has reported none."""
        return self._source.reported_usage

    @property
    def model(self) -> str | None:
        """The model the provider's stream says serves it; None while it has named none."""
        return self._source.reported_model

    def _ended(self) -> bool:
        # The source keeps reading after the sink closed cleanly (an Anthropic client's message_stop
        # goes out on the usage chunk, OpenAI's [DONE] still follows) so that `done` is accurate.
        src = self._source
        return src.done or src.upstream_error is not None or self._aborted

    def feed(self, data: bytes) -> bytes:
        if self._ended():
            return b""
        source = self._source
        try:
            events = self._dec.feed(data)
        except SSEOverflow as exc:
            # Before the commit point this fails over like any broken stream; after it, an error event.
            source.fail(GatewayError(502, "api_error", f"upstream stream is malformed: {exc}"))
            return self._sink.take()
        for ev in events:
            self._dispatch(ev)
            if source.done or source.upstream_error is not None:
                break
        return self._sink.take()

    def _dispatch(self, ev) -> None:
        try:
            self._source.on_event(ev)
        except (TypeError, AttributeError, KeyError, ValueError, IndexError):
            # Well-formed JSON of the wrong shape (a string where an object belongs...). A translator
            # must never raise into the proxy: report it like any other broken upstream event.
            self._source.fail(GatewayError(502, "api_error", "upstream sent a malformed stream event"))

    def finish(self) -> bytes:
        sink = self._sink
        if not self._ended():
            self._source.at_eof = True
            for ev in self._dec.finish():
                self._dispatch(ev)
                if self._ended():
                    break
        if self._source.done:
            sink.trailer()
        elif not sink.closed:
            sink.error(_cut_error())
        sink.closed = True
        return sink.take()

    def abort(self, message: str, kind: str = "api_error") -> bytes:
        sink = self._sink
        self._aborted = True
        if not sink.closed:
            sink.error(GatewayError(None, kind, message))
        sink.closed = True
        return sink.take()
