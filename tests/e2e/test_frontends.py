"""The three ways to run the addon (mitmdump -s, mitmweb -s, `aigw up`), and what a flow keeps."""

from __future__ import annotations

import subprocess
import sys

from aigw.procs import free_port, wait_port
from tests.e2e.harness import BIN, Admin, anthropic_target, http, openai_target, start_mitmdump

BODY = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 50,
        "system": "You are an assistant"}


def test_aigw_up_runs_admin_and_proxy_and_refuses_an_open_admin_without_token(tmp_path, mock_factory):
    admin_port, proxy_port = free_port(), free_port()
    data = tmp_path / "data" / "aigw.json"
    proc = subprocess.Popen([str(BIN / "aigw"), "up", "--admin-port", str(admin_port), "--proxy-port",
                             str(proxy_port), "--data", str(data)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_port(admin_port, 30, proc)
        wait_port(proxy_port, 30, proc)
        admin = Admin(f"http://127.0.0.1:{admin_port}", f"http://127.0.0.1:{proxy_port}")
        mock = mock_factory("anthropic-mock", "sk-ant-test")
        cfg = admin.guide_setup([anthropic_target(mock.port, weight=1)])
        r = http("POST", f"http://127.0.0.1:{proxy_port}/v1/chat/completions", BODY,
                 {"Host": "your-subdomain.example.com", "X-Api-Key": cfg["key"]})
        assert r.status == 200 and r.headers["x-selected-provider"] == "anthropic"
        assert data.exists()
    finally:
        proc.terminate()
        proc.wait(15)
    refused = subprocess.run([str(BIN / "aigw"), "up", "--admin-host", "0.0.0.0", "--admin-port", str(free_port()),
                              "--proxy-port", str(free_port()), "--data", str(data)], capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode != 0
    assert "token" in (refused.stdout + refused.stderr).lower()


def test_mitmweb_loads_the_addon_with_the_same_arguments(tmp_path, admin, mock_factory, subdomain, stack):
    proxy = start_mitmdump(stack["data"], stack["root"] / "mitm-conf", tool="mitmweb")
    try:
        mock = mock_factory("openai-mock", "sk-openai-test")
        cfg = Admin(admin.base, proxy.base).guide_setup([openai_target(mock.port, weight=1)], subdomain=subdomain)
        r = http("POST", f"{proxy.base}/v1/chat/completions", BODY, {"X-Api-Key": cfg["key"]})
        assert r.status == 200 and r.headers["x-selected-provider"] == "openai"
    finally:
        proxy.stop()


def test_saved_flows_carry_comment_and_mark_but_no_secrets(tmp_path, admin, mock_factory, subdomain, stack):
    from mitmproxy import io

    flows_file = tmp_path / "flows.mitm"
    proxy = start_mitmdump(stack["data"], stack["root"] / "mitm-conf", extra=["-w", str(flows_file)])
    try:
        mock = mock_factory("anthropic-mock", "sk-ant-SECRET-provider-key")
        dead = free_port()
        cfg = Admin(admin.base, proxy.base).guide_setup(
            [openai_target(dead, priority=1, key="sk-openai-SECRET"),
             anthropic_target(mock.port, priority=2, key="sk-ant-SECRET-provider-key")], subdomain=subdomain)
        for stream in (False, True):
            r = http("POST", f"{proxy.base}/v1/chat/completions", dict(BODY, stream=stream),
                     {"X-Api-Key": cfg["key"]})
            assert r.status == 200
            assert r.headers["x-gateway-attempts"] == "openai:connect,anthropic:200"
    finally:
        proxy.stop()
    raw = flows_file.read_bytes()
    assert b"SECRET" not in raw
    assert cfg["key"].encode() not in raw
    with open(flows_file, "rb") as f:
        # Client flows only (the upstream attempts are flows of their own: tests/e2e/test_attempt_flows.py).
        flows = [fl for fl in io.FlowReader(f).stream()
                 if fl.request.path.startswith("/v1/chat") and "aigw_attempt" not in fl.metadata]
    assert len(flows) >= 2
    for fl in flows[-2:]:
        assert "anthropic" in fl.comment and "openai:connect,anthropic:200" in fl.comment
        assert fl.marked
        # The caller's request is what the flow shows (not the internal relay hop).
        assert fl.request.method == "POST" and fl.request.path == "/v1/chat/completions"
        assert fl.response.status_code == 200
