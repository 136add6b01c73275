"""Upstream I/O: one process-wide aiohttp session, and one HTTP call (`Attempt`) at one target.

mitmproxy's own forwarder cannot retry inside a flow, so the addon calls providers itself (docs/architecture.md).
This module only moves bytes: what a call's answer means for failover and health is addon/attempt.py's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import lru_cache

import aiohttp
from yarl import URL

from providers import FRAMING_HEADERS, GatewayError

# Hop-by-hop and framing headers never copied between the two connections (providers' one list, with the
# proxy-* ones it covers by prefix).
HOP_BY_HOP = FRAMING_HEADERS | {"proxy-authenticate", "proxy-authorization"}


@dataclass(slots=True)
class Attempt:
    """One HTTP call to one target, as addon/attempt.py (and addon/probes.py) build it."""
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool
    connect_timeout: float
    headers_timeout: float
    first_token_timeout: float
    idle_timeout: float


class UpstreamClient:
    """Owns the shared aiohttp session (keep-alive pool) and sends single calls."""

    # No pool limit by default (0): every held stream holds its connection, so a limit below the streams the
    # process holds queues the rest inside aiohttp, which counts that wait in connect_timeout — they fail (504)
    # instead of waiting. The open-files limit (addon/capacity.py) is what bounds connections.
    def __init__(self, *, limit: int = 0, limit_per_host: int = 0) -> None:
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=self._limit_per_host,
                                             ttl_dns_cache=300, enable_cleanup_closed=True)
            # No cookie jar: a gateway must never carry one caller's cookies to the next.
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                                  auto_decompress=True, skip_auto_headers=("User-Agent",))
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def send(self, attempt: Attempt) -> aiohttp.ClientResponse:
        """Open the request and wait for the response headers (connect + headers time-outs).

        Raises asyncio.TimeoutError or aiohttp.ClientError; the caller classifies. The URL goes out exactly as
        built (`encoded=True`): yarl would otherwise resolve dot segments and decode escapes, sending a path other
        than the one the rule matched.
        """
        timeout = _client_timeout(attempt.connect_timeout)
        async with asyncio.timeout(attempt.connect_timeout + attempt.headers_timeout):
            return await self.session().request(
                attempt.method, _url(attempt.url), headers=attempt.headers, data=attempt.body or None,
                timeout=timeout, allow_redirects=False, compress=None)

    @staticmethod
    async def read_body(resp: aiohttp.ClientResponse, idle_timeout: float, limit: int) -> bytes:
        """Read a whole body, failing when the upstream goes silent for idle_timeout or sends more than limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await read_some(resp.content, idle_timeout)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise GatewayError(502, "api_error", "The provider's answer is larger than the gateway accepts.")
            chunks.append(chunk)


async def read_some(content: aiohttp.StreamReader, timeout: float) -> bytes:
    """The next bytes of an answer (b"" at its end), waiting at most `timeout` seconds for them.

    What has already arrived, and the end once reached, are taken without arming a timer (a small answer is
    usually whole when its headers are read; a fast stream's next events are often buffered): a timer costs more
    than the read. Raises what `readany` raises (the connection's error, TimeoutError)."""
    chunk = content.read_nowait()
    if chunk or content.at_eof():  # at its end: b"" without a timer either
        return chunk
    async with asyncio.timeout(timeout):
        return await content.readany()


@lru_cache(maxsize=4096)
def _url(url: str) -> URL:
    """The URL sent as built (yarl URLs are immutable: one per target URL, not one per call)."""
    return URL(url, encoded=True)


@lru_cache(maxsize=256)
def _client_timeout(connect: float) -> aiohttp.ClientTimeout:
    """aiohttp's time-outs for a connect time-out (immutable: one per value, not one per call; the values are the
    configured connect_timeout, or what is left of a total_timeout)."""
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=None)


def response_headers(resp: aiohttp.ClientResponse) -> dict[str, str]:
    """Lower-cased end-to-end headers of a provider answer."""
    out: dict[str, str] = {}
    for k, v in resp.headers.items():
        lk = k.lower()
        if lk not in HOP_BY_HOP:
            out[lk] = v
    return out
