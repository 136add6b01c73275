"""Load engines and process meters for scripts/bench.py.

- `wrk_load`: fixed concurrency for a fixed time with wrk (C, one thread: it leaves the CPU to the systems under
  test on a 2-core machine), after a warm-up run; p50/p99 from wrk's own histogram.
- `aio_load`: the same with an aiohttp client in a child process, when wrk is not installed.
- `latency_probe`: one request at a time (c=1) with the time to the first body byte (TTFT for streams) and to the
  last one, and, for streams, whether the events arrived one by one (chunk fidelity).
- `CpuMeter`: CPU seconds (user + system, all threads) a process spent while a load ran; divided by the requests
  served that is the CPU cost per request, which is far less noisy than req/s on a shared machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class LoadResult:
    requests: int = 0             # 2xx answers
    errors: int = 0               # socket errors, time-outs and non-2xx answers
    rps: float = 0.0
    answered_rps: float = 0.0     # every HTTP answer, whatever its status (a flood of refused requests)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_s: float = 0.0            # CPU seconds the measured process used during the measured run
    cpu_ms_per_req: float = 0.0
    rss_kb: int = 0               # peak RSS of the measured process (VmHWM) after the run
    engine: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def peak_rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class CpuMeter:
    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.start = cpu_seconds(pid) if pid else 0.0

    def used(self) -> float:
        return cpu_seconds(self.pid) - self.start if self.pid else 0.0


def _lua(headers: dict[str, str], body: bytes) -> str:
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body.decode('latin-1'))}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    lines.append("""
function done(summary, latency, requests)
  local e = summary.errors
  io.write("AIGW-JSON ", string.format(
    '{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end""")
    return "\n".join(lines)


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def wrk_load(url: str, headers: dict[str, str], body: bytes, *, concurrency: int, duration: float,
             warmup: float, pid: int | None = None) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_lua(headers, body))
        script = f.name
    try:
        def run(seconds: float) -> dict:
            cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "30s", "-s", script,
                   url]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
            for line in out.stdout.splitlines():
                if line.startswith("AIGW-JSON "):
                    return json.loads(line[len("AIGW-JSON "):])
            raise RuntimeError(f"wrk printed no summary: {out.stdout[-500:]} {out.stderr[-500:]}")

        if warmup > 0:
            run(warmup)
        meter = CpuMeter(pid)
        s = run(duration)
        cpu = meter.used()
    finally:
        os.unlink(script)
    errors = s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"]
    ok = max(0, s["requests"] - s["status"])
    answered = s["requests"]
    return LoadResult(requests=ok, errors=errors, rps=ok / (s["duration_us"] / 1e6), p50_ms=s["p50_us"] / 1000,
                      answered_rps=answered / (s["duration_us"] / 1e6),
                      p99_ms=s["p99_us"] / 1000, cpu_s=cpu,
                      cpu_ms_per_req=1000 * cpu / (ok or answered) if (ok or answered) else 0.0,
                      rss_kb=peak_rss_kb(pid) if pid else 0, engine="wrk")


# --- aiohttp engine (child process) ---------------------------------------------------------------------------
async def _aio(url: str, headers: dict, body: bytes, concurrency: int, duration: float, warmup: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + duration

        async def worker() -> None:
            nonlocal errors
            while (t0 := time.perf_counter()) < stop_at:
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
            "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))] if n else 0.0}


def aio_load(url: str, headers: dict[str, str], body: bytes, *, concurrency: int, duration: float, warmup: float,
             pid: int | None = None) -> LoadResult:
    cmd = [sys.executable, __file__, "_aio", url, json.dumps(headers), body.decode("latin-1"), str(concurrency),
           str(duration), str(warmup)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(warmup)  # CPU is metered over the measured part only (approximately: the child's own start-up)
    meter = CpuMeter(pid)
    out, err = proc.communicate(timeout=duration + warmup + 120)
    cpu = meter.used()
    if proc.returncode != 0:
        raise RuntimeError(err)
    r = json.loads(out)
    n = r["requests"]
    return LoadResult(requests=n, errors=r["errors"], rps=r["rps"], p50_ms=r["p50_ms"], p99_ms=r["p99_ms"],
                      cpu_s=cpu, cpu_ms_per_req=1000 * cpu / n if n else 0.0,
                      rss_kb=peak_rss_kb(pid) if pid else 0, engine="aiohttp")


def load(url: str, headers: dict[str, str], body: bytes, *, concurrency: int, duration: float, warmup: float,
         pid: int | None = None, engine: str = "auto") -> LoadResult:
    use_wrk = engine == "wrk" or (engine == "auto" and have_wrk())
    fn = wrk_load if use_wrk else aio_load
    return fn(url, headers, body, concurrency=concurrency, duration=duration, warmup=warmup, pid=pid)


# --- c=1 latency, TTFT and chunk fidelity ---------------------------------------------------------------------
@dataclass
class Probe:
    n: int = 0
    errors: int = 0
    p50_ms: float = 0.0            # to the last byte
    ttft_p50_ms: float = 0.0       # to the first body byte (the first event, for a stream)
    events_p50: float = 0.0        # separate reads in which events arrived (streams; == events when not coalesced)
    event_count_p50: float = 0.0   # events per answer
    samples: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("samples")
        return d


def latency_probe(url: str, headers: dict[str, str], body: bytes, *, count: int, stream: bool) -> Probe:
    """`count` sequential requests over one keep-alive connection (raw HTTP/1.1: no client library in the way)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    head = (f"POST {u.path or '/'} HTTP/1.1\r\nHost: {headers.get('host', u.netloc)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "host")
            + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    totals, ttfts, reads, events = [], [], [], []
    errors = 0
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for i in range(count + 3):  # 3 warm-up requests
            t0 = time.perf_counter()
            sock.sendall(head)
            status, t_first, n_reads, n_events = _read_answer(sock, t0)
            t1 = time.perf_counter()
            if i < 3:
                continue
            if status != 200:
                errors += 1
                continue
            totals.append(t1 - t0)
            ttfts.append(t_first - t0)
            reads.append(n_reads)
            events.append(n_events)
    finally:
        sock.close()
    med = (lambda xs: statistics.median(xs) if xs else 0.0)
    return Probe(n=len(totals), errors=errors, p50_ms=1000 * med(totals), ttft_p50_ms=1000 * med(ttfts),
                 events_p50=med(reads), event_count_p50=med(events), samples=totals)


def _read_answer(sock: socket.socket, t0: float) -> tuple[int, float, int, int]:
    """Read one HTTP/1.1 answer (Content-Length or chunked); (status, time of the first body byte, reads that
    carried at least one complete event, events)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    t_first = time.perf_counter() if rest else 0.0
    body = bytearray(rest)
    reads_with_events = 1 if b"\n\n" in rest else 0
    if "content-length" in hdrs:
        want = int(hdrs["content-length"])
        while len(body) < want:
            chunk = sock.recv(65536)
            if not t_first:
                t_first = time.perf_counter()
            body += chunk
        return status, t_first or time.perf_counter(), 1, body.count(b"\n\n")
    # chunked
    while not body.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        if not t_first:
            t_first = time.perf_counter()
        if b"\n\n" in chunk:
            reads_with_events += 1
        body += chunk
    return status, t_first, reads_with_events, bytes(body).count(b"\n\n")


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "_aio":
    url, hdrs, raw, conc, dur, warm = sys.argv[2:8]
    print(json.dumps(asyncio.run(_aio(url, json.loads(hdrs), raw.encode("latin-1"), int(conc), float(dur),
                                      float(warm)))))
