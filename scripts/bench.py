"""Benchmark: bare mitmdump (reverse mode) vs the aigw gateway, in front of the same mock provider, in one run.

(a) client → mitmdump --mode reverse:<mock> → mock /v1/messages           (Anthropic request, untouched)
(b) client → mitmdump + aigw addon → auth + balancing + OpenAI→Anthropic translation → mock /v1/messages

Prints requests/s, p50/p99 latency and peak RSS of the proxy process for each, and the ratio b/a.
The load generator runs in its own process (aiohttp, fixed concurrency, fixed duration, warm-up first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening")


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
                stream: bool) -> dict:
    import aiohttp

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


def run_load(url: str, headers: dict, body: dict, args) -> dict:
    cmd = [sys.executable, __file__, "_load", url, json.dumps(headers), json.dumps(body), str(args.concurrency),
           str(args.duration), str(args.warmup), "1" if args.stream else "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + args.warmup + 120)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=str(ROOT))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


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


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        url, headers, body, conc, dur, warm, stream = sys.argv[2:9]
        res = asyncio.run(_load(url, json.loads(headers), body.encode(), int(conc), float(dur), float(warm),
                                stream == "1"))
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
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="aigw-bench-"))
    confdir = tmp / "mitm"
    mock_port, bare_port, gw_port = free_port(), free_port(), free_port()
    procs = []
    try:
        mock = start([sys.executable, "-m", "aigw.mock_provider", "--port", str(mock_port), "--api-key", "sk-bench",
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
        return 0
    finally:
        for proc in procs:
            stop(proc)


if __name__ == "__main__":
    sys.exit(main())
