"""End-to-end harness: a real admin API, a real mitmdump process with the addon, mock providers on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from aigw.procs import free_port, start_logged, stop_process, wait_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def http(method: str, url: str, body=None, headers: dict | None = None, timeout: float = 30.0) -> HttpResult:
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return HttpResult(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as err:
        return HttpResult(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


class Admin:
    """Talks to the admin API over HTTP, as a user's curl would."""

    def __init__(self, base: str, proxy_base: str | None = None) -> None:
        self.base = base.rstrip("/")
        self.proxy_base = proxy_base

    def wait_live(self, key: str, timeout: float = 5.0) -> None:
        """Wait until the proxy knows the key (it reloads the store within a second of a change)."""
        if self.proxy_base is None:
            return
        wait_until(lambda: http("POST", f"{self.proxy_base}/aigw-config-probe", {}, {"X-Api-Key": key}).status != 401,
                   timeout=timeout)

    def call(self, method: str, path: str, body=None) -> HttpResult:
        return http(method, f"{self.base}/api/v1{path}", body)

    def ok(self, method: str, path: str, body=None) -> dict:
        r = self.call(method, path, body)
        assert r.status in (200, 201, 204), (r.status, r.body[:500])
        return r.json() if r.body else {}

    def guide_setup(self, targets: list[dict], *, algorithm: str = "round-robin", subdomain: str = "your-subdomain",
                    rule_path: str = "/v1", health_checks: dict | None = None, extra: dict | None = None) -> dict:
        """The TrustGate guide's five calls, with the given targets; returns ids and the key."""
        gw = self.ok("POST", "/gateways", {"name": f"gw-{subdomain}", "subdomain": subdomain})
        upstream = {"name": "ai-providers-upstream", "algorithm": algorithm, "targets": targets,
                    "health_checks": health_checks or {"passive": True, "threshold": 3, "interval": 60}}
        upstream.update(extra or {})
        up = self.ok("POST", f"/gateways/{gw['id']}/upstreams", upstream)
        svc = self.ok("POST", f"/gateways/{gw['id']}/services",
                      {"name": "multi-provider-service", "type": "upstream", "description": "Load balanced AI service",
                       "upstream_id": up["id"]})
        rule = self.ok("POST", f"/gateways/{gw['id']}/rules",
                       {"path": rule_path, "service_id": svc["id"], "methods": ["POST"], "strip_path": False,
                        "active": True})
        key = self.ok("POST", f"/gateways/{gw['id']}/keys", {"name": "multi-provider-key"})
        self.wait_live(key["key"])
        return {"gateway": gw, "upstream": up, "service": svc, "rule": rule, "key": key["key"]}


def openai_target(port: int, *, weight: int = 50, priority: int = 1, key: str = "sk-openai-test", **kw) -> dict:
    t = {"path": "/v1/chat/completions", "provider": "openai", "weight": weight, "priority": priority,
         "host": "127.0.0.1", "port": port, "protocol": "http", "default_model": "gpt-4",
         "models": ["gpt-3.5-turbo", "gpt-4"],
         "credentials": {"header_name": "Authorization", "header_value": f"Bearer {key}"}}
    t.update(kw)
    return t


def anthropic_target(port: int, *, weight: int = 50, priority: int = 1, key: str = "sk-ant-test", **kw) -> dict:
    t = {"path": "/v1/messages", "provider": "anthropic", "weight": weight, "priority": priority,
         "host": "127.0.0.1", "port": port, "protocol": "http", "default_model": "claude-3-sonnet",
         "models": ["claude-3-sonnet"], "headers": {"anthropic-version": "2023-06-01"},
         "credentials": {"header_name": "x-api-key", "header_value": key}}
    t.update(kw)
    return t


def gemini_target(port: int, *, weight: int = 50, priority: int = 1, key: str = "gm-test", **kw) -> dict:
    t = {"provider": "gemini", "weight": weight, "priority": priority, "host": "127.0.0.1", "port": port,
         "protocol": "http", "default_model": "gemini-2.0-flash", "models": ["gemini-2.0-flash"],
         "credentials": {"api_key": key}}
    t.update(kw)
    return t


@dataclass
class Proxy:
    port: int
    proc: subprocess.Popen
    log_path: Path
    data: Path
    web_port: int | None = None  # mitmweb's own port (tool="mitmweb")
    metrics_port: int | None = None  # the metrics listener (/metrics, /livez, /readyz)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)


def start_mitmdump(data: Path, confdir: Path, *, extra: list[str] | None = None, tool: str = "mitmdump",
                   quiet: bool = True) -> Proxy:
    """``quiet``: mitmproxy's -q (no flow lines, no log lines below errors); False keeps the addon's info lines."""
    port, metrics_port = free_port(), free_port()
    log_path = data.parent / f"{tool}-{port}.log"
    cmd = [str(BIN / tool), *(["-q"] if quiet else ["--set", "flow_detail=0"]), "-s", str(ROOT / "addon" / "entry.py"), "--mode", "reverse:http://127.0.0.1:9",
           "--listen-host", "127.0.0.1", "-p", str(port), "--set", "connection_strategy=lazy",
           "--set", f"aigw_data={data}", "--set", f"confdir={confdir}",
           "--set", f"aigw_metrics_listen=127.0.0.1:{metrics_port}"]
    web_port = free_port() if tool == "mitmweb" else None
    if tool == "mitmweb":
        cmd += ["--set", "web_open_browser=false", "--set", f"web_port={web_port}", "--set", "web_host=127.0.0.1"]
    cmd += extra or []
    proc = start_logged(cmd, log_path, cwd=str(ROOT))
    proxy = Proxy(port=port, proc=proc, log_path=log_path, data=data, web_port=web_port, metrics_port=metrics_port)
    try:
        wait_port(port, 30.0, proc)
    except Exception:
        proxy.stop()
        raise RuntimeError(f"mitmdump did not start:\n{proxy.log()}")
    return proxy


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"condition not met in {timeout} s (last: {last!r})")
