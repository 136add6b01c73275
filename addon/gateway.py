"""The mitmproxy addon: options and thin hooks. The work happens in dispatch.Dispatcher.

Loadable three ways: `mitmdump -s addon/entry.py …`, `mitmweb -s addon/entry.py …` and `aigw up` (programmatic).

A committed stream reaches the caller through the loopback relay (addon/relay.py), which answers with the real
status line and headers. The flow's request must still be swapped for the relay hop while that happens:
mitmproxy opens the server connection to the host and port that `flow.request` names (there is no other way to
send one flow elsewhere), and a response set by a hook is always sent in one piece, never streamed. The caller's
request is kept aside (`_callers`, not `flow.metadata`, which a saved flow would carry) and put back when the
relay's response headers arrive.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os

from mitmproxy import ctx, exceptions, http
from mitmproxy.utils import human
from mitmproxy.utils.asyncio_utils import create_task

import providers
from addon.dispatch import Dispatcher, Settings
from addon.bodies import decode_body
from addon.ingress import Ingress
from addon import capacity, options, wire
from addon.accesslog import AccessLog
from addon.answers import make_response
from addon.metrics import Metrics, SnapshotModels
from addon.metrics_server import MetricsServer, parse_listen
from addon.limit_store import LimitStore, mask_url
from addon.limiter import Limiter
from addon.live import LiveConfig
from addon.record import RequestRecord
from addon.redaction import caller_view, redact
from addon.probes import Prober
from addon.shared_state import SharedState, process_identity
from addon.relay import Relay
from addon.upstream import UpstreamClient
from store.usage import UsageBook, usage_path_for

log = logging.getLogger("aigw")



def _spawn(coro, *, name: str) -> asyncio.Task:
    return create_task(coro, name=name, keep_ref=True)


def _close_later(store: LimitStore) -> None:
    """Close a replaced limit store's connections, when there is a loop to do it on."""
    try:
        asyncio.get_running_loop().create_task(store.close())
    except RuntimeError:
        pass


class GatewayAddon:
    def __init__(self) -> None:
        self.live: LiveConfig | None = None
        self.relay = Relay()
        self.client = UpstreamClient()
        self.dispatcher: Dispatcher | None = None
        self.limiter: Limiter | None = None  # keys' and targets' limits (addon/limiter.py)
        self.shared: SharedState | None = None  # circuits and sticky pins shared over aigw_redis
        self._started = False
        self._prober: asyncio.Task | None = None
        # Relayed streams in progress: flow id → (client connection id, stop function), and by client connection.
        self._streams: dict[str, tuple[str, object]] = {}
        self._streams_of: dict[str, set[str]] = {}
        # The caller's request of a flow pointed at the relay, by flow id, until the relay's answer arrives.
        self._callers: dict[str, http.Request] = {}
        # What redact() masked at requestheaders, by flow id, until the dispatcher has used it (never in the flow).
        self._concealed: dict[str, dict] = {}
        self.ingress = Ingress()
        self._watchdog: asyncio.Task | None = None
        # Client flows whose attempt flows are still to come (aigw_attempt_flows), by flow id.
        self._parents: dict[str, http.HTTPFlow] = {}
        self.metrics = Metrics(models=SnapshotModels(lambda: self.live.snapshot if self.live else None))
        self.metrics.watch_health(lambda: self.live)
        self._metrics_server: MetricsServer | None = None
        self.access_log: AccessLog | None = None
        self.usage: UsageBook | None = None  # tokens and cost by day, key, target and model (store/usage.py)
        self._metrics_listen: tuple[str, int] | None = None

    def _observe(self, record: RequestRecord) -> None:
        """A finished request (addon/record.py): metrics, the access log, attempt flows (when on)."""
        self.metrics.request_finished()
        self.metrics.observe(record)
        parent = self._parents.pop(record.request_id, None)
        captures = [a.wire for a in record.attempts if a.wire is not None]
        if captures:
            for a in record.attempts:
                a.wire = None  # the access log's queue must not hold the captured bodies
            _spawn(wire.publish(parent, record.request_id, captures), name="aigw-attempt-flows")
        if self.usage is not None:
            self.usage.add(record)
        if self.access_log is not None:
            self.access_log.write(record)

    # -- lifecycle (sync hooks; docs/architecture.md) --------------------------------------------------------------
    def load(self, loader) -> None:
        options.register(loader)

    def configure(self, updated: set[str]) -> None:
        """React to the options that changed (mitmproxy calls this at start with every option, then per change)."""
        opts = ctx.options
        if updated & options.LIMIT_OPTIONS:
            self.ingress.limits = options.limits(opts)
        if updated & {"aigw_max_body", "body_size_limit"}:
            # mitmproxy buffers a request body before the request hook: it must stop reading at aigw_max_body
            # (a chunked body has no Content-Length to refuse early). The addon answers in the caller's format.
            try:
                own_limit = human.parse_size(opts.body_size_limit)
            except ValueError:
                own_limit = None
            if own_limit is None or own_limit > opts.aigw_max_body:
                opts.body_size_limit = str(opts.aigw_max_body)
        if updated & {"aigw_data", "aigw_config", "aigw_worker"}:
            path, config, worker = os.path.abspath(opts.aigw_data), options.config_file(opts), options.worker_id(opts)
            if (self.live is None or path != self.live.data_path or config != self.live.config_path
                    or worker != self.live.worker):
                if self.live is not None:
                    self.live.stop()
                if self.usage is not None:
                    self.usage.stop()
                self.live = LiveConfig(path, config_path=config, worker=worker)
                self.usage = UsageBook(usage_path_for(path, worker))
                if self._started:
                    self.live.start(_spawn)
                    self.usage.start()
        if updated & ({"aigw_data", "aigw_config", "aigw_worker"} | options.LIMITER_OPTIONS):
            self._set_limiter(options.limiter_settings(opts))
        if updated & ({"aigw_data", "aigw_config", "aigw_worker", "aigw_base_domain", "aigw_max_body",
                       "aigw_attempt_flows", "save_stream_file"}
                      | options.LIMITER_OPTIONS):
            settings = Settings(base_domain=opts.aigw_base_domain.strip(), max_body=opts.aigw_max_body,
                                attempt_flows=options.attempt_flows(opts))
            self.dispatcher = Dispatcher(self.live, self.client, self.relay, settings, self._observe, self.limiter)
        if "aigw_metrics_listen" in updated:
            try:
                listen = parse_listen(opts.aigw_metrics_listen)
            except ValueError as err:
                raise exceptions.OptionsError(f"aigw_metrics_listen: {err}") from None
            if listen is not None and listen[1] and listen[1] == opts.listen_port:
                raise exceptions.OptionsError("aigw_metrics_listen must not be the proxy port: callers would read it")
            self._metrics_listen = listen
            if self._started:
                self._start_metrics()
        if updated & {"aigw_access_log", "aigw_log_bodies"}:
            if self.access_log is not None:
                self.access_log.close()
                self.access_log = None
            if opts.aigw_access_log.strip():
                try:
                    self.access_log = AccessLog(opts.aigw_access_log.strip(), include_bodies=opts.aigw_log_bodies)
                except OSError as err:
                    raise exceptions.OptionsError(f"aigw_access_log: {err}") from None
                self.metrics.watch_access_log(self.access_log)
        if "keep_host_header" in updated and not opts.keep_host_header:
            # In reverse mode mitmproxy rewrites Host to the placeholder target before any hook runs; the gateway
            # needs the caller's Host (it names the gateway) and never forwards it, so keep it.
            opts.keep_host_header = True

    def _set_limiter(self, settings: options.LimiterSettings) -> None:
        """Limits kept in this process's memory, or in the Redis every proxy shares (a new store: counters in
        memory start again; Redis keeps them)."""
        old = self.limiter
        store = LimitStore(settings.redis, timeout=settings.timeout, on_error=self.metrics.limit_storage_error)
        self.limiter = Limiter(store, self.live.quotas, on_error=settings.on_error, denied=self.metrics.limit_denied)
        self._set_shared(store)
        if old is not None:
            _close_later(old.store)
        if settings.redis and self._started:
            _spawn(self._check_limit_storage(), name="aigw-limit-storage-check")

    def _set_shared(self, store: LimitStore) -> None:
        """Circuit transitions and sticky pins shared with the other proxy processes over the limit store's Redis
        connection pool (addon/shared_state.py), while aigw_redis is set."""
        if self.shared is not None:
            self.shared.stop()
            self.shared = None
        if self.live is None:
            return
        self.live.shared = None
        if store.client is None:
            return
        self.shared = SharedState(store.client, self.live.health, timeout=store.timeout, url=store.url or "",
                                  identity=process_identity(self.live.worker), known=self.live.configured,
                                  on_error=self.metrics.shared_state_error)
        self.live.shared = self.shared
        if self._started:
            self.shared.start(_spawn)

    async def _check_limit_storage(self) -> None:
        store = self.limiter.store if self.limiter is not None else None
        if store is not None and store.shared:
            if await store.check():
                log.info("aigw: limits shared through %s", mask_url(store.url or ""))

    def running(self) -> None:
        # Open-files limit, accept queues of mitmproxy's listening sockets: a burst of thousands of streams.
        capacity.install(ctx.master)
        if not self._started and self.live is not None:
            self._started = True
            self.live.start(_spawn)
            if self.usage is not None:
                self.usage.start()
            prober = Prober(lambda: self.live, self.client)
            self._prober = _spawn(prober.run(), name="aigw-active-probes")
            self._watchdog = _spawn(self.ingress.run_watchdog(), name="aigw-client-watchdog")
            self._start_metrics()
            _spawn(self._check_limit_storage(), name="aigw-limit-storage-check")
            if self.shared is not None:
                self.shared.start(_spawn)
            # What exists once the proxy runs (mitmproxy, the addon, the first snapshot) lives as long as the
            # process: kept out of the cyclic collector, whose full passes would otherwise walk it again and again
            # (~20 % of the time the collector takes under load).
            gc.freeze()

    def _ready(self) -> bool:
        """For /readyz: the proxy runs, with its configuration loaded (an empty store is a configuration)."""
        return self._started and self.live is not None

    def _start_metrics(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None
        if self._metrics_listen is None:
            return
        host, port = self._metrics_listen
        server = MetricsServer(host, port, self.metrics, self._ready)
        try:
            bound = server.start()
        except OSError as err:  # the proxy keeps serving without metrics; say so once
            log.warning("aigw: metrics listener not started on %s:%s: %s", host, port, err)
            return
        self._metrics_server = server
        log.info("aigw: metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, bound)

    def done(self) -> None:
        if self.shared is not None:
            self.shared.stop()
        if self.live is not None:
            self.live.stop()
        self._started = False
        if self._prober is not None:
            self._prober.cancel()
            self._prober = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.ingress.stop()
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None
        if self.access_log is not None:
            self.access_log.close()
            self.access_log = None
        if self.usage is not None:
            self.usage.stop()  # the last counts, fsynced: a clean stop loses nothing
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.create_task(self.relay.stop())
        loop.create_task(self.client.close())
        if self.limiter is not None:
            loop.create_task(self.limiter.store.close())

    # -- hooks ----------------------------------------------------------------------------------------------
    def client_connected(self, client) -> None:
        self.ingress.client_connected(client)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if wire.is_attempt_flow(flow):  # an upstream attempt shown as a flow (addon/wire.py)
            return
        # Header limits and a declared body over aigw_max_body: refused before the body is read.
        self.ingress.requestheaders(flow)
        # Masked now: a flow mitmproxy ends before the request hook (malformed framing, a client gone) is saved
        # as it stands. The dispatcher gets the real values back (request hook).
        original = redact(flow)
        if original and flow.response is None:
            self._concealed[flow.id] = original

    async def request(self, flow: http.HTTPFlow) -> None:
        if wire.is_attempt_flow(flow):  # an upstream attempt shown as a flow (addon/wire.py)
            return
        self.ingress.request(flow)
        if flow.response is not None or flow.error is not None or self.dispatcher is None:
            return
        # The one place the relay starts: at the first request (then a check), before any stream is parked.
        relay_port = await self.relay.start()
        req = flow.request
        try:
            # Decoded (Content-Encoding) incrementally, never past aigw_max_body: 413/400 in the caller's format.
            body = decode_body(req.raw_content or b"", req.headers.get("content-encoding"),
                               self.ingress.limits.max_body)
        except providers.GatewayError as err:
            self._concealed.pop(flow.id, None)
            reply = providers.error_reply(providers.ingress_for_path(req.path), err)
            flow.response = make_response(reply.status, reply.body, reply.headers)
            return
        # The flow stays masked (requestheaders): the dispatcher gets the caller's real key headers and path.
        path, headers = caller_view(req, self._concealed.pop(flow.id, None))
        if self.dispatcher.settings.attempt_flows:
            self._parents[flow.id] = flow
        self.metrics.request_started()
        reply = await self.dispatcher.handle(method=req.method, path=path, host=req.host_header or req.host,
                                             headers=headers, body=body, request_id=flow.id)
        flow.metadata["aigw"] = {"provider": reply.provider, "target": reply.target_id,
                                 "attempts": reply.attempts, "fail_open": reply.fail_open}
        flow.comment = f"aigw: {reply.provider or '-'} target={reply.target_id or '-'} " \
                       f"attempts={','.join(reply.attempts) or '-'}"
        if len(reply.attempts) > 1 or reply.fail_open:
            flow.marked = ":warning:"
        if reply.relay_token is None:
            flow.response = make_response(reply.status, reply.body, reply.headers)
            return
        if reply.cancel is not None:
            self._streams[flow.id] = (flow.client_conn.id, reply.cancel)
            self._streams_of.setdefault(flow.client_conn.id, set()).add(flow.id)
        # Stream: mitmproxy streams only what a server sends, so the flow goes to the relay, which answers with
        # the reply's status and headers. The request mitmproxy sends there is a copy; the caller's is put back
        # once the relay's answer arrived (responseheaders), so mitmweb shows what the caller sent.
        self._callers[flow.id] = req
        hop = flow.request = req.copy()
        hop.method, hop.scheme, hop.host, hop.port = "GET", "http", "127.0.0.1", relay_port
        hop.path = "/" + reply.relay_token
        hop.content = b""

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if wire.is_attempt_flow(flow):  # an upstream attempt shown as a flow (addon/wire.py)
            return
        if flow.response is None:
            return
        caller = self._callers.pop(flow.id, None)
        if caller is not None:  # the relay's answer to a relayed stream: already the caller's status and headers
            flow.response.stream = True
            flow.request = caller

    def response(self, flow: http.HTTPFlow) -> None:
        if wire.is_attempt_flow(flow):  # an upstream attempt shown as a flow (addon/wire.py)
            return
        self._stream_ended(flow)
        self._concealed.pop(flow.id, None)
        self._callers.pop(flow.id, None)
        self.ingress.response(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        if wire.is_attempt_flow(flow):  # an upstream attempt shown as a flow (addon/wire.py)
            return
        stream = self._stream_ended(flow)
        if stream is not None:
            stream[1]()
        self._concealed.pop(flow.id, None)
        caller = self._callers.pop(flow.id, None)
        if caller is not None:  # the relay never answered: the flow shows what the caller sent
            flow.request = caller
        self.ingress.error(flow)  # a chunked body past aigw_max_body: 413 in the caller's format

    def client_disconnected(self, client) -> None:
        self.ingress.client_disconnected(client)
        # mitmproxy may keep reading a relayed stream after its caller left; stop it at the source.
        for flow_id in self._streams_of.pop(client.id, ()):
            stream = self._streams.pop(flow_id, None)
            if stream is not None:
                stream[1]()

    def _stream_ended(self, flow: http.HTTPFlow) -> tuple[str, object] | None:
        """Forget a relayed stream (its response or error arrived); what was kept for it, if anything."""
        stream = self._streams.pop(flow.id, None)
        if stream is not None:
            flows = self._streams_of.get(stream[0])
            if flows is not None:
                flows.discard(flow.id)
                if not flows:
                    del self._streams_of[stream[0]]
        return stream
