"""Ingress hardening through a real mitmdump: header limits, body limits before the body is read, bounded
decoding of compressed bodies, strict request JSON, client read deadlines, and keys in query strings masked in
the stored flows. Every refusal is a 4xx in the caller's format — never a 500, a traceback or a hang."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest

from tests.e2e.harness import http, openai_target, start_mitmdump, wait_until

BODY = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 20}
MAX_BODY = 10 * 1024 * 1024  # the default aigw_max_body


def _setup(admin, subdomain, mock_factory, **mock_kw) -> str:
    oa = mock_factory("openai-mock", "sk-openai-test", **mock_kw)
    return admin.guide_setup([openai_target(oa.port, weight=1)], subdomain=subdomain)["key"]


def _headers(subdomain: str, key: str, **extra) -> dict:
    return {"Host": f"{subdomain}.example.com", "X-Api-Key": key, **extra}


def _read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 response with a Content-Length body, read from a raw socket."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before a response head: {buf[:200]!r}")
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        data = sock.recv(65536)
        if not data:
            break
        body += data
    return int(lines[0].split()[1]), headers, body[:length]


def _closed_after(sock: socket.socket, timeout: float = 10.0) -> tuple[float, bytes]:
    """Seconds until the peer closes `sock`, and what it sent before."""
    t0 = time.monotonic()
    sock.settimeout(timeout)
    got = b""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        got += data
    return time.monotonic() - t0, got


def _mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak(pid: int) -> float:
    """Reset the process's peak RSS to its current RSS (Linux clear_refs "5"); returns the baseline in MiB."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return _mib(pid, "VmRSS")
    except OSError:
        return max(_mib(pid, "VmRSS"), _mib(pid, "VmHWM"))  # no reset: growth above the old peak only


def _gzip_bomb(gib: int = 1) -> bytes:
    """~1 MB of gzip whose first `gib` GiB inflate to zeros (full flushes make every 1 MiB block compress alike,
    so it is built in milliseconds; its trailer is never reached)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    return first + again * (1024 * gib - 1) + c.flush()


# -- 1. headers ----------------------------------------------------------------------------------------------------
def test_thousands_of_headers_are_431_and_do_not_stall_other_requests(admin, proxy, subdomain, mock_factory):
    key = _setup(admin, subdomain, mock_factory)
    alone = time.perf_counter()
    assert http("POST", f"{proxy.base}/v1/chat/completions", BODY, _headers(subdomain, key)).status == 200
    alone = time.perf_counter() - alone
    body = json.dumps(BODY).encode()
    many = b"".join(b"X-Filler-%d: vvv\r\n" % i for i in range(8000))  # ~150 KB of headers
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + subdomain.encode() + b".example.com\r\nX-Api-Key: " +
            key.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(body))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        t0 = time.perf_counter()
        s.sendall(head + many + b"\r\n" + body)
        # While the gateway handles those 8,000 headers, an unrelated request on another connection.
        r = http("POST", f"{proxy.base}/v1/chat/completions", BODY, _headers(subdomain, key))
        beside = time.perf_counter() - t0
        status, headers, answer = _read_response(s)
        refused = time.perf_counter() - t0
    print(f"\n8,000 headers: 431 in {refused * 1000:.0f} ms; a request beside it {beside * 1000:.0f} ms "
          f"(alone {alone * 1000:.0f} ms)")
    assert r.status == 200
    assert status == 431 and headers["content-type"] == "application/json"
    err = json.loads(answer)["error"]
    assert err["type"] == "invalid_request_error" and "8004" in err["message"] and "256" in err["message"]
    # Before: the request beside it waited 5 s (13 s on a slow machine) for the quadratic header loops.
    assert beside < 1.0 and refused < 1.0
    # Too many bytes of headers (one huge one) in the Anthropic format on its path; the proxy is still fine.
    r = http("POST", f"{proxy.base}/v1/messages", dict(BODY, max_tokens=5),
             _headers(subdomain, key, **{"X-Big": "v" * 70_000}))
    assert r.status == 431 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error" and "65536" in r.json()["error"]["message"]


def test_a_key_header_that_is_not_utf8_is_401_not_500(admin, proxy, subdomain, mock_factory):
    _setup(admin, subdomain, mock_factory)
    body = json.dumps(BODY).encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + subdomain.encode() + b".example.com\r\n"
                  b"X-Api-Key: aigw-\xff\xfe\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        status, _, answer = _read_response(s)
    assert status == 401 and json.loads(answer)["error"]["code"] == "invalid_api_key"


# -- 2. bodies -----------------------------------------------------------------------------------------------------
def test_declared_oversized_body_is_413_before_it_is_sent(admin, proxy, subdomain, mock_factory):
    key = _setup(admin, subdomain, mock_factory)
    base = _reset_peak(proxy.proc.pid)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        t0 = time.perf_counter()
        s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: " + subdomain.encode() + b".example.com\r\nX-Api-Key: " +
                  key.encode() + b"\r\nContent-Length: %d\r\n\r\n" % (200 * 1024 * 1024) + b"{" * 65536)
        status, headers, answer = _read_response(s)  # without sending the other 199.9 MB
        took = time.perf_counter() - t0
    grew = _mib(proxy.proc.pid, "VmHWM") - base
    print(f"\n200 MB declared: 413 in {took * 1000:.0f} ms; peak RSS +{grew:.1f} MiB")
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(answer) == {"type": "error", "error": {
        "type": "request_too_large", "message": f"Request body is larger than {MAX_BODY} bytes."}}
    assert took < 1.0 and grew < 50
    # A client that writes its whole oversized body first (urllib) still reads the 413, not a reset.
    r = http("POST", f"{proxy.base}/v1/chat/completions", b"x" * (MAX_BODY + 1), _headers(subdomain, key))
    assert r.status == 413 and r.json()["error"]["type"] == "invalid_request_error"
    assert http("POST", f"{proxy.base}/v1/chat/completions", BODY, _headers(subdomain, key)).status == 200


def test_chunked_body_over_the_limit_is_413_in_the_callers_format(admin, proxy, subdomain, mock_factory):
    key = _setup(admin, subdomain, mock_factory)
    base = _reset_peak(proxy.proc.pid)

    def chunks():
        for _ in range(40):  # 40 MiB offered; the gateway stops reading at 10 MiB
            yield b"x" * (1 << 20)

    req = urllib.request.Request(f"{proxy.base}/v1/chat/completions", data=chunks(), method="POST",
                                 headers=_headers(subdomain, key, **{"Transfer-Encoding": "chunked"}))
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=20)
    grew = _mib(proxy.proc.pid, "VmHWM") - base
    assert e.value.code == 413 and json.loads(e.value.read())["error"]["type"] == "invalid_request_error"
    assert grew < 50, grew
    ok = urllib.request.Request(f"{proxy.base}/v1/chat/completions", data=iter([json.dumps(BODY).encode()]),
                                method="POST", headers=_headers(subdomain, key, **{"Transfer-Encoding": "chunked"}))
    with urllib.request.urlopen(ok, timeout=20) as resp:
        assert resp.status == 200


def test_gzip_bomb_is_413_at_once_with_bounded_memory(admin, proxy, subdomain, mock_factory):
    key = _setup(admin, subdomain, mock_factory)
    bomb = _gzip_bomb()
    base = _reset_peak(proxy.proc.pid)
    t0 = time.perf_counter()
    r = http("POST", f"{proxy.base}/v1/chat/completions", bomb,
             _headers(subdomain, key, **{"Content-Encoding": "gzip"}))
    took = time.perf_counter() - t0
    grew = _mib(proxy.proc.pid, "VmHWM") - base
    print(f"\n{len(bomb) / 1e6:.1f} MB gzip → 1 GiB: {r.status} in {took * 1000:.0f} ms; peak RSS +{grew:.1f} MiB")
    assert r.status == 413 and r.json()["error"]["type"] == "invalid_request_error"
    assert "once decoded" in r.json()["error"]["message"]
    # Before: 413 only after 9.4 s at 2.2 GiB RSS.
    assert took < 2.0 and grew < 50
    r = http("POST", f"{proxy.base}/v1/messages", bomb, _headers(subdomain, key, **{"Content-Encoding": "gzip"}))
    assert r.status == 413 and r.json()["error"]["type"] == "request_too_large"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "gzip, br"])
def test_compressed_bodies_still_decode(admin, proxy, subdomain, mock_factory, coding):
    import brotli

    from addon.bodies import _zstd_module

    key = _setup(admin, subdomain, mock_factory)
    pack = {"gzip": lambda b: zlib.compress(b, wbits=31), "deflate": zlib.compress, "br": brotli.compress,
            "zstd": lambda b: _zstd_module().compress(b),
            "gzip, br": lambda b: brotli.compress(zlib.compress(b, wbits=31))}[coding]
    r = http("POST", f"{proxy.base}/v1/chat/completions", pack(json.dumps(BODY).encode()),
             _headers(subdomain, key, **{"Content-Encoding": coding, "Content-Type": "application/json"}))
    assert r.status == 200, r.body
    r = http("POST", f"{proxy.base}/v1/chat/completions", b"\x1f\x8b\x08\x00garbage",
             _headers(subdomain, key, **{"Content-Encoding": coding}))
    assert r.status == 400 and "Content-Encoding" in r.json()["error"]["message"]


# -- 3. request JSON -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
@pytest.mark.parametrize("body,needle", [
    (b"[" * 100_000 + b"]" * 100_000, "128 levels"),
    (b'{"model":"gpt-4","max_tokens":5,"messages":[{"role":"user","content":"\\ud800"}]}', "surrogate"),
    (b'{"model":"gpt-4","max_tokens":5,"messages":[{"role":"user","content":"x"}],"temperature":NaN}', "NaN"),
    (b'{"model":"gpt-4","max_tokens":5,"messages":[{"role":"user","content":"x"}],"top_p":Infinity}', "Infinity"),
    (b'{"model":"gpt-4","max_tokens":5,"messages":[{"role":"user","content":"x"}],"temperature":-Infinity}',
     "-Infinity"),
], ids=["deep", "surrogate", "nan", "inf", "-inf"])
def test_malformed_json_is_400_in_the_callers_format(admin, proxy, subdomain, mock_factory, path, body, needle):
    oa = mock_factory("openai-mock", "sk-openai-test")
    key = admin.guide_setup([openai_target(oa.port, weight=1)], subdomain=subdomain)["key"]
    r = http("POST", f"{proxy.base}{path}", body, _headers(subdomain, key, **{"Content-Type": "application/json"}))
    assert r.status == 400, r.body
    obj = r.json()
    if path == "/v1/messages":
        assert obj["type"] == "error" and obj["error"]["type"] == "invalid_request_error"
    else:
        assert obj["error"]["type"] == "invalid_request_error"
    assert needle in (obj["error"]["message"])
    assert not oa.requests()  # nothing reached the provider


# -- 4. client read deadlines --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_timeout_proxy(stack):
    """A second mitmdump on the same store, with aigw_client_timeout=1."""
    proxy = start_mitmdump(stack["data"], stack["root"] / "mitm-conf-timeout",
                           extra=["--set", "aigw_client_timeout=1"])
    try:
        yield proxy
    finally:
        proxy.stop()


def _wait_live(proxy, subdomain, key) -> None:
    wait_until(lambda: http("POST", f"{proxy.base}/aigw-config-probe", {},
                            _headers(subdomain, key)).status != 401, timeout=5)


def test_half_sent_requests_are_closed_while_others_are_served(quick_timeout_proxy, admin, subdomain,
                                                               mock_factory):
    proxy = quick_timeout_proxy
    key = _setup(admin, subdomain, mock_factory)
    _wait_live(proxy, subdomain, key)
    host = subdomain.encode() + b".example.com"
    head_only = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    head_only.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + host + b"\r\nX-Api-Key: ")
    body_part = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    body_part.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + host + b"\r\nX-Api-Key: " + key.encode() +
                      b"\r\nContent-Length: 500\r\n\r\n{\"model\":")
    idle = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    idle.sendall(b"GET /v1/models HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert _read_response(idle)[0] == 401  # answered; now the connection idles (keep-alive)
    results = {}

    def watch(name, sock):
        results[name] = _closed_after(sock)

    watchers = [threading.Thread(target=watch, args=(n, s)) for n, s in
                (("head", head_only), ("body", body_part), ("idle", idle))]
    for t in watchers:
        t.start()
    # Meanwhile a normal request on another connection is served.
    r = http("POST", f"{proxy.base}/v1/chat/completions", BODY, _headers(subdomain, key), timeout=10)
    assert r.status == 200
    for t in watchers:
        t.join(15)
    for s in (head_only, body_part, idle):
        s.close()
    print("\nclosed after (s):", {k: round(v[0], 2) for k, v in results.items()})
    for name in ("head", "body", "idle"):
        took, _ = results[name]
        assert 0.5 < took < 3.0, (name, took)  # aigw_client_timeout=1 (+ the watchdog's 0.1 s tick)
    assert results["head"][1] == b"" and results["idle"][1] == b""
    status, _, rest = results["body"][1].partition(b"\r\n")[0], None, results["body"][1]
    assert b" 408 " in status and b'"type":"timeout_error"' in rest


def test_a_stream_longer_than_the_client_timeout_is_not_cut(quick_timeout_proxy, admin, subdomain, mock_factory):
    proxy = quick_timeout_proxy
    key = _setup(admin, subdomain, mock_factory, reply="one two three four five six seven eight",
                 chunk_delay=0.3)
    _wait_live(proxy, subdomain, key)
    t0 = time.perf_counter()
    r = http("POST", f"{proxy.base}/v1/chat/completions", dict(BODY, stream=True), _headers(subdomain, key),
             timeout=20)
    took = time.perf_counter() - t0
    assert r.status == 200 and r.body.rstrip().endswith(b"data: [DONE]"), r.body[-200:]
    assert took > 1.5  # the stream outlived aigw_client_timeout=1 and was delivered whole
    assert b"eight" in r.body


# -- 5. keys in query strings --------------------------------------------------------------------------------------
def test_a_query_string_key_is_masked_in_stored_flows(stack, admin, subdomain, mock_factory, tmp_path):
    from mitmproxy import io

    key = _setup(admin, subdomain, mock_factory)
    flows_path = tmp_path / "flows.mitm"
    proxy = start_mitmdump(stack["data"], tmp_path / "conf", extra=["--set", f"save_stream_file={flows_path}"])
    try:
        _wait_live(proxy, subdomain, key)
        served = http("POST", f"{proxy.base}/v1/chat/completions?alt=1&key={key}", BODY, _headers(subdomain, key))
        refused = http("POST", f"{proxy.base}/v1/chat/completions?key={key}", BODY,
                       {"Host": f"{subdomain}.example.com"})
        # A request mitmproxy itself rejects (framing that smells of smuggling) never reaches the request hook,
        # and is saved all the same.
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(b"POST /v1/chat/completions?key=" + key.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Api-Key: " +
                      key.encode() + b"\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            assert _read_response(s)[0] == 400
    finally:
        proxy.stop()
    assert served.status == 200 and refused.status == 401  # the gateway reads its key from headers only
    with open(flows_path, "rb") as f:
        every = list(io.FlowReader(f).stream())
    raw = flows_path.read_bytes()
    assert key.encode() not in raw  # the upstream attempts' own flows (addon/wire.py) included
    flows = [fl for fl in every if "chat/completions" in fl.request.path and "aigw_attempt" not in fl.metadata]
    assert len(flows) == 3 and any(fl.error for fl in flows)
    for fl in flows:
        stored = fl.request.path + json.dumps(list(fl.request.headers.items(multi=True)))
        assert key not in stored, stored
        assert "key=" + key[:5] in fl.request.path
