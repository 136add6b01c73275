"""Hardening #1: any change to a target reaches the proxy within the live-config interval.

A target edit that keeps the target's id, weight and priority used to be ignored until restart (the balancer
cache kept the old Target objects), so rotating a leaked provider key did nothing.
"""

from __future__ import annotations

import time

from aigw.procs import free_port
from tests.e2e.harness import anthropic_target, http, openai_target, wait_until

BODY = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}
APPLY_WITHIN = 1.0  # seconds: the live-config interval is 0.25 s


def _chat(proxy, subdomain, key):
    return http("POST", f"{proxy.base}/v1/chat/completions", BODY,
                {"Host": f"{subdomain}.example.com", "X-Api-Key": key}, timeout=15)


def _put_targets(admin, cfg, edit) -> float:
    gid, uid = cfg["gateway"]["id"], cfg["upstream"]["id"]
    upstream = admin.ok("GET", f"/gateways/{gid}/upstreams/{uid}")
    for target in upstream["targets"]:
        edit(target)
    started = time.monotonic()
    admin.ok("PUT", f"/gateways/{gid}/upstreams/{uid}", upstream)
    return started


def _applied_after(started: float, predicate) -> float:
    wait_until(predicate, timeout=5.0, interval=0.02)
    return time.monotonic() - started


def test_port_edit_of_every_target_applies_live(admin, proxy, subdomain, mock_factory):
    """The issue's reproduction: the guide's upstream, every target's port set to 9 → 502 within a second."""
    oa = mock_factory("openai-mock", "sk-openai-test")
    an = mock_factory("anthropic-mock", "sk-ant-test")
    cfg = admin.guide_setup([openai_target(oa.port), anthropic_target(an.port)], subdomain=subdomain)
    assert _chat(proxy, subdomain, cfg["key"]).status == 200
    dead = free_port()

    def to_dead(t):
        t["port"] = dead

    started = _put_targets(admin, cfg, to_dead)
    took = _applied_after(started, lambda: _chat(proxy, subdomain, cfg["key"]).status == 502)
    assert took <= APPLY_WITHIN, f"port edit applied after {took:.2f} s"
    r = _chat(proxy, subdomain, cfg["key"])
    assert r.status == 502
    assert sorted(r.headers["x-gateway-attempts"].split(",")) == ["anthropic:connect", "openai:connect"]
    print(f"port edit reached requests {took * 1000:.0f} ms after the PUT started")


def test_port_edit_moves_traffic_to_the_new_server(admin, proxy, subdomain, mock_factory):
    old = mock_factory("old-server", "sk-openai-test")
    new = mock_factory("new-server", "sk-openai-test")
    cfg = admin.guide_setup([openai_target(old.port, weight=1)], subdomain=subdomain)
    assert _chat(proxy, subdomain, cfg["key"]).status == 200
    old.reset()

    def move(t):
        t["port"] = new.port

    started = _put_targets(admin, cfg, move)
    took = _applied_after(started, lambda: _chat(proxy, subdomain, cfg["key"]).status == 200 and bool(new.requests()))
    assert took <= APPLY_WITHIN
    before = len(old.requests())
    for _ in range(5):
        assert _chat(proxy, subdomain, cfg["key"]).status == 200
    assert len(old.requests()) == before, "requests still reach the old server after the edit"


def test_credential_rotation_applies_live(admin, proxy, subdomain, mock_factory):
    """Rotating a provider key (same id, weight, priority) takes effect without a restart — both ways."""
    mock = mock_factory("openai-mock", "sk-rotated")
    cfg = admin.guide_setup([openai_target(mock.port, weight=1, key="sk-leaked")], subdomain=subdomain)
    first = _chat(proxy, subdomain, cfg["key"])
    assert first.status == 502 and first.headers["x-gateway-attempts"] == "openai:401", first.body

    def rotate(t):
        t["credentials"] = {"header_name": "Authorization", "header_value": "Bearer sk-rotated"}

    started = _put_targets(admin, cfg, rotate)
    took = _applied_after(started, lambda: _chat(proxy, subdomain, cfg["key"]).status == 200)
    assert took <= APPLY_WITHIN
    sent = mock.requests()[-1]
    assert sent["headers"]["authorization"] == "Bearer sk-rotated"

    def wrong(t):
        t["credentials"] = {"header_name": "Authorization", "header_value": "Bearer sk-wrong-again"}

    started = _put_targets(admin, cfg, wrong)
    took = _applied_after(started, lambda: _chat(proxy, subdomain, cfg["key"]).status == 502)
    assert took <= APPLY_WITHIN


def test_health_is_forgotten_when_the_origin_changes(admin, proxy, subdomain, mock_factory):
    """An open circuit describes the server it was measured on: moving the target to another server clears it,
    while an edit that keeps the origin (here: a header) keeps it."""
    broken = mock_factory("broken-server", "sk-openai-test")
    broken.set_faults([{"status": 500}])
    good = mock_factory("good-server", "sk-openai-test")
    cfg = admin.guide_setup([openai_target(broken.port, weight=1)], subdomain=subdomain,
                            health_checks={"passive": True, "threshold": 1, "interval": 60})
    assert _chat(proxy, subdomain, cfg["key"]).status == 502  # opens the circuit (threshold 1)
    assert _chat(proxy, subdomain, cfg["key"]).headers.get("x-gateway-fail-open") == "true"

    def add_header(t):
        t["headers"] = {"x-team": "a"}

    _put_targets(admin, cfg, add_header)
    # The edit is live once the (fail-open) request carries the header; the circuit must have stayed open.
    wait_until(lambda: (_chat(proxy, subdomain, cfg["key"]), broken.requests()[-1]["headers"].get("x-team"))[1],
               timeout=5.0, interval=0.02)
    r = _chat(proxy, subdomain, cfg["key"])
    assert r.headers.get("x-gateway-fail-open") == "true", r.headers

    def move(t):
        t["port"] = good.port

    started = _put_targets(admin, cfg, move)
    took = _applied_after(started, lambda: _chat(proxy, subdomain, cfg["key"]).status == 200)
    assert took <= APPLY_WITHIN
    r = _chat(proxy, subdomain, cfg["key"])
    assert r.status == 200 and "x-gateway-fail-open" not in r.headers


def test_deleted_key_stops_working_within_the_interval(admin, proxy, subdomain, mock_factory):
    mock = mock_factory("openai-mock", "sk-openai-test")
    cfg = admin.guide_setup([openai_target(mock.port, weight=1)], subdomain=subdomain)
    assert _chat(proxy, subdomain, cfg["key"]).status == 200
    gid = cfg["gateway"]["id"]
    key_id = admin.ok("GET", f"/gateways/{gid}/keys")
    key_id = (key_id if isinstance(key_id, list) else key_id.get("keys", key_id.get("items")))[0]["id"]
    r = admin.call("DELETE", f"/gateways/{gid}/keys/{key_id}")
    answered = time.monotonic()
    assert r.status in (200, 204)
    took = _applied_after(answered, lambda: _chat(proxy, subdomain, cfg["key"]).status == 401)
    assert took <= APPLY_WITHIN
    print(f"deleted key refused {took * 1000:.0f} ms after the DELETE answered")
