"""One attempt at one target, up to its commit point, and what its answer means for failover and health.

`run(AttemptRequest, client)` builds the call (translated through providers/, or passed through), sends it and
reads the answer as far as the commit point: a whole answer, or a stream up to its first content (text or tool
delta). It returns an `Outcome`: an `Answer` (complete, any status that is no failover trigger), an `Opened`
stream (committed, still open: addon/stream.py relays it), or a `Failure` whose `Reason` decides failover
(`Failover.retry_on`) and health. It never touches health or the balancer: the dispatcher does, with the lease.

Two things are raised instead of returned: `GatewayError(400)` when the caller's request does not suit this
target (e.g. a model id this provider cannot put in its path; another target may do) and any other
`GatewayError` from reading the answer (an answer larger than the gateway accepts), which goes to the caller
as is. See docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Mapping
from functools import lru_cache
from dataclasses import dataclass, field
from typing import ClassVar

import aiohttp

import providers
from addon import routing
from addon.targets import origin_url, passthrough_headers, target_origin
from addon.upstream import Attempt, UpstreamClient, read_some, response_headers
from addon.wire import WireCapture
from providers import CanonicalRequest, EmbeddingsRequest, GatewayError, StreamTranslator, TargetSpec, Usage
from store.models import Failover, Rule, Target
from store.validation import path_problem

log = logging.getLogger("aigw.dispatch")

# What the gateway reads from a provider for one non-stream answer.
MAX_UPSTREAM_BODY = 64 * 1024 * 1024
_EVENT_STREAM = "text/event-stream"


class Reason(enum.StrEnum):
    """Why an attempt failed. The values are what X-Gateway-Attempts and the health file show, and (but for CUT)
    the `Failover.retry_on` conditions of store/models.py (RETRY_CONDITIONS)."""
    CONNECT = "connect"
    TIMEOUT = "timeout"
    SERVER_ERROR = "5xx"
    RATE_LIMITED = "429"
    UNAUTHORIZED = "401"
    FORBIDDEN = "403"
    CUT = "cut"  # the connection was lost before the answer committed

    @property
    def trigger(self) -> str:
        """The `retry_on` condition that decides whether this failure moves on: a cut is a transport failure,
        configured like a connect error."""
        return Reason.CONNECT if self is Reason.CUT else self

    @property
    def counts_for_health(self) -> bool:
        """401/403 say the credential is broken, not the provider: shown in health, never counted."""
        return self not in (Reason.UNAUTHORIZED, Reason.FORBIDDEN)


def classify_status(status: int) -> Reason | None:
    """Failover reason for an HTTP status, or None when the answer must go back to the caller as is."""
    if status == 429:
        return Reason.RATE_LIMITED
    if status == 401:
        return Reason.UNAUTHORIZED
    if status == 403:
        return Reason.FORBIDDEN
    if status >= 500:
        return Reason.SERVER_ERROR
    if status == 408:
        return Reason.TIMEOUT
    return None


@dataclass(slots=True)  # not frozen: built per request (a frozen __init__ costs ~6x)
class Inbound:
    """The caller's request as every attempt reads it, computed once per request."""
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    rule: Rule
    canon: CanonicalRequest | None  # parsed body, when some candidate translates
    gateway_key: str | None         # the caller's gateway key (routing.client_key): never forwarded
    embed: EmbeddingsRequest | None = None  # an embeddings request's parsed body, when some candidate has a provider


@dataclass(slots=True)  # not frozen: built per request (a frozen __init__ costs ~6x)
class AttemptRequest:
    target: Target
    key: str           # health key "<upstream or service id>/<target id>" (names the target in logs)
    inbound: Inbound
    failover: Failover
    budget: float      # seconds left of the request's total_timeout
    wire: WireCapture | None = None  # filled with what goes over the wire (aigw_attempt_flows), else None

    @property
    def translated(self) -> bool:
        return bool(self.target.provider) and self.inbound.canon is not None


class Kind(enum.StrEnum):
    RESPONSE = "response"
    STREAM = "stream"
    FAILURE = "failure"


@dataclass(slots=True)
class Answer:
    """A complete answer: the caller gets it (translated when the target has a provider)."""
    kind: ClassVar[Kind] = Kind.RESPONSE
    status: int
    headers: dict[str, str]
    body: bytes
    ttfb: float | None = None
    events: bool = False  # a whole stream, already in the caller's event format (it ended before the relay)
    usage: Usage | None = None  # a whole stream's reported usage (a JSON answer's comes from its translation)
    model: str | None = None


@dataclass(slots=True)
class Opened:
    """A committed stream, still open: what arrived up to its first content is `buffered` (translated)."""
    kind: ClassVar[Kind] = Kind.STREAM
    status: int
    headers: dict[str, str]
    response: aiohttp.ClientResponse
    translator: StreamTranslator | None  # None: untranslated, committed at its headers
    idle_timeout: float
    ttfb: float
    buffered: bytes = b""
    wire: WireCapture | None = None  # the relay keeps adding the raw stream to it


@dataclass(slots=True)
class Failure:
    """A failed attempt; the dispatcher decides from `reason` whether to move on."""
    kind: ClassVar[Kind] = Kind.FAILURE
    reason: Reason
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    retry_after: str | None = None
    error: GatewayError | None = None
    ttfb: float | None = None

    @property
    def code(self) -> str:
        """What X-Gateway-Attempts says about it: the HTTP status, or the reason when there was none."""
        return str(self.status) if self.status else self.reason.value

    def describe(self) -> str:
        """The health record's last_error."""
        if self.error is not None:
            return f"{self.reason}: {self.error.message}"[:300]
        if self.status:
            return f"HTTP {self.status}"
        return self.reason.value


Outcome = Answer | Opened | Failure

# (target, cause) pairs already logged as unusable: a broken stored target fails every request, logged once.
_REPORTED_BROKEN: set[tuple[str, str]] = set()


def broken(req: AttemptRequest, why: str, exc: BaseException | None = None) -> Failure:
    """A target that cannot be called at all (a stored host or path the admin API now refuses, a request the
    HTTP client rejects, an unforeseen error): a failed attempt like a connection error — the next candidate is
    tried and health counts it. `why` names the cause, never a value (a URL can hold credentials)."""
    seen = (req.key, why)
    if seen not in _REPORTED_BROKEN and len(_REPORTED_BROKEN) < 10_000:
        _REPORTED_BROKEN.add(seen)
        log.warning("aigw: target %s cannot be called (%s); counted as a failed attempt", req.key, why, exc_info=exc)
    return Failure(Reason.CONNECT, error=GatewayError(502, "api_error", f"target unusable: {why}"))


async def run(req: AttemptRequest, client: UpstreamClient) -> Outcome:
    """One attempt, bounded as a whole (up to its commit point) by what is left of total_timeout. Whatever goes
    wrong with this target is a failed attempt (next candidate, health), never a 500."""
    try:
        async with asyncio.timeout(req.budget):
            return await once(req, client)
    except TimeoutError:
        return Failure(Reason.TIMEOUT, error=GatewayError(504, "timeout", "total_timeout reached"))
    except GatewayError:
        raise
    except Exception as exc:
        return broken(req, f"unexpected {type(exc).__name__}", exc)


@lru_cache(maxsize=4096)
def _stored_path_problem(path: str) -> str | None:
    """path_problem for configured target paths (a bounded set): checked once, not on every request."""
    return path_problem(path)


def build_call(req: AttemptRequest) -> Attempt:
    """The HTTP call of one attempt. GatewayError(400): the caller's request does not suit this target; any
    other GatewayError: the stored target cannot be called."""
    target, inbound = req.target, req.inbound
    origin = target_origin(target)  # a stored host the admin API refuses fails before anything is built
    target_path = target.path
    problem = _stored_path_problem(target_path) if target_path else None
    if problem:
        raise GatewayError(502, "api_error", f"target misconfigured: {problem}")
    requested = inbound.canon if inbound.canon is not None else inbound.embed
    if target.provider and requested is not None:
        spec = TargetSpec(provider=target.provider, model=routing.map_model(requested.model, target),
                          path=target_path, credentials=target.credentials, headers=target.headers or {},
                          api_version=target.api_version, max_tokens_default=target.max_tokens_default)
        up = providers.build_upstream_request(inbound.canon, spec) if inbound.canon is not None else \
            providers.build_embeddings_request(inbound.embed, spec)
        method, path, headers, body, stream = up.method, up.path, up.headers, up.body, up.stream
    else:
        # A provider target's `path` is its chat endpoint, not a base: other provider paths (models,
        # count_tokens, …) keep their own path.
        base = None if target.provider else target_path
        method, path, body, stream = inbound.method, routing.forwarded_path(inbound.path, inbound.rule, base), \
            inbound.body, False
        headers = passthrough_headers(inbound.headers, target, inbound.gateway_key)
    f, budget = req.failover, req.budget
    return Attempt(method=method, url=origin_url(origin, path), headers=headers, body=body, stream=stream,
                   connect_timeout=min(f.connect_timeout, budget), headers_timeout=min(f.headers_timeout, budget),
                   first_token_timeout=min(f.first_token_timeout, budget), idle_timeout=f.idle_timeout)


async def once(req: AttemptRequest, client: UpstreamClient) -> Outcome:
    """One attempt without the total_timeout bound (`run` adds it)."""
    try:
        call = build_call(req)
    except GatewayError as err:
        if err.status == 400:
            raise  # the caller's request (e.g. its model) does not suit this target: the loop decides
        return broken(req, err.message)
    wire = req.wire
    if wire is not None:
        creds = req.target.credentials
        wire.sent(call.method, call.url, call.headers, call.body,
                  secret_headers=(creds.header_name,) if creds is not None and creds.header_name else ())
    t0 = time.perf_counter()
    try:
        resp = await client.send(call)
    except TimeoutError:
        return _failed(wire, Failure(Reason.TIMEOUT))
    except (aiohttp.ClientError, OSError) as exc:
        return _failed(wire, Failure(Reason.CONNECT, error=GatewayError(502, "api_error", type(exc).__name__)))
    except Exception as exc:  # e.g. ValueError: a header or URL the HTTP client refuses to send
        return _failed(wire, broken(req, f"request refused by the HTTP client: {type(exc).__name__}"))
    ttfb = time.perf_counter() - t0
    status = resp.status
    headers = response_headers(resp)
    if wire is not None:
        wire.answered(status, headers)
    try:
        if status >= 400 or _EVENT_STREAM not in headers.get("content-type", "") or (
                req.target.provider and not call.stream):
            return _failed(wire, await _whole(resp, status, headers, call.idle_timeout, ttfb, wire))
        if not req.translated:
            # Untranslated stream: it commits at the headers.
            return Opened(status=status, headers=headers, response=resp, translator=None,
                          idle_timeout=call.idle_timeout, ttfb=ttfb, wire=wire)
        return _failed(wire, await _first_content(resp, status, headers, req.inbound.canon, req.target.provider,
                                                  call, ttfb, wire))
    except BaseException:
        resp.close()
        raise


def _failed(wire: WireCapture | None, outcome: Outcome) -> Outcome:
    """Note a failure without an answer on the capture (a connection error, a time-out, a cut)."""
    if wire is not None:
        if isinstance(outcome, Failure):
            wire.failed(outcome.describe())
        if not isinstance(outcome, Opened):
            wire.close()
    return outcome


async def _whole(resp: aiohttp.ClientResponse, status: int, headers: dict[str, str], idle_timeout: float,
                 ttfb: float, wire: WireCapture | None = None) -> Answer | Failure:
    try:
        data = await UpstreamClient.read_body(resp, idle_timeout, MAX_UPSTREAM_BODY)
        if wire is not None:
            wire.received(data)
    except TimeoutError:
        return Failure(Reason.TIMEOUT)
    except aiohttp.ClientError:
        return Failure(Reason.CUT)
    finally:
        resp.release()
    reason = classify_status(status)
    if reason:
        return Failure(reason, status=status, headers=headers, body=data, retry_after=headers.get("retry-after"),
                       ttfb=ttfb)
    return Answer(status=status, headers=headers, body=data, ttfb=ttfb)


async def _first_content(resp: aiohttp.ClientResponse, status: int, headers: dict[str, str],
                         canon: CanonicalRequest, provider: str, call: Attempt, ttfb: float,
                         wire: WireCapture | None = None) -> Outcome:
    """Read a translated stream up to its commit point (first content), within first_token_timeout."""
    translator = providers.open_stream(canon, provider)
    sent_at = time.perf_counter() - ttfb  # the request went out here; a stream's TTFB is its first content
    buf = bytearray()
    eof = False
    deadline = time.monotonic() + call.first_token_timeout
    try:
        while not (translator.committed or translator.done or translator.upstream_error):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            chunk = await read_some(resp.content, left)
            if not chunk:
                eof = True
                break
            if wire is not None:
                wire.received(chunk)
            buf += translator.feed(chunk)
    except TimeoutError:
        resp.close()
        return Failure(Reason.TIMEOUT, error=GatewayError(504, "timeout", "no first token in time"))
    except aiohttp.ClientError:
        resp.close()
        return Failure(Reason.CUT, error=GatewayError(502, "api_error", "stream cut before content"))
    if translator.upstream_error is not None and not translator.committed:
        resp.close()
        err = translator.upstream_error
        return Failure(classify_status(err.status) or Reason.SERVER_ERROR, error=err, retry_after=err.retry_after)
    if translator.committed:
        ttfb = time.perf_counter() - sent_at
        if _drain_arrived(resp, translator, buf, wire):
            # The provider had already sent the whole stream: it goes out in one piece, without the relay
            # hop. Nothing waits for it — every event is delivered as early as with the relay.
            resp.release()
            buf += translator.finish()
            return _events(status, buf, ttfb, translator)
        return Opened(status=status, headers=headers, response=resp, translator=translator,
                      idle_timeout=call.idle_timeout, ttfb=ttfb, buffered=bytes(buf), wire=wire)
    # Ended before any content (an empty answer): deliver it whole — or fail over if it was cut.
    if not eof:
        try:
            rest = await UpstreamClient.read_body(resp, call.idle_timeout, MAX_UPSTREAM_BODY)
        except (TimeoutError, aiohttp.ClientError):
            rest = b""
        if rest:
            if wire is not None:
                wire.received(rest)
            buf += translator.feed(rest)
    resp.release()
    tail = translator.finish()
    if not translator.done:
        return Failure(Reason.CUT, error=GatewayError(502, "api_error", "stream ended early"))
    buf += tail
    return _events(status, buf, ttfb, translator)


def _events(status: int, buf: bytearray, ttfb: float, translator: StreamTranslator) -> Answer:
    return Answer(status=status, headers={"content-type": _EVENT_STREAM}, body=bytes(buf), ttfb=ttfb, events=True,
                  usage=translator.usage, model=translator.model)


def _drain_arrived(resp: aiohttp.ClientResponse, translator: StreamTranslator, buf: bytearray,
                   wire: WireCapture | None) -> bool:
    """Translate what the provider already sent, without waiting for more; True when that completed the stream
    cleanly (terminal event seen, no error event)."""
    while not translator.done:
        try:
            data = resp.content.read_nowait()
        except Exception:  # a broken connection is the relay's to report, after the content so far
            return False
        if not data:
            return False
        if wire is not None:
            wire.received(data)
        buf += translator.feed(data)
    return translator.upstream_error is None
