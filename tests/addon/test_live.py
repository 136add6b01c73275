"""LiveConfig's per-upstream caches: health policies and balancers."""

from __future__ import annotations

from types import SimpleNamespace

from addon.health import HealthPolicy
from addon.live import LiveConfig


def _upstream(uid: str, threshold: int, active: bool = False):
    hc = SimpleNamespace(passive=True, threshold=threshold, interval=5, error_ratio=None, min_requests=10,
                         active=SimpleNamespace(enabled=active, path="/v1/models", interval=1))
    target = SimpleNamespace(id="t1", weight=1, priority=1)
    return SimpleNamespace(id=uid, algorithm="round-robin", sticky=None, targets=[target], health_checks=hc)


def test_policy_is_cached_per_upstream_object(tmp_path):
    live = LiveConfig(str(tmp_path / "aigw.json"))
    up = _upstream("u1", 4, active=True)
    first = live.policy(up)
    assert first == HealthPolicy(threshold=4, interval=5.0, active=True)
    assert live.policy(up) is first


def test_policy_follows_a_reloaded_upstream(tmp_path):
    """A reload yields new upstream objects under the same id: the policy must be the new one's."""
    live = LiveConfig(str(tmp_path / "aigw.json"))
    assert live.policy(_upstream("u1", 9)).threshold == 9
    assert live.policy(_upstream("u1", 2)).threshold == 2
    assert live.policy(_upstream("u1", 2, active=True)).active is True


def _target(tid="t1", *, port=1, key="k1", host="127.0.0.1"):
    return SimpleNamespace(id=tid, weight=1, priority=1, provider="openai", protocol="http", host=host, port=port,
                           credentials={"api_key": key})


def _with_targets(uid, *targets):
    up = _upstream(uid, 3)
    up.targets = list(targets)
    return up


def test_balancer_holds_the_reloaded_targets_even_when_id_weight_priority_are_unchanged(tmp_path):
    """Hardening #1: an edit of host/port/credentials must reach the plan, not only weight or priority edits."""
    live = LiveConfig(str(tmp_path / "aigw.json"))
    old = _with_targets("u1", _target(port=1, key="old"))
    assert live.balancer(old).plan(available=lambda t: True).order[0].credentials == {"api_key": "old"}
    new = _with_targets("u1", _target(port=9, key="new"))
    picked = live.balancer(new).plan(available=lambda t: True).order[0]
    assert picked is new.targets[0]
    assert (picked.port, picked.credentials) == (9, {"api_key": "new"})


def test_balancer_keeps_rotation_across_a_reload(tmp_path):
    live = LiveConfig(str(tmp_path / "aigw.json"))
    a = _with_targets("u1", _target("a"), _target("b"))
    first = live.balancer(a).plan(available=lambda t: True).order[0].id
    b = _with_targets("u1", _target("a", key="rotated"), _target("b", key="rotated"))
    second = live.balancer(b).plan(available=lambda t: True).order[0].id
    assert {first, second} == {"a", "b"}  # the rotation went on instead of restarting


def test_health_kept_for_the_same_origin_and_reset_for_a_new_one(tmp_path, monkeypatch):
    from store.health_file import target_key

    live = LiveConfig(str(tmp_path / "aigw.json"))
    policy = HealthPolicy(threshold=1, interval=60.0)
    key = target_key("u1", "t1")
    state = {"ups": [_with_targets("u1", _target(port=1))]}
    monkeypatch.setattr(live, "upstreams", lambda: state["ups"])
    live._prune()
    live.health.failure(key, policy, "boom")
    assert not live.health.is_available(key, policy)
    state["ups"] = [_with_targets("u1", _target(port=1, key="rotated"))]  # same origin: keep the open circuit
    live._prune()
    assert not live.health.is_available(key, policy)
    state["ups"] = [_with_targets("u1", _target(port=2, key="rotated"))]  # another server: forget it
    live._prune()
    assert live.health.is_available(key, policy)
