"""The floor of aigw's design, for `scripts/bench --floor`: a mitmproxy addon that does nothing but what every
gateway built on "the addon makes the upstream call" must do (docs/architecture.md, decision 1) — one aiohttp
call per request from the `request` hook, to one fixed origin (the request's own path), its answer set as the flow's response. No auth, no
routing, no balancing, no translation, no records.

What it costs over bare mitmdump is the price of the design, not of the gateway's logic: aigw can come close to
this system's throughput, never past it. Not part of the product.

    mitmdump -s scripts/floor_addon.py --set floor_origin=http://127.0.0.1:PORT
"""
from __future__ import annotations

import aiohttp
from mitmproxy import ctx, http

_DROP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})


class Floor:
    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    def load(self, loader) -> None:
        loader.add_option("floor_origin", str, "", "where every request is sent (scheme://host:port)")

    async def request(self, flow: http.HTTPFlow) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                                 cookie_jar=aiohttp.DummyCookieJar())
        req = flow.request
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _DROP}
        async with self.session.post(ctx.options.floor_origin + req.path, data=req.raw_content, headers=headers) as resp:
            body = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP}
            flow.response = http.Response.make(resp.status, body, out)

    async def done(self) -> None:
        if self.session is not None:
            await self.session.close()


addons = [Floor()]
