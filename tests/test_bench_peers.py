"""The benchmark's peer gateways (scripts/bench_peers.py): the pure helpers only, no install, no network."""

import json
import os
import subprocess
import sys

import pytest

from scripts import bench_peers as bp


def test_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AIGW_BENCH_CACHE", str(tmp_path))
    assert bp.cache_dir() == tmp_path
    monkeypatch.delenv("AIGW_BENCH_CACHE")
    assert bp.cache_dir() == bp.Path.home() / ".cache" / "aigw-bench"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_portkey_config_balances_two_targets_on_the_mock(provider):
    cfg = bp.portkey_config(provider, 4242)
    assert cfg["strategy"] == {"mode": "loadbalance"}
    assert [t["weight"] for t in cfg["targets"]] == [0.5, 0.5]
    for t in cfg["targets"]:
        assert t == {"provider": provider, "api_key": bp.MOCK_KEY, "custom_host": "http://127.0.0.1:4242/v1",
                     "weight": 0.5}


def test_litellm_config_is_json_yaml_with_two_deployments_per_model():
    cfg = json.loads(json.dumps(bp.litellm_config(4242)))
    by_name: dict[str, list[dict]] = {}
    for m in cfg["model_list"]:
        by_name.setdefault(m["model_name"], []).append(m["litellm_params"])
    assert sorted(by_name) == ["claude-3-sonnet", "gpt-4"]
    assert [p["api_base"] for p in by_name["gpt-4"]] == ["http://127.0.0.1:4242/v1"] * 2
    assert [p["model"] for p in by_name["claude-3-sonnet"]] == ["anthropic/claude-3-sonnet"] * 2
    assert cfg["general_settings"]["master_key"] == bp.LITELLM_MASTER_KEY


def test_openai_body_is_a_plain_chat_request_without_stream():
    body = bp.openai_body("gpt-4")
    assert set(body) == {"model", "max_tokens", "messages"}
    assert [m["role"] for m in body["messages"]] == ["system", "user"]


def test_peers_are_built_unstarted_and_unknown_names_refused(tmp_path):
    ps = bp.peers(4242, tmp_path)
    assert [p.name for p in ps] == list(bp.PEER_NAMES)
    assert all(p.pid == 0 and p.targets == [] for p in ps)
    assert [p.name for p in bp.peers(4242, tmp_path, ["litellm"])] == ["litellm"]
    with pytest.raises(ValueError, match="nope"):
        bp.peers(4242, tmp_path, ["portkey", "nope"])


def test_error_summary_picks_the_failing_line():
    npm = "npm error code ECONNREFUSED\nnpm error FetchError: request failed\nnpm error     at x (y.js:1)\n" \
          "npm error A complete log of this run can be found in: /x.log\n"
    assert bp._error_line(npm) == "FetchError: request failed"
    pip = "WARNING: x\nERROR: Could not find a version\nERROR: No matching distribution found for litellm\n"
    assert bp._error_line(pip) == "ERROR: No matching distribution found for litellm"
    assert bp._error_line("") == "no output"


def test_descendants_finds_grandchildren():
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); " \
           "time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(100):
            kids = bp.descendants(parent.pid)
            if kids:
                break
            bp.time.sleep(0.05)
        assert len(kids) == 1
    finally:
        for pid in bp.descendants(parent.pid):
            os.kill(pid, 9)
        parent.kill()
        parent.wait()
