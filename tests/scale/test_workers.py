"""`aigw up --workers 2`: real HAProxy, real worker processes, the mock provider, loopback ports chosen now.

Chat through HAProxy (the openai SDK, strict), a worker killed with SIGKILL under steady load (no failed request,
the supervisor restarts it), SIGTERM while a slow stream is open (it completes, exit 0), and `--workers` without
haproxy on PATH (one line, exit != 0).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from aigw.haproxy import INSTALL_HINT, server_states
from aigw.supervisor import stats_socket_for
from aigw.procs import free_port, start_logged, stop_process, wait_port
from tests.e2e.harness import ROOT, Admin, http as http_call, openai_target, wait_until

needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None and os.environ.get("CI") != "true",
                                reason="haproxy is not installed (Debian: apt-get install haproxy)")

BODY = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 64}
SLOW_REPLY = " ".join(f"word{i}" for i in range(12))  # 12 pieces × CHUNK_DELAY: a stream of a few seconds
CHUNK_DELAY = 0.25


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "aigw.json"
        self.port, self.admin_port = free_port(), free_port()
        self.log_path = root / "aigw-up.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "aigw.cli", "up", "--workers", "2", "--grace", "15", "--data", str(self.data),
               "--admin-port", str(self.admin_port), "--proxy-port", str(self.port)]
        self.proc = start_logged(cmd, self.log_path, cwd=str(ROOT))
        try:
            wait_port(self.port, 30.0, self.proc, what="aigw up --workers")
            # The supervisor says so once HAProxy sends to both workers.
            wait_until(lambda: "aigw: ready: 2/2 workers in rotation" in self.log(), timeout=60)
        except Exception:
            raise RuntimeError(f"aigw up --workers did not start:\n{self.log()}")

    def in_rotation(self) -> dict[str, str]:
        """HAProxy's view of the workers (its stats socket)."""
        return server_states(stats_socket_for(str(self.data)))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics_targets(self) -> list[str]:
        """The workers' metrics listeners, from the Prometheus file_sd document the supervisor writes."""
        path = Path(str(self.data) + ".workers.json")
        if not path.exists():
            return ["-"]
        return [t for group in json.loads(path.read_text()) for t in group["targets"]]

    @staticmethod
    def ready(target: str) -> bool:
        try:
            return http_call("GET", f"http://{target}/readyz", timeout=2).status == 200
        except OSError:
            return False

    def worker_pids(self) -> dict[str, int]:
        """worker id → pid, from the supervisor's children (Linux /proc)."""
        assert self.proc is not None
        out: dict[str, int] = {}
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as handle:
            children = [int(p) for p in handle.read().split()]
        for pid in children:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--worker-id" in argv:
                out[argv[argv.index(b"--worker-id") + 1].decode()] = pid
        return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from admin.server import serve
    from aigw.mock import MockProviderThread
    from store.repo import Store

    root = tmp_path_factory.mktemp("workers")
    fast = MockProviderThread(api_key="sk-openai-test", name="fast")
    slow = MockProviderThread(api_key="sk-openai-test", name="slow", reply=SLOW_REPLY, chunk_delay=CHUNK_DELAY)
    fast.start(), slow.start()
    c = Cluster(root)
    # The configuration is written before the workers start (each loads it at once): an admin of our own.
    handle = serve(Store(str(c.data)), "127.0.0.1", 0)
    admin = Admin(f"http://127.0.0.1:{handle.port}")
    c.keys = {"fast": admin.guide_setup([openai_target(fast.port)], subdomain="fast")["key"],  # type: ignore[attr-defined]
              "slow": admin.guide_setup([openai_target(slow.port)], subdomain="slow")["key"]}
    handle.shutdown()
    c.start()
    try:
        yield c
    finally:
        if c.proc is not None:
            stop_process(c.proc, timeout=20)
        fast.stop(), slow.stop()


@needs_haproxy
def test_chat_through_haproxy_with_the_openai_sdk(cluster):
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{cluster.port}/v1", api_key=cluster.keys["fast"], max_retries=0,
                    _strict_response_validation=True, timeout=30)
    for _ in range(4):  # leastconn spreads them; every answer is whole
        completion = client.chat.completions.create(model="gpt-4", messages=BODY["messages"], max_tokens=64)
        assert completion.choices[0].message.content == "Hello from fast"
    with client.chat.completions.stream(model="gpt-4", messages=BODY["messages"], max_tokens=64) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Hello from fast"
    # The admin API runs once, in the supervisor, and sees the workers' state files.
    assert http_call("GET", f"http://127.0.0.1:{cluster.admin_port}/api/v1/gateways").status == 200
    assert "workers behind haproxy" in cluster.log()


async def _steady_load(port: int, key: str, stop: asyncio.Event, concurrency: int = 4) -> tuple[int, list[str]]:
    """Chat requests back to back from ``concurrency`` loops until ``stop``; (answers, failures)."""
    failures: list[str] = []
    answers = 0

    async def loop(session: aiohttp.ClientSession) -> None:
        nonlocal answers
        while not stop.is_set():
            try:
                async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=BODY,
                                        headers={"X-Api-Key": key}) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        failures.append(f"{resp.status}: {body[:200]!r}")
                    else:
                        answers += 1
            except aiohttp.ClientError as exc:
                failures.append(repr(exc))

    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(loop(session) for _ in range(concurrency)))
    return answers, failures


@needs_haproxy
def test_kill_9_a_worker_under_load_fails_no_request_and_it_comes_back(cluster):
    before = cluster.worker_pids()
    assert set(before) == {"w1", "w2"}, before
    assert cluster.in_rotation() == {"w1": "UP", "w2": "UP"}
    w1_metrics = cluster.metrics_targets()[0]

    async def scenario() -> tuple[int, list[str], float]:
        stop = asyncio.Event()
        load = asyncio.create_task(_steady_load(cluster.port, cluster.keys["fast"], stop))
        await asyncio.sleep(1.0)  # load is flowing through both workers
        killed = time.monotonic()
        os.kill(before["w1"], signal.SIGKILL)
        # The supervisor starts a new w1 on the same ports; HAProxy sees it ready again.
        deadline = killed + 20
        while time.monotonic() < deadline:
            pids = await asyncio.to_thread(cluster.worker_pids)
            if (pids.get("w1") not in (None, before["w1"]) and await asyncio.to_thread(cluster.ready, w1_metrics)
                    and (await asyncio.to_thread(cluster.in_rotation)).get("w1") == "UP"):
                break
            await asyncio.sleep(0.1)
        back_after = time.monotonic() - killed
        await asyncio.sleep(1.0)  # and serves again under the same load
        stop.set()
        answers, failures = await load
        return answers, failures, back_after

    answers, failures, back_after = asyncio.run(scenario())
    # HAProxy sends elsewhere every request the dead worker never received (conn-failure) and retries those it
    # took and never answered (empty-response); only a request the worker had already answered in part can be
    # lost — at most the ones in flight on it at the kill (leastconn over 2 workers, 4 loops: 2).
    assert len(failures) <= 2, failures[:5]
    assert answers > 20
    assert back_after < 20, f"w1 not ready again after {back_after:.1f} s:\n{cluster.log()[-3000:]}"
    assert "worker w1" in cluster.log() and "SIGKILL" in cluster.log()
    assert cluster.worker_pids()["w2"] == before["w2"]


@needs_haproxy
def test_sigterm_lets_an_open_stream_finish_then_exits_0(cluster):
    conn = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps({**BODY, "stream": True}),
                 {"X-Api-Key": cluster.keys["slow"], "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    first = resp.readline()  # the stream is open and has begun
    assert first.startswith(b"data: ")
    started = time.monotonic()
    cluster.proc.send_signal(signal.SIGTERM)
    rest = resp.read()
    took = time.monotonic() - started
    conn.close()
    text = (first + rest).decode()
    assert text.rstrip().endswith("data: [DONE]"), text[-500:]
    content = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                      for line in text.splitlines() if line.startswith("data: {")
                      and json.loads(line[6:])["choices"])
    assert content == SLOW_REPLY
    assert took > CHUNK_DELAY * 4  # it really was cut short by nothing
    assert cluster.proc.wait(20) == 0, cluster.log()[-3000:]
    # New connections are refused once the supervisor is gone.
    with pytest.raises(OSError):
        http_call("GET", f"http://127.0.0.1:{cluster.port}/", timeout=2)


def test_workers_without_haproxy_on_path_is_one_line_and_fails(tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    assert shutil.which("haproxy", path=env["PATH"]) is None
    proc = subprocess.run([sys.executable, "-m", "aigw.cli", "up", "--workers", "2", "--data",
                           str(tmp_path / "aigw.json"), "--proxy-port", str(free_port()),
                           "--admin-port", str(free_port())],
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT), env=env)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [INSTALL_HINT]
    assert "apt-get install haproxy" in proc.stderr
    assert not (tmp_path / "aigw.json").exists()  # failed at once: nothing started


@needs_haproxy
def test_kill_9_of_the_supervisor_leaves_no_process_behind(tmp_path):
    c = Cluster(tmp_path)
    cmd = [sys.executable, "-m", "aigw.cli", "up", "--workers", "1", "--no-admin", "--data", str(c.data),
           "--proxy-port", str(c.port)]
    c.proc = start_logged(cmd, c.log_path, cwd=str(ROOT))
    try:
        wait_port(c.port, 30.0, c.proc, what="aigw up --workers 1")
        wait_until(lambda: all(c.ready(t) for t in c.metrics_targets()), timeout=30)
        with open(f"/proc/{c.proc.pid}/task/{c.proc.pid}/children") as handle:
            children = [int(p) for p in handle.read().split()]
        assert len(children) == 2  # the worker and HAProxy
        c.proc.kill()
        c.proc.wait(5)

        def gone(pid: int) -> bool:
            try:
                return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
            except OSError:
                return True

        wait_until(lambda: all(gone(pid) for pid in children), timeout=10)
    finally:
        stop_process(c.proc)
