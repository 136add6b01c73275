"""--workers 1,2: `aigw up --workers N` behind its HAProxy, for each N in the same run (scripts/bench.py).

Each count gets its own `aigw up --workers N --no-admin` over the same store and the same mock; the load (wrk or
aiohttp, --concurrency, --duration, after --warmup) goes to HAProxy's port. Reported per count: req/s, p50, errors,
and CPU-seconds per 1,000 answers — the workers' (sum of their user+system CPU over the measured run / answers ×
1000, also per worker) and HAProxy's own (master and worker process). On a 2-core machine shared with the load
generator, the CPU figures are the steady ones; req/s with 2 workers is bounded by the cores left.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench_load import cpu_seconds, load

from aigw.procs import free_port, start_logged, wait_port
from aigw.supervisor import workers_path_for

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class WorkersRow:
    workers: int
    rps: float
    p50_ms: float
    errors: int
    answers: int
    worker_cpu_s_per_1k: float       # all workers together
    worker_cpu_s_per_1k_each: list[float]
    haproxy_cpu_s_per_1k: float


def parse_counts(text: str) -> list[int]:
    """`"1,2"` → [1, 2]; ValueError for anything but positive integers."""
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or any(n < 1 for n in counts):
        raise ValueError(f"--workers takes positive counts separated by commas, e.g. 1,2 (got {text!r})")
    return counts


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _processes(supervisor: int) -> tuple[list[int], list[int]]:
    """(worker pids, HAProxy pids: its master and the master's children) under ``supervisor``."""
    workers, haproxy = [], []
    for pid in _children(supervisor):
        argv = _cmdline(pid)
        if b"--worker-id" in argv:
            workers.append(pid)
        elif argv and argv[0].endswith(b"haproxy"):
            haproxy += [pid, *_children(pid)]
    return workers, haproxy


def _cpu(pids: list[int]) -> list[float]:
    return [cpu_seconds(pid) for pid in pids]


def measure_workers(args, bench, data: Path, body: dict, headers: dict, count: int) -> WorkersRow:
    port = free_port()
    log = bench.tmp / f"workers-{count}.log"
    proc = start_logged([sys.executable, "-m", "aigw.cli", "up", "--workers", str(count), "--no-admin",
                         "--data", str(data), "--proxy-port", str(port), "--grace", "5"], log, cwd=str(ROOT))
    try:
        wait_port(port, 60.0, proc, what=f"aigw up --workers {count}")
        _wait_ready(data, count, proc)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        raw = json.dumps(body).encode()
        # wrk sends its own "Host" unless the script sets that very key: two Host fields are a 400 at HAProxy.
        headers = {("Host" if k.lower() == "host" else k): v for k, v in headers.items()}
        load(url, headers, raw, concurrency=args.concurrency, duration=args.warmup, warmup=0, engine=args.engine)
        workers, haproxy = _processes(proc.pid)
        before_w, before_h = _cpu(workers), _cpu(haproxy)
        r = load(url, headers, raw, concurrency=args.concurrency, duration=args.duration, warmup=0,
                 engine=args.engine)
        used_w = [after - b for after, b in zip(_cpu(workers), before_w)]
        used_h = sum(_cpu(haproxy)) - sum(before_h)
        per_1k = 1000 / r.requests if r.requests else 0.0
        return WorkersRow(workers=count, rps=round(r.rps, 1), p50_ms=round(r.p50_ms, 2), errors=r.errors,
                          answers=r.requests, worker_cpu_s_per_1k=round(sum(used_w) * per_1k, 3),
                          worker_cpu_s_per_1k_each=[round(u * per_1k, 3) for u in used_w],
                          haproxy_cpu_s_per_1k=round(used_h * per_1k, 3))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _wait_ready(data: Path, count: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Every worker's /readyz answers 200 (their listeners are in <data>.workers.json)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    path = Path(workers_path_for(str(data)))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"aigw up --workers {count} exited with {proc.returncode}")
        try:
            targets = [t for group in json.loads(path.read_text()) for t in group["targets"]]
            if len(targets) == count and all(
                    urllib.request.urlopen(f"http://{t}/readyz", timeout=2).status == 200 for t in targets):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the {count} workers were not ready after {timeout} s")


def run(args, bench, data: Path, body: dict, headers: dict) -> dict:
    counts = parse_counts(args.workers)
    rows = [measure_workers(args, bench, data, body, headers, n) for n in counts]
    return {"workers": [asdict(r) for r in rows]}


def render(res: dict) -> list[str]:
    lines = ["", "aigw up --workers N behind HAProxy (CPU-seconds per 1,000 answers)",
             f"{'workers':>7} {'req/s':>9} {'p50 ms':>8} {'errors':>6} {'workers cpu':>11} {'each':>20} "
             f"{'haproxy cpu':>11}"]
    for r in res["workers"]:
        each = ",".join(f"{v:.3f}" for v in r["worker_cpu_s_per_1k_each"])
        lines.append(f"{r['workers']:7d} {r['rps']:9.1f} {r['p50_ms']:8.2f} {r['errors']:6d} "
                     f"{r['worker_cpu_s_per_1k']:11.3f} {each:>20} {r['haproxy_cpu_s_per_1k']:11.3f}")
    return lines


def main(args: argparse.Namespace) -> int:
    """The --workers run alone: a mock, a store with one gateway, then each worker count."""
    from bench import Bench, configure_gateway, gateway_headers, machine, openai_body

    try:
        parse_counts(args.workers)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    bench = Bench(args)
    try:
        mock_port = bench.mock("mock")
        data = bench.tmp / "aigw.json"
        key = configure_gateway(data, mock_port, subdomain="oa", provider="openai")
        res = {"machine": machine(), "concurrency": args.concurrency, "duration_s": args.duration,
               **run(args, bench, data, openai_body(args.stream), gateway_headers(key, "oa"))}
    finally:
        bench.close()
    print(json.dumps(res, indent=2) if args.json else "\n".join([res["machine"], *render(res)]))
    return 0 if all(r["errors"] == 0 for r in res["workers"]) else 1
