"""Every upstream attempt is a flow of its own — in a real mitmweb (through its HTTP API) and in a `-w` file —
carrying the request exactly as sent upstream (translated body, credentials masked) and the provider's raw answer."""

from __future__ import annotations

import json
import urllib.request

from aigw.procs import free_port
from tests.e2e.harness import Admin, anthropic_target, http, openai_target, start_mitmdump, wait_until

BODY = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hello attempt flows!"}], "max_tokens": 16}
WEB_PASSWORD = "web-password-for-tests-0123"


def _web(proxy, path: str):
    req = urllib.request.Request(f"http://127.0.0.1:{proxy.web_port}{path}",
                                 headers={"Authorization": f"Bearer {WEB_PASSWORD}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        data = resp.read()
    return json.loads(data) if path == "/flows" else data


def test_mitmweb_shows_each_attempt_as_sent_and_answered(admin, mock_factory, subdomain, stack):
    proxy = start_mitmdump(stack["data"], stack["root"] / "mitm-conf", tool="mitmweb",
                           extra=["--set", f"web_password={WEB_PASSWORD}"])
    try:
        an = mock_factory("anthropic-mock", "sk-ant-SECRET-provider-key")
        dead = free_port()
        cfg = Admin(admin.base, proxy.base).guide_setup(
            [openai_target(dead, priority=1, key="sk-openai-SECRET-key"),
             anthropic_target(an.port, priority=2, key="sk-ant-SECRET-provider-key")], subdomain=subdomain)
        r = http("POST", f"{proxy.base}/v1/chat/completions", BODY, {"X-Api-Key": cfg["key"]})
        assert r.status == 200 and r.headers["x-gateway-attempts"] == "openai:connect,anthropic:200"

        def flows():
            got = _web(proxy, "/flows")
            return got if sum(1 for f in got if "aigw attempt" in (f.get("comment") or "")) >= 2 else None

        got = wait_until(flows, timeout=10)
        contents = {f"{f['id']}/{part}": _web(proxy, f"/flows/{f['id']}/{part}/content.data")
                    for f in got for part in ("request", "response") if f.get(part)}
    finally:
        proxy.stop()
    client = [f for f in got if f["request"]["path"] == "/v1/chat/completions"
              and "aigw attempt" not in (f.get("comment") or "")]
    attempts = [f for f in got if "aigw attempt" in (f.get("comment") or "")]
    assert len(client) == 1 and len(attempts) == 2
    parent = client[0]["id"]
    assert all(parent in f["comment"] for f in attempts)
    first, second = sorted(attempts, key=lambda f: f["comment"])
    # 1: the refused OpenAI target — the request as it would have gone out, and the error.
    assert first["request"]["host"] == "127.0.0.1" and first["request"]["port"] == dead
    assert first["request"]["path"] == "/v1/chat/completions" and first.get("response") is None
    assert first["error"] and "connect" in first["error"]["msg"].lower()
    # 2: the Anthropic target — the translated request, and the provider's raw answer.
    assert second["request"]["path"] == "/v1/messages" and second["request"]["port"] == an.port
    assert second["response"]["status_code"] == 200
    headers = {k.lower(): v for k, v in second["request"]["headers"]}
    assert headers["anthropic-version"] == "2023-06-01"
    assert "SECRET" not in headers["x-api-key"] and headers["x-api-key"].endswith("-key")
    for f in attempts:
        assert all("SECRET" not in v for _, v in f["request"]["headers"])
    sent = json.loads(contents[f"{second['id']}/request"])
    assert sent["model"] == "claude-3-sonnet" and sent["messages"][0]["content"] in (
        "Hello attempt flows!", [{"type": "text", "text": "Hello attempt flows!"}])
    answered = json.loads(contents[f"{second['id']}/response"])
    assert answered["type"] == "message"  # Anthropic's own format: the answer as the provider sent it



def test_a_streamed_attempt_keeps_the_raw_provider_stream(tmp_path, admin, mock_factory, subdomain, stack):
    """-w file: a translated stream's attempt flow holds the Anthropic events as the provider sent them."""
    from mitmproxy import io

    flows_file = tmp_path / "flows.mitm"
    proxy = start_mitmdump(stack["data"], stack["root"] / "mitm-conf", extra=["-w", str(flows_file)])
    try:
        an = mock_factory("anthropic-mock", "sk-ant-SECRET-provider-key", chunk_delay=0.01)
        cfg = Admin(admin.base, proxy.base).guide_setup(
            [anthropic_target(an.port, key="sk-ant-SECRET-provider-key")], subdomain=subdomain)
        r = http("POST", f"{proxy.base}/v1/chat/completions", dict(BODY, stream=True), {"X-Api-Key": cfg["key"]})
        assert r.status == 200 and b"data: [DONE]" in r.body
    finally:
        proxy.stop()  # a clean stop: the save addon has written every flow
    with open(flows_file, "rb") as f:
        flows = list(io.FlowReader(f).stream())
    attempts = [fl for fl in flows if "aigw_attempt" in fl.metadata]
    assert len(attempts) == 1
    fl = attempts[0]
    assert fl.request.path == "/v1/messages" and json.loads(fl.request.content)["stream"] is True
    assert fl.response.status_code == 200
    raw = fl.response.content
    assert b"event: message_start" in raw and b"event: message_stop" in raw  # Anthropic's format, untranslated
    assert b"SECRET" not in flows_file.read_bytes()
