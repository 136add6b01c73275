"""Local ports and child processes: a free loopback port, waiting until something listens, starting a process
with its output in a log file, stopping one.

Used by `aigw demo`, the benchmark (scripts/bench.py) and the end-to-end test harness.
"""

from __future__ import annotations

import contextlib
import shutil
import os
import socket
import subprocess
import time
from collections.abc import Sequence


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None, *,
              what: str = "process") -> None:
    """Return once 127.0.0.1:``port`` accepts connections; raise when ``proc`` (``what``) exits first or
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def start_logged(cmd: Sequence[str], log: str | os.PathLike, *, cwd: str | os.PathLike | None = None
                 ) -> subprocess.Popen:
    """Start ``cmd`` with stdout and stderr going to the file ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, and SIGKILL when it has not exited after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)



class RedisProcess:
    """A private redis-server on a loopback port: no persistence, no other client (tests, the benchmark)."""

    def __init__(self, workdir: str | os.PathLike, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.binary = binary
        self.workdir = os.fspath(workdir)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        os.makedirs(self.workdir, exist_ok=True)
        cmd = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
               "--dir", self.workdir, "--protected-mode", "yes", "--daemonize", "no"]
        self.proc = start_logged(cmd, os.path.join(self.workdir, f"redis-{self.port}.log"))
        wait_port(self.port, 15.0, self.proc, what="redis-server")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
