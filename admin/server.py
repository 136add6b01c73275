"""Running the admin app under waitress (a production WSGI server: a pool of worker threads, bounded request
sizes, no debugger): embedded in another process (``serve``, e.g. `aigw up`) or standalone (``run_forever``).

The admin API can rewrite routing and mint keys, so it refuses to listen beyond loopback without a token.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import threading
from dataclasses import dataclass, field

from waitress import wasyncore
from waitress.server import BaseWSGIServer, MultiSocketServer, create_server

from store import Store

from .app import create_app

log = logging.getLogger(__name__)


class InsecureBindError(ValueError):
    """Refusing to expose the admin API on a non-loopback address without a token."""


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # any other host name could resolve anywhere


MIN_TOKEN_LENGTH = 16


def check_token(token: str | None) -> None:
    """Raise :class:`InsecureBindError` for an admin token too weak to protect anything: a configured token must
    have at least MIN_TOKEN_LENGTH characters and no whitespace (a padded or one-letter token is a mistake)."""
    if token is None:
        return
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise InsecureBindError(
            f"the admin token must be at least {MIN_TOKEN_LENGTH} characters without whitespace "
            f"(got {len(token)} characters); generate one with: python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'"
        )


def check_bind(host: str, token: str | None) -> None:
    """Raise :class:`InsecureBindError` when ``host`` is not loopback and no admin token is configured, or when a
    configured token is weak (see :func:`check_token`)."""
    check_token(token)
    if not token and not is_loopback(host):
        raise InsecureBindError(
            f"refusing to serve the admin API on {host!r} without an admin token: anyone who can reach it could "
            "change routing and mint keys. Bind to 127.0.0.1, or configure an admin token."
        )


@dataclass
class AdminServer:
    """A running admin server: ``port`` is the actual port (useful with port 0)."""

    server: BaseWSGIServer | MultiSocketServer
    thread: threading.Thread
    host: str
    port: int
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def shutdown(self) -> None:
        """Stop serving, wait for the thread, close the socket. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        _close(self.server)
        self.thread.join(timeout=10)


#: waitress's pool of request threads (the admin API is light; TinyDB writes are serialized by the store's lock).
THREADS = 8


def _make_server(
    store: Store,
    host: str,
    port: int,
    admin_token: str | None,
    health_path: str | os.PathLike[str] | None,
    usage_path: str | os.PathLike[str] | None = None,
) -> BaseWSGIServer | MultiSocketServer:
    """The bound (not yet serving) waitress server; OSError when the address is taken."""
    check_bind(host, admin_token)
    app = create_app(store, admin_token=admin_token, health_path=health_path, usage_path=usage_path)
    return create_server(app, host=host.strip("[]"), port=port, threads=THREADS, ident="aigw-admin",
                         clear_untrusted_proxy_headers=True)


def _port(server: BaseWSGIServer | MultiSocketServer) -> int:
    if isinstance(server, MultiSocketServer):  # a host name with several addresses (e.g. localhost)
        return int(server.effective_listen[0][1])
    return int(server.effective_port)


def _close(server: BaseWSGIServer | MultiSocketServer) -> None:
    """Stop a serving waitress server from any thread: its sockets are closed in its own loop (the trigger runs
    the closure there, and the loop ends with nothing left to watch), then the request threads are stopped."""
    sockets = server.map if isinstance(server, MultiSocketServer) else server._map
    listeners = [item for item in list(sockets.values()) if isinstance(item, BaseWSGIServer)]
    if not listeners:  # already closed
        server.task_dispatcher.shutdown()
        return
    trigger = listeners[0].trigger
    try:
        trigger.pull_trigger(lambda: wasyncore.close_all(sockets))
    except OSError:  # already closed
        wasyncore.close_all(sockets)
    server.task_dispatcher.shutdown()


def serve(
    store: Store,
    host: str,
    port: int,
    *,
    admin_token: str | None = None,
    health_path: str | os.PathLike[str] | None = None,
    usage_path: str | os.PathLike[str] | None = None,
) -> AdminServer:
    """Start the admin API in a daemon thread (waitress, THREADS request threads) and return its handle."""
    server = _make_server(store, host, port, admin_token, health_path, usage_path)
    thread = threading.Thread(target=server.run, name="aigw-admin", daemon=True)
    thread.start()
    handle = AdminServer(server=server, thread=thread, host=host, port=_port(server))
    log.info("admin API listening on %s/api/v1", handle.url)
    return handle


def run_forever(
    store: Store,
    host: str,
    port: int,
    *,
    admin_token: str | None = None,
    health_path: str | os.PathLike[str] | None = None,
    usage_path: str | os.PathLike[str] | None = None,
) -> None:
    """Serve in the calling thread until interrupted (the standalone ``aigw admin`` command)."""
    server = _make_server(store, host, port, admin_token, health_path, usage_path)
    log.info("admin API listening on http://%s:%d/api/v1", host, _port(server))
    if threading.current_thread() is threading.main_thread():  # SIGTERM (systemd, docker stop): a clean stop too
        signal.signal(signal.SIGTERM, lambda signum, frame: _close(server))
    try:
        server.run()  # returns on KeyboardInterrupt or once _close ran, its sockets closed
    finally:
        server.task_dispatcher.shutdown()
        log.info("admin API stopped")
