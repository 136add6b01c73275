"""Bounded, seeded fuzz run of the real proxy: mitmdump + the addon + the admin API + strict mock providers.

What is sent (tests/fuzz/gen.py), raw over sockets so nothing is normalised on the way: malformed and adversarial
bodies (truncated JSON, wrong types in every field, deep and wide nesting, NaN/Infinity/huge numbers, lone
surrogates, invalid UTF-8, giant strings, unknown fields, model ids aimed at the URL), headers (hundreds to
thousands of headers, long values and names, duplicated and odd auth headers, CR/LF/NUL, odd content types,
bogus and stacked Content-Encodings, gzip/deflate bombs, chunked/Content-Length framing games, Upgrade), paths
(dot segments plain and percent-encoded, %2f, double slashes, query injections, very long, absolute-form,
asterisk), methods and HTTP versions, on both ingress formats (/v1/chat/completions, /v1/messages) with stream
true/false, against OpenAI, Anthropic, Gemini and Azure targets and an untranslated endpoint service. Also:
adversarial target configurations posted through the admin API, and slow clients / endless streams.

What must hold:
* no 5xx but the documented 502/503/504 (a 500 is a failure), no answer later than its deadline, no hang;
* no "Traceback" in the mitmdump log;
* every request a mock received is on that mock's expected provider path (inside the rule's prefix, no dot
  segments, model ids not turned into path or query), the mocks' control endpoints were never reached (their
  fault rules and counters stay intact), and no gateway key reached a provider;
* an admin payload is refused with a 4xx, or, when accepted, the proxy still answers requests to it without 500;
* slow clients are cut off (aigw_client_timeout, set to 3 s here), an oversized Content-Length is refused with
  413 before the body arrives, and a committed stream ends within its upstream's total_timeout;
* mitmdump's peak RSS grows by less than RSS_BOUND_MIB, the saved flows hold no gateway key, and a normal request
  is still served at the end.

Environment (all optional):
  AIGW_FUZZ_SEED=<int>     seed (default 1729); every failure report prints it
  AIGW_FUZZ_CASES=<n>      number of generated proxy cases (default 500: the whole module runs in ~30 s)
  AIGW_FUZZ_LONG=1         long run: 5000 cases unless AIGW_FUZZ_CASES says otherwise (minutes)
  AIGW_FUZZ_ONLY=3,17      run only these case numbers (as printed in a failure report) to reproduce them

    .venv/bin/python -m pytest tests/fuzz -q                                   # CI run
    AIGW_FUZZ_LONG=1 AIGW_FUZZ_SEED=$RANDOM .venv/bin/python -m pytest tests/fuzz -q   # long run
"""

from __future__ import annotations

import collections
import json
import logging
import os
import posixpath
import random
import re
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.harness import Admin, anthropic_target, gemini_target, openai_target, start_mitmdump
from tests.fuzz import gen
from tests.fuzz.rawhttp import RawResult, exchange

logging.getLogger("werkzeug").setLevel(logging.WARNING)
# The mocks' own HTTP parser refusing junk the gateway forwarded untranslated (5000 headers, 100 KB values) is
# the mock's 400, which the checks below see; its log lines are noise.
logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)

SEED = int(os.environ.get("AIGW_FUZZ_SEED", "1729"))
LONG = os.environ.get("AIGW_FUZZ_LONG", "") not in ("", "0")
CASES = int(os.environ.get("AIGW_FUZZ_CASES", "5000" if LONG else "500"))
ONLY = [int(x) for x in os.environ.get("AIGW_FUZZ_ONLY", "").replace(" ", "").split(",") if x]
MAX_BODY = 2 * 1024 * 1024          # aigw_max_body of the fuzzed proxy (a bomb is many times this)
CLIENT_TIMEOUT = 3                  # aigw_client_timeout of the fuzzed proxy
BOMB_MIB = 512                      # what a bomb inflates to; an unbounded inflate blows RSS_BOUND_MIB
RSS_BOUND_MIB = 400                 # peak RSS growth allowed over the whole run
CASE_RSS_MIB = 160                  # peak RSS growth one request may cause (bodies are at most 2 MiB)
ALLOWED_5XX = (502, 503, 504)
FAILOVER = {"connect_timeout": 2, "headers_timeout": 10, "first_token_timeout": 10, "idle_timeout": 5,
            "total_timeout": 15}
NO_PASSIVE = {"passive": False, "threshold": 3, "interval": 60}
SENTINEL = [{"match": {"path_contains": "/__aigw_fuzz_sentinel__"}, "status": 418}]
PROVIDER_KEYS = {"oa": "sk-fuzz-openai", "an": "sk-fuzz-anthropic", "gm": "gm-fuzz-gemini", "az": "az-fuzz-azure",
                 "sl": "sk-fuzz-slow"}


def _seed_line() -> str:
    return f"AIGW_FUZZ_SEED={SEED} AIGW_FUZZ_CASES={CASES}"


# ----------------------------------------------------------------------------------------------------------------
# Where each mock may be reached
# ----------------------------------------------------------------------------------------------------------------

def _segments_ok(path: str) -> bool:
    return all(seg not in (".", "..") for seg in path.split("/"))


def _inside(path: str, prefix: str) -> bool:
    # Also normalised: a decoded "..%2F" is a dot segment to any server that decodes before resolving.
    norm = posixpath.normpath(path) if path.startswith("/") else path
    return (_segments_ok(path) and (path == prefix or path.startswith(prefix + "/"))
            and (norm == prefix or norm.startswith(prefix + "/")))


GEMINI_PATH = re.compile(r"/v1beta/models/([^/]+):(generateContent|streamGenerateContent)")
AZURE_PATH = re.compile(r"/openai/deployments/([^/]+)/chat/completions")


def path_problem(mock: str, rec: dict) -> str | None:
    """Why a request recorded by a mock is outside what its rule allows (None: fine)."""
    path, query = rec["path"], rec.get("query") or {}
    if mock == "pt":
        return None if _inside(path, "/base") else f"endpoint mock reached at {path!r} (allowed: /base/…)"
    if _inside(path, "/v1"):  # the rule's own prefix (translated chat path, or an untranslated provider path)
        return None
    if mock == "gm":
        m = GEMINI_PATH.fullmatch(path)
        if m and m.group(1) not in (".", "..") and set(query) <= {"alt"}:
            return None
    if mock == "az":
        m = AZURE_PATH.fullmatch(path)
        if m and m.group(1) not in (".", "..") and set(query) <= {"api-version"}:
            return None
    return f"{mock} mock reached at {path!r} query={query!r} (outside the rule / provider endpoint)"


# ----------------------------------------------------------------------------------------------------------------
# The stack
# ----------------------------------------------------------------------------------------------------------------

def rss_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


class Stack:
    def __init__(self, root: Path) -> None:
        from admin.server import serve
        from aigw.mock import MockProviderThread
        from store.repo import Store

        self.root = root
        data = root / "aigw.json"
        self.flows = root / "flows.mitm"
        self.handle = serve(Store(str(data)), "127.0.0.1", 0, health_path=str(data) + ".health.json")
        self.mocks: dict[str, MockProviderThread] = {}
        for name in ("oa", "an", "gm", "az", "pt", "adv", "sl"):
            kw = {}
            if name == "sl":  # a long reply, paced: its stream lasts ~9 s unless something bounds it
                kw = {"reply": " ".join(f"w{i}" for i in range(300)), "chunk_delay": 0.03}
            mock = MockProviderThread(api_key=PROVIDER_KEYS.get(name), name=name, max_records=100_000, **kw)
            mock.port = mock.start()
            self.mocks[name] = mock
        old = os.environ.get("PYTHONUNBUFFERED")
        os.environ["PYTHONUNBUFFERED"] = "1"  # log lines land in the file before the answer: per-case attribution
        try:
            self.proxy = start_mitmdump(data, root / "mitm-conf", extra=[
                "--set", f"aigw_max_body={MAX_BODY}", "--set", f"aigw_client_timeout={CLIENT_TIMEOUT}",
                "-w", str(self.flows)])
        finally:
            if old is None:
                os.environ.pop("PYTHONUNBUFFERED", None)
            else:
                os.environ["PYTHONUNBUFFERED"] = old
        self.admin = Admin(f"http://127.0.0.1:{self.handle.port}", self.proxy.base)
        self.keys: dict[str, str] = {}
        self.log_offset = 0
        self.seen = {name: 0 for name in self.mocks}
        self.received: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
        self._configure()
        for mock in self.mocks.values():
            mock.set_faults(SENTINEL)

    def _configure(self) -> None:
        m = self.mocks
        extra = {"failover": FAILOVER}
        targets = {
            "oa": openai_target(m["oa"].port, key=PROVIDER_KEYS["oa"]),
            "an": anthropic_target(m["an"].port, key=PROVIDER_KEYS["an"]),
            # No default model and no model list: the caller's model id is what goes into the URL.
            "gm": gemini_target(m["gm"].port, key=PROVIDER_KEYS["gm"], default_model=None, models=[]),
            "az": {"provider": "azure", "host": "127.0.0.1", "port": m["az"].port, "protocol": "http",
                   "credentials": {"api_key": PROVIDER_KEYS["az"]}},
        }
        for name, target in targets.items():
            self.keys[name] = self.admin.guide_setup([target], subdomain=name, health_checks=NO_PASSIVE,
                                                     extra=extra)["key"]
        slow = openai_target(m["sl"].port, key=PROVIDER_KEYS["sl"])
        self.keys["sl"] = self.admin.guide_setup([slow], subdomain="sl", health_checks=NO_PASSIVE, extra={
            "failover": dict(FAILOVER, idle_timeout=5, total_timeout=2)})["key"]
        gw = self.admin.ok("POST", "/gateways", {"name": "gw-pt", "subdomain": "pt"})
        svc = self.admin.ok("POST", f"/gateways/{gw['id']}/services",
                            {"name": "endpoint", "type": "endpoint", "host": "127.0.0.1", "port": m["pt"].port,
                             "protocol": "http", "path": "/base"})
        self.admin.ok("POST", f"/gateways/{gw['id']}/rules", {"path": "/pt", "service_id": svc["id"],
                                                               "strip_path": True})
        self.keys["pt"] = self.admin.ok("POST", f"/gateways/{gw['id']}/keys", {"name": "k"})["key"]
        for key in self.keys.values():
            self.admin.wait_live(key, timeout=10)

    def key_pair(self, gw: str) -> dict[str, bytes]:
        other = {"oa": "an", "an": "oa", "gm": "az", "az": "gm", "pt": "oa"}[gw]
        return {"self": self.keys[gw].encode(), "other": self.keys[other].encode()}

    def new_log(self) -> str:
        with open(self.proxy.log_path, "rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        self.log_offset += len(data)
        return data.decode("utf-8", "replace")

    def check_mocks(self) -> list[str]:
        """Problems in what the mocks received since the last call (paths, control endpoints, leaked keys)."""
        problems = []
        gateway_keys = list(self.keys.values())
        for name, mock in self.mocks.items():
            faults = mock.faults()
            total = mock.stats()["total"]
            if faults != SENTINEL or total < self.seen[name]:
                problems.append(f"{name} mock's control endpoint was reached: its fault rules were "
                                f"{'wiped (POST /_mock/reset)' if not faults else f'replaced by {faults!r}'} — a "
                                f"request escaped the rule to /_mock/…")
                mock.set_faults(SENTINEL)
                self.seen[name] = 0
            if total <= self.seen[name]:
                continue
            fresh = [r for r in mock.requests() if r["seq"] > self.seen[name]]
            self.received[name].extend((r["method"], r["path"]) for r in fresh)
            # Forget what was checked (keeps this O(new records)); the sentinel fault rule goes back on.
            mock.reset()
            mock.set_faults(SENTINEL)
            self.seen[name] = 0
            if name == "adv":
                continue
            for rec in fresh:
                why = path_problem(name, rec)
                if why:
                    problems.append(why)
                where = json.dumps([rec["path"], rec.get("query"), rec.get("headers")])
                if any(k in where for k in gateway_keys):
                    problems.append(f"a gateway key reached the {name} provider ({rec['method']} {rec['path']} "
                                    f"query={rec.get('query')!r})")
        return problems

    def stop(self) -> None:
        self.proxy.stop()
        for mock in self.mocks.values():
            mock.stop()
        self.handle.shutdown()


@pytest.fixture(scope="module")
def fz(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("aigw-fuzz"))
    try:
        # Warm up (imports, connection pools) before the RSS baseline.
        for gw in ("oa", "an", "gm", "az"):
            for ingress in ("openai", "anthropic"):
                normal_request(stack, gw, ingress, stream=False)
        time.sleep(0.2)
        stack.rss_start = rss_kib(stack.proxy.proc.pid)
        stack.new_log()
        stack.check_mocks()
        print(f"\nfuzz stack up: {_seed_line()} mitmdump pid {stack.proxy.proc.pid} RSS {stack.rss_start}")
        yield stack
    finally:
        stack.stop()


def normal_body(ingress: str, stream: bool) -> bytes:
    if ingress == "openai":
        return json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16,
                           "stream": stream}).encode()
    return json.dumps({"model": "claude-3-sonnet", "max_tokens": 16, "stream": stream,
                       "messages": [{"role": "user", "content": "Hi"}]}).encode()


def raw_request(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body


def normal_request(stack: Stack, gw: str, ingress: str, *, stream: bool, path_prefix: str = "",
                   key: str | None = None, timeout: float = 15.0) -> RawResult:
    path = path_prefix + gen.INGRESS_PATH[ingress]
    headers = {"Host": "127.0.0.1", "Content-Type": "application/json", "X-Api-Key": key or stack.keys[gw]}
    return exchange(stack.proxy.port, raw_request("POST", path, headers, normal_body(ingress, stream)),
                    timeout=timeout)


def status_problem(res: RawResult) -> str | None:
    if res.status is None:
        return f"no answer ({res.reason} after {res.elapsed:.1f} s)"
    if res.status >= 500 and res.status not in ALLOWED_5XX:
        return f"HTTP {res.status}: {res.body[:300]!r}"
    return None


LOG_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\.\d+\]", re.M)


def _tracebacks(log: str) -> list[str]:
    """Each traceback in a piece of the mitmdump log, shortened to: the log message, the last frame, the error."""
    out = []
    for m in re.finditer(r"Traceback \(most recent call last\)", log):
        start = log.rfind("\n", 0, max(0, m.start() - 1)) + 1
        nxt = LOG_LINE.search(log, m.end())
        block = log[m.start(): nxt.start() if nxt else len(log)].rstrip().splitlines()
        frames = [i for i, line in enumerate(block) if line.lstrip().startswith("File ")]
        tail = block[frames[-1]:] if frames else block[-3:]
        tail = [line for line in tail if not set(line.strip()) <= set("^~")]
        out.append(log[start: m.start()].strip() + " | " + " | ".join(line.strip() for line in tail)[:700])
    if not out and "Addon error" in log:
        out.append(log[log.index("Addon error"):][:700])
    return out


# ----------------------------------------------------------------------------------------------------------------
# 1. Adversarial configurations through the admin API
# ----------------------------------------------------------------------------------------------------------------

def adversarial_configs(port: int, rng: random.Random) -> list[tuple[str, str, dict]]:
    """(label, kind, payload): kind "target" (an upstream with this one target) or "endpoint" (a service)."""
    base = {"provider": "openai", "host": "127.0.0.1", "port": port, "protocol": "http", "default_model": "gpt-4",
            "credentials": {"api_key": "sk-adv"}}
    hosts = ["user:pw@127.0.0.1", "user@127.0.0.1", "127.0.0.1/evil", f"127.0.0.1:{port}", "127.0.0.1:99999",
             "127.0.0.1#frag", "127.0.0.1?x=1", "127.0.0.1\r\nX-Injected: 1", "127.0.0.1 ", " 127.0.0.1",
             "[::1", "[::1]", "::1", "http://127.0.0.1", "127.0.0.1\\@evil.invalid", "127.0.0.1%2f", "a" * 300,
             "evil.invalid", "127.0.0.1.", "localhost", "127.1", "-127.0.0.1", "*.invalid", "127.0.0.1\x00x",
             "127.0.0.1/../x", "ünïcode.invalid", "127.0.0.1@evil.invalid"]
    paths = ["/v1/../_mock/reset", "/v1/%2e%2e/_mock/reset", "/../../etc", "/v1/chat/completions?x=1",
             "/v1/chat/completions#f", "/v1/\r\nX: y", "/v1/ sp", "//evil.invalid/v1", "/" + "a" * 10_000,
             "relative", "", "/v1/chat/completions\x00", "/.", "/v1/chat/completions/..", "/%2e%2e/%2e%2e/x",
             "/v1/chat/completions?key=a&api-version=../../x"]
    ports = [0, -1, 65536, "80", 80.5, True, None, 10**20]
    protocols = ["ftp", "HTTP ", "https", "", "file", "http\r\n", None]
    header_names = {"Content-Length": "1", "Transfer-Encoding": "chunked", "Host": "evil.invalid",
                    "Connection": "close", "Content-Type": "text/plain", "Content-Encoding": "gzip",
                    "Expect": "100-continue", "Upgrade": "websocket", ":authority": "x", "X Bad": "1",
                    "X-Ok": "a\r\nb", "Authorization": "Bearer other", "": "x", "X-Long": "a" * 100_000,
                    "Te": "trailers", "Trailer": "X", "Keep-Alive": "x", "X-Nul": "a\x00b", "Content-length": "0"}
    out: list[tuple[str, str, dict]] = []
    for h in hosts:
        out.append((f"host={h!r:.40}", "target", dict(base, host=h)))
    for p in paths:
        out.append((f"path={p!r:.40}", "target", dict(base, path=p)))
        out.append((f"passthrough path={p!r:.40}", "target", {"host": "127.0.0.1", "port": port,
                                                              "protocol": "http", "path": p}))
    for p in ports:
        out.append((f"port={p!r}", "target", dict(base, port=p)))
    for p in protocols:
        out.append((f"protocol={p!r}", "target", dict(base, protocol=p)))
    for name, value in header_names.items():
        out.append((f"header {name!r:.30}", "target", dict(base, headers={name: value})))
        out.append((f"credentials header {name!r:.30}", "target",
                    dict(base, credentials={"header_name": name, "header_value": value})))
    for prov, extra in [("gemini", {"default_model": "../../_mock/reset"}),
                        ("gemini", {"default_model": "x?key=1#", "models": ["x?key=1#"]}),
                        ("gemini", {"path": "/v1beta/models/{model}:generateContent/../../../_mock/reset"}),
                        ("azure", {"default_model": "../../../_mock/reset"}),
                        ("azure", {"api_version": "2024\r\nX-Injected: 1"}),
                        ("azure", {"api_version": "x&key=1/../.."}),
                        ("azure", {"path": "/openai/deployments/{model}/../../../_mock/reset"}),
                        ("OPENAI", {}), ("unknown", {}), ("anthropic", {"max_tokens_default": 0}),
                        ("anthropic", {"max_tokens_default": 2**62}), ("openai", {"weight": -1}),
                        ("openai", {"id": "../x"}), ("openai", {"id": "a" * 200}), ("openai", {"models": [""]}),
                        ("openai", {"default_model": "not-listed", "models": ["gpt-4"]}),
                        ("openai", {"credentials": {"api_key": "k\r\nX-Injected: 1"}}),
                        ("openai", {"credentials": {}}), ("openai", {"credentials": "sk-string"}),
                        ("openai", {"headers": ["not", "a", "dict"]}), ("openai", {"headers": {"X": 5}})]:
        out.append((f"provider={prov} {json.dumps(extra)[:50]}", "target", dict(base, provider=prov, **extra)))
    for h in ["user@127.0.0.1", "127.0.0.1/evil", f"127.0.0.1:{port}", "127.0.0.1\r\nX: 1", "evil.invalid"]:
        out.append((f"endpoint host={h!r:.40}", "endpoint", {"host": h, "port": port, "protocol": "http"}))
    for p in ["/../_mock/reset", "/%2e%2e/_mock", "relative", "/base?x=1", "/\r\nX: 1"]:
        out.append((f"endpoint path={p!r:.40}", "endpoint", {"host": "127.0.0.1", "port": port, "protocol": "http",
                                                              "path": p}))
    # Seeded random combinations of the above.
    pools = {"host": hosts, "path": paths, "port": ports, "protocol": protocols}
    for i in range(20):
        t = dict(base)
        picked = rng.sample(sorted(pools), rng.randint(2, 3))
        for field in picked:
            t[field] = rng.choice(pools[field])
        if rng.random() < 0.5:
            name = rng.choice(sorted(header_names))
            t["headers"] = {name: header_names[name]}
        out.append((f"random#{i} " + ",".join(f"{f}={t[f]!r:.20}" for f in picked), "target", t))
    return out


def test_admin_adversarial_targets(fz: Stack):
    admin = fz.admin
    gw = admin.ok("POST", "/gateways", {"name": "gw-adv", "subdomain": "adv"})
    rng = random.Random(f"{SEED}:admin")
    configs = adversarial_configs(fz.mocks["adv"].port, rng)
    failures: list[str] = []
    accepted: list[tuple[str, str]] = []  # (label, rule prefix)
    for i, (label, kind, payload) in enumerate(configs):
        if kind == "target":
            r = admin.call("POST", f"/gateways/{gw['id']}/upstreams", {
                "name": f"adv{i}", "targets": [payload], "health_checks": NO_PASSIVE,
                "failover": {"connect_timeout": 1, "headers_timeout": 4, "first_token_timeout": 4,
                             "idle_timeout": 4, "total_timeout": 6}})
            service = {"name": f"adv{i}", "type": "upstream", "upstream_id": r.json().get("id")} \
                if r.status == 201 else None
        else:
            r = admin.call("POST", f"/gateways/{gw['id']}/services", dict(payload, name=f"adv{i}", type="endpoint"))
            service = None
        if r.status >= 500 or not (200 <= r.status < 300 or 400 <= r.status < 500):
            failures.append(f"admin answered {r.status} to {label}: {r.body[:300]!r}")
            continue
        if r.status >= 400:
            continue
        if service is not None:
            sr = admin.call("POST", f"/gateways/{gw['id']}/services", service)
            if sr.status != 201:
                failures.append(f"service for accepted {label}: {sr.status} {sr.body[:200]!r}")
                continue
            svc_id = sr.json()["id"]
        else:
            svc_id = r.json()["id"]
        rr = admin.call("POST", f"/gateways/{gw['id']}/rules", {"path": f"/c{i}", "service_id": svc_id,
                                                                 "methods": ["POST"]})
        if rr.status != 201:
            failures.append(f"rule for accepted {label}: {rr.status} {rr.body[:200]!r}")
            continue
        accepted.append((label, f"/c{i}"))
    print("\naccepted configs: " + "; ".join(label for label, _ in accepted))
    # Adversarial rules on the same gateway (rule paths are configuration too).
    svc0 = admin.ok("POST", f"/gateways/{gw['id']}/services",
                    {"name": "adv-rule-svc", "type": "endpoint", "host": "127.0.0.1", "port": fz.mocks["adv"].port,
                     "protocol": "http"})
    for p in ["/r/../x", "/%2e%2e", "//", "/r?x=1", "/r#f", "/r\r\nX: 1", "/" + "r" * 5000, "r", "", "/r/./s"]:
        r = admin.call("POST", f"/gateways/{gw['id']}/rules", {"path": p, "service_id": svc0["id"]})
        if r.status >= 500:
            failures.append(f"admin answered {r.status} to rule path {p!r:.40}: {r.body[:300]!r}")
    key = admin.ok("POST", f"/gateways/{gw['id']}/keys", {"name": "k"})["key"]
    admin.wait_live(key, timeout=10)
    time.sleep(1.2)  # every accepted record is in the proxy's snapshot
    fz.new_log()
    for label, prefix in accepted:
        seen, bad, logs = [], False, []
        for ingress, stream in (("openai", False), ("openai", True), ("anthropic", False)):
            res = normal_request(fz, "adv", ingress, stream=stream, path_prefix=prefix, key=key, timeout=12)
            why = status_problem(res)
            tbs = _tracebacks(fz.new_log())
            bad = bad or bool(why or tbs)
            seen.append(f"{ingress}{'/stream' if stream else ''}: {why or res.status}")
            logs += tbs
        if bad:
            failures.append(f"accepted config {label} → {'; '.join(seen)}"
                            + (f"\n      mitmdump log: {logs[0].split(' | ')[0]} … {logs[0].split(' | ')[-1]}"
                               if logs else ""))
    info = fz.check_mocks()  # informational: an accepted config may point anywhere on the adv mock
    adv_paths = collections.Counter(p[:60] for _m, p in fz.received["adv"])
    print(f"\nadmin fuzz: {len(configs)} configs, {len(accepted)} accepted; adv mock saw paths {dict(adv_paths)}"
          + "".join(f"\n  note: {n}" for n in info))
    if failures:
        pytest.fail(f"{_seed_line()}\n{len(failures)} admin/config failures:\n  " + "\n  ".join(failures),
                    pytrace=False)


# ----------------------------------------------------------------------------------------------------------------
# 2. Slow clients, early 413, endless streams
# ----------------------------------------------------------------------------------------------------------------

def test_slow_clients_and_streams_are_bounded(fz: Stack):
    key = fz.keys["oa"]
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Api-Key: {key}\r\n"
            "Content-Type: application/json\r\n").encode()
    cut = CLIENT_TIMEOUT + 4.0
    checks = {
        # name: (bytes, exchange kwargs, predicate(result) -> problem or None)
        "headers never finished (aigw_client_timeout)": (
            head, {"timeout": cut + 6}, lambda r: None if (r.status is None and r.reason != "timeout"
                                                           or r.status in (408, 400)) and r.elapsed <= cut
            else f"connection held {r.elapsed:.1f} s (status {r.status}, {r.reason}); expected a close or 408 "
                 f"within {cut:.0f} s"),
        "body shorter than Content-Length (aigw_client_timeout)": (
            head + b"Content-Length: 1000\r\n\r\n{\"model\":", {"timeout": cut + 6},
            lambda r: None if (r.status is None and r.reason != "timeout" or r.status in (408, 400))
            and r.elapsed <= cut else f"connection held {r.elapsed:.1f} s (status {r.status}, {r.reason}); "
                                      f"expected a close or 408 within {cut:.0f} s"),
        "headers dribbled 1 byte / 0.3 s (aigw_client_timeout)": (
            head + b"X-Pad: " + b"p" * 100 + b"\r\n\r\n", {"timeout": cut + 6, "pace": (1, 0.3)},
            lambda r: None if (r.status is None and r.reason != "timeout" or r.status in (408, 400))
            and r.elapsed <= cut else f"slow-loris client held {r.elapsed:.1f} s (status {r.status}, {r.reason});"
                                      f" expected a close or 408 within {cut:.0f} s"),
        "Content-Length over aigw_max_body, no body sent (413 early)": (
            head + f"Content-Length: {64 * MAX_BODY}\r\n\r\n".encode(), {"timeout": 2.5},
            lambda r: None if r.status == 413 else
            f"no early 413 for a declared {64 * MAX_BODY} byte body (status {r.status}, {r.reason} after "
            f"{r.elapsed:.1f} s)"),
        "Content-Length over aigw_max_body with Expect: 100-continue (413 early)": (
            head + f"Expect: 100-continue\r\nContent-Length: {64 * MAX_BODY}\r\n\r\n".encode(), {"timeout": 2.5},
            lambda r: None if r.status == 413 else
            f"no early 413 for a declared {64 * MAX_BODY} byte body (status {r.status}, {r.reason} after "
            f"{r.elapsed:.1f} s)"),
        "committed stream longer than total_timeout=2 s": (
            raw_request("POST", "/v1/chat/completions",
                        {"Host": "127.0.0.1", "Content-Type": "application/json", "X-Api-Key": fz.keys["sl"]},
                        json.dumps({"model": "gpt-4", "stream": True,  # no max_tokens: all 300 words, ~9 s
                                    "messages": [{"role": "user", "content": "Hi"}]}).encode()), {"timeout": 20},
            lambda r: None if r.status is not None and r.reason == "ok" and r.elapsed <= 2 + 4 else
            f"stream ran {r.elapsed:.1f} s (status {r.status}, {r.reason}) past its upstream's total_timeout of 2 s"),
    }
    results: dict[str, RawResult] = {}

    def run(name, data, kw):
        results[name] = exchange(fz.proxy.port, data, **kw)

    threads = [threading.Thread(target=run, args=(n, d, kw), daemon=True) for n, (d, kw, _p) in checks.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    failures = []
    print("\nslow clients / long stream: " + "; ".join(
        f"{n.split(' (')[0]} → {r.status or r.reason} after {r.elapsed:.1f} s" for n, r in results.items()))
    for name, (_d, _kw, pred) in checks.items():
        res = results.get(name)
        why = "thread did not finish" if res is None else (status_problem(res) if res.status else None) or pred(res)
        if why:
            failures.append(f"{name}: {why}")
    tbs = _tracebacks(fz.new_log())
    failures += [f"Traceback in mitmdump log: {tb[:800]}" for tb in tbs]
    failures += fz.check_mocks()
    if failures:
        pytest.fail(f"{_seed_line()}\n" + "\n".join(failures), pytrace=False)


# ----------------------------------------------------------------------------------------------------------------
# 3. The proxy fuzz
# ----------------------------------------------------------------------------------------------------------------

def judge(case: gen.Case, res: RawResult) -> list[str]:
    problems = []
    if res.status is None:
        if res.reason == "timeout":
            problems.append(f"no answer in {res.elapsed:.1f} s")
        elif case.framing_ok:
            problems.append(f"connection {res.reason} without an answer to a well-formed request")
    else:
        if res.status >= 500 and res.status not in ALLOWED_5XX:
            problems.append(f"HTTP {res.status}")
        elif res.status == -1:
            problems.append("unparseable status line")
        if res.status in ALLOWED_5XX and (res.header("content-type") or "").startswith("text/html"):
            problems.append(f"HTTP {res.status} is mitmproxy's own error page: the addon did not answer")
        if res.elapsed > case.deadline:
            problems.append(f"slow: answered after {res.elapsed:.1f} s (deadline {case.deadline:.0f} s)")
        if case.expect and res.status not in case.expect:
            problems.append(f"expected HTTP {'/'.join(map(str, case.expect))}, got {res.status}: {res.body[:200]!r}")
    return problems


def _category(problem: str) -> str:
    if problem.startswith("Traceback"):  # one category per root cause: the exception line, without specifics
        cause = problem.rsplit(" | ", 1)[-1]
        cause = re.sub(r"'[^']*'|\"[^\"]*\"|b'[^']*'", "…", cause)
        return "Traceback: " + re.sub(r"\d+", "N", cause)[:100]
    return re.sub(r"\d+(\.\d+)?", "N", problem.split(":")[0])[:80]


@pytest.mark.timeout(120 + 0.6 * len(ONLY or range(CASES)))  # the long run outlasts the suite's 300 s default
def test_proxy_fuzz(fz: Stack):
    indices = ONLY or list(range(CASES))
    failures: dict[str, list[tuple[gen.Case, str, RawResult | None]]] = collections.defaultdict(list)
    kinds_seen: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[str] = collections.Counter()
    slowest: list[tuple[float, int, str]] = []
    hwm = rss_kib(fz.proxy.proc.pid)["VmHWM"]
    t0 = time.monotonic()
    for idx in indices:
        case = gen.make_case(SEED, idx, bomb_mib=BOMB_MIB)
        for k in case.kinds:
            kinds_seen[k.split(":")[0]] += 1
        data = case.wire(fz.key_pair(case.gw))
        res = exchange(fz.proxy.port, data, timeout=case.deadline + 10,
                       head_request=case.method.upper() == b"HEAD")
        statuses[str(res.status or res.reason)] += 1
        problems = judge(case, res)
        problems += [f"Traceback in the mitmdump log: {tb}" for tb in _tracebacks(fz.new_log())]
        problems += fz.check_mocks()
        now_hwm = rss_kib(fz.proxy.proc.pid)["VmHWM"]
        if now_hwm - hwm > CASE_RSS_MIB * 1024:
            problems.append(f"peak RSS of mitmdump rose by {(now_hwm - hwm) / 1024:.0f} MiB during this one request "
                            f"(aigw_max_body is {MAX_BODY >> 20} MiB)")
        hwm = now_hwm
        slowest.append((res.elapsed, idx, case.label()))
        for p in problems:
            failures[_category(p)].append((case, p, res))
    elapsed = time.monotonic() - t0
    slowest.sort(reverse=True)
    print(f"\nproxy fuzz: {len(indices)} cases in {elapsed:.1f} s, {_seed_line()}\n  statuses {dict(statuses)}\n"
          f"  mutation families {dict(kinds_seen)}\n  slowest: "
          + ", ".join(f"#{i} {t:.1f} s [{label}]" for t, i, label in slowest[:5]))
    if failures:
        lines = [f"{_seed_line()}: {sum(len(v) for v in failures.values())} problems in {len(failures)} categories "
                 f"(re-run one case with AIGW_FUZZ_ONLY=<case #>)"]
        for cat, items in sorted(failures.items(), key=lambda kv: -len(kv[1])):
            case, problem, res = min(items, key=lambda it: len(it[0].body) + len(it[0].target)
                                     + sum(len(v) for _, v in it[0].headers))
            lines.append(f"\n== {cat} — {len(items)} case(s): #{', #'.join(str(c.idx) for c, _, _ in items[:15])}"
                         f"{' …' if len(items) > 15 else ''}\n  minimal: {problem[:1500]}\n{case.describe()}")
        pytest.fail("\n".join(lines), pytrace=False)


# ----------------------------------------------------------------------------------------------------------------
# 4. After all that
# ----------------------------------------------------------------------------------------------------------------

def test_proxy_still_serves_and_stayed_bounded(fz: Stack):
    failures = []
    for gw in ("oa", "an", "gm", "az"):
        for ingress in ("openai", "anthropic"):
            for stream in (False, True):
                res = normal_request(fz, gw, ingress, stream=stream)
                if res.status != 200 or b"Hello" not in res.body:
                    failures.append(f"normal {ingress} request (stream={stream}) via {gw}: HTTP {res.status} "
                                    f"{res.reason} {res.body[:300]!r}")
    rss = rss_kib(fz.proxy.proc.pid)
    growth_mib = (rss["VmHWM"] - fz.rss_start["VmRSS"]) / 1024
    print(f"\nmitmdump RSS at start {fz.rss_start['VmRSS'] / 1024:.0f} MiB, now {rss['VmRSS'] / 1024:.0f} MiB, "
          f"peak {rss['VmHWM'] / 1024:.0f} MiB (peak growth {growth_mib:.0f} MiB, bound {RSS_BOUND_MIB} MiB)")
    if growth_mib >= RSS_BOUND_MIB:
        failures.append(f"mitmdump peak RSS grew by {growth_mib:.0f} MiB (bound {RSS_BOUND_MIB} MiB)")
    log = fz.proxy.log()
    for tb in _tracebacks(log)[:5]:
        failures.append(f"Traceback in the mitmdump log (whole run): {tb[:1200]}")
    failures += fz.check_mocks()
    assert fz.proxy.proc.poll() is None, "mitmdump exited"
    fz.proxy.stop()  # flushes and closes the saved flows
    failures += flow_leaks(fz)
    if failures:
        pytest.fail(f"{_seed_line()}\n" + "\n".join(failures), pytrace=False)


def flow_leaks(fz: Stack) -> list[str]:
    """The flows mitmdump saved (-w) must hold no usable gateway key and no provider credential."""
    from mitmproxy import io

    secrets = {f"gateway key of {k}": v for k, v in fz.keys.items()}
    secrets.update({f"provider credential of {k}": v for k, v in PROVIDER_KEYS.items()})
    found: dict[str, set[str]] = collections.defaultdict(set)
    with open(fz.flows, "rb") as f:
        for flow in _flows(io.FlowReader(f)):
            req = getattr(flow, "request", None)
            if req is None:
                continue
            where = [("path", req.path)] + [(f"request header {k}", v) for k, v in req.headers.items(multi=True)]
            resp = getattr(flow, "response", None)
            if resp is not None:
                where += [(f"response header {k}", v) for k, v in resp.headers.items(multi=True)]
            for what, secret in secrets.items():
                for part, text in where:
                    if secret in text:
                        found[what].add(f"{part} (e.g. {req.method} {req.path[:80]!r}: {text[:60]!r})"
                                        if len(found[what]) < 4 else "…")
    return [f"saved flows hold the {what} in clear, in: {'; '.join(sorted(parts))}" for what, parts in found.items()]


def _flows(reader):
    from mitmproxy.exceptions import FlowReadException

    try:
        yield from reader.stream()
    except FlowReadException:
        return  # a truncated last record (mitmdump killed): what was read is checked
