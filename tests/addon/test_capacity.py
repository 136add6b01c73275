"""addon/capacity.py: the accept queue widened in place, the open-files limit raised, nothing outside the process."""

from __future__ import annotations

import asyncio
import resource
import socket

from addon import capacity


def test_widen_backlog_relistens_listening_tcp_sockets_only():
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(1)
    idle = socket.socket()  # not listening: left alone
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert capacity.widen_backlog([listening, idle, udp], backlog=512) == 1
        # Still listening, and now takes more than one queued connection without accept().
        clients = [socket.create_connection(listening.getsockname(), timeout=2) for _ in range(8)]
        for c in clients:
            c.close()
    finally:
        for s in (listening, idle, udp):
            s.close()


def test_widen_backlog_on_an_asyncio_server():
    async def main() -> int:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        try:
            return capacity.widen_backlog(server.sockets)
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(main()) == 1


def test_open_files_soft_limit_goes_up_to_the_hard_one():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        got = capacity.raise_nofile_limit()
        assert got >= soft
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == got
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_sysctl_reads_numbers_and_tolerates_missing_ones():
    assert capacity.sysctl("net.core.somaxconn") is None or capacity.sysctl("net.core.somaxconn") > 0
    assert capacity.sysctl("no.such.setting") is None
