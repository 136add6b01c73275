"""The metrics listener of the proxy process: GET /metrics, /livez, /readyz on its own (loopback) address, in daemon
threads so that a scrape never runs on the event loop (docs/observability.md)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from socketserver import TCPServer, ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from addon.metrics import Metrics


def parse_listen(value: str) -> tuple[str, int] | None:
    """`"127.0.0.1:9464"`, `"[::1]:9464"`, `"localhost:0"` → (host, port); `""` → None (no listener)."""
    value = value.strip()
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port (e.g. 127.0.0.1:9464), got {value!r}")
    return host, int(port)


class _Quiet(WSGIRequestHandler):
    timeout = 10  # a stalled scraper gives its thread back

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's default of 5 refuses a burst of scrapers and probes

    def server_bind(self) -> None:
        TCPServer.server_bind(self)  # not HTTPServer's: its getfqdn() may wait on a reverse DNS lookup
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]
        self.setup_environ()


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """The metrics listener: GET /metrics, /livez (the process runs), /readyz (`ready()` says so, else 503).

    Runs in daemon threads (one per scrape), never on the event loop. `port` 0 picks a free port: read
    `port` after `start()`."""

    def __init__(self, host: str, port: int, metrics: Metrics, ready: Callable[[], bool]) -> None:
        self.host, self.port = host, port
        self.metrics = metrics
        self.ready = ready
        self._prometheus = make_wsgi_app(metrics.registry)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _app(self, environ: dict, start_response: Callable) -> list[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path == "/metrics":
            return self._prometheus(environ, start_response)
        if path in ("/livez", "/readyz") and method in ("GET", "HEAD"):
            try:
                ok = path == "/livez" or bool(self.ready())
            except Exception:  # noqa: BLE001  (never into the request path)
                ok = False
            status, body = ("200 OK", b"ok\n") if ok else ("503 Service Unavailable", b"not ready\n")
        else:
            status, body = "404 Not Found", b"not found: try /metrics, /livez or /readyz\n"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                                ("Cache-Control", "no-store")])
        return [b"" if method == "HEAD" else body]

    def start(self) -> int:
        """Bind and serve; returns the bound port. OSError when the address is taken."""
        if self._server is None:
            cls = _Server6 if ":" in self.host else _Server
            self._server = make_server(self.host, self.port, self._app, server_class=cls, handler_class=_Quiet)
            self.port = self._server.server_address[1]
            self._thread = threading.Thread(target=self._server.serve_forever, name="aigw-metrics", daemon=True)
            self._thread.start()
        return self.port

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
