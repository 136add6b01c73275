"""The stream machinery shared by every (upstream, ingress) pair.

A `StreamTranslator` = SSE decoder → *source* (upstream family: SSE event → calls on the sink) →
*sink* (ingress family: canonical calls → SSE bytes). Sources and sinks only meet through the
canonical call vocabulary below, so every pair works without pair-specific code:

    start(id, model)  text(s)  refusal(s)  tool_start(i, id, name)  tool_args(i, fragment)
    usage(Usage)  finish(reason, stop_sequence)  end()  error(GatewayError)

`i` is the tool-call ordinal within the answer (0, 1, ...), the same meaning as OpenAI's
`tool_calls[].index`. Same-family pairs use passthrough translators (openai.py / anthropic.py) that
re-frame events without re-encoding them.
"""
from __future__ import annotations

from .errors import GatewayError
from .sse import SSEDecoder, SSEEvent


class Sink:
    """Base for ingress encoders: collects output bytes and tracks commit/close state."""

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

    def trailer(self) -> None:
        """Called at upstream EOF after a clean end (OpenAI emits [DONE] there if not yet sent)."""


class Source:
    """Base for upstream decoders."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.done = False
        self.upstream_error: GatewayError | None = None

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

    def feed(self, data: bytes) -> bytes:
        sink = self._sink
        if sink.closed:
            return b""
        on_event = self._source.on_event
        for ev in self._dec.feed(data):
            on_event(ev)
            if sink.closed:
                break
        return sink.take()

    def finish(self) -> bytes:
        sink = self._sink
        if not sink.closed:
            for ev in self._dec.finish():
                self._source.on_event(ev)
                if sink.closed:
                    break
        if self._source.done:
            sink.trailer()
        elif not sink.closed:
            sink.error(_cut_error())
        sink.closed = True
        return sink.take()

    def abort(self, message: str, kind: str = "api_error") -> bytes:
        sink = self._sink
        if not sink.closed:
            sink.error(GatewayError(None, kind, message))
        sink.closed = True
        return sink.take()
