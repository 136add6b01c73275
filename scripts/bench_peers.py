"""Peer gateways for the benchmark: Portkey's open-source gateway and the LiteLLM proxy, in front of the same mock
provider as aigw, so one run compares them under the same load.

    from bench_peers import PeerUnavailable, peers

    for peer in peers(mock_port, tmp):           # not started yet
        try:
            with peer:                           # installs on first use, starts, waits until it answers
                for t in peer.targets:           # PeerTarget: name, url, headers, body (an OpenAI chat body)
                    load(t.url, t.headers, {**t.body, "stream": stream}); rss_kb(peer.pid)
        except PeerUnavailable as e:             # install or start failed: one line, skip that peer
            print(f"skipped: {e}", file=sys.stderr)

Each peer mirrors aigw's setup: two equally weighted targets on the same mock, reached with an OpenAI request,
both untranslated (→ the mock's /v1/chat/completions) and translated (→ Anthropic /v1/messages).

- portkey: npm ``@portkey-ai/gateway`` (PORTKEY_PINS), ``node build/start-server.js --port=N --headless``, bound
  to 127.0.0.1 by a preload; routing comes per request in the ``x-portkey-config`` header (a loadbalance config,
  ``custom_host`` = the mock). ``@hono/node-server`` is pinned to 1.13.5: with the newer 1.x that the gateway's
  loose ``^1.3.3`` range pulls in, every stream fails with HTTP 500 (``TypeError: immutable`` in Portkey's
  ResponseService.updateHeaders, which appends to the upstream fetch response's immutable headers; Portkey
  gateway issue #1389). Portkey's stream reader sleeps 25 ms before the first chunk of every stream, so its
  stream latency starts at ~30 ms here and its stream req/s is bound by concurrency / 30 ms, not by CPU.
- litellm: PyPI ``litellm[proxy]`` (LITELLM_VERSION) in its own venv, ``litellm --config config.yaml --host
  127.0.0.1 --port N --num_workers 1``, with a master key (clients send ``Authorization: Bearer``).

Installs go to ``$AIGW_BENCH_CACHE`` or ``~/.cache/aigw-bench`` (``portkey/``, ``litellm-venv/``), once; a note goes
to stderr while one runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from aigw.procs import free_port, start_logged, stop_process, wait_port

PORTKEY_PINS = {"@portkey-ai/gateway": "1.15.2", "@hono/node-server": "1.13.5", "@hono/node-ws": "1.2.0"}
# 1.108.14, 1.109.3 and 1.110.2 need litellm-proxy(-extras) releases the registry here lacks; 1.107.0 is reported
# compromised (as 1.82.7/1.82.8 were)
LITELLM_VERSION = "1.106.12"
MOCK_KEY = "sk-bench"  # the mock's API key (bench starts it with --api-key sk-bench)
LITELLM_MASTER_KEY = "sk-peer-bench"
INSTALL_TIMEOUT = 1200.0
START_TIMEOUT = 90.0
PEER_NAMES = ("portkey", "litellm")

# node's http servers listen on all interfaces unless told a host; Portkey's CLI has no option for it.
_LOOPBACK_PRELOAD = """import http from "node:http";
const listen = http.Server.prototype.listen;
http.Server.prototype.listen = function (port, host, ...rest) {
  return typeof port === "number" && (host === undefined || typeof host === "function")
    ? listen.call(this, port, "127.0.0.1", ...(host === undefined ? rest : [host, ...rest]))
    : listen.call(this, port, host, ...rest);
};
"""


class PeerUnavailable(RuntimeError):
    """A peer could not be installed or started; ``str()`` is one line naming the peer and the cause."""


@dataclass
class PeerTarget:
    """One way to load a running peer: POST ``body`` (OpenAI chat; the caller sets "stream") to ``url``."""

    name: str  # e.g. "portkey OpenAI→Anthropic"
    url: str
    headers: dict[str, str]
    body: dict


def cache_dir() -> Path:
    """Where peers are installed: $AIGW_BENCH_CACHE, else ~/.cache/aigw-bench."""
    return Path(os.environ.get("AIGW_BENCH_CACHE") or Path.home() / ".cache" / "aigw-bench")


def openai_body(model: str) -> dict:
    """The chat request every peer target sends (like bench's, with the system prompt as an OpenAI message)."""
    return {"model": model, "max_tokens": 64,
            "messages": [{"role": "system", "content": "You are an assistant"}, {"role": "user", "content": "Hello!"}]}


def portkey_config(provider: str, mock_port: int) -> dict:
    """The x-portkey-config for 2 equally weighted targets of ``provider`` ("openai"/"anthropic") on the mock."""
    target = {"provider": provider, "api_key": MOCK_KEY, "custom_host": f"http://127.0.0.1:{mock_port}/v1",
              "weight": 0.5}
    return {"strategy": {"mode": "loadbalance"}, "targets": [target, dict(target)]}


def litellm_config(mock_port: int) -> dict:
    """LiteLLM's config.yaml (written as JSON, which YAML reads): gpt-4 and claude-3-sonnet, 2 deployments each."""
    base = f"http://127.0.0.1:{mock_port}"
    models = [("gpt-4", "openai/gpt-4", base + "/v1"), ("claude-3-sonnet", "anthropic/claude-3-sonnet", base)]
    return {"model_list": [{"model_name": name, "litellm_params": {"model": model, "api_base": api_base,
                                                                   "api_key": MOCK_KEY, "weight": 1}}
                           for name, model, api_base in models for _ in range(2)],
            "router_settings": {"routing_strategy": "simple-shuffle"},
            "litellm_settings": {"telemetry": False},
            "general_settings": {"master_key": LITELLM_MASTER_KEY}}


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (from /proc), each after its parent."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _error_line(text: str) -> str:
    """The line of a tool's output that says what went wrong: its last error line (``ERROR: ...`` from pip,
    ``FetchError: ...`` from npm, a Python exception), else its last line."""
    lines = [ln.strip().removeprefix("npm error").strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and "complete log of this run" not in ln]
    errors = [ln for ln in lines if re.search(r"(\w*Error|ERROR|ERR!)\b", ln) and not ln.startswith("at ")]
    return (errors or lines or ["no output"])[-1][:300]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock, so that two bench runs do not install into the same folder at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _run_install(peer: str, cmd: list[str], log: Path) -> None:
    try:
        out = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=INSTALL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PeerUnavailable(f"{peer}: install failed: {e}") from None
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n{out.stdout}\n")
    if out.returncode != 0:
        raise PeerUnavailable(f"{peer}: install failed (exit {out.returncode}, log {log}): {_error_line(out.stdout)}")


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    """Until GET ``url`` answers 200 (the server is up, not only listening)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PeerUnavailable(f"{what} exited with {proc.returncode} while starting")
        with contextlib.suppress(OSError, urllib.error.URLError), \
                urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.2)
    raise PeerUnavailable(f"{what} did not answer {url} within {timeout:g} s")


@dataclass
class Peer:
    """A peer gateway in front of the mock; a context manager that installs (first use), starts and stops it.

    ``pid`` is the server process (the one to measure) while it runs; ``targets`` are ready once entered.
    """

    name: str
    mock_port: int
    tmp: Path
    port: int = 0
    pid: int = 0
    targets: list[PeerTarget] = field(default_factory=list)
    version: str = ""
    install_seconds: float = 0.0  # 0 when it was installed already
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.tmp / f"peer-{self.name}.log"

    def __enter__(self) -> Self:
        t0 = time.monotonic()
        with _locked(cache_dir() / f".{self.name}.lock"):
            if not self.installed():
                print(f"bench: installing {self.name} {self.version} into {cache_dir()} (first use only)...",
                      file=sys.stderr, flush=True)
                self.install()
                self.install_seconds = time.monotonic() - t0
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        try:
            self._proc = start_logged(self.command(), self.log, cwd=self.tmp)
        except OSError as e:
            raise PeerUnavailable(f"{self.name}: cannot start: {e}") from None
        self.pid = self._proc.pid
        try:
            wait_port(self.port, START_TIMEOUT, self._proc, what=self.name)
            self.wait_ready(self._proc)
            self.targets = self.make_targets()
        except (RuntimeError, TimeoutError) as e:
            self.stop()
            msg = str(e) if str(e).startswith(self.name) else f"{self.name}: {e}"
            raise PeerUnavailable(f"{msg} (log {self.log}: {_error_line(self.log.read_text(errors='replace'))})"
                                  ) from None
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM the server (SIGKILL after 10 s), then SIGKILL whatever it left behind."""
        if self._proc is None:
            return
        kids = descendants(self._proc.pid)
        stop_process(self._proc)
        for pid in kids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self._proc = None

    # what each peer defines
    def installed(self) -> bool: raise NotImplementedError
    def install(self) -> None: raise NotImplementedError
    def command(self) -> list[str]: raise NotImplementedError
    def wait_ready(self, proc: subprocess.Popen) -> None: raise NotImplementedError
    def make_targets(self) -> list[PeerTarget]: raise NotImplementedError


class PortkeyPeer(Peer):
    """Portkey's open-source gateway (node), routing by the x-portkey-config header of each request."""

    def __init__(self, mock_port: int, tmp: Path) -> None:
        super().__init__("portkey", mock_port, tmp, version=PORTKEY_PINS["@portkey-ai/gateway"])

    @property
    def home(self) -> Path:
        return cache_dir() / "portkey"

    @property
    def _stamp(self) -> str:
        return json.dumps(PORTKEY_PINS, sort_keys=True)

    def installed(self) -> bool:
        stamp = self.home / ".installed"
        return stamp.is_file() and stamp.read_text() == self._stamp

    def install(self) -> None:
        if not (shutil.which("node") and shutil.which("npm")):
            raise PeerUnavailable("portkey: needs node and npm on PATH")
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / ".installed").unlink(missing_ok=True)
        package = {"name": "aigw-bench-portkey", "private": True, "dependencies": PORTKEY_PINS,
                   "overrides": {"@hono/node-server": PORTKEY_PINS["@hono/node-server"]}}
        (self.home / "package.json").write_text(json.dumps(package, indent=2) + "\n")
        # --ignore-scripts: the gateway's only install script is patch-package, with no patches in the package
        _run_install("portkey", ["npm", "install", "--prefix", str(self.home), "--no-audit", "--no-fund",
                                 "--ignore-scripts", "--loglevel=error"], self.home / "install.log")
        (self.home / ".installed").write_text(self._stamp)

    def command(self) -> list[str]:
        preload = self.tmp / "portkey-loopback.mjs"
        preload.write_text(_LOOPBACK_PRELOAD)
        entry = self.home / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
        return ["node", "--import", preload.as_uri(), str(entry), f"--port={self.port}", "--headless"]

    def wait_ready(self, proc: subprocess.Popen) -> None:
        _wait_http(f"http://127.0.0.1:{self.port}/", proc, START_TIMEOUT, "portkey")

    def make_targets(self) -> list[PeerTarget]:
        url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        return [PeerTarget(f"portkey OpenAI→{label}", url,
                           {"content-type": "application/json",
                            "x-portkey-config": json.dumps(portkey_config(provider, self.mock_port),
                                                           separators=(",", ":"))},
                           openai_body(model))
                for label, provider, model in (("OpenAI", "openai", "gpt-4"),
                                               ("Anthropic", "anthropic", "claude-3-sonnet"))]


class LiteLLMPeer(Peer):
    """The LiteLLM proxy (Python, uvicorn, one worker) in its own venv, routing by its config.yaml."""

    def __init__(self, mock_port: int, tmp: Path) -> None:
        super().__init__("litellm", mock_port, tmp, version=LITELLM_VERSION)

    @property
    def venv(self) -> Path:
        return cache_dir() / "litellm-venv"

    def installed(self) -> bool:
        stamp = self.venv / ".installed"
        return stamp.is_file() and stamp.read_text() == LITELLM_VERSION and (self.venv / "bin" / "litellm").exists()

    def install(self) -> None:
        log = cache_dir() / "litellm-install.log"
        if not (self.venv / "bin" / "python").exists():
            _run_install("litellm", [sys.executable, "-m", "venv", str(self.venv)], log)
        (self.venv / ".installed").unlink(missing_ok=True)
        _run_install("litellm", [str(self.venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                                 "--disable-pip-version-check", f"litellm[proxy]=={LITELLM_VERSION}"], log)
        (self.venv / ".installed").write_text(LITELLM_VERSION)

    def command(self) -> list[str]:
        config = self.tmp / "litellm-config.yaml"
        config.write_text(json.dumps(litellm_config(self.mock_port), indent=2) + "\n")
        # env (which execs, so the pid stays the server's): no fetch of the remote model price map at start
        # (there is no network but the registries), errors-only logging
        return ["env", "LITELLM_LOCAL_MODEL_COST_MAP=True", "LITELLM_LOG=ERROR",
                str(self.venv / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
                "--port", str(self.port), "--num_workers", "1"]

    def wait_ready(self, proc: subprocess.Popen) -> None:
        _wait_http(f"http://127.0.0.1:{self.port}/health/readiness", proc, START_TIMEOUT, "litellm")

    def make_targets(self) -> list[PeerTarget]:
        url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        headers = {"content-type": "application/json", "authorization": f"Bearer {LITELLM_MASTER_KEY}"}
        return [PeerTarget(f"litellm OpenAI→{label}", url, dict(headers), openai_body(model))
                for label, model in (("OpenAI", "gpt-4"), ("Anthropic", "claude-3-sonnet"))]


_PEERS: dict[str, Callable[[int, Path], Peer]] = {"portkey": PortkeyPeer, "litellm": LiteLLMPeer}


def peers(mock_port: int, tmp: Path, names: list[str] | None = None) -> list[Peer]:
    """The peers called ``names`` (default: all of PEER_NAMES) in front of the mock on ``mock_port``, not started:
    enter each one (``with peer:``) to install/start it; logs and configs go to ``tmp``. ValueError for an
    unknown name."""
    unknown = sorted(set(names or ()) - set(_PEERS))
    if unknown:
        raise ValueError(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEER_NAMES)}")
    return [_PEERS[n](mock_port, Path(tmp)) for n in (names or PEER_NAMES)]
