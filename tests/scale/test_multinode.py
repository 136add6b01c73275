"""Two "nodes" on one machine: each `aigw up --workers 2` on its own loopback address, both serving one YAML
configuration (no database) and sharing one real redis-server, behind a front HAProxy of their own.

A target that breaks is found broken through one node, and the other node stops sending to it within a second; a
key limit of N requests is N across both nodes (four workers). Real processes, loopback ports chosen now, every wait
a bounded poll.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aigw.procs import RedisProcess, free_port, start_logged, stop_process
from tests.e2e.harness import ROOT, http, wait_until

pytestmark = pytest.mark.skipif(
    (shutil.which("haproxy") is None or shutil.which("redis-server") is None) and os.environ.get("CI") != "true",
    reason="needs haproxy and redis-server (Debian: apt-get install haproxy redis-server)")

KEY, LIMITED_KEY = "aigw-multinode-key-0123456789abcdefghij", "aigw-multinode-limited-0123456789abcdef"
LIMIT = 6
HOST = "mn.example.com"
BODY = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}
THRESHOLD = 3
NODE_HOSTS = ("127.0.0.2", "127.0.0.3")

CONFIG = """\
version: 1
gateways:
  - name: multinode
    subdomain: mn
    upstreams:
      - name: pool
        algorithm: round-robin
        targets:
          - {{id: good, provider: openai, host: 127.0.0.1, port: {good}, protocol: http, default_model: gpt-4,
             credentials: {{api_key: sk-openai-test}}}}
          - {{id: bad, provider: openai, host: 127.0.0.1, port: {bad}, protocol: http, default_model: gpt-4,
             credentials: {{api_key: sk-openai-test}}}}
        health_checks: {{passive: true, threshold: {threshold}, interval: 60}}
        failover: {{connect_timeout: 1.0, headers_timeout: 3.0, first_token_timeout: 3.0, idle_timeout: 3.0,
                    total_timeout: 20.0}}
    services:
      - {{name: chat, upstream: pool, type: upstream}}
    rules:
      - {{path: /v1, service: chat, methods: [POST]}}
    keys:
      - name: open
        key: ${{MN_KEY}}
      - name: limited
        key: ${{MN_LIMITED_KEY}}
        limits: {{requests: "{limit}/day"}}
"""

FRONT = """\
global
    log stdout format raw local0 warning
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 2
    option redispatch
    retry-on conn-failure empty-response
frontend front
    bind 127.0.0.1:{port}
    default_backend nodes
backend nodes
    balance roundrobin
    server node1 {n1}:{p1}
    server node2 {n2}:{p2}
"""


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Node:
    def __init__(self, root: Path, name: str, host: str, config: Path, redis_url: str) -> None:
        self.root, self.host, self.port = root / name, host, free_port()
        self.root.mkdir()
        self.log_path = self.root / "up.log"
        cmd = [sys.executable, "-m", "aigw.cli", "up", "--workers", "2", "--grace", "5", "--no-admin",
               "--config", str(config), "--redis", redis_url, "--data", str(self.root / "aigw.json"),
               "--proxy-host", host, "--proxy-port", str(self.port)]
        self.proc = start_logged(cmd, self.log_path, cwd=str(ROOT))

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"node exited:\n{self.log_path.read_text(errors='replace')}")
        return _accepts(self.host, self.port) and _chat(self.base, KEY).status == 200

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)


def _chat(base: str, key: str):
    try:
        return http("POST", f"{base}/v1/chat/completions", BODY, {"X-Api-Key": key, "Host": HOST}, timeout=20)
    except OSError as exc:  # not up yet
        return type("R", (), {"status": 0, "body": str(exc).encode(), "headers": {}})()


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    from aigw.mock import MockProviderThread

    root = tmp_path_factory.mktemp("multinode")
    good = MockProviderThread(api_key="sk-openai-test", name="good")
    bad = MockProviderThread(api_key="sk-openai-test", name="bad")
    good.start(), bad.start()
    redis = RedisProcess(root / "redis").start()
    config = root / "aigw.yaml"
    config.write_text(CONFIG.format(good=good.port, bad=bad.port, threshold=THRESHOLD, limit=LIMIT))
    # Keys come from the environment (a plaintext key in the file is refused); the nodes inherit it.
    saved = {name: os.environ.get(name) for name in ("MN_KEY", "MN_LIMITED_KEY")}
    os.environ.update(MN_KEY=KEY, MN_LIMITED_KEY=LIMITED_KEY)
    started: list[Node] = []
    front_proc: subprocess.Popen | None = None
    try:
        for i, host in enumerate(NODE_HOSTS):
            started.append(Node(root, f"node{i + 1}", host, config, redis.url))
        for node in started:
            wait_until(node.ready, timeout=45, interval=0.2)
        front_port = free_port()
        cfg = root / "front.cfg"
        cfg.write_text(FRONT.format(port=front_port, n1=started[0].host, p1=started[0].port, n2=started[1].host,
                                    p2=started[1].port))
        front_proc = start_logged(["haproxy", "-db", "-f", str(cfg)], root / "front.log")
        wait_until(lambda: _accepts("127.0.0.1", front_port), timeout=15)
        bad.reset(), good.reset()
        yield {"nodes": started, "front": f"http://127.0.0.1:{front_port}", "good": good, "bad": bad}
    finally:
        if front_proc is not None:
            stop_process(front_proc)
        for node in started:
            node.stop()
        redis.stop()
        good.stop(), bad.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_a_target_broken_on_one_node_is_avoided_by_both(nodes):
    node1, node2 = nodes["nodes"]
    bad = nodes["bad"]
    bad.set_faults([{"status": 500}])
    # Through node 1 only: failed over (every answer 200) until one of its workers opens the circuit. Round robin
    # over two targets sends every other request to the bad one; a worker opens after THRESHOLD failures.
    answers = [_chat(node1.base, KEY) for _ in range(4 * THRESHOLD + 4)]
    assert all(r.status == 200 for r in answers), [(r.status, r.body[:200]) for r in answers if r.status != 200]
    assert len(bad.requests("/chat/completions")) >= THRESHOLD

    def avoided_by(base: str) -> bool:
        before = len(bad.requests("/chat/completions"))
        served = [_chat(base, KEY) for _ in range(8)]
        assert all(r.status == 200 for r in served)
        return len(bad.requests("/chat/completions")) == before

    wait_until(lambda: avoided_by(node1.base), timeout=10, interval=0.05)
    # Node 2 has seen no failure of its own. On its own, each of its two workers would need THRESHOLD failures to
    # open the circuit (8 round-robin requests send it 4). It avoids the target because node 1 said so through
    # Redis: within a second, before its workers could learn it themselves.
    seen = len(bad.requests("/chat/completions"))
    deadline = time.monotonic() + 1.0
    while not avoided_by(node2.base):
        assert time.monotonic() < deadline, "node 2 still sends to the broken target a second later"
    assert len(bad.requests("/chat/completions")) - seen < THRESHOLD
    assert avoided_by(nodes["front"])
    bad.set_faults([])


def test_a_key_limit_is_one_limit_across_both_nodes(nodes):
    node1, node2 = nodes["nodes"]
    statuses = []
    for i in range(LIMIT + 3):  # alternate the nodes, and through the front door too
        base = (node1.base, node2.base, nodes["front"])[i % 3]
        statuses.append(_chat(base, LIMITED_KEY).status)
    assert statuses == [200] * LIMIT + [429] * 3, statuses
