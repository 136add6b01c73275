"""Benchmark: bare mitmdump (reverse mode) vs the aigw gateway, in front of the same mock provider, in one run.

(a) client → mitmdump --mode reverse:<mock> → mock /v1/messages           (Anthropic request, untouched)
(b) client → mitmdump + aigw addon → auth + balancing + OpenAI→Anthropic translation → mock /v1/messages
(c) --failover-cost: as (b), but every request first hits a target that refuses connections, then (c5) one that
    answers 500; the exit status is 1 when one failover costs FAILOVER_BUDGET_MS or more at p50 over (b)
(r) --realistic: as (a), with what an SDK really sends: ~20 headers (User-Agent, Accept-Encoding, X-Stainless-*,
    Authorization, ...) and a gzip-compressed multi-turn JSON body (Content-Encoding: gzip)
(d) --realistic: as (b), with the same realistic requests (the gateway checks the header count/size bounds and
    inflates the body under its size bound) — d/b is what realistic requests cost the gateway, r/a what they
    cost bare mitmdump; when the request bounds cost nothing measurable, d/b ≈ r/a

Prints requests/s, p50/p99 latency and peak RSS of the proxy process for each, and the ratio b/a (and d/b, r/a,
d/r with --realistic).
The load generator runs in its own process (aiohttp, fixed concurrency, fixed duration, warm-up first).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aigw.procs import free_port, start_logged, wait_port
from aigw.procs import stop_process as stop

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FAILOVER_BUDGET_MS = 100.0  # what one failover (refused or 500, then served) may add at p50


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- load generator (runs in a child process) --------------------------------------------------------------
async def _load(url: str, headers: dict, body: bytes, concurrency: int, duration: float, warmup: float,
                stream: bool, gzip_body: bool = False) -> dict:
    import aiohttp

    if gzip_body:
        body = gzip.compress(body, mtime=0)

    latencies: list[float] = []
    errors = 0
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + duration

        async def worker() -> None:
            nonlocal errors
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                t1 = time.perf_counter()
                if t0 >= measure_from and t1 <= stop_at:
                    if ok:
                        latencies.append(t1 - t0)
                    else:
                        errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    n = len(latencies)
    return {"requests": n, "errors": errors, "rps": n / duration,
            "p50_ms": 1000 * latencies[n // 2] if n else 0.0,
            "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))] if n else 0.0,
            "mean_ms": 1000 * statistics.fmean(latencies) if n else 0.0}


def run_load(url: str, headers: dict, body: dict, args, *, gzip_body: bool = False) -> dict:
    cmd = [sys.executable, __file__, "_load", url, json.dumps(headers), json.dumps(body), str(args.concurrency),
           str(args.duration), str(args.warmup), "1" if args.stream else "0", "1" if gzip_body else "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + args.warmup + 120)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return start_logged(cmd, log, cwd=str(ROOT))


def configure_gateway(data: Path, mock_port: int, *, subdomain: str = "bench", failing_port: int | None = None) -> str:
    """Write the guide's configuration straight into the store (the admin API is not part of the measurement).

    With failing_port, a better-priority target that refuses connections comes first and passive health is off,
    so every request pays for one failover (what --failover-cost measures).
    """
    sys.path.insert(0, str(ROOT))
    from admin import create_app
    from store.repo import Store

    app = create_app(Store(str(data)))
    c = app.test_client()

    def post(path, body):
        r = c.post(f"/api/v1{path}", json=body)
        assert r.status_code == 201, r.get_json()
        return r.get_json()

    gw = post("/gateways", {"name": subdomain, "subdomain": subdomain})
    target = {"path": "/v1/messages", "provider": "anthropic", "weight": 50, "host": "127.0.0.1", "port": mock_port,
              "protocol": "http", "default_model": "claude-3-sonnet", "models": ["claude-3-sonnet"],
              "headers": {"anthropic-version": "2023-06-01"},
              "credentials": {"header_name": "x-api-key", "header_value": "sk-bench"}}
    targets = [target, dict(target, weight=50)]
    upstream = {"name": "bench", "algorithm": "round-robin", "targets": targets}
    if failing_port is not None:
        targets.insert(0, dict(target, port=failing_port, priority=1))
        targets[1]["priority"] = targets[2]["priority"] = 2
        upstream["health_checks"] = {"passive": False, "threshold": 3, "interval": 60}
    up = post(f"/gateways/{gw['id']}/upstreams", upstream)
    svc = post(f"/gateways/{gw['id']}/services", {"name": "bench", "type": "upstream", "upstream_id": up["id"]})
    post(f"/gateways/{gw['id']}/rules", {"path": "/v1", "service_id": svc["id"], "methods": ["POST"]})
    return post(f"/gateways/{gw['id']}/keys", {"name": "bench"})["key"]


# --- realistic client requests (--realistic) ---------------------------------------------------------------
_SYSTEM = ("You are a careful assistant for an online shop. Answer in the customer's language, keep answers short, "
           "never invent order numbers, and ask for the order id when it is missing. ") * 6
_TURNS = ["Hi, I ordered a kettle last week and it has not arrived yet.",
          "I'm sorry to hear that. Could you give me your order id?",
          "Sure, it is 4711-0815. The tracking page has said 'in transit' for five days now.",
          "Thank you. I see the parcel left our warehouse on Monday; the carrier reports a delay in your region.",
          "Can you send a replacement, or should I wait? I need it before the weekend.",
          "I can offer either. Which one would you prefer?",
          "Hello! Please send a replacement and cancel the first one if that is possible."]


def realistic_bodies(stream: bool) -> tuple[dict, dict]:
    """(OpenAI body for the gateway, Anthropic body for bare mitmdump): the same multi-turn conversation."""
    msgs = [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(_TURNS)]
    openai = {"model": "gpt-4", "max_tokens": 64, "stream": stream, "temperature": 0.7, "user": "customer-1842",
              "messages": [{"role": "system", "content": _SYSTEM}, *msgs]}
    anthropic = {"model": "claude-3-sonnet", "max_tokens": 64, "stream": stream, "temperature": 0.7,
                 "system": _SYSTEM, "metadata": {"user_id": "customer-1842"}, "messages": msgs}
    return openai, anthropic


def sdk_headers(auth: dict[str, str], sdk: str = "OpenAI") -> dict[str, str]:
    """What the official Python SDKs send (plus Content-Encoding: gzip); with Content-Length, 20 headers."""
    return {"host": "bench.example.com", "content-type": "application/json", "content-encoding": "gzip",
            "accept": "application/json", "accept-encoding": "gzip, deflate", "user-agent": f"{sdk}/Python 1.99.0",
            "x-stainless-lang": "python", "x-stainless-package-version": "1.99.0", "x-stainless-os": "Linux",
            "x-stainless-arch": "x64", "x-stainless-runtime": "CPython", "x-stainless-runtime-version": "3.13.0",
            "x-stainless-async": "async:asyncio", "x-stainless-retry-count": "0",
            "x-stainless-read-timeout": "600", "x-stainless-timeout": "600", "x-request-source": "bench",
            "connection": "keep-alive", **auth}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        url, headers, body, conc, dur, warm, stream = sys.argv[2:9]
        gzip_body = len(sys.argv) > 9 and sys.argv[9] == "1"
        res = asyncio.run(_load(url, json.loads(headers), body.encode(), int(conc), float(dur), float(warm),
                                stream == "1", gzip_body))
        print(json.dumps(res))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--stream", action="store_true", help="streamed answers instead of JSON")
    p.add_argument("--chunk-delay", type=float, default=0.0,
                   help="seconds the mock waits between stream events (0: the whole stream at once)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--failover-cost", action="store_true",
                   help="also measure requests that fail over once (first target refuses connections)")
    p.add_argument("--realistic", action="store_true",
                   help="also measure realistic client requests, (r) bare and (d) gateway: SDK-like headers (20 "
                        "with Content-Length) and a gzip-compressed multi-turn JSON body; prints d/b (their cost "
                        "in the gateway, header/body bounds and inflating included) beside r/a (their cost in "
                        "bare mitmdump)")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="aigw-bench-"))
    confdir = tmp / "mitm"
    mock_port, bare_port, gw_port = free_port(), free_port(), free_port()
    procs = []
    try:
        mock = start([sys.executable, "-m", "aigw.mock", "--port", str(mock_port), "--api-key", "sk-bench",
                      "--name", "bench", "--chunk-delay", str(args.chunk_delay)], tmp / "mock.log")
        procs.append(mock)
        wait_port(mock_port)
        data = tmp / "aigw.json"
        key = configure_gateway(data, mock_port)
        common = ["-q", "--listen-host", "127.0.0.1", "--set", f"confdir={confdir}"]
        bare = start([str(BIN / "mitmdump"), *common, "-p", str(bare_port), "--mode",
                      f"reverse:http://127.0.0.1:{mock_port}"], tmp / "bare.log")
        procs.append(bare)
        gw = start([str(BIN / "mitmdump"), *common, "-p", str(gw_port), "-s", str(ROOT / "addon" / "entry.py"),
                    "--mode", "reverse:http://127.0.0.1:9", "--set", "connection_strategy=lazy",
                    "--set", f"aigw_data={data}"], tmp / "gateway.log")
        procs.append(gw)
        wait_port(bare_port)
        wait_port(gw_port)

        anthropic_body = {"model": "claude-3-sonnet", "max_tokens": 64, "stream": args.stream,
                          "messages": [{"role": "user", "content": "Hello!"}]}
        openai_body = {"model": "gpt-4", "max_tokens": 64, "stream": args.stream, "system": "You are an assistant",
                       "messages": [{"role": "user", "content": "Hello!"}]}
        a = run_load(f"http://127.0.0.1:{bare_port}/v1/messages",
                     {"content-type": "application/json", "x-api-key": "sk-bench", "anthropic-version": "2023-06-01"},
                     anthropic_body, args)
        a["rss_kb"] = rss_kb(bare.pid)
        b = run_load(f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                     {"content-type": "application/json", "x-api-key": key, "host": "bench.example.com"},
                     openai_body, args)
        b["rss_kb"] = rss_kb(gw.pid)
        ratio = b["rps"] / a["rps"] if a["rps"] else 0.0
        result = {"bare_mitmdump": a, "gateway": b, "ratio_rps_b_over_a": round(ratio, 3),
                  "concurrency": args.concurrency, "duration_s": args.duration, "stream": args.stream,
                  "chunk_delay_s": args.chunk_delay}
        if args.failover_cost:
            fkey = configure_gateway(data, mock_port, subdomain="failover", failing_port=free_port())
            time.sleep(1.0)  # the proxy picks the new configuration up within a second
            c = run_load(f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                         {"content-type": "application/json", "x-api-key": fkey}, openai_body, args)
            result["gateway_with_one_failover"] = c
            port_500 = free_port()
            procs.append(start([sys.executable, "-m", "aigw.mock", "--port", str(port_500), "--name", "failing",
                                "--faults", json.dumps([{"status": 500}])], tmp / "mock500.log"))
            wait_port(port_500)
            fkey5 = configure_gateway(data, mock_port, subdomain="failover5", failing_port=port_500)
            time.sleep(1.0)
            c5 = run_load(f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                          {"content-type": "application/json", "x-api-key": fkey5}, openai_body, args)
            result["gateway_with_one_500_failover"] = c5
            cost = {"refused": c["p50_ms"] - b["p50_ms"], "500": c5["p50_ms"] - b["p50_ms"]}
            result["failover_cost_p50_ms"] = {k: round(v, 2) for k, v in cost.items()}
            result["failover_within_budget"] = all(v < FAILOVER_BUDGET_MS for v in cost.values())
        if args.realistic:
            oa_real, an_real = realistic_bodies(args.stream)
            r = run_load(f"http://127.0.0.1:{bare_port}/v1/messages",
                         sdk_headers({"x-api-key": "sk-bench", "anthropic-version": "2023-06-01"}, "Anthropic"),
                         an_real, args, gzip_body=True)
            r["rss_kb"] = rss_kb(bare.pid)
            d = run_load(f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                         sdk_headers({"authorization": f"Bearer {key}"}), oa_real, args, gzip_body=True)
            d["rss_kb"] = rss_kb(gw.pid)
            raw = json.dumps(oa_real).encode()
            result.update({
                "bare_realistic": r, "gateway_realistic": d,
                "realistic_request": {"headers": len(sdk_headers({"authorization": ""})) + 1,
                                      "body_bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, mtime=0))},
                "ratio_rps_d_over_b": round(d["rps"] / b["rps"], 3) if b["rps"] else 0.0,
                "ratio_rps_r_over_a": round(r["rps"] / a["rps"], 3) if a["rps"] else 0.0,
                "ratio_rps_d_over_r": round(d["rps"] / r["rps"], 3) if r["rps"] else 0.0})
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            for name, r in (("(a) bare mitmdump", a), ("(b) aigw gateway", b)):
                print(f"{name:20s} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  "
                      f"errors {r['errors']}  peak RSS {r['rss_kb'] / 1024:.0f} MiB")
            print(f"ratio b/a (req/s): {ratio:.3f}   (concurrency {args.concurrency}, {args.duration:.0f} s, "
                  f"{'stream' if args.stream else 'non-stream'}{f', {args.chunk_delay * 1000:g} ms between events' if args.chunk_delay else ''})")
            if "gateway_with_one_failover" in result:
                c = result["gateway_with_one_failover"]
                print(f"{'(c) one failover':20s} {c['rps']:8.1f} req/s  p50 {c['p50_ms']:7.2f} ms  "
                      f"p99 {c['p99_ms']:7.2f} ms  errors {c['errors']}")
                print(f"one failover (connection refused) costs {c['p50_ms'] - b['p50_ms']:+.2f} ms at p50, "
                      f"{c['p99_ms'] - b['p99_ms']:+.2f} ms at p99, under the same load")
                c5 = result["gateway_with_one_500_failover"]
                print(f"{'(c5) one 500 failover':20s} {c5['rps']:8.1f} req/s  p50 {c5['p50_ms']:7.2f} ms  "
                      f"p99 {c5['p99_ms']:7.2f} ms  errors {c5['errors']}")
                print(f"one failover costs less than {FAILOVER_BUDGET_MS:g} ms at p50: "
                      f"{'yes' if result['failover_within_budget'] else 'NO'} {result['failover_cost_p50_ms']}")
            if "gateway_realistic" in result:
                r, d, req = result["bare_realistic"], result["gateway_realistic"], result["realistic_request"]
                for name, x in (("(r) bare, realistic", r), ("(d) aigw, realistic", d)):
                    print(f"{name:20s} {x['rps']:8.1f} req/s  p50 {x['p50_ms']:7.2f} ms  p99 {x['p99_ms']:7.2f} ms  "
                          f"errors {x['errors']}  peak RSS {x['rss_kb'] / 1024:.0f} MiB")
                print(f"realistic requests ({req['headers']} headers, gzip body {req['body_bytes']} -> "
                      f"{req['gzip_bytes']} bytes): gateway d/b {result['ratio_rps_d_over_b']:.3f} "
                      f"(p50 {d['p50_ms'] - b['p50_ms']:+.2f} ms), bare r/a {result['ratio_rps_r_over_a']:.3f} "
                      f"(p50 {r['p50_ms'] - a['p50_ms']:+.2f} ms); ratio d/r (req/s): {result['ratio_rps_d_over_r']:.3f}")
        return 0 if result.get("failover_within_budget", True) else 1
    finally:
        for proc in procs:
            stop(proc)


if __name__ == "__main__":
    sys.exit(main())
