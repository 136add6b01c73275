"""Every upstream attempt as its own flow in mitmproxy's view (mitmweb) and flow file (`-w`), credentials masked.

`WireCapture` is what one attempt put on the wire and got back: the request exactly as sent upstream (method, URL,
headers, body) and the provider's raw answer (status, headers, body — a stream's raw bytes up to `MAX_CAPTURE`), or
the error. addon/attempt.py and addon/stream.py fill it when the `aigw_attempt_flows` option is on; otherwise no
capture object exists and nothing is copied.

`publish` turns the captures of one client request into flows and runs them through mitmproxy's hooks (what its
own readfile addon does with a loaded flow, without the reverse-mode rewrite): the view shows them, the save addon
writes them. Each is linked to the client's flow (`metadata["aigw_parent"]`, a comment, and the client flow's
`metadata["aigw"]["attempt_flows"]`); the gateway's own hooks skip them (`is_attempt_flow`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mitmproxy import connection, ctx, eventsequence, http
from yarl import URL

from addon.masking import mask_header_value

log = logging.getLogger("aigw.wire")

MAX_CAPTURE = 256 * 1024  # bytes of a provider's answer kept per attempt flow
_ATTEMPT = "aigw_attempt"


@dataclass(slots=True)
class WireCapture:
    method: str = ""
    url: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)   # already masked
    body: bytes = b""
    status: int | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_body: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    error: str | None = None
    started: float = 0.0
    ended: float | None = None

    def sent(self, method: str, url: str, headers: Mapping[str, str], body: bytes,
             secret_headers: Iterable[str] = ()) -> None:
        """What goes out, with every credential header masked (the target's own credential header included)."""
        secret = {h.lower() for h in secret_headers}
        self.method, self.url, self.body, self.started = method, url, body, time.time()
        self.headers = [(k, mask_header_value(k.lower(), v, force=k.lower() in secret)) for k, v in headers.items()]

    def answered(self, status: int, headers: Mapping[str, str]) -> None:
        self.status, self.response_headers = status, list(headers.items())

    def received(self, data: bytes) -> None:
        room = MAX_CAPTURE - len(self.response_body)
        if room <= 0:
            self.truncated = self.truncated or bool(data)
            return
        self.response_body += data[:room]
        self.truncated = self.truncated or len(data) > room

    def failed(self, why: str) -> None:
        self.error = why

    def close(self) -> None:
        if self.ended is None:
            self.ended = time.time()


def _headers(fields: list[tuple[str, str]]) -> http.Headers:
    return http.Headers([(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                         for k, v in fields])


def is_attempt_flow(flow: http.HTTPFlow) -> bool:
    return _ATTEMPT in flow.metadata


def to_flow(parent_id: str, index: int, count: int, cap: WireCapture) -> http.HTTPFlow:
    try:
        url = URL(cap.url, encoded=True)
        scheme, host, port, path = url.scheme or "http", url.raw_host or "", url.port, url.raw_path_qs or "/"
    except ValueError:  # a stored target the admin API now refuses: show what can be shown
        scheme, host, port, path = "http", "", None, "/"
    port = port or (443 if scheme == "https" else 80)
    client = connection.Client(peername=("127.0.0.1", 0), sockname=("127.0.0.1", 0), timestamp_start=cap.started)
    tls = scheme == "https"
    server = connection.Server(address=(host, port), peername=(host, port), timestamp_start=cap.started, tls=tls,
                               sni=host if tls else None)
    flow = http.HTTPFlow(client, server)
    req = http.Request(host=host, port=port, method=cap.method.encode(), scheme=scheme.encode(), authority=b"",
                       path=path.encode("utf-8", "surrogateescape"), http_version=b"HTTP/1.1",
                       headers=_headers(cap.headers), content=cap.body, trailers=None,
                       timestamp_start=cap.started, timestamp_end=cap.started)
    flow.request = req
    end = cap.ended or time.time()
    if cap.status is not None:
        resp = http.Response.make(cap.status, bytes(cap.response_body), _headers(cap.response_headers))
        resp.timestamp_start, resp.timestamp_end = end, end
        flow.response = resp
    if cap.error is not None:
        from mitmproxy.flow import Error
        flow.error = Error(cap.error, timestamp=end)
    flow.metadata[_ATTEMPT] = {"parent": parent_id, "index": index, "truncated": cap.truncated}
    flow.metadata["aigw_parent"] = parent_id
    note = f"aigw attempt {index}/{count} of flow {parent_id}"
    if cap.truncated:
        note += f" (answer cut at {MAX_CAPTURE} bytes)"
    if cap.error:
        note += f": {cap.error}"
    flow.comment = note
    flow.live = False
    return flow


async def publish(parent: http.HTTPFlow | None, parent_id: str, captures: list[WireCapture]) -> list[str]:
    """Show the attempts of one client request as flows; their ids (also put on the parent flow's metadata)."""
    ids: list[str] = []
    for i, cap in enumerate(captures, 1):
        cap.close()
        try:
            flow = to_flow(parent_id, i, len(captures), cap)
            for event in eventsequence.iterate(flow):
                await ctx.master.addons.handle_lifecycle(event)
        except Exception:  # showing an attempt must never break anything else
            log.exception("aigw: could not show attempt %d of flow %s", i, parent_id)
            continue
        ids.append(flow.id)
    if parent is not None:
        parent.metadata.setdefault("aigw", {})["attempt_flows"] = ids
    return ids
