"""Per-worker state files (`<data>.health.<id>.json`, `<data>.usage.<id>.json`) and the admin API's merged view,
and the generated haproxy.cfg as HAProxy itself checks it."""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timezone

import pytest

from addon.record import RequestRecord, TokenUsage
from admin import create_app
from aigw.haproxy import Backend, HaproxySettings, check_config, render_config
from store import Store
from store.health_file import health_path_for, merge_health, read_all_health, target_key, write_health
from store.usage import UsageBook, usage_path_for
from store.workers import check_worker_id, side_files

API = "/api/v1"
MARCH_1 = datetime(2026, 3, 1, 12, tzinfo=timezone.utc).timestamp()
TARGETS = [{"path": "/v1/chat/completions", "provider": "openai", "weight": 1, "default_model": "gpt-4",
            "credentials": {"header_name": "Authorization", "header_value": "Bearer sk-test"}}]


def test_names_per_worker(tmp_path):
    data = str(tmp_path / "aigw.json")
    assert health_path_for(data) == data + ".health.json"
    assert health_path_for(data, "w1") == data + ".health.w1.json"
    assert usage_path_for(data, "w2") == data + ".usage.w2.json"
    for bad in ("", "a.b", "../x", "w 1", "x" * 65):
        with pytest.raises(ValueError):
            check_worker_id(bad)


def test_side_files_list_only_worker_files(tmp_path):
    data = str(tmp_path / "aigw.json")
    for name in (".health.json", ".health.w1.json", ".health.w2.json", ".health.json.corrupt", ".health.a.b.json"):
        (tmp_path / ("aigw.json" + name)).write_text("{}")
    (tmp_path / ".aigw.json.health.w1.json.tmp-123").write_text("{}")  # an atomic write in progress
    assert side_files(health_path_for(data)) == {None: data + ".health.json", "w1": data + ".health.w1.json",
                                                 "w2": data + ".health.w2.json"}


def _entry(state: str, requests: int, *, error_at: str | None = None) -> dict:
    return {"state": state, "consecutive_failures": 0, "in_flight": 1, "requests": requests, "failures": 0,
            "last_error": f"at {error_at}" if error_at else None, "last_error_at": error_at}


def test_merge_takes_the_worst_state_sums_counters_and_drops_stale_files():
    now = time.time()
    key = target_key("u", "t")
    docs = [{"written_at": now, "pid": 1, "targets": {key: _entry("closed", 5, error_at="2026-01-01T00:00:00.000Z")}},
            {"written_at": now - 0.5, "pid": 2, "targets": {key: _entry("open", 7, error_at="2026-01-02T00:00:00.000Z")}},
            {"written_at": now - 60, "pid": 3, "targets": {key: _entry("open", 1000)}}]  # a retired worker's
    merged = merge_health(docs, fresh_within=5.0)
    entry = merged["targets"][key]
    assert (entry["state"], entry["requests"], entry["in_flight"]) == ("open", 12, 2)
    assert entry["last_error_at"] == "2026-01-02T00:00:00.000Z"
    assert merged["written_at"] == now and merged["workers"] == 2


@pytest.fixture
def admin(tmp_path):
    store = Store(tmp_path / "aigw.json")
    data = str(tmp_path / "aigw.json")
    client = create_app(store, health_path=health_path_for(data), usage_path=usage_path_for(data)).test_client()
    gid = client.post(f"{API}/gateways", json={"name": "g", "subdomain": "g"}).json["id"]
    upstream = client.post(f"{API}/gateways/{gid}/upstreams", json={"name": "u", "targets": TARGETS}).json
    return client, data, gid, upstream


def test_health_endpoint_merges_workers_and_breaks_them_down(admin):
    client, data, gid, upstream = admin
    key = target_key(upstream["id"], upstream["targets"][0]["id"])
    now = time.time()
    write_health(health_path_for(data, "w1"), {"written_at": now, "pid": 11, "targets": {key: _entry("closed", 3)}})
    write_health(health_path_for(data, "w2"), {"written_at": now, "pid": 12, "targets": {key: _entry("open", 4)}})
    assert set(read_all_health(health_path_for(data))) == {"w1", "w2"}
    body = client.get(f"{API}/gateways/{gid}/upstreams/{upstream['id']}/health").json
    assert body["stale"] is False
    assert [(t["state"], t["requests"]) for t in body["targets"]] == [("open", 7)]
    assert [(w["worker"], w["targets"][0]["state"]) for w in body["workers"]] == [("w1", "closed"), ("w2", "open")]


def test_usage_endpoint_sums_the_workers_books(admin):
    client, data, gid, _ = admin
    for worker, tokens in (("w1", 100), ("w2", 250)):
        book = UsageBook(usage_path_for(data, worker), clock=lambda: MARCH_1)
        book.add(RequestRecord(request_id="r", started=MARCH_1, gateway_id=gid, key_id="k", target_id="t",
                               served_model="gpt-4", status=200, usage=TokenUsage(tokens, 10, 0, reported=True)))
        book.stop()
    body = client.get(f"{API}/gateways/{gid}/usage?from=2026-03-01&to=2026-03-01").json
    assert (body["totals"]["requests"], body["totals"]["input_tokens"]) == (2, 350)


def test_generated_haproxy_cfg_is_valid_and_says_what_it_must():
    settings = HaproxySettings(bind_host="127.0.0.1", bind_port=18081,
                               backends=(Backend("w1", 20001, 21001), Backend("w2", 20002, 21002)))
    cfg = render_config(settings)
    for line in ("balance leastconn", "option httpchk GET /readyz", "retry-on conn-failure empty-response",
                 "option redispatch 1", "server w1 127.0.0.1:20001 check port 21001",
                 "server w2 127.0.0.1:20002 check port 21002", "timeout server 610s", "timeout client 610s"):
        assert line in cfg, line
    assert "http-server-close" not in cfg and "http-buffer-request" not in cfg and "compression" not in cfg
    with pytest.raises(ValueError):
        render_config(HaproxySettings(bind_host="127.0.0.1", bind_port=1, backends=()))


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (apt-get install haproxy)")
def test_haproxy_accepts_the_generated_config(tmp_path):
    settings = HaproxySettings(bind_host="0.0.0.0", bind_port=18081, backends=(Backend("w1", 20001, 21001),),
                               stats_socket=str(tmp_path / "haproxy.sock"))
    path = tmp_path / "haproxy.cfg"
    path.write_text(render_config(settings))
    ok, output = check_config(str(path))
    assert ok, output
