"""What scripts/bench.py prints: the per-scenario table, then one summary in the shape of the performance issue
(system × JSON req/s, stream req/s, added p50 at c=1) and each of its targets, met or not, from the same run.

Every ratio is of two numbers measured in this run on this machine; nothing here is an absolute claim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

FAILOVER_BUDGET_MS = 100.0  # what one failover (refused or 500, then served) may add at p50


@dataclass(frozen=True)
class Target:
    """One number the gateway should reach (docs: README "Performance"), read from a run's results."""
    what: str
    value: Callable[[dict], float | None]  # None: not measured in this run
    ok: Callable[[float], bool]
    unit: str = ""


def _ratio(res: dict, scenario: str, system: str = "aigw", over: str = "bare") -> float | None:
    rows = res["scenarios"].get(scenario, {})
    a, b = rows.get(system), rows.get(over)
    return a["rps"] / b["rps"] if a and b and b["rps"] else None


def _c1(res: dict, kind: str, system: str, field: str = "p50_ms") -> float | None:
    row = res.get("latency_c1", {}).get(kind, {})
    if system not in row or "direct" not in row:
        return None
    return row[system][field] - row["direct"][field]


def _peer_rps(res: dict, peer: str, scenario: str) -> float | None:
    rows = [r for r in res.get("peers", {}).values()
            if r.get("peer") == peer and r.get("scenario") == scenario and "rps" in r]
    return rows[0]["rps"] if rows else None


def _vs_peer(res: dict, peer: str, scenario: str = "openai") -> float | None:
    theirs = _peer_rps(res, peer, scenario)
    ours = res["scenarios"].get(scenario, {}).get("aigw", {}).get("rps")
    return ours / theirs if ours and theirs else None


def _added_over_bare(res: dict) -> float | None:
    aigw, bare = _c1(res, "non_stream", "aigw"), _c1(res, "non_stream", "bare")
    return aigw - bare if aigw is not None and bare is not None else None


def _streams(res: dict, field: str) -> float | None:
    r = res.get("streams_burst")
    if not r:
        return None
    return {"errors": r["error_count"], "rss": r["peak_rss_kb"] / 1024, "growth": r["soak_growth_kb"] / 1024}[field]


TARGETS = (
    Target("JSON, OpenAI→OpenAI: req/s × bare mitmdump >= 0.90", lambda r: _ratio(r, "openai"), lambda v: v >= 0.90, "x"),
    Target("JSON, translating OpenAI→Anthropic: × bare >= 0.85", lambda r: _ratio(r, "xlate"), lambda v: v >= 0.85, "x"),
    Target("stream, OpenAI→OpenAI: × bare >= 0.90", lambda r: _ratio(r, "openai-stream"), lambda v: v >= 0.90, "x"),
    Target("TTFT overhead p50 <= 1 ms", lambda r: _c1(r, "stream", "aigw", "ttft_p50_ms"), lambda v: v <= 1.0, " ms"),
    Target("added p50 at c=1 <= bare mitmdump's + 0.5 ms", _added_over_bare, lambda v: v <= 0.5, " ms over bare"),
    Target("concurrent streams burst: 0 errors", lambda r: _streams(r, "errors"), lambda v: v == 0, " errors"),
    Target("concurrent streams burst: peak RSS <= 400 MiB", lambda r: _streams(r, "rss"), lambda v: v <= 400, " MiB"),
    Target("concurrent streams soak: no growth (< 5 MiB)", lambda r: _streams(r, "growth"), lambda v: v < 5, " MiB"),
    Target("JSON req/s >= Portkey's", lambda r: _vs_peer(r, "portkey"), lambda v: v >= 1.0, "x Portkey"),
    Target("JSON req/s >= 6 × LiteLLM's", lambda r: _vs_peer(r, "litellm"), lambda v: v >= 6.0, "x LiteLLM"),
)
# What bounds the ratios to bare mitmdump from above inside mitmproxy: bare itself (TTFT, Portkey) and --floor.
REFERENCES = (
    ("bare mitmdump's own TTFT overhead p50", lambda r: _c1(r, "stream", "bare", "ttft_p50_ms"), " ms"),
    ("bare mitmdump's JSON req/s × Portkey's", lambda r: (
        (r["scenarios"].get("openai", {}).get("bare", {}).get("rps") or 0) / p if (p := _peer_rps(r, "portkey", "openai"))
        else None), "x"),
    ("design floor (--floor) JSON req/s × bare", lambda r: _ratio(r, "openai", "floor"), "x"),
    ("design floor (--floor) translating × bare", lambda r: _ratio(r, "xlate", "floor"), "x"),
)


def summary(res: dict) -> list[str]:
    """The issue-shaped table (one row per system) and the targets, from this run."""
    lines = ["", "summary (this run)", f"{'system':40s} {'JSON req/s':>16s} {'stream req/s':>16s} {'added p50 c=1':>14s}"]

    def cell(scenario: str, system: str) -> str:
        rows = res["scenarios"].get(scenario, {})
        r, bare = rows.get(system), rows.get("bare")
        if not r:
            return "-"
        return f"{r['rps']:.0f} ({r['rps'] / bare['rps']:.2f}x)" if bare and bare["rps"] else f"{r['rps']:.0f}"

    def c1(system: str) -> str:
        v = _c1(res, "non_stream", system)
        return f"+{v:.2f} ms" if v is not None else "-"

    systems = [s for s in ("bare", "floor", "aigw") if any(s in rows for rows in res["scenarios"].values())]
    labels = {"bare": "bare mitmdump (reverse)", "floor": "design floor (--floor)", "aigw": "aigw"}
    for s in systems:
        scenarios = [("openai", "OpenAI→OpenAI")] if s != "aigw" else [("openai", "OpenAI→OpenAI"),
                                                                       ("xlate", "OpenAI→Anthropic")]
        for scen, label in scenarios:
            name = labels[s] + ("" if s != "aigw" else f" {label}")
            lines.append(f"{name:40s} {cell(scen, s):>16s} {cell(scen + '-stream', s):>16s} "
                         f"{c1(s) if scen == 'openai' else '':>14s}")
    for name, r in res.get("peers", {}).items():
        if "rps" in r and not r["scenario"].endswith("-stream"):
            stream = res.get("peers", {}).get(name + " stream", {})
            bare = res["scenarios"].get(r["scenario"], {}).get("bare", {}).get("rps")
            bare_s = res["scenarios"].get(r["scenario"] + "-stream", {}).get("bare", {}).get("rps")
            js = f"{r['rps']:.0f} ({r['rps'] / bare:.2f}x)" if bare else f"{r['rps']:.0f}"
            st = (f"{stream['rps']:.0f} ({stream['rps'] / bare_s:.2f}x)" if bare_s else f"{stream['rps']:.0f}") \
                if stream.get("rps") else "-"
            lines.append(f"{name + ' ' + r['version']:40s} {js:>16s} {st:>16s} {'':>14s}")
    lines += ["", "targets (measured in this run; - : not measured, see the options)"]
    for t in TARGETS:
        v = t.value(res)
        verdict = "-" if v is None else ("met" if t.ok(v) else "NOT met")
        shown = "" if v is None else f"{v:.2f}{t.unit}"
        lines.append(f"  {verdict:8s} {t.what:52s} {shown}")
    refs = [(what, f(res), unit) for what, f, unit in REFERENCES]
    if any(v is not None for _, v, _ in refs):
        lines.append("  for reference, what bounds them inside mitmproxy:")
        lines += [f"           {what:52s} {v:.2f}{unit}" for what, v, unit in refs if v is not None]
    return lines


def render(res: dict) -> str:
    lines = [f"machine: {res['machine']}",
             f"load: {res['engine']} engine, c={res['concurrency']}, {res['duration_s']:g} s per system"
             f", answers: {' and '.join(res['modes'])}{', realistic requests' if res['realistic'] else ''}",
             "", f"{'scenario':13s} {'system':8s} {'req/s':>8s} {'x bare':>7s} {'p50 ms':>8s} {'p99 ms':>8s} "
                 f"{'CPU ms/req':>10s} {'x bare':>7s} {'errors':>6s} {'RSS MiB':>7s}"]
    for name, rows in res["scenarios"].items():
        bare = rows.get("bare")
        for sysname, r in rows.items():
            x = r["rps"] / bare["rps"] if bare and bare["rps"] else 0
            xc = r["cpu_ms_per_req"] / bare["cpu_ms_per_req"] if bare and bare["cpu_ms_per_req"] else 0
            lines.append(f"{name:13s} {sysname:8s} {r['rps']:8.1f} {x:7.3f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
                         f"{r['cpu_ms_per_req']:10.3f} {xc:7.3f} {r['errors']:6d} {r['rss_kb'] / 1024:7.0f}")
    for name, rows in res["scenarios"].items():
        floor, aigw, bare = rows.get("floor"), rows.get("aigw"), rows.get("bare")
        if floor and aigw and bare and floor["rps"]:
            lines.append(f"{name}: aigw {aigw['rps'] / floor['rps']:.3f} x floor req/s; CPU ms/req over bare: design "
                         f"floor {floor['cpu_ms_per_req'] - bare['cpu_ms_per_req']:+.3f}, gateway logic "
                         f"{aigw['cpu_ms_per_req'] - floor['cpu_ms_per_req']:+.3f}")
    for kind, row in res.get("latency_c1", {}).items():
        d = row["direct"]
        parts = [f"direct {d['p50_ms']:.2f} ms"] + [
            f"{k} {v['p50_ms'] - d['p50_ms']:+.2f} ms" for k, v in row.items() if k != "direct"]
        lines.append(f"added p50 at c=1, {kind.replace('_', '-')}: " + ", ".join(parts))
        if kind == "stream":
            lines.append("  TTFT overhead p50: " + ", ".join(
                f"{k} {v['ttft_p50_ms'] - d['ttft_p50_ms']:+.2f} ms" for k, v in row.items() if k != "direct"))
    if "chunk_fidelity" in res:
        lines.append("chunk fidelity (paced 20 ms): " + ", ".join(
            f"{k}: {v['reads_with_events']:g} reads for {v['events']:g} events"
            f" ({'event by event' if v['event_by_event'] else 'COALESCED'})" for k, v in res["chunk_fidelity"].items()))
    if "failover" in res:
        f = res["failover"]
        lines.append(f"failover: one refused target first {f['refused']['added_p50_ms']:+.2f} ms p50, one 500 first "
                     f"{f['500']['added_p50_ms']:+.2f} ms p50 (budget {FAILOVER_BUDGET_MS:g} ms: "
                     f"{'ok' if f['within_budget'] else 'OVER'})")
    if "invalid_keys" in res:
        r = res["invalid_keys"]
        lines.append(f"invalid-key flood: {r['answered_rps']:.0f} refusals/s (401), CPU {r['cpu_ms_per_req']:.3f} ms "
                     f"each")
    if "observability" in res:
        lines.append("observability cost (openai scenario, medians of alternated rounds):")
        for name, r in res["observability"].items():
            lines.append(f"  {name:15s} {r['rps']:8.1f} req/s ({r['rps_vs_lean']:.3f} x lean)  CPU "
                         f"{r['cpu_ms_per_req']:.3f} ms/req ({r['cpu_vs_lean']:.3f} x lean)")
    if "limits" in res:
        import bench_limits
        lines += bench_limits.render(res["limits"])
    if "streams_burst" in res:
        r = res["streams_burst"]
        lines.append(f"{r['streams']} concurrent streams opened over {r['burst_s']:g} s, held {r['soak_s']:g} s: "
                     f"{r['completed']} completed, errors {r['error_count']} {r['errors'] or ''}, all connected in "
                     f"{r['connect_all_s']:.1f} s, peak RSS {r['peak_rss_kb'] / 1024:.0f} MiB, soak growth "
                     f"{r['soak_growth_kb'] / 1024:+.1f} MiB")
    if "peers" in res:
        lines.append("")
        lines.append(f"{'peer (same mock, same load)':41s} {'req/s':>8s} {'x aigw':>7s} {'x bare':>7s} {'p50 ms':>8s} "
                     f"{'CPU ms/req':>10s} {'errors':>6s} {'RSS MiB':>7s}")
        for name, r in res["peers"].items():
            if "unavailable" in r:
                lines.append(f"{name:41s} skipped: {r['unavailable']}")
                continue
            rows = res["scenarios"].get(r["scenario"], {})
            aigw, bare = rows.get("aigw", {}).get("rps"), rows.get("bare", {}).get("rps")
            lines.append(f"{name + ' ' + r['version']:41s} {r['rps']:8.1f} {r['rps'] / aigw if aigw else 0:7.3f} "
                         f"{r['rps'] / bare if bare else 0:7.3f} {r['p50_ms']:8.2f} {r['cpu_ms_per_req']:10.3f} "
                         f"{r['errors']:6d} {r['rss_kb'] / 1024:7.0f}")
    lines += summary(res)
    return "\n".join(lines)


