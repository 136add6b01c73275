import json
import os

from store.health_file import health_path_for, read_health, target_key, write_health

DOC = {
    "written_at": 1700000000.5,
    "pid": 42,
    "targets": {target_key("u1", "t1"): {"state": "open", "consecutive_failures": 3, "last_error": "503",
                                          "last_error_at": "2026-01-01T00:00:00.000Z", "cooldown_remaining_s": 12.5,
                                          "ewma_ttfb_ms": 80.0, "in_flight": 0, "requests": 10, "failures": 3}},
}


def test_roundtrip(tmp_path):
    path = health_path_for(tmp_path / "aigw.json")
    assert path.endswith("aigw.json.health.json")
    write_health(path, DOC)
    assert read_health(path) == DOC
    assert os.listdir(tmp_path) == ["aigw.json.health.json"]  # no temp file left behind


def test_missing_or_corrupt_reads_as_none(tmp_path):
    path = tmp_path / "h.json"
    assert read_health(path) is None
    assert read_health(None) is None
    for content in ["{half", "[]", json.dumps({"targets": {}}), json.dumps({"written_at": 1, "targets": []})]:
        path.write_text(content)
        assert read_health(path) is None


def test_overwrite_replaces_atomically(tmp_path):
    path = tmp_path / "h.json"
    write_health(path, DOC)
    inode = os.stat(path).st_ino
    write_health(path, {**DOC, "pid": 43})
    assert read_health(path)["pid"] == 43
    assert os.stat(path).st_ino != inode  # replaced, not rewritten in place
