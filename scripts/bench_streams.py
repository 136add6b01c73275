"""Held-streams benchmark: N streaming requests opened in a burst, held while a paced mock streams, cycled for a soak.

`run_streams(url, headers, body, streams=5000, burst=2.0, soak=30.0, pid=<gateway pid>)` opens `streams` streaming
requests spread evenly over `burst` seconds, reads every event of every stream and, for `soak` seconds once every
one of them got its response head (or failed), replaces each stream that ends by a new one, so about `streams` stay
open throughout (streams that outlast the soak are simply held). It counts completed streams and errors by kind, the
time to open them all, and samples the gateway's RSS (VmRSS every `sample_every` s, VmHWM at the end) for "peak RSS"
and "growth over the soak", its CPU time and the accept queues of its listening sockets. `run_streams_in_child` runs
the same in a process of its own (as scripts/bench.py runs its loads). It starts nothing but the load.

The client is a bare asyncio Protocol speaking HTTP/1.1 over loopback (`connection: close`, one request per
connection): a few hundred bytes of state per stream, ~1.5 ms of CPU per stream, so 5,000 fit beside the gateway
on a 2-core machine.

Error kinds: `refused` (connect refused), `connect_reset` / `connect_timeout` / `connect_<errno name>` (no
connection), `reset_before_head` / `eof_before_head` (connected, no response head), `http_<status>`,
`reset_mid_stream`, `truncated` (the body ended without its terminating chunk or without `done_marker`, by
default `data: [DONE]`), `timeout` (not done within `stream_timeout`). `kernel` holds the host-wide TCP counters
(/proc/net/netstat, /proc/net/snmp) that moved during the run: ListenOverflows/ListenDrops are SYNs or handshakes a
full accept queue turned away, SyncookiesFailed the ones then reset; `listen_queues` says which queue was full.

Alone (starts a paced mock and one gateway as scripts/bench.py does; 12 words at 5 s: ~90 s streams):

    .venv/bin/python scripts/bench_streams.py --streams 5000 --burst 2 --soak 30 --chunk-delay 5 --words 12
    .venv/bin/python scripts/bench_streams.py --bare ...        # bare mitmdump in front of the mock, for reference
    .venv/bin/python scripts/bench_streams.py --url http://127.0.0.1:8081/v1/chat/completions --key K --pid PID
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

DONE = "data: [DONE]"            # an OpenAI stream's last event; an Anthropic one ends with ANTHROPIC_DONE
ANTHROPIC_DONE = "event: message_stop"
_TICK = os.sysconf("SC_CLK_TCK")
_TERMINATOR = b"\r\n0\r\n\r\n"
_KERNEL_COUNTERS = ("TcpExt:ListenOverflows", "TcpExt:ListenDrops", "TcpExt:TCPReqQFullDrop",
                    "TcpExt:TCPReqQFullDoCookies", "TcpExt:SyncookiesSent", "TcpExt:TCPAbortOnData",
                    "TcpExt:TCPAbortOnClose", "Tcp:AttemptFails", "Tcp:EstabResets", "Tcp:OutRsts")


@dataclass
class StreamsResult:
    streams: int                      # concurrent streams asked for (N)
    burst_s: float                    # the N first ones are opened evenly over this many seconds
    soak_s: float                     # then every stream that ends is replaced for this long
    started: int = 0                  # streams started in all (N + the soak's replacements)
    completed: int = 0                # ended with their terminating chunk and `done_marker`
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)   # the first few error messages, to read
    events: int = 0                   # `data:` events read, all streams
    connect_all_s: float = 0.0        # burst start → the last of the N first connections established
    open_all_s: float = 0.0           # burst start → the last of the N first response heads received
    peak_open: int = 0                # most streams open at once (connected, not yet ended)
    ttfb_p50_ms: float = 0.0          # request sent → first body byte
    ttfb_p99_ms: float = 0.0
    stream_p50_s: float = 0.0         # connect → end of stream, completed streams
    wall_s: float = 0.0
    client_cpu_s: float = 0.0         # CPU the load generator itself used
    gateway_cpu_s: float = 0.0        # CPU the measured process used during the run (user + system)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)  # (s since burst start, VmRSS kB)
    rss_start_kb: int = 0             # VmRSS before the burst
    peak_rss_kb: int = 0              # VmHWM at the end (peak over the process's life)
    rss_soak_start_kb: int = 0        # VmRSS when the burst was open (soak start)
    rss_soak_end_kb: int = 0          # VmRSS at the soak's end (streams still cycling)
    soak_growth_kb: int = 0           # end - start
    soak_slope_kb_s: float = 0.0      # least-squares slope of VmRSS over the soak
    kernel: dict[str, int] = field(default_factory=dict)
    # The listening sockets of the gateway and of `watch_pids` (ss): "address pid=N" → most connections seen
    # waiting in the accept queue ("queued") and the queue's size ("backlog"); queued > backlog: it overflowed.
    listen_queues: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict:
        return asdict(self)


def raise_nofile() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = int(Path("/proc/sys/fs/nr_open").read_text())
    if soft != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        soft = hard
    return soft


def proc_status_kb(pid: int, key: str) -> int:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM), 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key.encode() + b":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all threads; 0.0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def kernel_counters() -> dict[str, int]:
    """Host-wide TCP counters (`Group:Name`) from /proc/net/netstat and /proc/net/snmp."""
    out: dict[str, int] = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for names, values in zip(lines[::2], lines[1::2]):
            group, *keys = names.split()
            for k, v in zip(keys, values.split()[1:]):
                if f"{group}{k}" in _KERNEL_COUNTERS:
                    out[f"{group}{k}"] = int(v)
    return out


class ListenQueues:
    """Samples (ss) the accept queues of the listening sockets of some processes, keeping each one's maximum.

    Which sockets are whose (`ss -p`, which reads every process's fds) is looked up every `every`-th sample only;
    the other samples are a cheap `ss -ltn`."""

    def __init__(self, pids: tuple[int, ...], into: dict[str, dict[str, int]], every: int = 6) -> None:
        self.pids, self.into, self.every, self.n = pids, into, every, 0
        self.owner: dict[str, int] = {}  # listening address → pid

    async def sample(self) -> None:
        lookup = self.n % self.every == 0
        self.n += 1
        try:
            proc = await asyncio.create_subprocess_exec("ss", "-ltnpH" if lookup else "-ltnH",
                                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError:
            return
        out, _ = await proc.communicate()
        for line in out.decode().splitlines():
            _, queued, backlog, addr, *rest = line.split()
            if lookup:
                for pid in self.pids:
                    if f"pid={pid}," in " ".join(rest):
                        self.owner[addr] = pid
            pid = self.owner.get(addr)
            if pid is not None:
                q = self.into.setdefault(f"{addr} pid={pid}", {"queued": 0, "backlog": int(backlog)})
                q["queued"], q["backlog"] = max(q["queued"], int(queued)), int(backlog)


class _Stream(asyncio.Protocol):
    """One request on one connection; keeps the raw response, decides what it was once the connection ends."""

    __slots__ = ("chunks", "done", "first_byte_at", "head", "on_head", "request", "sent_at", "status", "transport")

    def __init__(self, request: bytes, done: asyncio.Future) -> None:
        self.request = request
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.status = 0
        self.chunks: list[bytes] = []
        self.sent_at = 0.0
        self.first_byte_at = 0.0
        self.on_head: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sent_at = time.monotonic()
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = self.head[:end], self.head[end + 4:]
            self.head = head
            try:
                self.status = int(head.split(b" ", 2)[1])
            except (IndexError, ValueError):
                self.status = -1
            if self.on_head is not None:
                self.on_head()
            if not rest:
                return
            data = rest
        if not self.first_byte_at:
            self.first_byte_at = time.monotonic()
        self.chunks.append(data)
        if data.endswith(_TERMINATOR) or (len(data) < 7 and b"".join(self.chunks[-2:]).endswith(_TERMINATOR)):
            self.transport.close()  # type: ignore[union-attr]  # whole answer read: do not wait for the FIN

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(exc)


def _dechunk(raw: bytes) -> tuple[bytes, bool]:
    """A chunked body decoded, and whether it ended with its terminating chunk."""
    out, pos = [], 0
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            return b"".join(out), False
        try:
            size = int(raw[pos:eol].split(b";", 1)[0], 16)
        except ValueError:
            return b"".join(out), False
        if size == 0:
            return b"".join(out), True
        start = eol + 2
        if start + size + 2 > len(raw):
            out.append(raw[start:])
            return b"".join(out), False
        out.append(raw[start:start + size])
        pos = start + size + 2


def _connect_kind(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "connect_reset"
    if isinstance(exc, TimeoutError):
        return "connect_timeout"
    return f"connect_{errno.errorcode.get(exc.errno or 0, type(exc).__name__)}"


class _Run:
    """The shared counters of one run."""

    def __init__(self, res: StreamsResult, done_marker: bytes, samples_max: int = 8) -> None:
        self.res = res
        self.done_marker = done_marker
        self.errors: dict[str, int] = {}
        self.open = 0
        self.ttfb: list[float] = []
        self.durations: list[float] = []
        self.samples_max = samples_max

    def fail(self, kind: str, detail: str = "") -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.res.error_samples) < self.samples_max:
            self.res.error_samples.append(f"{kind}: {detail}"[:300])


async def _one(run: _Run, host: str, port: int, request: bytes, timeout: float,
               settle: Callable[[float, float], None] | None = None) -> bool:
    """One stream, start to end. `settle(connected at, head at)` (monotonic; 0.0 when not reached) is called
    once: when the response head arrives, or when the stream failed before that. True: completed."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    connected = 0.0

    def settled(head: float) -> None:
        nonlocal settle
        if settle is not None:
            settle, report = None, settle
            report(connected, head)

    run.res.started += 1
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            transport, proto = await loop.create_connection(lambda: _Stream(request, done), host, port)
    except OSError as exc:
        run.fail(_connect_kind(exc), repr(exc))
        settled(0.0)
        return False
    connected = time.monotonic()
    if proto.status:
        settled(connected)
    else:
        proto.on_head = lambda: settled(time.monotonic())
    run.open += 1
    run.res.peak_open = max(run.res.peak_open, run.open)
    try:
        async with asyncio.timeout(max(0.1, timeout - (connected - t0))):
            exc = await done
    except TimeoutError:
        transport.abort()
        run.fail("timeout", f"status {proto.status}, {sum(map(len, proto.chunks))} body bytes")
        settled(0.0)
        return False
    finally:
        run.open -= 1
    settled(0.0)
    if not proto.status:
        kind = "reset_before_head" if isinstance(exc, ConnectionResetError) else "eof_before_head"
        run.fail(kind, repr(exc))
        return False
    raw = b"".join(proto.chunks)
    if proto.status != 200:
        run.fail(f"http_{proto.status}", raw[:200].decode("latin-1"))
        return False
    if b"transfer-encoding: chunked" in proto.head.lower():
        body, complete = _dechunk(raw)
    else:
        body, complete = raw, True
    run.res.events += body.count(b"data:")
    if complete and run.done_marker in body[-200:]:
        run.res.completed += 1
        run.ttfb.append(proto.first_byte_at - proto.sent_at)
        run.durations.append(time.monotonic() - connected)
        return True
    if isinstance(exc, ConnectionResetError):
        run.fail("reset_mid_stream", repr(exc))
    else:
        run.fail("truncated", body[-120:].decode("latin-1"))
    return False


def _slope(points: list[tuple[float, int]]) -> float:
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


async def run_streams_async(url: str, headers: dict[str, str], body: dict | bytes, *, streams: int = 5000,
                            burst: float = 2.0, soak: float = 0.0, pid: int | None = None,
                            sample_every: float = 0.5, stream_timeout: float = 120.0,
                            watch_pids: tuple[int, ...] = (), done_marker: bytes | str = DONE,
                            error_pause: float = 1.0) -> StreamsResult:
    """The benchmark, in the running loop (see the module docstring). `pid`: the gateway process (RSS, CPU,
    accept queues); `watch_pids`: other processes whose accept queues are sampled too (e.g. the mock's). During the
    soak a slot whose stream failed waits `error_pause` seconds before its next one."""
    raise_nofile()
    done_marker = done_marker.encode() if isinstance(done_marker, str) else done_marker
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {k.lower(): v for k, v in headers.items()}
    hdrs.setdefault("host", parts.netloc)
    hdrs.setdefault("content-type", "application/json")
    hdrs.update({"content-length": str(len(payload)), "connection": "close"})
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = (f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n").encode() \
        + payload

    res = StreamsResult(streams=streams, burst_s=burst, soak_s=soak)
    run = _Run(res, done_marker)
    kernel_before = kernel_counters()
    cpu0, gw_cpu0 = time.process_time(), cpu_seconds(pid) if pid else 0.0
    res.rss_start_kb = proc_status_kb(pid, "VmRSS") if pid else 0
    t0 = time.monotonic() + 0.05
    soak_end = float("inf") if soak else float("-inf")  # with a soak: set once the burst is open
    first_connected: list[float] = []
    first_head: list[float] = []

    settled = asyncio.Event()  # every one of the N first streams got its response head, or failed

    def first_settled(connected: float, head: float) -> None:
        first_connected.append(connected)
        first_head.append(head)
        if len(first_head) == streams:
            settled.set()

    async def slot(i: int) -> None:
        await asyncio.sleep(max(0.0, t0 + i * burst / streams - time.monotonic()))
        ok = await _one(run, host, port, request, stream_timeout, first_settled)
        while time.monotonic() < soak_end:
            if not ok:  # no storm of instant retries when the gateway fails fast
                await asyncio.sleep(error_pause)
            ok = await _one(run, host, port, request, stream_timeout)

    async def sampler() -> None:
        while True:
            if pid:
                res.rss_samples.append((round(time.monotonic() - t0, 2), proc_status_kb(pid, "VmRSS")))
            if queues.pids:
                await queues.sample()
            await asyncio.sleep(sample_every)

    queues = ListenQueues((*((pid,) if pid else ()), *watch_pids), res.listen_queues)
    sampling = asyncio.create_task(sampler())
    tasks = [asyncio.create_task(slot(i)) for i in range(streams)]
    await settled.wait()
    soak_start = time.monotonic()
    soak_end = soak_start + soak if soak else float("-inf")
    if pid:
        res.rss_soak_start_kb = proc_status_kb(pid, "VmRSS")
    if soak:
        await asyncio.sleep(max(0.0, soak_end - time.monotonic()))
        if pid:
            res.rss_soak_end_kb = proc_status_kb(pid, "VmRSS")
    await asyncio.gather(*tasks)
    sampling.cancel()
    res.wall_s = round(time.monotonic() - t0, 3)
    res.client_cpu_s = round(time.process_time() - cpu0, 2)
    ok_connects = [t for t in first_connected if t]
    ok_heads = [t for t in first_head if t]
    res.connect_all_s = round(max(ok_connects) - t0, 3) if ok_connects else 0.0
    res.open_all_s = round(max(ok_heads) - t0, 3) if ok_heads else 0.0
    res.errors = dict(sorted(run.errors.items()))
    if run.ttfb:
        ttfb = sorted(run.ttfb)
        res.ttfb_p50_ms = round(1000 * ttfb[len(ttfb) // 2], 1)
        res.ttfb_p99_ms = round(1000 * ttfb[min(len(ttfb) - 1, int(len(ttfb) * 0.99))], 1)
        res.stream_p50_s = round(statistics.median(run.durations), 2)
    if pid:
        res.gateway_cpu_s = round(cpu_seconds(pid) - gw_cpu0, 2)
        res.peak_rss_kb = proc_status_kb(pid, "VmHWM")
        if soak:
            res.soak_growth_kb = res.rss_soak_end_kb - res.rss_soak_start_kb
            offset = soak_start - t0
            window = [(t, kb) for t, kb in res.rss_samples if offset <= t <= offset + soak and kb]
            res.soak_slope_kb_s = round(_slope(window), 1)
    kernel_after = kernel_counters()
    res.kernel = {k: kernel_after[k] - kernel_before.get(k, 0) for k in kernel_after
                  if kernel_after[k] != kernel_before.get(k, 0)}
    return res


def run_streams(url: str, headers: dict[str, str], body: dict | bytes, **kw) -> StreamsResult:
    """`run_streams_async` in a new event loop of this process (keyword arguments as there)."""
    return asyncio.run(run_streams_async(url, headers, body, **kw))


def run_streams_in_child(url: str, headers: dict[str, str], body: dict, *, timeout: float | None = None,
                         **kw) -> StreamsResult:
    """`run_streams` in a child process of its own (so its CPU and memory are not the caller's)."""
    spec = json.dumps({"url": url, "headers": headers, "body": body, "kw": kw})
    limit = timeout or kw.get("burst", 2.0) + kw.get("soak", 0.0) + 2 * kw.get("stream_timeout", 120.0) + 60
    out = subprocess.run([sys.executable, __file__, "_load", spec], capture_output=True, text=True, timeout=limit,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    data = json.loads(out.stdout)
    data["rss_samples"] = [tuple(s) for s in data["rss_samples"]]
    return StreamsResult(**data)


def _print(res: StreamsResult) -> None:
    mib = 1 / 1024
    print(f"{res.streams} streams in {res.burst_s:g} s, soak {res.soak_s:g} s: started {res.started}, "
          f"completed {res.completed}, errors {res.error_count} {res.errors or ''}")
    print(f"  connect all {res.connect_all_s:.2f} s, open all (first byte) {res.open_all_s:.2f} s, "
          f"peak open {res.peak_open}, ttfb p50 {res.ttfb_p50_ms:.0f} ms p99 {res.ttfb_p99_ms:.0f} ms, "
          f"stream p50 {res.stream_p50_s:.1f} s, events {res.events}, wall {res.wall_s:.1f} s, "
          f"CPU: client {res.client_cpu_s:.1f} s, gateway {res.gateway_cpu_s:.1f} s")
    if res.peak_rss_kb:
        print(f"  gateway RSS: before {res.rss_start_kb * mib:.0f} MiB, peak (VmHWM) {res.peak_rss_kb * mib:.0f} "
              f"MiB, soak start {res.rss_soak_start_kb * mib:.0f} MiB → end {res.rss_soak_end_kb * mib:.0f} MiB "
              f"(growth {res.soak_growth_kb * mib:+.1f} MiB, slope {res.soak_slope_kb_s:+.1f} kB/s)")
    if res.listen_queues:
        print("  accept queues (most waiting / size): " + ", ".join(
            f"{a} {q['queued']}/{q['backlog']}" for a, q in res.listen_queues.items()))
    if res.kernel:
        print(f"  kernel TCP counters moved (host-wide): {res.kernel}")
    for s in res.error_samples:
        print(f"  e.g. {s}")


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "_load":
        spec = json.loads(sys.argv[2])
        print(json.dumps(run_streams(spec["url"], spec["headers"], spec["body"], **spec["kw"]).as_dict()))
        return 0
    import argparse
    import tempfile

    root = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(root), str(root / "scripts")]
    from aigw.procs import free_port, start_logged, stop_process, wait_port

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=5000)
    p.add_argument("--burst", type=float, default=2.0, help="seconds over which the streams are opened")
    p.add_argument("--soak", type=float, default=30.0, help="seconds streams keep cycling after the burst")
    p.add_argument("--chunk-delay", type=float, default=0.5, help="mock: seconds between stream events")
    p.add_argument("--words", type=int, default=24, help="mock: words in the reply (one event each)")
    p.add_argument("--stream-timeout", type=float, default=300.0, help="a stream not done by then is an error")
    p.add_argument("--script", action="append", default=[], help="an extra mitmproxy -s script for the gateway")
    p.add_argument("--nofile", type=int, default=0,
                   help="start the gateway with this RLIMIT_NOFILE (soft and hard, via prlimit), as `ulimit -n` would")
    p.add_argument("--bare", action="store_true",
                   help="measure bare mitmdump (reverse proxy to the mock, Anthropic streams) instead of the gateway")
    p.add_argument("--url", help="measure this running gateway instead of starting one (with --key, --pid)")
    p.add_argument("--key", default="")
    p.add_argument("--pid", type=int, default=0)
    p.add_argument("--inline", action="store_true", help="run the load in this process, not a child")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    body = {"model": "gpt-4", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "Hello!"}]}
    kw: dict = {"streams": args.streams, "burst": args.burst, "soak": args.soak, "stream_timeout": args.stream_timeout}
    procs: list[subprocess.Popen] = []
    try:
        if args.url:
            url, key, pid, watch = args.url, args.key, args.pid or None, ()
        else:
            from bench import configure_gateway

            tmp = Path(tempfile.mkdtemp(prefix="aigw-streams-"))
            mock_port, gw_port = free_port(), free_port()
            reply = " ".join(f"word{i}" for i in range(args.words))
            procs.append(start_logged([sys.executable, "-m", "aigw.mock", "--port", str(mock_port), "--api-key",
                                       "sk-bench", "--name", "bench", "--chunk-delay", str(args.chunk_delay),
                                       "--reply", reply], tmp / "mock.log", cwd=root))
            wait_port(mock_port, proc=procs[0], what="mock")
            data = tmp / "aigw.json"
            key = configure_gateway(data, mock_port)
            extra = [a for s in args.script for a in ("-s", s)]
            if args.bare:
                extra += ["--mode", f"reverse:http://127.0.0.1:{mock_port}"]
                body = {"model": "claude-3-sonnet", "max_tokens": 64, "stream": True,
                        "messages": [{"role": "user", "content": "Hello!"}]}
                kw["done_marker"], path = ANTHROPIC_DONE, "/v1/messages"
            else:
                extra += ["-s", str(root / "addon" / "entry.py"), "--mode", "reverse:http://127.0.0.1:9",
                          "--set", "connection_strategy=lazy", "--set", f"aigw_data={data}"]
                path = "/v1/chat/completions"
            limit = ["prlimit", f"--nofile={args.nofile}:{args.nofile}", "--"] if args.nofile else []
            gw = start_logged([*limit, str(Path(sys.executable).parent / "mitmdump"), "-q", "--listen-host",
                               "127.0.0.1", "-p", str(gw_port), *extra, "--set", f"confdir={tmp / 'mitm'}"],
                              tmp / "gateway.log", cwd=root)
            procs.append(gw)
            wait_port(gw_port, proc=gw, what="gateway")
            url, pid, watch = f"http://127.0.0.1:{gw_port}{path}", gw.pid, (procs[0].pid,)
            print(f"logs in {tmp}", file=sys.stderr)
        headers = {"host": "bench.example.com", "x-api-key": key}
        if args.bare:
            headers = {"x-api-key": "sk-bench", "anthropic-version": "2023-06-01"}
        run = run_streams if args.inline else run_streams_in_child
        res = run(url, headers, body, pid=pid, watch_pids=watch, **kw)
    finally:
        for proc in reversed(procs):
            stop_process(proc)
    if args.json:
        print(json.dumps(res.as_dict(), indent=2))
    else:
        _print(res)
    return 1 if res.error_count else 0


if __name__ == "__main__":
    sys.exit(main())
