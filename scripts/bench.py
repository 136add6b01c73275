"""The aigw benchmark: aigw against bare mitmdump (and, with --peers, Portkey and LiteLLM) in one run, same mock.

Systems, all in front of the same mock provider (`python -m aigw.mock`) on this machine:
  bare     mitmdump --mode reverse:<mock>              the floor: what mitmproxy itself costs
  floor    --floor: mitmdump + scripts/floor_addon.py  one aiohttp call per request from the request hook and
                                                       nothing else: the floor of the addon-makes-the-call design
  aigw     mitmdump + the aigw addon                   auth, routing, balancing over 2 targets, failover armed
  base     --baseline DIR: the same, with the addon from another tree (e.g. `git archive <rev> | tar -x -C DIR`)
  peers    --peers: Portkey's gateway (npm) and the LiteLLM proxy (PyPI), installed into a cache on first use

Scenarios (each at fixed concurrency for a fixed time, wrk when installed):
  openai   OpenAI request → OpenAI target (aigw passes the body through)      bare: the same request
  xlate    OpenAI request → Anthropic target (aigw translates both ways)      bare: the Anthropic request
  each with JSON answers and with `stream: true` (SSE relayed event by event): `--mode json|stream|both` (both)
  --realistic  SDK-like headers (20) and a gzip-compressed multi-turn body
Then: added latency at c=1 (p50 over the mock's own), TTFT overhead for streams, chunk fidelity through a paced mock,
--failover-cost (a refused and a 500 target first), --invalid-keys (a flood of unknown keys), --limits-cost (a key's
limits kept in memory and in Redis), --streams N (N concurrent streams opened in a burst: errors, peak RSS, growth
over a soak).

Every figure is from this one run on this machine; the ratios (x bare) are what it claims, never the absolute
numbers. CPU ms/request is the proxy process's user+system CPU over the measured run divided by its answers — on a
shared 2-core machine it is far steadier than req/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_load import LoadResult, latency_probe, load  # noqa: E402
from bench_report import FAILOVER_BUDGET_MS, render  # noqa: E402

from aigw.procs import free_port, start_logged, wait_port  # noqa: E402
from aigw.procs import stop_process as stop  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# --mode: which answers each scenario is measured with (stream: `stream: true`, SSE relayed event by event).
MODES = {"both": (False, True), "json": (False,), "stream": (True,)}
MOCK_KEY = "sk-bench"
ANTHROPIC_HEADERS = {"content-type": "application/json", "x-api-key": MOCK_KEY, "anthropic-version": "2023-06-01"}
OPENAI_HEADERS = {"content-type": "application/json", "authorization": f"Bearer {MOCK_KEY}"}


def openai_body(stream: bool) -> dict:
    return {"model": "gpt-4", "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": "Hello!"}]}


def anthropic_body(stream: bool) -> dict:
    return {"model": "claude-3-sonnet", "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": "Hello!"}]}


# --- configuration --------------------------------------------------------------------------------------------
def configure_gateway(data: Path, mock_port: int, *, subdomain: str = "bench", failing_port: int | None = None,
                      provider: str = "anthropic") -> str:
    """Write a gateway (two weighted targets on the mock) straight into the store; return its key. The admin API
    is not part of the measurement.

    With failing_port, a better-priority target that refuses connections (or answers 500) comes first and passive
    health is off, so every request pays for one failover (what --failover-cost measures)."""
    sys.path.insert(0, str(ROOT))
    from admin import create_app
    from store.repo import Store

    c = create_app(Store(str(data))).test_client()

    def post(path: str, body: dict) -> dict:
        r = c.post(f"/api/v1{path}", json=body)
        assert r.status_code == 201, r.get_json()
        return r.get_json()

    gw = post("/gateways", {"name": subdomain, "subdomain": subdomain})
    if provider == "anthropic":
        target = {"path": "/v1/messages", "provider": "anthropic", "default_model": "claude-3-sonnet",
                  "models": ["claude-3-sonnet"], "headers": {"anthropic-version": "2023-06-01"},
                  "credentials": {"header_name": "x-api-key", "header_value": MOCK_KEY}}
    else:
        target = {"path": "/v1/chat/completions", "provider": "openai", "models": ["gpt-4"],
                  "credentials": {"api_key": MOCK_KEY}}
    target.update({"weight": 50, "host": "127.0.0.1", "port": mock_port, "protocol": "http"})
    targets = [target, dict(target)]
    upstream: dict = {"name": subdomain, "algorithm": "round-robin", "targets": targets}
    if failing_port is not None:
        targets.insert(0, dict(target, port=failing_port, priority=1))
        targets[1]["priority"] = targets[2]["priority"] = 2
        upstream["health_checks"] = {"passive": False, "threshold": 3, "interval": 60}
    up = post(f"/gateways/{gw['id']}/upstreams", upstream)
    svc = post(f"/gateways/{gw['id']}/services", {"name": subdomain, "type": "upstream", "upstream_id": up["id"]})
    post(f"/gateways/{gw['id']}/rules", {"path": "/v1", "service_id": svc["id"], "methods": ["POST"]})
    return post(f"/gateways/{gw['id']}/keys", {"name": subdomain})["key"]


def gateway_headers(key: str, subdomain: str) -> dict[str, str]:
    return {"content-type": "application/json", "authorization": f"Bearer {key}", "host": f"{subdomain}.example.com"}


# --- processes ------------------------------------------------------------------------------------------------
@dataclass
class System:
    name: str
    pid: int
    base: str          # http://127.0.0.1:port


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="aigw-bench-"))
        self.procs: list = []

    def start(self, name: str, cmd: list[str], port: int, env: dict | None = None) -> System:
        proc = start_logged(cmd, self.tmp / f"{name}.log", cwd=str(ROOT)) if env is None else \
            _start_env(cmd, self.tmp / f"{name}.log", env)
        self.procs.append(proc)
        wait_port(port, proc=proc, what=name)
        return System(name, proc.pid, f"http://127.0.0.1:{port}")

    def mock(self, name: str, *extra: str) -> int:
        port = free_port()
        self.start(name, [sys.executable, "-m", "aigw.mock", "--port", str(port), "--api-key", MOCK_KEY,
                          "--name", name, *extra], port)
        return port

    def mitmdump(self, name: str, *extra: str, env: dict | None = None) -> System:
        port = free_port()
        cmd = [str(BIN / "mitmdump"), *([] if os.environ.get("AIGW_BENCH_VERBOSE") else ["-q"]), "--listen-host", "127.0.0.1", "-p", str(port),
               "--set", f"confdir={self.tmp / 'mitm'}", *extra]
        return self.start(name, cmd, port, env)

    def gateway(self, name: str, data: Path, tree: Path = ROOT, env: dict | None = None,
                options: list[str] | None = None) -> System:
        extra = []
        if tree == ROOT:  # a --baseline tree may not know the newer options
            # One --set per option: mitmproxy drops every deferred (addon) option when one is given twice.
            merged = {"aigw_metrics_listen": "127.0.0.1:0"}
            for kv in [*(getattr(self.args, "set", None) or []), *(options or [])]:
                k, _, v = kv.partition("=")
                merged[k] = v
            for k, v in merged.items():
                extra += ["--set", f"{k}={v}"]
        return self.mitmdump(name, "-s", str(tree / "addon" / "entry.py"), "--mode", "reverse:http://127.0.0.1:9",
                             "--set", "connection_strategy=lazy", "--set", f"aigw_data={data}", *extra, env=env)

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)


def _start_env(cmd: list[str], log: Path, env: dict):
    import subprocess
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT), env={**os.environ, **env})


# --- the run --------------------------------------------------------------------------------------------------
def measure(args, system: System, path: str, headers: dict, body: dict, *, concurrency: int | None = None
            ) -> LoadResult:
    raw = json.dumps(body).encode()
    if args.realistic:
        import gzip
        raw = gzip.compress(raw, mtime=0)
        headers = {**sdk_headers(), **headers, "content-encoding": "gzip"}
    return load(system.base + path, headers, raw, concurrency=concurrency or args.concurrency,
                duration=args.duration, warmup=args.warmup, pid=system.pid, engine=args.engine)


def sdk_headers() -> dict[str, str]:
    """What the official Python SDKs send besides the key (with Content-Length and the key: 20 headers)."""
    return {"accept": "application/json", "accept-encoding": "gzip, deflate", "user-agent": "OpenAI/Python 1.99.0",
            "x-stainless-lang": "python", "x-stainless-package-version": "1.99.0", "x-stainless-os": "Linux",
            "x-stainless-arch": "x64", "x-stainless-runtime": "CPython", "x-stainless-runtime-version": "3.13.0",
            "x-stainless-async": "async:asyncio", "x-stainless-retry-count": "0",
            "x-stainless-read-timeout": "600", "x-stainless-timeout": "600", "x-request-source": "bench",
            "connection": "keep-alive"}


def machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    import mitmproxy.version
    return (f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, mitmproxy {mitmproxy.version.VERSION}")


def run(args) -> dict:
    b = Bench(args)
    try:
        mock_port = b.mock("mock")
        data = b.tmp / "aigw.json"
        keys = {"oa": configure_gateway(data, mock_port, subdomain="oa", provider="openai"),
                "an": configure_gateway(data, mock_port, subdomain="an", provider="anthropic")}
        systems = [b.mitmdump("bare", "--mode", f"reverse:http://127.0.0.1:{mock_port}"), b.gateway("aigw", data)]
        if args.floor:
            systems.append(b.mitmdump("floor", "-s", str(ROOT / "scripts" / "floor_addon.py"),
                                      "--mode", "reverse:http://127.0.0.1:9", "--set", "connection_strategy=lazy",
                                      "--set", f"floor_origin=http://127.0.0.1:{mock_port}"))
        for i, spec in enumerate(args.baseline or []):
            path, _, label = spec.partition("=")
            tree = Path(path).resolve()
            systems.append(b.gateway(label or f"base{i + 1}", data, tree, env={"PYTHONPATH": str(tree)}))
        bare = systems[0]
        result: dict = {"machine": machine(), "concurrency": args.concurrency, "duration_s": args.duration,
                        "engine": args.engine, "modes": ["stream" if m else "json" for m in args.modes],
                        "realistic": args.realistic, "scenarios": {}}
        for stream in args.modes:
            scenarios = {"openai": ("/v1/chat/completions", OPENAI_HEADERS, openai_body(stream), "oa"),
                         "xlate": ("/v1/messages", ANTHROPIC_HEADERS, anthropic_body(stream), "an")}
            for name, (bare_path, bare_headers, bare_body, sub) in scenarios.items():
                if args.only and name not in args.only:
                    continue
                rows: dict[str, list[dict]] = {}
                for _ in range(args.rounds):  # alternate the systems round by round: drift hits all of them alike
                    for s in systems:
                        if s is bare or s.name == "floor":
                            if s.name == "floor" and stream:
                                continue  # the floor reads an answer whole: it cannot relay a stream
                            r = measure(args, s, bare_path, bare_headers, bare_body)
                        else:
                            r = measure(args, s, "/v1/chat/completions", gateway_headers(keys[sub], sub),
                                        openai_body(stream))
                        rows.setdefault(s.name, []).append(r.as_dict())
                result["scenarios"][scenario_name(name, stream)] = {k: _median_row(v) for k, v in rows.items()}
        result["latency_c1"] = latency_c1(args, mock_port, systems, keys)
        if True in args.modes or args.fidelity:
            result["chunk_fidelity"] = chunk_fidelity(b, systems, data)
        if args.failover_cost:
            result["failover"] = failover_cost(b, args, data, mock_port, systems[1])
        if args.invalid_keys:
            result["invalid_keys"] = measure(args, systems[1], "/v1/chat/completions",
                                             gateway_headers("aigw-not-a-key-0123456789abcdef", "oa"),
                                             openai_body(False)).as_dict()
        if args.observability_cost:
            result["observability"] = observability_cost(b, args, data, keys["oa"])
        if args.limits_cost:
            import bench_limits
            result["limits"] = bench_limits.limits_cost(b, args, data, keys["oa"], measure, gateway_headers,
                                                        openai_body(args.stream), _median_row)
        if args.streams:
            result["streams_burst"] = streams_burst(b, args, data)
        if args.peers:
            result["peers"] = peers(b, args, mock_port)
        return result
    finally:
        b.close()


def scenario_name(name: str, stream: bool) -> str:
    """A scenario's row label: `openai`, `xlate` (JSON answers), `openai-stream`, `xlate-stream`."""
    return f"{name}-stream" if stream else name


def _median_row(rows: list[dict]) -> dict:
    if len(rows) == 1:
        return rows[0]
    rows = sorted(rows, key=lambda r: r["rps"])
    out = dict(rows[len(rows) // 2])
    out["rps_all"] = [round(r["rps"], 1) for r in rows]
    out["cpu_ms_per_req_all"] = sorted(round(r["cpu_ms_per_req"], 3) for r in rows)
    out["cpu_ms_per_req"] = out["cpu_ms_per_req_all"][len(rows) // 2]
    return out


def latency_c1(args, mock_port: int, systems: list[System], keys: dict) -> dict:
    """p50 at c=1 over one keep-alive connection: the mock alone, then through each proxy (xlate scenario for the
    gateway, its Anthropic equivalent for the others). Streams: time to the first event too."""
    count = args.latency_count
    out: dict = {}
    for stream in (False, True):
        raw_a = json.dumps(anthropic_body(stream)).encode()
        raw_o = json.dumps(openai_body(stream)).encode()
        row = {"direct": latency_probe(f"http://127.0.0.1:{mock_port}/v1/messages", ANTHROPIC_HEADERS, raw_a,
                                       count=count, stream=stream).as_dict()}
        for s in systems:
            if s.name == "floor" and stream:
                continue  # the floor reads a stream whole: it has no time to first token
            if s.name in ("bare", "floor"):
                p = latency_probe(s.base + "/v1/messages", ANTHROPIC_HEADERS, raw_a, count=count, stream=stream)
            else:
                p = latency_probe(s.base + "/v1/chat/completions", gateway_headers(keys["an"], "an"), raw_o,
                                  count=count, stream=stream)
            row[s.name] = p.as_dict()
        out["stream" if stream else "non_stream"] = row
    return out


def chunk_fidelity(b: Bench, systems: list[System], data: Path) -> dict:
    """A paced mock (20 ms between events): does each event reach the caller in its own read?"""
    paced = b.mock("paced", "--chunk-delay", "0.02")
    key = configure_gateway(data, paced, subdomain="paced", provider="anthropic")
    time.sleep(1.0)  # the proxy reloads its configuration within a second
    out = {}
    for s in systems:
        if s.name == "bare":
            continue
        p = latency_probe(s.base + "/v1/chat/completions", gateway_headers(key, "paced"),
                          json.dumps(openai_body(True)).encode(), count=5, stream=True)
        out[s.name] = {"events": p.event_count_p50, "reads_with_events": p.events_p50,
                       "event_by_event": p.events_p50 >= p.event_count_p50 - 1 and p.errors == 0}
    return out


def failover_cost(b: Bench, args, data: Path, mock_port: int, gw: System) -> dict:
    base = measure(args, gw, "/v1/chat/completions", gateway_headers(configure_gateway(
        data, mock_port, subdomain="plain"), "plain"), openai_body(args.stream))
    refused = configure_gateway(data, mock_port, subdomain="refused", failing_port=free_port())
    port_500 = free_port()
    b.start("mock500", [sys.executable, "-m", "aigw.mock", "--port", str(port_500), "--name", "failing",
                        "--faults", json.dumps([{"status": 500}])], port_500)
    five = configure_gateway(data, mock_port, subdomain="five", failing_port=port_500)
    time.sleep(1.0)
    out = {"no_failover": base.as_dict()}
    for name, key, sub in (("refused", refused, "refused"), ("500", five, "five")):
        r = measure(args, gw, "/v1/chat/completions", gateway_headers(key, sub), openai_body(args.stream))
        out[name] = r.as_dict() | {"added_p50_ms": round(r.p50_ms - base.p50_ms, 2)}
    out["within_budget"] = all(out[k]["added_p50_ms"] < FAILOVER_BUDGET_MS for k in ("refused", "500"))
    return out


def observability_cost(b: Bench, args, data: Path, key: str) -> dict:
    """The same gateway three ways, alternated round by round: lean (no metrics listener, no access log), with
    metrics and an access log (to a file), and with attempt flows on as well."""
    log = b.tmp / "access.log"
    variants = {"lean": ["aigw_metrics_listen=", "aigw_attempt_flows=off"],
                "metrics+log": [f"aigw_access_log={log}", "aigw_attempt_flows=off"],
                "+attempt flows": [f"aigw_access_log={log}", "aigw_attempt_flows=on"]}
    systems = {name: b.gateway(f"obs-{i}", data, options=opts) for i, (name, opts) in enumerate(variants.items())}
    rows: dict[str, list[dict]] = {}
    for _ in range(max(args.rounds, 2)):
        for name, s in systems.items():
            rows.setdefault(name, []).append(measure(args, s, "/v1/chat/completions", gateway_headers(key, "oa"),
                                                     openai_body(args.stream)).as_dict())
    out = {k: _median_row(v) for k, v in rows.items()}
    lean = out["lean"]
    for name, r in out.items():
        r["rps_vs_lean"] = round(r["rps"] / lean["rps"], 3) if lean["rps"] else 0.0
        r["cpu_vs_lean"] = round(r["cpu_ms_per_req"] / lean["cpu_ms_per_req"], 3) if lean["cpu_ms_per_req"] else 0.0
    return out


def streams_burst(b: Bench, args, data: Path) -> dict:
    """--streams N concurrent streams (translated OpenAI→Anthropic) opened over --burst seconds and held: a paced
    mock (12 words, --streams-chunk-delay between events) keeps each open for tens of seconds."""
    import bench_streams
    words = " ".join(f"word{i}" for i in range(12))
    paced = b.mock("slow", "--chunk-delay", str(args.streams_chunk_delay), "--reply", words)
    key = configure_gateway(data, paced, subdomain="slow", provider="anthropic")
    gw = b.gateway("aigw-streams", data, options=["aigw_attempt_flows=off"])
    res = bench_streams.run_streams_in_child(gw.base + "/v1/chat/completions", gateway_headers(key, "slow"),
                                             openai_body(True), streams=args.streams, burst=args.burst,
                                             soak=args.soak, pid=gw.pid, stream_timeout=300.0)
    out = res.as_dict()
    out.pop("rss_samples", None)
    out["error_count"] = res.error_count
    return out


def peers(b: Bench, args, mock_port: int) -> dict:
    """Portkey and LiteLLM on the same mock, with the same load (installed into a cache on first use)."""
    import bench_peers
    out: dict = {}
    for peer in bench_peers.peers(mock_port, b.tmp, args.peer_names):
        try:
            with peer:
                for stream in args.modes:
                    for t in peer.targets:
                        raw = json.dumps(dict(t.body, stream=stream)).encode()
                        r = load(t.url, t.headers, raw, concurrency=args.concurrency, duration=args.duration,
                                 warmup=args.warmup, pid=peer.pid, engine=args.engine)
                        scenario = scenario_name("xlate" if "Anthropic" in t.name else "openai", stream)
                        out[f"{t.name}{' stream' if stream else ''}"] = r.as_dict() | {
                            "version": peer.version, "peer": peer.name, "scenario": scenario}
        except bench_peers.PeerUnavailable as err:
            out[peer.name] = {"unavailable": str(err)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=1, help="alternate the systems this many times; report medians")
    p.add_argument("--engine", choices=("auto", "wrk", "aiohttp"), default="auto")
    p.add_argument("--mode", choices=tuple(MODES), default="both",
                   help="JSON answers, streamed ones, or both (default), each scenario per mode")
    p.add_argument("--stream", action="store_true", help="streamed answers only (--mode stream)")
    p.add_argument("--realistic", action="store_true", help="SDK-like headers and a gzip multi-turn body")
    p.add_argument("--only", nargs="*", choices=("openai", "xlate"), help="scenarios to run (default: both)")
    p.add_argument("--baseline", metavar="DIR[=NAME]", action="append",
                   help="also run the addon from another source tree (repeatable), e.g. from "
                        "`git archive <rev> | tar -x -C DIR`")
    p.add_argument("--latency-count", type=int, default=200, help="requests for the c=1 latency probe")
    p.add_argument("--fidelity", action="store_true", help="check chunk fidelity (on by default with --stream)")
    p.add_argument("--failover-cost", action="store_true", help="requests that fail over once (exit 1 over budget)")
    p.add_argument("--invalid-keys", action="store_true", help="a flood of unknown gateway keys")
    p.add_argument("--observability-cost", action="store_true",
                   help="the gateway lean, with metrics + access log, and with attempt flows too")
    p.add_argument("--limits-cost", action="store_true",
                   help="a key with every kind of limit, kept in memory and in Redis, against a key without")
    p.add_argument("--streams", type=int, default=0, metavar="N", help="N concurrent streams opened in a burst")
    p.add_argument("--burst", type=float, default=2.0, help="seconds over which --streams are opened")
    p.add_argument("--soak", type=float, default=30.0, help="seconds the --streams load is held")
    p.add_argument("--streams-chunk-delay", type=float, default=5.0, help="seconds between the paced mock's events")
    p.add_argument("--floor", action="store_true",
                   help="also run the design's floor: mitmdump with a minimal call-making addon (scripts/floor_addon.py)")
    p.add_argument("--peers", action="store_true", help="also run Portkey and LiteLLM (installed on first use)")
    p.add_argument("--peer-names", nargs="*", default=None, help="which peers (default: portkey litellm)")
    p.add_argument("--set", action="append", metavar="OPTION=VALUE",
                   help="an aigw option for the gateway under test (e.g. aigw_access_log=/tmp/a.log); repeatable")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--workers", metavar="N,M", default="",
                   help="only this: `aigw up --workers N` behind HAProxy for each count, e.g. 1,2 (req/s, CPU "
                        "per 1,000 requests per worker and HAProxy's; scripts/bench_workers.py)")
    args = p.parse_args()
    args.modes = MODES["stream" if args.stream else args.mode]
    args.stream = args.modes == (True,)  # what the extra measurements (--failover-cost, ...) send
    if args.workers:
        import bench_workers
        return bench_workers.main(args)
    res = run(args)
    print(json.dumps(res, indent=2) if args.json else render(res))
    return 0 if res.get("failover", {}).get("within_budget", True) else 1


if __name__ == "__main__":
    sys.exit(main())
