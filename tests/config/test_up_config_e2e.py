"""`aigw up --config` end to end: the real command (a subprocess) serving examples/trustgate-guide-mock.yaml with
no database, against the repo's mock providers on free loopback ports.

Proves: the guide's request is answered; the admin API is read-only (405 saying why) but shows the file; a weight
edited in the file moves the split under continuous load with no failed request; a broken edit keeps the last good
configuration serving and the log names the file's line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest

from aigw.procs import free_port, stop_process, wait_port
from tests.e2e.harness import BIN, ROOT, http, wait_until

EXAMPLE = ROOT / "examples" / "trustgate-guide-mock.yaml"
GUIDE_BODY = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 1020,
              "system": "You are an assistant"}
KEY = "aigw-e2e-config-key-0123456789abcdef"


def _write(path: Path, text: str) -> None:
    """As an editor saves: a new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _set_weights(text: str, openai: int, anthropic: int) -> str:
    weights = iter((openai, anthropic))
    return re.sub(r"(?m)^(\s+weight: )\d+$", lambda m: f"{m.group(1)}{next(weights)}", text, count=2)


@pytest.fixture
def mocks():
    from aigw.mock import MockProviderThread

    started = {}
    for name, key in (("openai", "sk-openai-test"), ("anthropic", "sk-ant-test")):
        mock = MockProviderThread(api_key=key, name=f"{name}-mock")
        mock.port = mock.start()
        started[name] = mock
    yield started
    for mock in started.values():
        mock.stop()


@pytest.mark.timeout(120)
def test_up_config_serves_the_guide_reloads_weights_under_load_and_survives_a_broken_edit(tmp_path, mocks):
    config = tmp_path / "gateway.yaml"
    shutil.copyfile(EXAMPLE, config)  # the example exactly as shipped (the test edits its copy)
    admin_port, proxy_port, metrics_port = free_port(), free_port(), free_port()
    env = {**os.environ, "AIGW_KEY": KEY, "AIGW_MOCK_OPENAI_PORT": str(mocks["openai"].port),
           "AIGW_MOCK_ANTHROPIC_PORT": str(mocks["anthropic"].port)}
    env.pop("AIGW_CONFIG", None)
    log_path = tmp_path / "aigw-up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(BIN / "aigw"), "up", "--config", str(config), "--data",
                                 str(tmp_path / "state" / "aigw.json"), "--admin-port", str(admin_port),
                                 "--proxy-port", str(proxy_port), "--metrics-listen", f"127.0.0.1:{metrics_port}"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path))
    base, admin = f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{admin_port}/api/v1"
    headers = {"Host": "your-subdomain.example.com", "X-Api-Key": KEY}
    try:
        wait_port(admin_port, 30, proc)
        wait_port(proxy_port, 30, proc)

        # The guide's request, end to end.
        r = http("POST", f"{base}/v1/chat/completions", GUIDE_BODY, headers)
        assert r.status == 200, r.body[:300]
        assert r.headers["x-selected-provider"] in ("openai", "anthropic")
        assert r.json()["choices"][0]["message"]["content"]
        assert not (tmp_path / "state" / "aigw.json").exists()  # no database

        # The admin API shows the file and refuses writes, saying why.
        gateways = http("GET", f"{admin}/gateways").json()
        assert [g["name"] for g in gateways] == ["multi-provider-gateway"]
        refused = http("POST", f"{admin}/gateways", {"name": "x", "subdomain": "x"})
        assert refused.status == 405
        assert "read-only" in refused.json()["error"] and str(config) in refused.json()["error"]
        exported = http("GET", f"{admin}/config", headers={"Accept": "application/yaml"})
        assert exported.status == 200 and b"ai-providers-upstream" in exported.body

        # Continuous load while the file is edited.
        results: Counter = Counter()
        order: list[str] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                resp = http("POST", f"{base}/v1/chat/completions", GUIDE_BODY, headers, timeout=10)
                if resp.status != 200:
                    results["failed"] += 1
                    continue
                provider = resp.headers.get("x-selected-provider", "?")
                results[provider] += 1
                order.append(provider)

        workers = [threading.Thread(target=load, daemon=True) for _ in range(3)]
        for worker in workers:
            worker.start()
        try:
            wait_until(lambda: results["openai"] >= 5 and results["anthropic"] >= 5, timeout=20)  # 50/50 first
            original = config.read_text()
            _write(config, _set_weights(original, 100, 0))  # weight 0: only when nothing else is left
            wait_until(lambda: len(order) > 20 and set(order[-20:]) == {"openai"}, timeout=20)
            mark = len(order)
            wait_until(lambda: len(order) >= mark + 40, timeout=30)
            assert set(order[mark:mark + 40]) == {"openai"}

            # A broken edit: the last good configuration keeps serving; the log says what and where.
            broken = _set_weights(original, 100, 0).replace("weight: 100", 'weight: "lots"', 1)
            _write(config, broken)
            line = broken.splitlines().index('            weight: "lots"') + 1
            wait_until(lambda: f"gateway.yaml:{line}:" in log_path.read_text(errors="replace"), timeout=10)
            mark = len(order)
            wait_until(lambda: len(order) >= mark + 20, timeout=30)
            assert set(order[mark:]) == {"openai"}

            # Fixed again: back to 50/50.
            _write(config, original)
            wait_until(lambda: "anthropic" in order[-10:], timeout=20)
        finally:
            stop.set()
            for worker in workers:
                worker.join(15)
        assert results["failed"] == 0, results
        assert proc.poll() is None
    finally:
        stop_process(proc)
    text = log_path.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]


@pytest.mark.timeout(60)
def test_plain_mitmdump_serves_a_config_file_through_the_aigw_config_option(tmp_path, mocks, monkeypatch):
    from tests.e2e.harness import start_mitmdump

    config = tmp_path / "gateway.yaml"
    shutil.copyfile(EXAMPLE, config)
    for name, value in (("AIGW_KEY", KEY), ("AIGW_MOCK_OPENAI_PORT", str(mocks["openai"].port)),
                        ("AIGW_MOCK_ANTHROPIC_PORT", str(mocks["anthropic"].port))):
        monkeypatch.setenv(name, value)  # inherited by the mitmdump process
    data = tmp_path / "state" / "aigw.json"
    data.parent.mkdir()
    proxy = start_mitmdump(data, tmp_path / "mitm-conf", extra=["--set", f"aigw_config={config}"])
    try:
        headers = {"Host": "your-subdomain.example.com", "X-Api-Key": KEY}
        seen = {http("POST", f"{proxy.base}/v1/chat/completions", GUIDE_BODY, headers).headers.get(
            "x-selected-provider") for _ in range(4)}
        assert seen == {"openai", "anthropic"}
        assert not data.exists()
    finally:
        proxy.stop()
