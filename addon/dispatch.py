"""One gateway request from routing to answer: the candidates, the failover loop, the answer's headers.

The commit point is explicit: a non-stream answer commits when it is complete; a stream commits on its first
content (text or tool delta). Before it, any failure moves the request to the next candidate invisibly; after it,
a failure becomes an error event in the caller's protocol and a health failure — never a clean end.

What the request is (`RequestContext`: route, ingress, the caller's key, sticky key, parsed body, failover
settings, deadline) is worked out once; then each candidate gets one attempt (addon/attempt.py) under a health
lease (addon/stream.py), and a committed stream is parked at the relay (addon/relay.py) as a `RelayedStream`,
which then owns the lease. See docs/architecture.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

import providers
from addon import attempt, catalog, response_affinity, routing
from addon.attempt import Answer, AttemptRequest, Failure, Inbound, Opened, Reason
from addon.balancer import cheapest_first
from addon.health import HealthPolicy
from addon.limiter import LimitExceeded, Limiter, Ticket
from addon.live import LiveConfig
from addon.record import AttemptRecord, RequestRecord, TokenUsage
from addon.relay import Parked, Relay
from addon.stream import Lease, RelayedStream
from addon.tally import Tally, exhausted, retry_after_seconds
from addon.targets import endpoint_target
from addon.upstream import UpstreamClient
from addon.wire import WireCapture
from providers import GatewayError
from store.health_file import target_key
from store.usage import cost as usage_cost
from store.models import ApiKey, Failover, Target, Upstream

log = logging.getLogger("aigw.dispatch")

# Called once per finished request with its record (addon/record.py); must be cheap and must not raise.
Observer = Callable[[RequestRecord], None]

# Endpoint services (one fixed target) have no upstream settings: they get the defaults.
DEFAULT_FAILOVER = Failover()


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
    stream: RelayedStream | None = None  # a committed stream, until it is parked
    record: RequestRecord | None = None  # finished by handle() — or, for a relayed stream, when it ends


@dataclass(slots=True)
class Settings:
    base_domain: str = ""
    max_body: int = 10 * 1024 * 1024
    attempt_flows: bool = False  # capture every attempt's wire traffic (addon/wire.py)


@dataclass(slots=True)  # not frozen: built per request (a frozen __init__ costs ~6x)
class RequestContext:
    """Everything about one request the loop reads, computed once."""
    ingress: str | None           # the caller's format ("openai", "anthropic"), None for other paths
    route: routing.Route
    inbound: Inbound              # what every attempt sends from: method, path, headers, body, parsed body, key
    scope: str                    # upstream id (or endpoint service id): the first half of every health key
    targets: list[Target]         # the plan, in attempt order
    fail_open: bool               # every target was out: the plan tries them all regardless of health
    policy: HealthPolicy | None   # None: an endpoint service, no health
    sticky_key: str | None
    failover: Failover
    deadline: float               # monotonic end of total_timeout
    record: RequestRecord         # what the request came to, filled as it goes
    expected: tuple[int, int] | None = None  # estimated (input, output) tokens, for cost ordering


def sticky_key(upstream: Upstream, headers: Mapping[str, str], key: ApiKey) -> str | None:
    if upstream.algorithm != "sticky":
        return None
    hash_on = upstream.sticky.hash_on if upstream.sticky else "api_key"
    if hash_on.startswith("header:"):
        return headers.get(hash_on.split(":", 1)[1].strip()) or None
    return key.id


def expected_tokens(body: bytes) -> tuple[int, int]:
    """A cheap estimate of a request's (input, output) tokens for cost ordering: about four bytes of JSON per
    input token; the output is assumed half the input, between 64 and 1000."""
    tokens_in = len(body) // 4 + 1
    return tokens_in, min(1000, max(64, tokens_in // 2))


def error_response(ingress: str | None, err: GatewayError) -> Reply:
    """A gateway error in the caller's format (OpenAI when the path names neither)."""
    r = providers.error_reply(ingress, err)
    return Reply(status=r.status, headers=dict(r.headers), body=r.body)


def _ignore(record: RequestRecord) -> None:
    pass


class Dispatcher:
    def __init__(self, live: LiveConfig, client: UpstreamClient, relay: Relay, settings: Settings,
                 observe: Observer = _ignore, limiter: Limiter | None = None) -> None:
        self.live = live
        self.client = client
        self.relay = relay
        self.settings = settings
        self.observe = observe
        self.limiter = limiter  # None: no limits at all (unit tests of the failover loop)
        self.catalog = catalog.Catalog()  # GET /v1/models, answered by the gateway itself
        self.routes = routing.RouteCache()  # what (Host, key, path, method) resolves to, per snapshot

    async def handle(self, *, method: str, path: str, host: str, headers: Mapping[str, str],
                     body: bytes | None, request_id: str = "") -> Reply:
        """Serve one request; every failure comes back as a Reply in the caller's format. Its record goes to
        the observer when the answer is complete — for a relayed stream, when the stream ends."""
        ingress = providers.ingress_for_path(path)
        listing = catalog.models_request(method, path, headers)
        if listing is not None:
            ingress = listing.ingress
        record = RequestRecord(request_id=request_id, method=method, path=path.split("?", 1)[0], ingress=ingress)
        try:
            if listing is not None:
                reply = self._models(listing, host, headers, record)
            else:
                reply = await self._serve(await self._context(ingress, method, path, host, headers, body, record))
        except GatewayError as err:
            reply = error_response(ingress, err)
            record.error_class = err.kind
            if isinstance(err, LimitExceeded):
                reply.headers.update(err.headers)
        except Exception:
            # A bug must not leak mitmproxy's HTML error page (nor a traceback) to the caller.
            log.exception("aigw: unexpected error while handling %s %s", method, record.path)
            reply = error_response(ingress, GatewayError(500, "api_error", "Internal gateway error."))
            record.error_class = "api_error"
        record.status = reply.status
        reply.record = record
        if reply.stream is None:
            self.finished(record)
        return reply

    def finished(self, record: RequestRecord) -> None:
        """Close a record and hand it to the observer, which must never break the request path."""
        record.duration_s = time.perf_counter() - record.started_mono
        if record.pricing is not None and record.usage.reported:
            record.cost = usage_cost(record.usage, record.pricing)
        if record.ticket is not None and self.limiter is not None:
            usage = record.usage
            self.limiter.settle(record.ticket, usage.input_tokens + usage.output_tokens, record.cost)
        try:
            self.observe(record)
        except Exception:
            log.exception("aigw: a request observer failed")

    async def _context(self, ingress: str | None, method: str, path: str, host: str, headers: Mapping[str, str],
                       body: bytes | None, record: RequestRecord) -> RequestContext:
        if body is None:
            raise GatewayError(400, "invalid_request", "The request body could not be decoded (Content-Encoding).")
        if len(body) > self.settings.max_body:
            raise GatewayError(413, "request_too_large",
                               f"Request body is larger than {self.settings.max_body} bytes.")
        route = self.routes.resolve(self.live.snapshot, host=host, headers=headers, path=path, method=method,
                                    base_domain=self.settings.base_domain)
        upstream = route.upstream
        record.gateway_id, record.gateway = route.gateway.id, route.gateway.name
        record.rule_id, record.service_id = route.rule.id, route.service.id
        record.key_id, record.key_prefix = route.key.id, route.key.key_prefix
        if upstream is not None:
            record.upstream_id, record.upstream = upstream.id, upstream.name
        expected = None
        if upstream is None:
            targets, fail_open = [endpoint_target(route.service)], False
            policy, sticky, scope = None, None, route.service.id
        else:
            sticky = sticky_key(upstream, headers, route.key)
            if sticky is not None:  # a sticky session may hold a pin another process made (aigw_redis)
                await self.live.recall_pin(upstream, sticky)
            if upstream.algorithm == "lowest-cost" or self.limiter is not None and self._budgeted(route):
                expected = expected_tokens(body)
            targets, fail_open = self.live.plan(upstream, sticky, expected)
            if not targets:
                raise GatewayError(503, "unavailable", "No target of this upstream is available.")
            policy, scope = self.live.policy(upstream), upstream.id
        providers_planned = any(t.provider for t in targets)
        translate = ingress is not None and providers_planned
        canon = providers.parse_request(ingress, body, headers=headers) if translate else None
        embed = providers.parse_embeddings_request(body) if (
            ingress is None and providers_planned and method == "POST" and providers.is_embeddings_path(path)) else None
        if canon is not None:
            record.requested_model, record.stream = canon.model, canon.stream
            canon.expose_reasoning = route.gateway.reasoning_content
        elif embed is not None:
            record.requested_model = embed.model
        # Responses API: a request naming a stored response goes to the target holding it (addon/response_affinity.py).
        targets = response_affinity.restrict(targets, upstream=upstream, scope=scope, method=method, path=path,
                                             canon=canon, health=self.live.health)
        targets = routing.for_model(targets, record.requested_model)  # a mixed upstream: the targets of the model
        failover = upstream.failover if upstream is not None else DEFAULT_FAILOVER
        inbound = Inbound(method=method, path=path, headers=headers, body=body, rule=route.rule, canon=canon,
                          gateway_key=route.presented_key, embed=embed)
        return RequestContext(ingress=ingress, route=route, inbound=inbound, scope=scope, targets=targets,
                              fail_open=fail_open, policy=policy, sticky_key=sticky, failover=failover,
                              deadline=time.monotonic() + (failover.total_timeout or float("inf")), record=record,
                              expected=expected)

    def _models(self, listing: catalog.ModelsRequest, host: str, headers: Mapping[str, str],
                record: RequestRecord) -> Reply:
        """GET /v1/models[/{id}] for an authenticated caller, whatever its gateway's rules match."""
        snapshot = self.live.snapshot
        caller = routing.authenticate(snapshot, host=host, headers=headers, base_domain=self.settings.base_domain)
        record.gateway_id, record.gateway = caller.gateway.id, caller.gateway.name
        record.key_id, record.key_prefix = caller.key.id, caller.key.key_prefix
        answer = self.catalog.answer(snapshot, caller.gateway, listing)
        return Reply(status=answer.status, headers=dict(answer.headers), body=answer.body)

    def _budgeted(self, route: routing.Route) -> bool:
        """Whether the key may switch to cheapest-first when its budget runs low."""
        lim = self.limiter.key_limits(route.gateway, route.key) if self.limiter is not None else None
        return lim is not None and lim.budget is not None and lim.budget.prefer_lowest_cost_below is not None

    async def _serve(self, ctx: RequestContext) -> Reply:
        """The failover loop: candidates in plan order, within max_attempts, the rule's retry_attempts and
        total_timeout."""
        limiter, targets = self.limiter, ctx.targets
        if limiter is not None:
            ticket = ctx.record.ticket = await limiter.admit(ctx.route.gateway, ctx.route.key, ctx.record.request_id)
            if ticket is not None and ticket.cheapest_first:
                targets = cheapest_first(targets, ctx.expected)
        cap = len(targets)
        if ctx.route.rule.retry_attempts:
            cap = min(cap, ctx.route.rule.retry_attempts)
        if ctx.failover.max_attempts:
            cap = min(cap, ctx.failover.max_attempts)
        tally = Tally()
        for target in targets[:cap]:
            remaining = ctx.deadline - time.monotonic()
            if remaining <= 0:
                tally.reasons.append(Reason.TIMEOUT)
                break
            key = target_key(ctx.scope, target.id)
            # Before the first attempt nothing awaited since the plan was made: only later candidates need the
            # check again (see Lease.take).
            lease = Lease.take(self.live.health, key, ctx.policy,
                               recheck=bool(tally.attempts) and not ctx.fail_open)
            if lease is None:
                continue
            with lease:
                if limiter is not None and await self._limited(limiter, key, target, tally, ctx.record):
                    continue
                wire = WireCapture() if self.settings.attempt_flows else None
                reply = await self._try(ctx, AttemptRequest(target, key, ctx.inbound, ctx.failover, remaining, wire),
                                        lease, tally)
            if reply is not None:
                return self._finish(reply, tally, target, ctx)
        if tally.unsupported is not None and not tally.reasons:
            raise tally.unsupported
        err = exhausted(tally.reasons, tally.retry_afters, tally.attempts)
        ctx.record.error_class, ctx.record.fail_open = err.kind, ctx.fail_open
        return self._annotate(error_response(ctx.ingress, err), tally.attempts, ctx.fail_open, ctx.record.ticket)

    @staticmethod
    async def _limited(limiter: Limiter, key: str, target: Target, tally: Tally, record: RequestRecord) -> bool:
        """Skip a target out of quota (its configured limits, or what its provider said) like an open circuit:
        no request is sent and its health is untouched."""
        wait = await limiter.take_target(key, target)
        if wait is None:
            return False
        label = target.provider or "passthrough"
        tally.attempts.append(f"{label}:limited")
        tally.reasons.append(Reason.RATE_LIMITED)
        tally.retry_afters.append(wait)
        record.attempts.append(AttemptRecord(target.id, label, "limited", None, 0.0))
        return True

    async def _try(self, ctx: RequestContext, req: AttemptRequest, lease: Lease, tally: Tally) -> Reply | None:
        """One candidate: the caller's reply, or None to move on to the next."""
        label = req.target.provider or "passthrough"
        attempts = ctx.record.attempts
        t_attempt = time.perf_counter()
        try:
            outcome = await attempt.run(req, self.client)
        except GatewayError as err:
            if err.status != 400:
                raise
            # This target cannot do what was asked (e.g. n > 1 on Anthropic); another one may.
            tally.attempts.append(f"{label}:unsupported")
            tally.unsupported = tally.unsupported or err
            attempts.append(AttemptRecord(req.target.id, label, "unsupported", None, 0.0, req.wire))
            return None
        spent = time.perf_counter() - t_attempt
        ctx.record.upstream_s += spent
        if self.limiter is not None:
            self.limiter.learn(req.key, outcome.headers)
        if isinstance(outcome, Failure):
            tally.attempts.append(f"{label}:{outcome.code}")
            moves_on = outcome.reason.trigger in ctx.failover.retry_on
            attempts.append(AttemptRecord(req.target.id, label, outcome.reason.value if moves_on else "error",
                                          outcome.status or None, spent, req.wire))
            tally.reasons.append(outcome.reason)
            ra = retry_after_seconds(outcome.retry_after)
            if ra is not None:
                tally.retry_afters.append(ra)
            lease.failure(outcome.describe(), retry_after_s=ra if outcome.reason == Reason.RATE_LIMITED else None,
                          health=outcome.reason.counts_for_health)
            if moves_on:
                return None
            # Not a failover trigger for this upstream: the caller gets the provider's answer.
            return self._failed(ctx, req.target, outcome)
        tally.attempts.append(f"{label}:{outcome.status}")
        attempts.append(AttemptRecord(req.target.id, label, "ok", outcome.status, spent, req.wire))
        response_affinity.answered(ctx.inbound, req.key, req.target, outcome)  # Responses API: who holds the id
        if ctx.sticky_key is not None and len(tally.attempts) > 1:
            # The pinned target was passed over: pin the session to the one that served.
            self.live.balancer(ctx.route.upstream).served(ctx.sticky_key, req.target)
        if isinstance(outcome, Opened):
            ctx.record.stream = True
            stream = RelayedStream(outcome, lease.transfer(), ctx.deadline, ctx.record, self.finished)
            return Reply(status=stream.status, headers=stream.headers, stream=stream)
        lease.success(outcome.ttfb)
        return self._answer(ctx, req.target, outcome)

    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def _answer(ctx: RequestContext, target: Target, outcome: Answer | Failure) -> Reply:
        """A complete answer (or a provider's error answer) in the caller's format."""
        record = ctx.record
        if isinstance(outcome, Answer) and outcome.events:
            record.usage, record.served_model = TokenUsage.of(outcome.usage), outcome.model
            # The whole stream had arrived at its commit point: its first token leaves with the rest, now.
            record.ttft_s = time.perf_counter() - record.started_mono
            return Reply(status=200, headers={"content-type": "text/event-stream", "cache-control": "no-cache"},
                         body=outcome.body)
        canon, embed = ctx.inbound.canon, ctx.inbound.embed
        if target.provider and embed is not None:
            model = routing.map_model(embed.model, target)
            r = providers.translate_embeddings_response(embed, target.provider, model, outcome.status,
                                                        outcome.headers, outcome.body)
            record.usage, record.served_model = TokenUsage.of(r.usage), r.model or model
            return Reply(status=r.status, headers=dict(r.headers), body=r.body)
        if target.provider and canon is not None:
            r = providers.translate_response(canon, target.provider, outcome.status, outcome.headers, outcome.body)
            record.usage = TokenUsage.of(r.usage)
            record.served_model = r.model or routing.map_model(canon.model, target)
            return Reply(status=r.status, headers=dict(r.headers), body=r.body)
        if target.provider and outcome.status < 300:  # an untranslated provider path (embeddings, models, ...)
            record.usage = TokenUsage.of(providers.usage_from_body(target.provider, outcome.body))
        return Reply(status=outcome.status, headers=dict(outcome.headers), body=outcome.body)

    def _failed(self, ctx: RequestContext, target: Target, outcome: Failure) -> Reply:
        if outcome.status >= 400:
            return self._answer(ctx, target, outcome)
        return error_response(ctx.ingress, outcome.error or GatewayError(502, "api_error",
                                                                         f"Upstream failed: {outcome.reason}"))

    def _finish(self, reply: Reply, tally: Tally, target: Target, ctx: RequestContext) -> Reply:
        fail_open = ctx.fail_open
        reply.provider = target.provider or "passthrough"
        reply.target_id = target.id
        record = ctx.record
        record.provider, record.target_id, record.fail_open = reply.provider, target.id, fail_open
        record.pricing = target.pricing
        if target.limits is not None and target.limits.tokens is not None:
            # The target's token window is debited with what this answer used, when it ends.
            ticket = record.ticket = record.ticket or Ticket()
            ticket.target_key, ticket.target_tokens = target_key(ctx.scope, target.id), target.limits.tokens
        # The time so far minus the time spent waiting on providers (the record's overhead, up to now).
        overhead_ms = max(0.0, (time.perf_counter() - record.started_mono - record.upstream_s) * 1000.0)
        reply.headers["X-Selected-Provider"] = reply.provider
        if reply.target_id:
            reply.headers["X-Selected-Target"] = str(reply.target_id)
        reply.headers["X-Gateway-Overhead-Ms"] = f"{overhead_ms:.2f}"
        self._annotate(reply, tally.attempts, fail_open, record.ticket)
        if reply.stream is not None:
            # Parked with its final status and headers: the relay answers mitmproxy with exactly these.
            stream = reply.stream
            reply.relay_token = self.relay.park(Parked(status=stream.status, headers=list(reply.headers.items()),
                                                       pump=stream.pump, on_abandon=stream.abandon))
            reply.cancel = stream.caller_hung_up
        return reply

    @staticmethod
    def _annotate(reply: Reply, attempts: list[str], fail_open: bool, ticket: Ticket | None = None) -> Reply:
        """What every answer says about how it was obtained, served or not (and, for a limited key, what is left
        of its limits)."""
        if ticket is not None:
            reply.headers.update(ticket.answer_headers())
        reply.attempts = attempts
        reply.fail_open = fail_open
        reply.headers["X-Gateway-Attempts"] = ",".join(attempts)
        if fail_open:
            reply.headers["X-Gateway-Fail-Open"] = "true"
        return reply
