"""`aigw up --workers N`: one supervisor process owning N proxy workers and the HAProxy in front of them.

Why processes (docs/scaling.md): one mitmproxy process is one event loop on one core; N processes use N cores, and
a worker that crashes or is killed takes only its own connections with it. HAProxy owns the public port and
sends a request that a dead worker never received to another one (aigw/haproxy.py). The admin API runs once, in
the supervisor (the caller starts it); workers share the store file, Redis (when given) and nothing else.

The supervisor:
* picks each worker slot's loopback proxy and metrics ports once (a restarted worker gets the same ones, so the
  HAProxy configuration never changes) and writes ``<data>.workers.json``, a Prometheus file-based service
  discovery document listing every worker's metrics listener;
* restarts a worker that exits, after a backoff that doubles per quick death (one log line per restart);
* on SIGTERM/SIGINT: soft-stops HAProxy (it stops accepting, open connections go on), sends SIGTERM to the
  workers, which drain their requests and streams (aigw/worker.py) for up to ``grace`` seconds, then SIGKILLs
  what is left. A second signal skips the wait.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aigw.haproxy import Backend, HaproxyProcess, HaproxySettings, server_states
from aigw.procs import free_port, wait_port
from store.atomic import atomic_write_bytes

#: Backoff before restarting a worker: doubles per death within STABLE_AFTER_S of its start, up to the maximum.
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0
STABLE_AFTER_S = 30.0
WORKERS_SUFFIX = ".workers.json"
READY_WAIT_S = 60.0  # "ready" is said once every worker is in rotation, or after this long with how many are


def workers_path_for(store_path: str) -> str:
    """The Prometheus file_sd document of the workers of the store at ``store_path``."""
    return store_path + WORKERS_SUFFIX


def stats_socket_for(store_path: str) -> str:
    """HAProxy's stats socket (`show stat`: which workers it sends to) under ``aigw up --workers``; "" (none)
    when the path is too long for a unix socket address (108 bytes on Linux)."""
    path = os.path.join(store_path + ".run", "haproxy.sock")
    return path if len(os.fsencode(path)) < 104 else ""


@dataclass(slots=True)
class WorkerSlot:
    """One worker position: its id and ports stay, its process is replaced when it dies."""

    id: str
    port: int
    metrics_port: int
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None  # when a dead worker is due to start again

    @property
    def metrics_target(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"


@dataclass(slots=True)
class SupervisorSettings:
    workers: int
    bind_host: str
    bind_port: int
    data: str  # the store path: side files (<data>.workers.json, <data>.run/) live next to it
    #: The arguments of `aigw worker` for a slot (its ports and id): the proxy options of `aigw up`.
    worker_argv: Callable[[WorkerSlot], Sequence[str]]
    grace: float = 30.0
    haproxy_binary: str | None = None
    say: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))


class Supervisor:
    def __init__(self, settings: SupervisorSettings) -> None:
        if settings.workers < 1:
            raise ValueError("--workers must be at least 1")
        self.settings = settings
        self.slots = [WorkerSlot(id=f"w{i + 1}", port=free_port(), metrics_port=free_port())
                      for i in range(settings.workers)]
        self.rundir = settings.data + ".run"
        backends = tuple(Backend(s.id, s.port, s.metrics_port) for s in self.slots)
        self.haproxy = HaproxyProcess(
            HaproxySettings(bind_host=settings.bind_host, bind_port=settings.bind_port, backends=backends,
                            grace_s=settings.grace, stats_socket=stats_socket_for(settings.data)),
            self.rundir, settings.haproxy_binary)
        self._stop = threading.Event()
        self._signals = 0
        self._started = 0.0

    # -- processes ------------------------------------------------------------------------------------------------
    def _start_worker(self, slot: WorkerSlot) -> None:
        cmd = [sys.executable, "-m", "aigw.cli", "worker", *self.settings.worker_argv(slot)]
        # Its own process group: a Ctrl-C in the terminal reaches the supervisor only, which drains in order.
        slot.proc = subprocess.Popen(cmd, process_group=0)
        slot.started_at = time.monotonic()
        slot.restart_at = None

    def _reap(self, now: float) -> None:
        """Notice dead workers, schedule and perform their restarts."""
        for slot in self.slots:
            proc = slot.proc
            if proc is not None and proc.poll() is not None:
                slot.quick_deaths = slot.quick_deaths + 1 if now - slot.started_at < STABLE_AFTER_S else 0
                delay = min(BACKOFF_INITIAL_S * 2 ** max(slot.quick_deaths - 1, 0), BACKOFF_MAX_S)
                slot.proc, slot.restart_at = None, now + delay
                self.settings.say(f"aigw: worker {slot.id} (pid {proc.pid}) exited with {_describe(proc.returncode)}; "
                                  f"restarting in {delay:.1f} s")
            if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
                self._start_worker(slot)

    def write_discovery(self) -> str:
        """``<data>.workers.json``: Prometheus file_sd_configs targets, one per worker's metrics listener."""
        path = workers_path_for(self.settings.data)
        doc = [{"targets": [s.metrics_target], "labels": {"aigw_worker": s.id}} for s in self.slots]
        atomic_write_bytes(path, json.dumps(doc, indent=2).encode("utf-8"), durable=False)
        return path

    # -- the run --------------------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals += 1
        self._stop.set()

    def run(self) -> int:
        """Start everything, supervise until a stop signal, stop in order. The exit status."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        os.makedirs(self.rundir, exist_ok=True)
        self._started = time.monotonic()
        for slot in self.slots:
            self._start_worker(slot)
        try:
            self.haproxy.start()
            wait_port(self.settings.bind_port, 15.0, self.haproxy.proc, what="haproxy")
        except (RuntimeError, TimeoutError, OSError) as exc:
            self.settings.say(f"aigw: haproxy did not start: {exc} (log: {self.haproxy.log_path})")
            self._stop_workers(0.0)
            self.haproxy.wait(0)
            return 1
        discovery = self.write_discovery()
        count = f"{len(self.slots)} worker{'s' if len(self.slots) > 1 else ''}"
        self.settings.say(f"aigw: {count} behind haproxy ({self.haproxy.config_path}); "
                          f"metrics: {', '.join(s.metrics_target for s in self.slots)} (file_sd: {discovery})")
        status = 0
        announced = False
        while not self._stop.wait(0.1):
            if not announced:
                announced = self._announce_ready()
            if self.haproxy.proc is not None and self.haproxy.proc.poll() is not None:
                self.settings.say(f"aigw: haproxy exited with {_describe(self.haproxy.proc.returncode)}; "
                                  f"stopping (log: {self.haproxy.log_path})")
                status = 1
                break
            self._reap(time.monotonic())
        self.shutdown()
        return status

    def _announce_ready(self) -> bool:
        """One line once HAProxy sends to every worker (or after READY_WAIT_S, with how many); True once said."""
        if not self.haproxy.stats_socket:
            return True  # no stats socket: nothing to tell
        states = server_states(self.haproxy.stats_socket)
        up = sum(1 for state in states.values() if state.startswith("UP"))
        waited = time.monotonic() - self._started
        if up < len(self.slots) and waited < READY_WAIT_S:
            return False
        self.settings.say(f"aigw: ready: {up}/{len(self.slots)} workers in rotation")
        return True

    def shutdown(self) -> None:
        """HAProxy stops accepting, workers drain for up to ``grace`` seconds, the rest is killed."""
        self.haproxy.soft_stop()
        self._stop_workers(self.settings.grace)
        self.haproxy.wait(5.0)

    def _stop_workers(self, grace: float) -> None:
        running = [s.proc for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        signals_seen = self._signals
        for proc in running:
            while proc.poll() is None and time.monotonic() < deadline and self._signals <= max(signals_seen, 1):
                try:
                    proc.wait(0.1)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        for slot in self.slots:
            slot.proc = None


def _describe(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"status {returncode}"
