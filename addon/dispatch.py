"""One gateway request from routing to answer: candidates, attempts, failover, health, relay hand-off.

The commit point is explicit: a non-stream answer commits when it is complete; a stream commits on its first
content (text or tool delta). Before it, any failure moves the request to the next candidate invisibly; after it,
a failure becomes an error event in the caller's protocol and a health failure — never a clean end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp

import providers
from addon import routing
from addon.live import LiveConfig
from store.health_file import target_key
from addon.relay import Parked, Relay
from addon.upstream import HOP_BY_HOP, Attempt, Outcome, UpstreamClient, classify_status, response_headers
from providers import GatewayError, TargetSpec
from store.models import GATEWAY_OWNED_HEADERS, Failover, host_problem, path_problem

log = logging.getLogger("aigw.dispatch")

# A connection lost before the answer committed is a transport failure, configured like a connect error.
TRIGGER_OF = {"cut": "connect"}
# What the gateway reads from a provider for one non-stream answer.
MAX_UPSTREAM_BODY = 64 * 1024 * 1024


@dataclass(slots=True)
class Reply:
    """What the addon puts on the flow: a whole answer, or a parked stream for the relay."""
    status: int
    headers: dict[str, str]
    body: bytes = b""
    relay_token: str | None = None
    cancel: Callable[[], None] | None = None  # stops a relayed stream when its caller goes away
    attempts: list[str] = field(default_factory=list)
    provider: str | None = None
    target_id: str | None = None
    fail_open: bool = False


@dataclass(slots=True)
class Settings:
    base_domain: str = ""
    max_body: int = 10 * 1024 * 1024


# Endpoint services (one fixed target) have no upstream settings: they get the defaults.
DEFAULT_FAILOVER = Failover()


def _failover_settings(upstream: Any) -> Failover:
    return getattr(upstream, "failover", None) or DEFAULT_FAILOVER


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: let the breaker use its own cool-down


def target_origin(target: Any) -> tuple[str, str, int]:
    """(scheme, host, port) of a target. A stored host that is no bare name or IP address (a record written
    before the admin API checked hosts) raises GatewayError(502): for the dispatcher, a failed attempt."""
    provider = getattr(target, "provider", None)
    if getattr(target, "host", None):
        problem = host_problem(target.host)
        if problem:
            raise GatewayError(502, "api_error", f"target misconfigured: {problem}")
        scheme = target.protocol or "https"
        port = target.port or (443 if scheme == "https" else 80)
        return scheme, target.host, port
    if provider:
        return providers.default_origin(provider)
    raise GatewayError(503, "unavailable", "A target has neither a provider nor a host.")


def credential_headers(target: Any) -> dict[str, str]:
    """The target's own headers and credentials, for calls the providers layer does not build (passthrough, probes)."""
    provider = getattr(target, "provider", None) or "openai-compatible"
    headers = {**(getattr(target, "headers", None) or {}),
               **providers.auth_headers(provider, getattr(target, "credentials", None))}
    # Framing headers of a record stored before the admin API refused them: the gateway frames the request.
    return {k: v for k, v in headers.items()
            if k.lower() not in GATEWAY_OWNED_HEADERS and not k.lower().startswith("proxy-")}


# Request headers never copied to an untranslated upstream call: hop-by-hop and framing ones (the body is sent
# decoded, so Content-Encoding goes too), the caller's gateway key, and Accept-Encoding (aiohttp negotiates).
_NOT_FORWARDED = HOP_BY_HOP | {"x-api-key", "x-tg-api-key", "accept-encoding"}


def _passthrough_headers(flow_headers: Any, target: Any) -> dict[str, str]:
    """Client headers minus hop-by-hop and the client's gateway key, plus the target's headers and credentials.

    An `Authorization` header is the caller's own (e.g. its provider key) unless it carries the gateway key."""
    from addon.ingress import header_items
    gateway_key = routing.client_key(flow_headers)
    headers = {}
    for k, v in header_items(flow_headers):  # one pass (mitmproxy's Headers.items() is quadratic)
        lk = k.lower()
        if lk in _NOT_FORWARDED or (lk == "authorization" and gateway_key and gateway_key in v):
            continue
        headers[k] = v
    headers.update(credential_headers(target))
    return headers


# (target, cause) pairs already logged as unusable: a broken stored target fails every request, logged once.
_REPORTED_BROKEN: set[tuple[str, str]] = set()


def _broken_target(target: Any, route: routing.Route, why: str, exc: BaseException | None = None) -> Outcome:
    """A target that cannot be called at all (a stored host or path the admin API now refuses, a request the
    HTTP client rejects, an unforeseen error): a failed attempt like a connection error — the next candidate is
    tried and health counts it. `why` names the cause, never a value (a URL can hold credentials)."""
    upstream_id = getattr(route.upstream, "id", None) or getattr(route.service, "id", "?")
    key = (target_key(upstream_id, getattr(target, "id", "?")), why)
    if key not in _REPORTED_BROKEN and len(_REPORTED_BROKEN) < 10_000:
        _REPORTED_BROKEN.add(key)
        log.warning("aigw: target %s cannot be called (%s); counted as a failed attempt", key[0], why,
                    exc_info=exc)
    return Outcome("failure", reason="connect", error=GatewayError(502, "api_error", f"target unusable: {why}"))


def error_response(ingress: str | None, err: GatewayError) -> Reply:
    """A gateway error in the caller's format (OpenAI when the path names neither)."""
    r = providers.error_reply(ingress or "openai", err)
    return Reply(status=r.status, headers=dict(r.headers), body=r.body)


def _drain_arrived(resp: Any, translator: Any, buf: bytearray) -> bool:
    """Translate what the provider already sent, without waiting for more; True when that completed the stream
    cleanly (terminal event seen, no error event)."""
    while not translator.done:
        try:
            data = resp.content.read_nowait()
        except Exception:  # a broken connection is the relay's to report, after the content so far
            return False
        if not data:
            return False
        buf += translator.feed(data)
    return translator.upstream_error is None


class Dispatcher:
    def __init__(self, live: LiveConfig, client: UpstreamClient, relay: Relay, settings: Settings) -> None:
        self.live = live
        self.client = client
        self.relay = relay
        self.settings = settings

    # ------------------------------------------------------------------------------------------------
    async def handle(self, *, method: str, path: str, host: str, headers: Any, body: bytes | None) -> Reply:
        """Serve one request; every failure comes back as a Reply in the caller's format."""
        try:
            return await self._handle(method=method, path=path, host=host, headers=headers, body=body)
        except GatewayError as err:
            return error_response(providers.ingress_for_path(path), err)
        except Exception:
            # A bug must not leak mitmproxy's HTML error page (nor a traceback) to the caller.
            log.exception("aigw: unexpected error while handling %s %s", method, path.split("?", 1)[0])
            return error_response(providers.ingress_for_path(path),
                                  GatewayError(500, "api_error", "Internal gateway error."))

    async def _handle(self, *, method: str, path: str, host: str, headers: Any, body: bytes | None) -> Reply:
        if body is None:
            raise GatewayError(400, "invalid_request", "The request body could not be decoded (Content-Encoding).")
        if len(body) > self.settings.max_body:
            raise GatewayError(413, "request_too_large",
                               f"Request body is larger than {self.settings.max_body} bytes.")
        snap = self.live.snapshot
        route = routing.resolve(snap, host=host, headers=headers, path=path, method=method,
                                base_domain=self.settings.base_domain)
        ingress = providers.ingress_for_path(path)
        upstream = route.upstream
        sticky_key = None
        if upstream is None:
            targets = [route.service]
            fail_open = False
            upstream_id = route.service.id
        else:
            sticky_key = self._sticky_key(upstream, headers, route)
            targets, fail_open = self.live.plan(upstream, sticky_key)
            upstream_id = upstream.id
            if not targets:
                raise GatewayError(503, "unavailable", "No target of this upstream is available.")

        translate = ingress is not None and any(getattr(t, "provider", None) for t in targets)
        canon = providers.parse_request(ingress, body, headers=headers) if translate else None

        failover = _failover_settings(upstream)
        retry_on = set(failover.retry_on)
        cap = len(targets)
        rule_cap = getattr(route.rule, "retry_attempts", None)
        if rule_cap:
            cap = min(cap, int(rule_cap))
        if failover.max_attempts:
            cap = min(cap, failover.max_attempts)
        deadline = time.monotonic() + (failover.total_timeout or float("inf"))

        policy = self.live.policy(upstream) if upstream is not None else None
        attempts: list[str] = []
        reasons: list[str] = []
        retry_afters: list[float] = []
        unsupported: GatewayError | None = None
        upstream_seconds = 0.0
        started = time.perf_counter()

        for target in targets[:cap]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reasons.append("timeout")
                break
            provider = getattr(target, "provider", None) if upstream is not None else None
            key = target_key(upstream_id, target.id)
            label = provider or "passthrough"
            if policy is not None:
                # The plan was made before earlier attempts awaited: a recovering target's single trial slot
                # may have been taken since. Fail-open plans try every target regardless.
                if attempts and not fail_open and not self.live.health.is_available(key, policy):
                    continue
                self.live.health.begin(key, policy)
            handed_off = False
            t_attempt = time.perf_counter()
            try:
                try:
                    outcome = await self._attempt(target, provider, canon, route, method, path, headers, body,
                                                  failover, remaining)
                except GatewayError as err:
                    if err.status != 400:
                        raise
                    # This target cannot do what was asked (e.g. n > 1 on Anthropic); another one may.
                    attempts.append(f"{label}:unsupported")
                    unsupported = unsupported or err
                    continue
                except Exception as exc:
                    # Whatever went wrong with this target is a failed attempt (next candidate, health), not a 500.
                    outcome = _broken_target(target, route, f"unexpected {type(exc).__name__}", exc)
                upstream_seconds += time.perf_counter() - t_attempt
                if outcome.kind == "failure":
                    code = str(outcome.status) if outcome.status else outcome.reason
                    attempts.append(f"{label}:{code}")
                    reasons.append(outcome.reason)
                    ra = _retry_after_seconds(outcome.retry_after)
                    if ra is not None:
                        retry_afters.append(ra)
                    if policy is not None:
                        self.live.health.failure(key, policy, self._describe(outcome),
                                                 retry_after_s=ra if outcome.reason == "429" else None,
                                                 health=outcome.reason not in ("401", "403"))
                    if TRIGGER_OF.get(outcome.reason, outcome.reason) in retry_on:
                        continue
                    # Not a failover trigger for this upstream: the caller gets the provider's answer.
                    return self._finish(self._error_passthrough(canon, provider, ingress, outcome), attempts,
                                        provider, target, fail_open, started, upstream_seconds)
                attempts.append(f"{label}:{outcome.status}")
                if sticky_key is not None and len(attempts) > 1:
                    self.live.balancer(upstream).served(sticky_key, target)
                if policy is not None and outcome.kind != "stream":
                    self.live.health.success(key, policy, outcome.ttfb)
                if outcome.kind == "stream":
                    reply = self._park(outcome, key, policy, provider, canon, ingress, deadline)
                    handed_off = True
                    return self._finish(reply, attempts, provider, target, fail_open, started, upstream_seconds)
                return self._finish(self._complete(outcome, canon, provider, ingress), attempts, provider, target,
                                    fail_open, started, upstream_seconds)
            finally:
                if policy is not None and not handed_off:
                    self.live.health.end(key)

        if unsupported is not None and not reasons:
            raise unsupported
        return self._annotate(error_response(ingress, self._exhausted(reasons, retry_afters, attempts)), attempts,
                              fail_open)

    # ------------------------------------------------------------------------------------------------
    def _sticky_key(self, upstream: Any, headers: Any, route: routing.Route) -> str | None:
        if upstream.algorithm != "sticky":
            return None
        sticky = getattr(upstream, "sticky", None)
        hash_on = getattr(sticky, "hash_on", None) or "api_key"
        if hash_on.startswith("header:"):
            return headers.get(hash_on.split(":", 1)[1].strip()) or None
        return getattr(route.key, "id", None)

    @staticmethod
    def _describe(outcome: Outcome) -> str:
        if outcome.error is not None:
            return f"{outcome.reason}: {outcome.error.message}"[:300]
        if outcome.status:
            return f"HTTP {outcome.status}"
        return outcome.reason

    @staticmethod
    def _exhausted(reasons: list[str], retry_afters: list[float], attempts: list[str]) -> GatewayError:
        chain = ",".join(attempts) or "none"
        if not reasons:
            return GatewayError(503, "unavailable", "No target available.")
        if all(r == "429" for r in reasons):
            wait = min(retry_afters) if retry_afters else 1.0
            return GatewayError(429, "rate_limit", f"Every target is rate-limited (attempts: {chain}).",
                                code="rate_limit_exceeded", retry_after=str(max(1, int(round(wait)))))
        if all(r == "timeout" for r in reasons):
            return GatewayError(504, "timeout", f"Every target timed out (attempts: {chain}).")
        return GatewayError(502, "api_error", f"Every target failed (attempts: {chain}).")

    async def _attempt(self, target: Any, provider: str | None, canon: Any, route: routing.Route, method: str,
                       path: str, headers: Any, body: bytes, failover: Any, remaining: float) -> Outcome:
        """One attempt, bounded as a whole (up to its commit point) by what is left of total_timeout."""
        try:
            async with asyncio.timeout(remaining):
                return await self._attempt_once(target, provider, canon, route, method, path, headers, body,
                                                failover, remaining)
        except TimeoutError:
            return Outcome("failure", reason="timeout", error=GatewayError(504, "timeout", "total_timeout reached"))

    async def _attempt_once(self, target: Any, provider: str | None, canon: Any, route: routing.Route, method: str,
                            path: str, headers: Any, body: bytes, failover: Any, remaining: float) -> Outcome:
        try:
            scheme, host, port = target_origin(target)
            target_path = getattr(target, "path", None)
            problem = path_problem(target_path) if target_path else None
            if problem:
                raise GatewayError(502, "api_error", f"target misconfigured: {problem}")
            if provider and canon is not None:
                model = routing.map_model(canon.model, target)
                spec = TargetSpec(provider=provider, model=model, path=target_path,
                                  credentials=getattr(target, "credentials", None),
                                  headers=getattr(target, "headers", None) or {},
                                  api_version=getattr(target, "api_version", None),
                                  max_tokens_default=getattr(target, "max_tokens_default", None))
                up = providers.build_upstream_request(canon, spec)
                req_method, req_path, req_headers, req_body, stream = (up.method, up.path, up.headers, up.body,
                                                                       up.stream)
            else:
                req_method = method
                # A provider target's `path` is its chat endpoint, not a base: other provider paths (models,
                # count_tokens, …) keep their own path.
                base = None if provider else target_path
                req_path = routing.forwarded_path(path, route.rule, base)
                req_headers = _passthrough_headers(headers, target)
                req_body = body
                stream = False
            netloc = f"[{host}]" if ":" in host and not host.startswith("[") else host  # IPv6 literal
            attempt = Attempt(method=req_method, url=f"{scheme}://{netloc}:{port}{req_path}", headers=req_headers,
                              body=req_body, stream=stream, connect_timeout=min(failover.connect_timeout, remaining),
                              headers_timeout=min(failover.headers_timeout, remaining),
                              first_token_timeout=min(failover.first_token_timeout, remaining),
                              idle_timeout=failover.idle_timeout)
        except GatewayError as err:
            if err.status == 400:
                raise  # the caller's request (e.g. its model) does not suit this target: the loop decides
            return _broken_target(target, route, err.message)
        t0 = time.perf_counter()
        try:
            resp = await self.client.send(attempt)
        except TimeoutError:
            return Outcome("failure", reason="timeout")
        except aiohttp.ClientError as exc:
            return Outcome("failure", reason="connect", error=GatewayError(502, "api_error", type(exc).__name__))
        except OSError as exc:
            return Outcome("failure", reason="connect", error=GatewayError(502, "api_error", type(exc).__name__))
        except Exception as exc:  # e.g. ValueError: a header or URL the HTTP client refuses to send
            return _broken_target(target, route, f"request refused by the HTTP client: {type(exc).__name__}")
        ttfb = time.perf_counter() - t0
        status = resp.status
        rheaders = response_headers(resp)
        is_sse = "text/event-stream" in rheaders.get("content-type", "")
        try:
            if status >= 400 or not is_sse or (provider and not stream):
                try:
                    data = await UpstreamClient.read_body(resp, attempt.idle_timeout, MAX_UPSTREAM_BODY)
                except TimeoutError:
                    return Outcome("failure", reason="timeout", status=0)
                except aiohttp.ClientError:
                    return Outcome("failure", reason="cut")
                finally:
                    resp.release()
                reason = classify_status(status)
                if reason:
                    return Outcome("failure", status=status, headers=rheaders, body=data, reason=reason,
                                   retry_after=rheaders.get("retry-after"), ttfb=ttfb)
                return Outcome("response", status=status, headers=rheaders, body=data, ttfb=ttfb)
            if not provider or canon is None:
                # Untranslated stream: it commits at the headers.
                return Outcome("stream", status=status, headers=rheaders, response=resp, ttfb=ttfb,
                               idle_timeout=attempt.idle_timeout)
            return await self._open_stream(resp, status, rheaders, canon, provider, attempt, ttfb)
        except BaseException:
            resp.close()
            raise

    async def _open_stream(self, resp: Any, status: int, rheaders: dict[str, str], canon: Any, provider: str,
                           attempt: Attempt, ttfb: float) -> Outcome:
        translator = providers.open_stream(canon, provider)
        sent_at = time.perf_counter() - ttfb  # the request went out here; a stream's TTFB is its first content
        buf = bytearray()
        eof = False
        deadline = time.monotonic() + attempt.first_token_timeout
        try:
            while not (translator.committed or translator.done or translator.upstream_error):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                async with asyncio.timeout(left):
                    chunk = await resp.content.readany()
                if not chunk:
                    eof = True
                    break
                buf += translator.feed(chunk)
        except TimeoutError:
            resp.close()
            return Outcome("failure", reason="timeout", error=GatewayError(504, "timeout", "no first token in time"))
        except aiohttp.ClientError:
            resp.close()
            return Outcome("failure", reason="cut", error=GatewayError(502, "api_error", "stream cut before content"))
        if translator.upstream_error is not None and not translator.committed:
            resp.close()
            err = translator.upstream_error
            reason = classify_status(err.status) or "5xx"
            return Outcome("failure", reason=reason, status=0, error=err, retry_after=err.retry_after)
        if translator.committed:
            ttfb = time.perf_counter() - sent_at
            if _drain_arrived(resp, translator, buf):
                # The provider had already sent the whole stream: it goes out in one piece, without the relay
                # hop. Nothing waits for it — every event is delivered as early as with the relay.
                resp.release()
                buf += translator.finish()
                return Outcome("response", status=status, headers={"content-type": "text/event-stream"},
                               body=bytes(buf), ttfb=ttfb, reason="stream_complete")
            return Outcome("stream", status=status, headers=rheaders, response=resp, translator=translator,
                           buffered=bytes(buf), ttfb=ttfb, idle_timeout=attempt.idle_timeout)
        # Ended before any content (an empty answer): deliver it whole — or fail over if it was cut.
        if not eof:
            try:
                rest = await UpstreamClient.read_body(resp, attempt.idle_timeout, MAX_UPSTREAM_BODY)
            except (TimeoutError, aiohttp.ClientError):
                rest = b""
            if rest:
                buf += translator.feed(rest)
        resp.release()
        tail = translator.finish()
        if not translator.done:
            return Outcome("failure", reason="cut", error=GatewayError(502, "api_error", "stream ended early"))
        buf += tail
        return Outcome("response", status=status, headers={"content-type": "text/event-stream"},
                       body=bytes(buf), ttfb=ttfb, reason="stream_complete")

    # ------------------------------------------------------------------------------------------------
    def _complete(self, outcome: Outcome, canon: Any, provider: str | None, ingress: str | None) -> Reply:
        if outcome.reason == "stream_complete":
            return Reply(status=200, headers={"content-type": "text/event-stream", "cache-control": "no-cache"},
                         body=outcome.body)
        if provider and canon is not None:
            r = providers.translate_response(canon, provider, outcome.status, outcome.headers, outcome.body)
            return Reply(status=r.status, headers=dict(r.headers), body=r.body)
        return Reply(status=outcome.status, headers=dict(outcome.headers), body=outcome.body)

    def _error_passthrough(self, canon: Any, provider: str | None, ingress: str | None, outcome: Outcome) -> Reply:
        if outcome.status and outcome.body is not None and outcome.status >= 400:
            return self._complete(outcome, canon, provider, ingress)
        return error_response(ingress, outcome.error or GatewayError(502, "api_error",
                                                                     f"Upstream failed: {outcome.reason}"))

    def _park(self, outcome: Outcome, key: str, policy: Any, provider: str | None, canon: Any,
              ingress: str | None, deadline: float = float("inf")) -> Reply:
        """Hand a committed stream to the relay. It stays bounded: `idle_timeout` counts from the last event
        the caller got (a trickle of bytes that never completes an event is idle), `total_timeout` from the
        request's start (`deadline`, monotonic); either ends it with an error event in the caller's format."""
        health = self.live.health
        resp, translator, idle = outcome.response, outcome.translator, outcome.idle_timeout
        finished = {"done": False}
        caller_gone = {"yes": False}

        def settle(ok: bool, why: str = "") -> None:
            if finished["done"]:
                return
            finished["done"] = True
            if policy is not None:
                if ok:
                    health.success(key, policy, outcome.ttfb)
                elif why:
                    health.failure(key, policy, why)
                health.end(key)

        async def pump(write: Callable) -> None:
            ok = False
            why = ""
            try:
                if outcome.buffered:
                    await write(outcome.buffered)
                progress = time.monotonic()  # when the caller last got something
                while True:
                    now = time.monotonic()
                    if now >= deadline:
                        why = "stream total timeout after commit"
                        if translator is not None:
                            await write(translator.abort("The answer took longer than the upstream's "
                                                         "total_timeout.", "timeout"))
                        return
                    if now - progress >= idle:
                        why = "stream idle timeout after commit"
                        if translator is not None:
                            await write(translator.abort("The provider stopped sending mid-stream.", "timeout"))
                        return
                    try:
                        async with asyncio.timeout(min(deadline, progress + idle) - now):
                            chunk = await resp.content.readany()
                    except TimeoutError:
                        continue  # the checks above say which bound was reached
                    except aiohttp.ClientError:
                        if caller_gone["yes"]:
                            ok = True  # we closed it: the caller hung up; the provider did nothing wrong
                            return
                        why = "stream cut after commit"
                        if translator is not None:
                            await write(translator.abort("The provider connection was lost mid-stream."))
                        return
                    if not chunk:
                        if translator is not None:
                            await write(translator.finish())
                            ok = translator.done and translator.upstream_error is None
                            if not ok:
                                why = "stream ended without its terminal event"
                        else:
                            ok = True
                        return
                    if translator is None:
                        await write(chunk)
                        progress = time.monotonic()
                        continue
                    out = translator.feed(chunk)
                    if out:
                        await write(out)
                        progress = time.monotonic()
                    if translator.done or translator.upstream_error is not None:
                        # Terminal or error event seen: nothing more is delivered, so stop reading now.
                        await write(translator.finish())
                        ok = translator.done and translator.upstream_error is None
                        if not ok:
                            why = f"stream error after commit: {translator.upstream_error.message}"[:300]
                        return
            except (ConnectionError, asyncio.CancelledError):
                ok = True  # the caller went away; the provider did nothing wrong
                raise
            finally:
                resp.close()
                settle(ok, why)

        def abandon() -> None:
            resp.close()
            settle(True)

        def caller_hung_up() -> None:
            # Stop reading (and paying for) a stream nobody will receive.
            caller_gone["yes"] = True
            resp.close()

        headers = {"content-type": "text/event-stream", "cache-control": "no-cache"}
        if translator is None:
            headers = {k: v for k, v in outcome.headers.items()}
        token = self.relay.park(Parked(status=outcome.status, headers=[], pump=pump, on_abandon=abandon))
        return Reply(status=outcome.status, headers=headers, relay_token=token, cancel=caller_hung_up)

    def _finish(self, reply: Reply, attempts: list[str], provider: str | None, target: Any, fail_open: bool,
                started: float, upstream_seconds: float) -> Reply:
        reply.provider = provider or "passthrough"
        reply.target_id = getattr(target, "id", None)
        overhead_ms = max(0.0, (time.perf_counter() - started - upstream_seconds) * 1000.0)
        reply.headers["X-Selected-Provider"] = reply.provider
        if reply.target_id:
            reply.headers["X-Selected-Target"] = str(reply.target_id)
        reply.headers["X-Gateway-Overhead-Ms"] = f"{overhead_ms:.2f}"
        return self._annotate(reply, attempts, fail_open)

    @staticmethod
    def _annotate(reply: Reply, attempts: list[str], fail_open: bool) -> Reply:
        """What every answer says about how it was obtained, served or not."""
        reply.attempts = attempts
        reply.fail_open = fail_open
        reply.headers["X-Gateway-Attempts"] = ",".join(attempts)
        if fail_open:
            reply.headers["X-Gateway-Fail-Open"] = "true"
        return reply
