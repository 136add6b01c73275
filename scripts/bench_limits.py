"""--limits-cost: what a key's limits cost per request, kept in memory and in a real Redis (scripts/bench.py).

One gateway, three ways, alternated round by round: a key without limits; a key with every kind of limit (requests,
tokens, concurrency and a cost budget, all far above what the run uses, so every request pays for every check and
debit and none is refused) kept in the proxy's memory; the same kept in a private redis-server (aigw_redis).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LIMITS = {"requests": {"limit": 1_000_000_000, "window": "minute"},
          "tokens": {"limit": 1_000_000_000_000, "window": "minute"},
          "concurrent": 100_000,
          "budget": {"period": "month", "tokens": 1_000_000_000_000_000, "cost": 1_000_000_000}}


def limited_key(data: Path, subdomain: str) -> str:
    """A second key on the bench's `subdomain` gateway, with LIMITS."""
    sys.path.insert(0, str(ROOT))
    from admin import create_app
    from store.repo import Store

    c = create_app(Store(str(data))).test_client()
    gw = next(g for g in c.get("/api/v1/gateways").get_json() if g["subdomain"] == subdomain)
    r = c.post(f"/api/v1/gateways/{gw['id']}/keys", json={"name": "limited", "limits": LIMITS})
    assert r.status_code == 201, r.get_json()
    return r.get_json()["key"]


def limits_cost(b, args, data: Path, key: str, measure, gateway_headers, body: dict, median_row) -> dict:
    from aigw.procs import RedisProcess

    limited = limited_key(data, "oa")
    variants: dict[str, tuple[str, list[str]]] = {"no limits": (key, []), "memory": (limited, [])}
    redis = None
    if shutil.which("redis-server"):
        redis = RedisProcess(b.tmp / "redis").start()
        variants["redis"] = (limited, [f"aigw_redis={redis.url}"])
    try:
        systems = {name: (b.gateway(f"limits-{i}", data, options=opts), k)
                   for i, (name, (k, opts)) in enumerate(variants.items())}
        rows: dict[str, list[dict]] = {}
        for _ in range(max(args.rounds, 2)):
            for name, (s, k) in systems.items():
                rows.setdefault(name, []).append(
                    measure(args, s, "/v1/chat/completions", gateway_headers(k, "oa"), body).as_dict())
    finally:
        if redis is not None:
            redis.stop()
    out = {k: median_row(v) for k, v in rows.items()}
    lean = out["no limits"]
    for r in out.values():
        r["rps_vs_none"] = round(r["rps"] / lean["rps"], 3) if lean["rps"] else 0.0
        r["cpu_vs_none"] = round(r["cpu_ms_per_req"] / lean["cpu_ms_per_req"], 3) if lean["cpu_ms_per_req"] else 0.0
    if redis is None:
        out["redis"] = {"unavailable": "redis-server is not installed (apt-get install redis-server)"}
    return out


def render(res: dict) -> list[str]:
    lines = ["limits cost (openai scenario, a key with request, token, concurrency and budget limits; medians of "
             "alternated rounds):"]
    for name, r in res.items():
        if "unavailable" in r:
            lines.append(f"  {name:10s} skipped: {r['unavailable']}")
            continue
        lines.append(f"  {name:10s} {r['rps']:8.1f} req/s ({r['rps_vs_none']:.3f} x no limits)  CPU "
                     f"{r['cpu_ms_per_req']:.3f} ms/req ({r['cpu_vs_none']:.3f} x no limits)  errors {r['errors']}")
    return lines
