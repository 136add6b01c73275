"""`aigw demo`: see the gateway balance, translate and fail over, offline, in one command.

Starts two mock providers (one OpenAI, one Anthropic) on loopback, runs `aigw up` on free ports with a throw-away
data file, applies the TrustGate guide's five admin calls through the admin API, sends traffic with the guide's
body, then stops one provider and keeps sending, printing who served what.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from aigw.procs import free_port, stop_process, wait_port


def _call(method: str, url: str, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


def run_demo(requests: int = 40) -> int:
    from aigw.mock import MockProviderThread

    tmp = Path(tempfile.mkdtemp(prefix="aigw-demo-"))
    admin_port, proxy_port = free_port(), free_port()
    openai_mock = MockProviderThread(api_key="sk-demo-openai", name="openai-mock")
    anthropic_mock = MockProviderThread(api_key="sk-demo-anthropic", name="anthropic-mock")
    oa_port, an_port = openai_mock.start(), anthropic_mock.start()
    print(f"mock OpenAI on :{oa_port}, mock Anthropic on :{an_port}")
    env = dict(os.environ, AIGW_DATA=str(tmp / "aigw.json"))
    proc = subprocess.Popen([sys.executable, "-m", "aigw.cli", "up", "--admin-port", str(admin_port),
                             "--proxy-port", str(proxy_port)], env=env)
    try:
        wait_port(admin_port, 30.0, proc, what="`aigw up`")
        wait_port(proxy_port, 30.0, proc, what="`aigw up`")
        api = f"http://127.0.0.1:{admin_port}/api/v1"
        print(f"gateway: admin {api}, proxy http://127.0.0.1:{proxy_port}\n")

        def step(title, method, path, body):
            status, _, out = _call(method, api + path, body)
            print(f"{title}: {method} {path} → {status}")
            if status >= 300:
                raise RuntimeError(out)
            return out

        gw = step("1 gateway", "POST", "/gateways", {"name": "multi-provider-gateway", "subdomain": "your-subdomain"})
        up = step("2 upstream", "POST", f"/gateways/{gw['id']}/upstreams", {
            "name": "ai-providers-upstream", "algorithm": "round-robin",
            "targets": [
                {"path": "/v1/chat/completions", "provider": "openai", "weight": 50, "priority": 1,
                 "host": "127.0.0.1", "port": oa_port, "protocol": "http",
                 "default_model": "gpt-4", "models": ["gpt-3.5-turbo", "gpt-4"],
                 "credentials": {"header_name": "Authorization", "header_value": "Bearer sk-demo-openai"}},
                {"path": "/v1/messages", "provider": "anthropic", "weight": 50, "priority": 1,
                 "host": "127.0.0.1", "port": an_port, "protocol": "http",
                 "default_model": "claude-3-sonnet", "models": ["claude-3-sonnet"],
                 "headers": {"anthropic-version": "2023-06-01"},
                 "credentials": {"header_name": "x-api-key", "header_value": "sk-demo-anthropic"}}],
            "health_checks": {"passive": True, "threshold": 3, "interval": 60}})
        svc = step("3 service", "POST", f"/gateways/{gw['id']}/services",
                   {"name": "multi-provider-service", "type": "upstream", "upstream_id": up["id"]})
        step("4 rule", "POST", f"/gateways/{gw['id']}/rules",
             {"path": "/v1", "service_id": svc["id"], "methods": ["POST"]})
        key = step("5 api key", "POST", f"/gateways/{gw['id']}/keys", {"name": "multi-provider-key"})["key"]
        time.sleep(0.6)  # the proxy picks up the new configuration within a second

        body = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 1020,
                "system": "You are an assistant"}
        headers = {"Host": "your-subdomain.example.com", "X-Api-Key": key}

        def traffic(n: int, title: str) -> None:
            served = collections.Counter()
            attempts = collections.Counter()
            for _ in range(n):
                status, hdrs, out = _call("POST", f"http://127.0.0.1:{proxy_port}/v1/chat/completions", body, headers)
                h = {k.lower(): v for k, v in hdrs.items()}
                served[(status, h.get("x-selected-provider", "-"))] += 1
                attempts[h.get("x-gateway-attempts", "-")] += 1
            print(f"\n{title}: {n} requests")
            for (status, provider), count in sorted(served.items()):
                print(f"  HTTP {status} served by {provider:10s} {count:4d}  ({100 * count / n:.0f}%)")
            for chain, count in attempts.most_common():
                print(f"  attempts {chain:32s} {count:4d}")

        traffic(requests, "balanced 50/50")
        print("\nstopping the OpenAI mock …")
        openai_mock.stop()
        traffic(requests, "with the OpenAI provider down")
        print("\nEvery request was answered in OpenAI format, whichever provider served it.")
        return 0
    finally:
        stop_process(proc)
        for mock in (openai_mock, anthropic_mock):
            try:
                mock.stop()
            except Exception:
                pass
