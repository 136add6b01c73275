"""What a caller may send before the gateway does any work: header and body limits, bounded decoding of a
compressed body, per-connection read deadlines, and the linear header helpers every per-request path uses.

- `Ingress.requestheaders`: more than `max_headers` header fields or `max_header_bytes` of them → 431; a declared
  Content-Length over `max_body` → 413 before a byte of the body is read. Both in the caller's error format.
- Bounded decoding of a compressed body lives in addon/bodies.py (`decode_body`).
- A refusal sent before the body is read ends the connection the way nginx's lingering close does: the answer
  goes out, the write side is shut, what the caller still sends is read and discarded (at most LINGER_SECONDS),
  then the socket closes — a caller still writing its body reads the 413 instead of a connection reset.
- The watchdog: a client connection must deliver a complete request head within `client_timeout` of connecting
  (or of the end of its previous answer: keep-alive idle ends then too), and a complete body within
  `client_timeout` of its head. A request being served (a long stream included) is never cut.
- `header_items`, `header_values`: mitmproxy's `Headers.items()` is quadratic (one scan of every field per key)
  and each `Headers.get` is a scan; these are one pass.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from urllib.parse import unquote_plus
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import providers
from providers import GatewayError

log = logging.getLogger("aigw.ingress")

LINGER_SECONDS = 5.0      # after an early refusal: how long the rest of the body is read and discarded
LINGER_IDLE = 1.0         # … and how long a silent caller is waited for
REFUSED = "aigw_refused"  # flow.metadata key: the status the gateway answered before reading the body

# Query parameters that carry keys (a gateway key, or a provider key such as Gemini's `?key=`): masked in the
# stored flow. The gateway itself reads its key only from headers (routing.client_key).
SECRET_QUERY_PARAMS = frozenset({"key", "api_key", "api-key", "apikey", "x-api-key", "x-tg-api-key",
                                 "access_token"})


@dataclass
class Limits:
    max_headers: int = 256
    max_header_bytes: int = 64 * 1024
    max_body: int = 10 * 1024 * 1024
    client_timeout: float = 60.0  # 0: no deadline


# -- headers ---------------------------------------------------------------------------------------------------
def _native(x: bytes) -> str:
    return x.decode("utf-8", "surrogateescape")  # what mitmproxy's Headers does


def header_items(headers: Any) -> list[tuple[str, str]]:
    """(name, value) pairs like `Headers.items()` — one per name, repeated fields folded with ", " — in one pass.

    Takes mitmproxy `Headers` (read through `.fields`) or any mapping."""
    fields = getattr(headers, "fields", None)
    if fields is None:
        return list(headers.items())
    folded: dict[bytes, tuple[bytes, list[bytes]]] = {}
    for name, value in fields:
        entry = folded.get(name.lower())
        if entry is None:
            folded[name.lower()] = (name, [value])
        else:
            entry[1].append(value)
    return [(_native(name), _native(b", ".join(values))) for name, values in folded.values()]


def header_values(headers: Any, names: tuple[str, ...]) -> list[str | None]:
    """`[headers.get(name) for name in names]` (lower-case names; repeated fields folded with ", ", as
    `Headers.get` does) in one pass: each `Headers.get` scans every field.

    Takes mitmproxy `Headers` (read through `.fields`) or any mapping."""
    fields = getattr(headers, "fields", None)
    if fields is None:
        return [headers.get(name) for name in names]
    wanted = {name.encode(): i for i, name in enumerate(names)}
    found: list[list[bytes] | None] = [None] * len(names)
    for name, value in fields:
        i = wanted.get(name.lower())
        if i is not None:
            values = found[i]
            if values is None:
                found[i] = [value]
            else:
                values.append(value)
    return [None if values is None else _native(b", ".join(values)) for values in found]


def header_size(headers: Any) -> tuple[int, int]:
    """(number of header fields, their size on the wire: `name: value\\r\\n` each)."""
    fields = getattr(headers, "fields", None)
    if fields is None:
        pairs = [(str(k).encode(), str(v).encode()) for k, v in headers.items()]
        return len(pairs), sum(len(k) + len(v) + 4 for k, v in pairs)
    return len(fields), sum(len(k) + len(v) + 4 for k, v in fields)


def check_headers(headers: Any, limits: Limits) -> GatewayError | None:
    fields = getattr(headers, "fields", None)
    count = len(fields) if fields is not None else len(headers)
    if count > limits.max_headers:  # decided before any per-field work
        return GatewayError(431, "invalid_request",
                            f"Too many request headers: {count} (at most {limits.max_headers}).")
    count, size = header_size(headers)
    if size > limits.max_header_bytes:
        return GatewayError(431, "invalid_request",
                            f"Request headers are too large: {size} bytes (at most {limits.max_header_bytes}).")
    return None


_KEY_FIELDS = (b"x-tg-api-key", b"x-api-key", b"authorization")


def check_key_headers(headers: Any) -> GatewayError | None:
    """A key header that is not UTF-8 names no key (and would break hashing it): 401, like any unknown key."""
    for name, value in getattr(headers, "fields", ()):
        if name.lower() in _KEY_FIELDS:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return GatewayError(401, "authentication",
                                    f"Invalid API key: the {_native(name)} header is not valid UTF-8.",
                                    code="invalid_api_key")
    return None


_FRAMING_FIELDS = ("transfer-encoding", "content-length")


def declared_length(headers: Any) -> int | None:
    """The Content-Length a request declares (None: none, chunked, or not a number — mitmproxy has already
    refused a malformed one)."""
    chunked, value = header_values(headers, _FRAMING_FIELDS)
    return None if chunked else _length(value)


def _length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.split(",")[0].strip())
    except ValueError:
        return None


def has_body(headers: Any) -> bool:
    chunked, value = header_values(headers, _FRAMING_FIELDS)
    return bool(chunked) or (_length(value) or 0) > 0


_QUERY_SECRET = re.compile(r"(^|[&;])([^=&;]*)=([^&;]*)")


def mask_query(path: str, mask: Callable[[str], str]) -> str:
    """`path` with the value of every SECRET_QUERY_PARAMS parameter masked (the rest byte for byte)."""
    base, sep, query = path.partition("?")
    if not sep or "=" not in query:
        return path

    def one(m: re.Match) -> str:
        if unquote_plus(m.group(2)).strip().lower() not in SECRET_QUERY_PARAMS or not m.group(3):
            return m.group(0)
        return f"{m.group(1)}{m.group(2)}={mask(unquote_plus(m.group(3)))}"

    fragment = ""
    if "#" in query:
        query, _, fragment = query.partition("#")
        fragment = "#" + fragment
    return base + "?" + _QUERY_SECRET.sub(one, query) + fragment


# -- refusals, deadlines -----------------------------------------------------------------------------------------
def error_response(flow: Any, err: GatewayError, *, close: bool = False):
    return error_answer(flow.request.path, err, close=close)


def error_answer(path: str, err: GatewayError, *, close: bool = False):
    """`err` as the mitmproxy Response of the format `path` names (addon/answers.py), closing the connection
    when `close`."""
    from addon.answers import make_response
    reply = providers.error_reply(providers.ingress_for_path(path), err)
    headers = dict(reply.headers)
    if close:
        headers["connection"] = "close"
    return make_response(reply.status, reply.body, headers)


def _assemble(response: Any) -> bytes:
    from mitmproxy.net.http.http1 import assemble_response
    return assemble_response(response)


@dataclass
class _ClientState:
    deadline: float | None                                          # head / keep-alive idle deadline
    reading: dict[str, tuple[float, str]] = field(default_factory=dict)  # flow id → (body deadline, path)
    serving: set[str] = field(default_factory=set)
    closing: bool = False

    def due(self) -> float | None:
        if self.reading:
            return min(d for d, _ in self.reading.values())
        if self.serving:
            return None
        return self.deadline


def _proxyserver_connections() -> Mapping[Any, Any]:
    from mitmproxy import ctx
    server = ctx.master.addons.get("proxyserver")
    return getattr(server, "connections", {}) if server is not None else {}


class Ingress:
    """Request limits and the client-connection watchdog. The addon's hooks call the methods of the same name."""

    def __init__(self, *, connections: Callable[[], Mapping[Any, Any]] = _proxyserver_connections,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = Limits()
        self._connections = connections
        self._clock = clock
        self._clients: dict[str, _ClientState] = {}
        self._tasks: set[asyncio.Task] = set()
        self.closed_idle = 0   # connections closed by the watchdog (for tests and logs)
        self.closed_body = 0

    # -- limits -------------------------------------------------------------------------------------------
    def requestheaders(self, flow: Any) -> None:
        self._head_complete(flow)
        headers = flow.request.headers
        err = check_headers(headers, self.limits) or check_key_headers(headers)
        length = declared_length(headers)
        if err is None and length is not None and length > self.limits.max_body:
            err = GatewayError(413, "request_too_large",
                               f"Request body is larger than {self.limits.max_body} bytes.")
        if err is None:
            return
        if not has_body(headers) or (err.status != 413 and length is not None and length <= self.limits.max_body):
            # Nothing (or little) left to read: mitmproxy reads it and answers; the connection stays usable.
            flow.metadata[REFUSED] = err.status
            flow.response = error_response(flow, err)
            return
        self.refuse_unread(flow, err, kill=True)

    def refuse_unread(self, flow: Any, err: GatewayError, *, kill: bool) -> None:
        """Answer `err` without reading the rest of the request body (see the module docstring)."""
        flow.metadata[REFUSED] = err.status
        response = error_response(flow, err, close=True)
        if self._take_over(flow, _assemble(response)):
            flow.response = response  # what the caller got, for mitmweb
            if kill and flow.killable:
                flow.kill()
            return
        # A TLS or HTTP/2 client: mitmproxy reads the body (bounded by body_size_limit) and answers this — or,
        # past body_size_limit, its own 413 page.
        if kill:
            flow.response = error_response(flow, err)

    def error(self, flow: Any) -> None:
        self._finished(flow)
        msg = getattr(flow.error, "msg", "") or ""
        if "body_size_limit" in msg and REFUSED not in flow.metadata and flow.response is None:
            # A chunked body grew past aigw_max_body (mitmproxy's body_size_limit stopped reading): say so in
            # the caller's format instead of mitmproxy's HTML page.
            self.refuse_unread(flow, GatewayError(413, "request_too_large",
                                                  f"Request body is larger than {self.limits.max_body} bytes."),
                               kill=False)

    def _take_over(self, flow: Any, raw: bytes) -> bool:
        client = flow.client_conn
        if client.tls or client.tls_established or not flow.request.http_version.startswith("HTTP/1"):
            return False
        handler = self._connections().get(client.id)
        io = getattr(handler, "transports", {}).get(getattr(handler, "client", None)) if handler else None
        writer = getattr(io, "writer", None)
        if not isinstance(writer, asyncio.StreamWriter) or writer.is_closing():
            return False
        sock = writer.get_extra_info("socket")
        if sock is None:
            return False
        try:
            own = sock.dup()  # holds the connection open (no reset, no FIN) once mitmproxy closes its end
            own.setblocking(False)
        except OSError:
            return False
        transport = writer.transport
        writer.write(raw)  # after anything the connection still had to send
        transport.close()  # mitmproxy reads nothing more and writes nothing more (is_closing) on it
        self._spawn(self._linger(own, transport), name="aigw-linger")
        return True

    async def _linger(self, sock: socket.socket, transport: asyncio.BaseTransport) -> None:
        """Once the answer is out, shut the write side and read (and drop) what the caller still sends."""
        loop = asyncio.get_running_loop()
        buf = bytearray(256 * 1024)
        try:
            async with asyncio.timeout(LINGER_SECONDS):
                while transport.get_write_buffer_size():  # mitmproxy's transport flushes the answer
                    await asyncio.sleep(0.005)
                sock.shutdown(socket.SHUT_WR)
                while True:
                    try:
                        async with asyncio.timeout(LINGER_IDLE):
                            if not await loop.sock_recv_into(sock, buf):
                                break
                    except TimeoutError:
                        break
        except (OSError, TimeoutError):
            pass
        finally:
            sock.close()

    def _spawn(self, coro, *, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- watchdog -----------------------------------------------------------------------------------------
    def _state(self, client_id: str) -> _ClientState:
        st = self._clients.get(client_id)
        if st is None:
            st = self._clients[client_id] = _ClientState(deadline=self._deadline())
        return st

    def _deadline(self) -> float | None:
        t = self.limits.client_timeout
        return self._clock() + t if t > 0 else None

    def client_connected(self, client: Any) -> None:
        self._clients[client.id] = _ClientState(deadline=self._deadline())

    def _head_complete(self, flow: Any) -> None:
        st = self._state(flow.client_conn.id)
        st.deadline = None
        due = self._deadline()
        if due is not None:
            st.reading[flow.id] = (due, flow.request.path)

    def request(self, flow: Any) -> None:
        """The body is complete: the request is being served, which no deadline cuts."""
        st = self._state(flow.client_conn.id)
        st.reading.pop(flow.id, None)
        st.serving.add(flow.id)
        st.deadline = None

    def response(self, flow: Any) -> None:
        self._finished(flow)

    def _finished(self, flow: Any) -> None:
        st = self._clients.get(flow.client_conn.id)
        if st is None:
            return
        st.reading.pop(flow.id, None)
        st.serving.discard(flow.id)
        if not st.reading and not st.serving:
            st.deadline = self._deadline()  # keep-alive: the next request head is due within the timeout

    def client_disconnected(self, client: Any) -> None:
        self._clients.pop(client.id, None)

    def expired(self, now: float | None = None) -> list[str]:
        """Ids of the client connections past a deadline."""
        now = self._clock() if now is None else now
        return [cid for cid, st in self._clients.items()
                if not st.closing and (due := st.due()) is not None and now >= due]

    async def run_watchdog(self) -> None:
        while True:
            timeout = self.limits.client_timeout
            await asyncio.sleep(min(1.0, max(0.05, timeout / 10)) if timeout > 0 else 1.0)
            if timeout <= 0:
                continue
            for cid in self.expired():
                try:
                    await self._close(cid)
                except Exception:  # one odd connection must not stop the watchdog
                    log.exception("aigw: could not close an overdue client connection")

    async def _close(self, client_id: str) -> None:
        st = self._clients.get(client_id)
        handler = self._connections().get(client_id)
        if st is None:
            return
        if handler is None:
            self._clients.pop(client_id, None)
            return
        io = handler.transports.get(handler.client)
        if io is None or io.handler is None:
            return  # still starting up: next round
        st.closing = True
        if st.reading:
            self.closed_body += 1
            self._answer_timeout(handler, io, next(iter(st.reading.values()))[1])
            log.info("aigw: closing %s: request body not complete within %.3g s",
                     _peer(handler), self.limits.client_timeout)
        else:
            self.closed_idle += 1
            log.info("aigw: closing %s: no complete request head within %.3g s",
                     _peer(handler), self.limits.client_timeout)
        await handler.on_timeout()

    def _answer_timeout(self, handler: Any, io: Any, path: str) -> None:
        """A 408 in the caller's format before the connection closes (plain HTTP/1 only)."""
        client = handler.client
        writer = io.writer
        if client.tls or not isinstance(writer, asyncio.StreamWriter) or writer.is_closing():
            return
        err = GatewayError(408, "timeout",
                           f"The request body did not arrive within {self.limits.client_timeout:.3g} s.")
        writer.write(_assemble(error_answer(path, err, close=True)))

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def _peer(handler: Any) -> str:
    peer = getattr(handler.client, "peername", None)
    return f"{peer[0]}:{peer[1]}" if peer else "a client"

