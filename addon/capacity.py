"""What one gateway process needs to take a burst of thousands of connections (measured: scripts/bench_streams.py).

asyncio's `start_server` listens with a backlog of 100 — mitmproxy's proxy servers (mitmproxy/proxy/mode_servers.py)
and the relay (addon/relay.py) both get it. A burst of new connections that arrives faster than the event loop
accepts them fills that accept queue; the kernel then drops SYNs (retried after 1 s, 3 s, … by the client) and,
once the SYN queue is full too, answers with SYN cookies whose handshake it cannot complete while the accept queue
is still full: those connections are reset (TcpExt ListenOverflows, ListenDrops, SyncookiesFailed). Linux lets a
listening socket call listen() again with a new backlog, so the queues are widened in place, after mitmproxy has
started its servers; the kernel caps the value at net.core.somaxconn (and, with SYN cookies off, the SYN queue at
net.ipv4.tcp_max_syn_backlog). In place rather than with `start_server(backlog=…)`: asyncio also takes that number
as how many accept() calls to make per wake-up, and out of file descriptors it logs an error for every one of them.

Every held stream also holds about four file descriptors (caller, relay hop out, relay hop in, provider), so the
soft RLIMIT_NOFILE is raised to the hard one.

`install(master)` does both, once, from the addon's `running` hook (mitmproxy has started its servers by then),
and widens again the servers mitmproxy starts later (a changed `mode`). It changes nothing outside this process: no
sysctl.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mitmproxy.addons.proxyserver import Proxyserver
    from mitmproxy.master import Master

log = logging.getLogger("aigw.capacity")

# What the gateway asks for; the kernel silently caps it at net.core.somaxconn.
LISTEN_BACKLOG = 65535
# Below these, a burst of a few thousand connections overflows the kernel's queues whatever the process asks
# (tcp_max_syn_backlog only matters with net.ipv4.tcp_syncookies=0). The gateway only reads them.
RECOMMENDED_SYSCTLS = {"net.core.somaxconn": 4096, "net.ipv4.tcp_max_syn_backlog": 4096}
_READ_SYSCTLS = (*RECOMMENDED_SYSCTLS, "net.ipv4.tcp_syncookies")
FDS_PER_STREAM = 4  # caller, relay hop (mitmproxy's end and the relay's), provider
FD_MARGIN = 256      # listening sockets, log files, probes, connections being set up

_installed: list[object] = []  # keeps the `servers.changed` receiver alive (mitmproxy holds it weakly)


def sysctl(name: str) -> int | None:
    """A numeric kernel setting (net.core.somaxconn → /proc/sys/net/core/somaxconn), None when unreadable."""
    try:
        return int(Path("/proc/sys", *name.split(".")).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (no privilege needed); returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = sysctl("fs.nr_open") or 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
            soft = hard
        except (OSError, ValueError) as err:
            log.warning("capacity: could not raise the open-files limit from %d: %s", soft, err)
    return soft


def widen_backlog(sockets: Iterable[socket.socket | asyncio.trsock.TransportSocket],
                  backlog: int = LISTEN_BACKLOG) -> int:
    """listen(backlog) again on listening TCP sockets (asyncio's are wrapped: a dup of the same socket is used);
    returns how many were widened."""
    done = 0
    for sock in sockets:
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            continue
        with contextlib.closing(sock.dup()) as same:
            same.listen(backlog)
        done += 1
    return done


def proxy_sockets(proxyserver: Proxyserver) -> Iterator[asyncio.trsock.TransportSocket]:
    """The listening TCP sockets of mitmproxy's proxy servers (its `Proxyserver` addon).

    mitmproxy exposes its asyncio servers only as `ServerInstance._servers` (mitmproxy 12); UDP/WireGuard servers
    there are not asyncio servers and are skipped."""
    for instance in proxyserver.servers:
        for server in getattr(instance, "_servers", ()):
            if isinstance(server, asyncio.Server):
                yield from server.sockets


def _widen_proxy(proxyserver: Proxyserver) -> int:
    try:
        return widen_backlog(proxy_sockets(proxyserver))
    except OSError as err:  # a server closing while we look
        log.warning("capacity: could not widen the listen backlog: %s", err)
        return 0


def install(master: Master, *, streams: int = 5000) -> dict[str, int | None]:
    """Once, from the addon's `running` hook: raise the open-files limit, widen the accept queue of mitmproxy's
    listening sockets (and of those it starts later), and warn when the process cannot hold `streams` streams
    (open-files hard limit) or the kernel caps the queues low.

    Returns what it found, for a log line or a test: nofile, widened sockets, the effective backlog and the sysctls.
    """
    nofile = raise_nofile_limit()
    proxyserver: Proxyserver | None = master.addons.get("proxyserver")
    widened = _widen_proxy(proxyserver) if proxyserver is not None else 0
    if proxyserver is not None and not _installed:
        async def on_change() -> None:  # mode changed: new servers listen with asyncio's 100 again
            _widen_proxy(proxyserver)

        _installed.append(on_change)
        proxyserver.servers.changed.connect(on_change)
    somaxconn = sysctl("net.core.somaxconn")
    found: dict[str, int | None] = {
        "nofile": nofile, "listen_sockets": widened,
        "backlog": min(LISTEN_BACKLOG, somaxconn) if somaxconn else LISTEN_BACKLOG,
        **{name: sysctl(name) for name in _READ_SYSCTLS}}
    log.info("capacity: open files %d (~%d held streams), accept queue %s on %d listening socket(s)",
             nofile, (nofile - FD_MARGIN) // FDS_PER_STREAM, found["backlog"], widened)
    if nofile < streams * FDS_PER_STREAM + FD_MARGIN:
        log.warning("capacity: the open-files limit (%d, hard) holds ~%d streams, not %d: raise it to %d or more "
                    "(ulimit -Hn, systemd LimitNOFILE=, docker --ulimit nofile=)", nofile,
                    (nofile - FD_MARGIN) // FDS_PER_STREAM, streams, streams * FDS_PER_STREAM + FD_MARGIN)
    low = {name: value for name, value in RECOMMENDED_SYSCTLS.items() if (found[name] or 0) < value
           and (name != "net.ipv4.tcp_max_syn_backlog" or found["net.ipv4.tcp_syncookies"] == 0)}
    if low:
        log.warning("capacity: the kernel caps connection bursts low (%s); for bursts of thousands of connections "
                    "set %s", ", ".join(f"{n}={found[n]}" for n in low),
                    " ".join(f"sysctl -w {n}={v}" for n, v in low.items()))
    return found
