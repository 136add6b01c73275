"""What the benchmark prints (scripts/bench_report.py): the summary and the target verdicts from a results dict."""

from scripts import bench_report as br


def _row(rps: float, cpu: float = 1.0) -> dict:
    return {"rps": rps, "p50_ms": 10.0, "p99_ms": 12.0, "cpu_ms_per_req": cpu, "errors": 0, "rss_kb": 100 * 1024}


def _results(**extra) -> dict:
    res = {"machine": "test", "concurrency": 8, "duration_s": 1, "engine": "wrk", "modes": ["json", "stream"],
           "realistic": False,
           "scenarios": {"openai": {"bare": _row(1000), "aigw": _row(920), "floor": _row(950)},
                         "xlate": {"bare": _row(1000), "aigw": _row(800)},
                         "openai-stream": {"bare": _row(900), "aigw": _row(700)}},
           "latency_c1": {"non_stream": {"direct": {"p50_ms": 0.1}, "bare": {"p50_ms": 1.3}, "aigw": {"p50_ms": 1.7}},
                          "stream": {"direct": {"p50_ms": 0.2, "ttft_p50_ms": 0.2},
                                     "bare": {"p50_ms": 1.5, "ttft_p50_ms": 1.4},
                                     "aigw": {"p50_ms": 2.0, "ttft_p50_ms": 1.1}}}}
    res.update(extra)
    return res


def _verdicts(res: dict) -> dict[str, str]:
    lines = br.summary(res)
    start = next(i for i, line in enumerate(lines) if line.startswith("targets"))
    out = {}
    for line in lines[start + 1:]:
        if line.startswith("  for reference"):
            break
        verdict, what = line[2:10].strip(), line[11:63].strip()
        out[what] = verdict
    return out


def test_targets_are_judged_from_the_run():
    v = _verdicts(_results())
    assert v["JSON, OpenAI→OpenAI: req/s × bare mitmdump >= 0.90"] == "met"          # 0.92
    assert v["JSON, translating OpenAI→Anthropic: × bare >= 0.85"] == "NOT met"      # 0.80
    assert v["stream, OpenAI→OpenAI: × bare >= 0.90"] == "NOT met"                   # 0.78
    assert v["TTFT overhead p50 <= 1 ms"] == "met"                                   # 1.1 - 0.2 = 0.9 ms
    assert v["added p50 at c=1 <= bare mitmdump's + 0.5 ms"] == "met"                # 1.6 - 1.2 = 0.4
    assert v["JSON req/s >= Portkey's"] == "-" and v["concurrent streams burst: 0 errors"] == "-"


def test_peers_and_streams_are_judged_when_measured():
    peers = {"portkey OpenAI→OpenAI": _row(1100) | {"version": "1", "peer": "portkey", "scenario": "openai"},
             "litellm OpenAI→OpenAI": _row(150) | {"version": "2", "peer": "litellm", "scenario": "openai"},
             "litellm OpenAI→OpenAI stream": _row(80) | {"version": "2", "peer": "litellm",
                                                          "scenario": "openai-stream"}}
    burst = {"error_count": 0, "peak_rss_kb": 420 * 1024, "soak_growth_kb": 800}
    res = _results(peers=peers, streams_burst=burst)
    v = _verdicts(res)
    assert v["JSON req/s >= Portkey's"] == "NOT met"          # 920 / 1100
    assert v["JSON req/s >= 6 × LiteLLM's"] == "met"           # 920 / 150 = 6.13
    assert v["concurrent streams burst: 0 errors"] == "met"
    assert v["concurrent streams burst: peak RSS <= 400 MiB"] == "NOT met"
    assert v["concurrent streams soak: no growth (< 5 MiB)"] == "met"
    table = "\n".join(br.summary(res))
    assert "litellm OpenAI→OpenAI 2" in table and "150 (0.15x)" in table and "80 (0.09x)" in table
    assert "bare mitmdump's JSON req/s × Portkey's" in table


def test_render_prints_every_scenario_and_the_summary():
    text = br.render(_results())
    for label in ("openai ", "xlate ", "openai-stream", "summary (this run)", "design floor (--floor)"):
        assert label in text
