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
