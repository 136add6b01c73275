"""`aigw config apply|validate` on bad files: each is one line on stderr naming the file and position, a non-zero
exit, no traceback, and the store file is not touched (not created, not rewritten)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from aigw.cli import main
from tests.e2e.harness import BIN

GOOD = """\
gateways:
  - name: gw
    subdomain: gw
    upstreams:
      - name: up
        targets:
          - provider: openai
            weight: 5
            credentials: {api_key: "${OPENAI_API_KEY}"}
    services:
      - name: svc
        upstream: up
    rules:
      - {path: /v1, service: svc}
"""
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9)) + "gateways: []\n"

BAD = {
    "syntax error": (GOOD.replace("name: svc", "name: [svc"), ":12:"),
    "unknown field": (GOOD.replace("weight: 5", "weight: 5\n            wieght: 6"), ":9:13: gateways[0].upstreams[0]"
                                                                                  ".targets[0].wieght: unknown field"),
    "unknown nested field": (GOOD.replace("{api_key:", "{apikey: x, api_key:"),
                             ":9:27: gateways[0].upstreams[0].targets[0].credentials.apikey: unknown field"),
    "wrong type": (GOOD.replace("weight: 5", "weight: heavy"), ":8:21: gateways[0].upstreams[0].targets[0].weight"),
    "dangling name": (GOOD.replace("upstream: up", "upstream: nope"),
                      ":12:19: gateways[0].services[0].upstream: no upstream named 'nope'"),
    "duplicate name": (GOOD.replace("    services:", "      - {name: up, targets: [{provider: openai}]}\n"
                                                    "    services:"), ":10:9: gateways[0].upstreams[1]: duplicate"),
    "missing env var": (GOOD, ":9:36: gateways[0].upstreams[0].targets[0].credentials.api_key: environment "
                              "variable OPENAI_API_KEY is not set"),
    "alias bomb": (BOMB, "aliases expand the document past"),
    "duplicate key": (GOOD.replace("weight: 5", "weight: 5\n            weight: 6"), ":9:13: duplicate key 'weight'"),
    "plaintext key in the file": (GOOD + "    keys:\n      - {name: k, key: aigw-written-in-the-file}\n",
                                  ":16:24: gateways[0].keys[0].key: a plaintext key must come from the environment"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("command", ["apply", "validate"])
def test_a_bad_file_is_one_line_with_its_position_and_nothing_is_written(case, command, tmp_path, capsys, env):
    text, expected = BAD[case]
    if case != "missing env var":
        env.setenv("OPENAI_API_KEY", "sk-test")
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    data = tmp_path / "data" / "aigw.json"
    argv = ["config", command, str(path)] + (["--data", str(data)] if command == "apply" else [])
    started = time.monotonic()
    assert main(argv) == 1
    assert time.monotonic() - started < 5  # an alias bomb is refused, never expanded
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"aigw: {path}") and expected in err, err
    assert not data.exists()


def test_nothing_is_written_to_an_existing_store_either(tmp_path, capsys, env):
    env.setenv("OPENAI_API_KEY", "sk-test")
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text(GOOD.replace("weight: 5", "weight: 7").replace("upstream: up", "upstream: nope"))
    data = tmp_path / "aigw.json"
    assert main(["config", "apply", str(good), "--data", str(data)]) == 0
    before = data.read_bytes()
    assert main(["config", "apply", str(bad), "--data", str(data)]) == 1
    assert data.read_bytes() == before


def test_a_50_mb_file_is_refused_by_its_size_before_parsing(tmp_path, env):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as handle:  # 50 MB of valid-looking YAML would take the parser minutes
        handle.write(b"gateways:\n" + b"  - {name: x, subdomain: x}\n" * (50 * 1024 * 1024 // 28))
    data = tmp_path / "aigw.json"
    started = time.monotonic()
    proc = subprocess.run([str(BIN / "aigw"), "config", "apply", str(path), "--data", str(data)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "AIGW_CONFIG": ""})
    assert time.monotonic() - started < 30
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and f"aigw: {path}: the file is 52.4 MB; the limit is 8 MiB" in proc.stderr
    assert not data.exists()


def test_good_file_validate_apply_dry_run_and_schema(tmp_path, capsys, env):
    import json

    env.setenv("OPENAI_API_KEY", "sk-test")
    path = tmp_path / "gateway.yaml"
    path.write_text(GOOD)
    data = tmp_path / "aigw.json"
    assert main(["config", "validate", str(path)]) == 0
    assert "valid (1 gateways, 1 upstreams, 1 services, 1 rules)" in capsys.readouterr().out
    assert main(["config", "apply", str(path), "--data", str(data), "--dry-run"]) == 0
    assert "Plan: 4 to create" in capsys.readouterr().out and not data.exists()
    assert main(["config", "apply", str(path), "--data", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["create"] == 4
    assert main(["config", "apply", str(path), "--data", str(data)]) == 0
    assert "No changes" in capsys.readouterr().out
    assert main(["config", "export", "--data", str(data)]) == 0
    exported = capsys.readouterr().out
    assert "api_key: ${OPENAI_API_KEY}" in exported and "sk-test" not in exported
    assert main(["config", "export", "--data", str(tmp_path / "missing.json")]) == 1
    assert "no store file" in capsys.readouterr().err
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["properties"]["gateways"]["items"] == {"$ref": "#/$defs/Gateway"}
