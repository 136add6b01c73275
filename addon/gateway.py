"""The mitmproxy addon: options and thin hooks. The work happens in dispatch.Dispatcher.

Loadable three ways: `mitmdump -s addon/entry.py …`, `mitmweb -s addon/entry.py …` and `aigw up` (programmatic).
"""

from __future__ import annotations

import asyncio
import logging
import os

from mitmproxy import ctx, exceptions, http
from mitmproxy.utils.asyncio_utils import create_task

from addon.dispatch import Dispatcher, Settings, target_origin, credential_headers
from addon.live import LiveConfig
from addon.probes import Prober
from addon.relay import Relay
from addon.routing import client_key
from addon.upstream import UpstreamClient

log = logging.getLogger("aigw")

RELAY_META = "aigw_relay"


def _spawn(coro, *, name: str) -> asyncio.Task:
    return create_task(coro, name=name, keep_ref=True)


def _mask(secret: str) -> str:
    return f"{secret[:5]}…{secret[-4:]}" if len(secret) > 12 else "…"


class GatewayAddon:
    def __init__(self) -> None:
        self.live: LiveConfig | None = None
        self.relay = Relay()
        self.client = UpstreamClient()
        self.dispatcher: Dispatcher | None = None
        self._started = False
        self._relay_lock: asyncio.Lock | None = None
        self._prober: asyncio.Task | None = None
        # Relayed streams in progress: flow id → (client connection id, stop function).
        self._streams: dict[str, tuple[str, object]] = {}

    # -- lifecycle (sync, DESIGN.md decision 8) --------------------------------------------------------------
    def load(self, loader) -> None:
        loader.add_option("aigw_data", str, os.environ.get("AIGW_DATA", "data/aigw.json"),
                          "aigw: path of the configuration store (TinyDB JSON file) written by the admin API.")
        loader.add_option("aigw_base_domain", str, os.environ.get("AIGW_BASE_DOMAIN", ""),
                          "aigw: base domain; the Host label before it names the gateway (empty: first label).")
        loader.add_option("aigw_max_body", int, 10 * 1024 * 1024,
                          "aigw: largest request body accepted, in bytes (larger: 413).")

    def configure(self, updated) -> None:
        opts = ctx.options
        if "aigw_max_body" in updated and opts.aigw_max_body <= 0:
            raise exceptions.OptionsError("aigw_max_body must be positive")
        path = os.path.abspath(opts.aigw_data)
        if self.live is None or path != self.live.data_path:
            if self.live is not None:
                self.live.stop()
            self.live = LiveConfig(path)
            if self._started:
                self.live.start(_spawn)
        settings = Settings(base_domain=opts.aigw_base_domain.strip(), max_body=opts.aigw_max_body)
        self.dispatcher = Dispatcher(self.live, self.client, self.relay, settings)
        if not opts.keep_host_header:
            # In reverse mode mitmproxy rewrites Host to the placeholder target before any hook runs; the gateway
            # needs the caller's Host (it names the gateway) and never forwards it, so keep it.
            opts.keep_host_header = True

    def running(self) -> None:
        if not self._started and self.live is not None:
            self._started = True
            self.live.start(_spawn)
            _spawn(self.relay.start(), name="aigw-relay-start")
            prober = Prober(lambda: self.live, self.client, target_origin, credential_headers)
            self._prober = _spawn(prober.run(), name="aigw-active-probes")

    def done(self) -> None:
        if self.live is not None:
            self.live.stop()
        self._started = False
        if self._prober is not None:
            self._prober.cancel()
            self._prober = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.create_task(self.relay.stop())
        loop.create_task(self.client.close())

    # -- hooks ----------------------------------------------------------------------------------------------
    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None or self.dispatcher is None:
            return
        if not self.relay.port:
            if self._relay_lock is None:
                self._relay_lock = asyncio.Lock()
            async with self._relay_lock:
                await self.relay.start()
        req = flow.request
        try:
            body = req.content or b""  # decoded when the client sent Content-Encoding
        except ValueError:
            body = None
        reply = await self.dispatcher.handle(method=req.method, path=req.path, host=req.host_header or req.host,
                                             headers=req.headers, body=body)
        self._redact(flow)
        flow.metadata["aigw"] = {"provider": reply.provider, "target": reply.target_id,
                                 "attempts": reply.attempts, "fail_open": reply.fail_open}
        flow.comment = f"aigw: {reply.provider or '-'} target={reply.target_id or '-'} " \
                       f"attempts={','.join(reply.attempts) or '-'}"
        if len(reply.attempts) > 1 or reply.fail_open:
            flow.marked = ":warning:"
        if reply.relay_token is None:
            flow.response = http.Response.make(reply.status, reply.body, reply.headers)
            return
        if reply.cancel is not None:
            self._streams[flow.id] = (flow.client_conn.id, reply.cancel)
        # Stream: point the flow at the relay; mitmproxy then streams what the relay writes.
        flow.metadata[RELAY_META] = {
            "status": reply.status, "headers": reply.headers,
            "request": (req.method, req.scheme, req.host, req.port, req.path, req.raw_content),
        }
        req.method = "GET"
        req.scheme = "http"
        req.host = "127.0.0.1"
        req.port = self.relay.port
        req.path = "/" + reply.relay_token
        req.content = b""

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(RELAY_META)
        if not meta or flow.response is None:
            return
        resp = flow.response
        resp.status_code = meta["status"]
        for name, value in meta["headers"].items():
            resp.headers[name] = value
        resp.stream = True
        # Show the caller's request (not the relay hop) in mitmweb.
        method, scheme, host, port, path, content = flow.metadata.pop(RELAY_META)["request"]
        req = flow.request
        req.method, req.scheme, req.host, req.port, req.path = method, scheme, host, port, path
        req.raw_content = content

    def response(self, flow: http.HTTPFlow) -> None:
        self._streams.pop(flow.id, None)

    def error(self, flow: http.HTTPFlow) -> None:
        stream = self._streams.pop(flow.id, None)
        if stream is not None:
            stream[1]()

    def client_disconnected(self, client) -> None:
        # mitmproxy may keep reading a relayed stream after its caller left; stop it at the source.
        for flow_id, (client_id, stop) in list(self._streams.items()):
            if client_id == client.id:
                del self._streams[flow_id]
                stop()

    @staticmethod
    def _redact(flow: http.HTTPFlow) -> None:
        """Keep no usable client key in what the flow stores (mitmweb shows it)."""
        headers = flow.request.headers
        key = client_key(headers)
        if not key:
            return
        for name in ("x-tg-api-key", "x-api-key"):
            if name in headers:
                headers[name] = _mask(headers[name])
        if headers.get("authorization", "").lower().startswith("bearer "):
            headers["authorization"] = "Bearer " + _mask(key)
