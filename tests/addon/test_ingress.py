"""Ingress limits, bounded decoding, strict request JSON, linear header handling and the client watchdog (unit)."""

from __future__ import annotations

import gzip
import json
import random
import time
import zlib
from types import SimpleNamespace

import brotli
import pytest
from mitmproxy import http
from mitmproxy.test import tflow

import providers
from addon import bodies, ingress
from addon.routing import client_key
from addon.targets import passthrough_headers
from addon.redaction import caller_view, redact
from addon.bodies import decode_body
from addon.ingress import Ingress, Limits, declared_length, has_body, header_items, header_values, mask_query
from providers import GatewayError
from providers.canonical import dumps
from providers.jsonsafe import MAX_DEPTH, loads_request, nesting_exceeds

MAX = 10 * 1024 * 1024
CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}]}


def _many_headers(n: int) -> http.Headers:
    fields = [(b"Host", b"x"), (b"X-Api-Key", b"aigw-key"), (b"Anthropic-Beta", b"one")]
    fields += [(b"X-H%d" % i, b"v") for i in range(n)]
    fields.append((b"anthropic-beta", b"two"))
    return http.Headers(fields)


# -- headers: linear, same meaning as Headers.items() ----------------------------------------------------------
def test_header_items_folds_like_headers_items():
    h = http.Headers([(b"A", b"1"), (b"b", b"2"), (b"a", b"3"), (b"C", b"\xff")])
    assert header_items(h) == list(h.items())
    assert header_items({"x": "1"}) == [("x", "1")]


HEADER_CASES = [
    http.Headers([(b"Host", b"x"), (b"X-Api-Key", b"k1"), (b"x-api-key", b"k2"), (b"Authorization", b"Bearer t")]),
    http.Headers([(b"AUTHORIZATION", b"\xff\xfe"), (b"Content-Length", b"12"), (b"content-length", b"12")]),
    http.Headers([(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")]),
    http.Headers([(b"Transfer-Encoding", b""), (b"X-TG-API-Key", b" k "), (b"content-length", b"x")]),
    http.Headers([]),
]
NAMES = ("x-tg-api-key", "x-api-key", "authorization", "content-length", "transfer-encoding", "absent")


@pytest.mark.parametrize("h", HEADER_CASES)
def test_header_values_read_like_headers_get(h):
    """One pass over the fields gives what one Headers.get per name gives (folded, decoded the same way)."""
    assert header_values(h, NAMES) == [h.get(n) for n in NAMES]
    plain = dict(h.items())  # a plain mapping is read through its own get
    assert header_values(plain, ("content-length", "Content-Length")) == [plain.get("content-length"),
                                                                          plain.get("Content-Length")]


def test_declared_length_and_has_body():
    assert [declared_length(h) for h in HEADER_CASES] == [None, 12, None, None, None]
    assert [has_body(h) for h in HEADER_CASES] == [False, True, True, False, False]


def test_header_work_is_linear_in_the_number_of_headers():
    h = _many_headers(20_000)
    t = time.perf_counter()
    items = header_items(h)
    req = providers.parse_request("anthropic", json.dumps(dict(CHAT, max_tokens=5)).encode(), headers=h)
    fwd = passthrough_headers(h, SimpleNamespace(provider=None, headers={}, credentials=None), client_key(h))
    took = time.perf_counter() - t
    assert len(items) == 20_003 and req.client_headers == {"anthropic-beta": "one, two"}
    assert "X-H19999" in fwd and "X-Api-Key" not in fwd
    # Headers.items() takes minutes here (one scan of every field per name); one pass takes milliseconds.
    assert took < 2.0, took


def test_header_limits():
    limits = Limits(max_headers=10, max_header_bytes=100)
    assert ingress.check_headers(http.Headers([(b"a", b"b")] * 10), limits) is None
    err = ingress.check_headers(http.Headers([(b"a", b"b")] * 11), limits)
    assert err.status == 431 and "11" in err.message
    err = ingress.check_headers(http.Headers([(b"a", b"x" * 100)]), limits)
    assert err.status == 431 and "bytes" in err.message
    assert providers.error_reply("anthropic", err).status == 431


def _flow(path="/v1/chat/completions", headers=(), content=b""):
    f = tflow.tflow()
    f.request.path = path
    f.request.content = content
    f.request.headers = http.Headers([(b"Host", b"gw.example.com"), *headers])
    return f


def test_requestheaders_refuses_in_the_callers_format():
    ing = Ingress(connections=lambda: {})
    ing.limits = Limits(max_headers=5, max_header_bytes=1000, max_body=100)
    f = _flow("/v1/messages", [(b"X-H%d" % i, b"v") for i in range(9)])
    ing.requestheaders(f)
    assert f.response.status_code == 431 and json.loads(f.response.content)["type"] == "error"
    f = _flow(headers=[(b"Content-Length", b"101")])
    ing.requestheaders(f)  # no live connection to take over: answered after the (bounded) body
    assert f.response.status_code == 413 and "100 bytes" in json.loads(f.response.content)["error"]["message"]
    f = _flow(headers=[(b"X-Api-Key", b"\xff\xfe")])
    ing.requestheaders(f)
    assert f.response.status_code == 401 and json.loads(f.response.content)["error"]["code"] == "invalid_api_key"
    f = _flow(headers=[(b"Content-Length", b"100")])
    ing.requestheaders(f)
    assert f.response is None


# -- bounded decoding ------------------------------------------------------------------------------------------
PAYLOAD = json.dumps(dict(CHAT, messages=[{"role": "user", "content": "hello " * 20_000}])).encode()


def _zstd():
    return bodies._zstd_module()


@pytest.mark.parametrize("coding,pack", [
    ("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress),
    ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some clients send it
    ("br", brotli.compress), ("zstd", lambda b: _zstd().compress(b)),
    ("gzip, br", lambda b: brotli.compress(gzip.compress(b))), ("identity", lambda b: b),
    ("gzip", lambda b: gzip.compress(b[:100]) + gzip.compress(b[100:])),  # two members
    ("zstd", lambda b: _zstd().compress(b[:100]) + _zstd().compress(b[100:])),  # two frames
])
def test_decode_body_round_trips(coding, pack):
    assert decode_body(pack(PAYLOAD), coding, MAX) == PAYLOAD


def _gzip_bomb(gib: int = 1) -> bytes:
    """A gzip stream whose first `gib` GiB inflate to zeros (built in milliseconds: full flushes repeat)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    return first + again * (1024 * gib - 1) + c.flush()


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_bombs_are_413_after_at_most_the_limit(coding):
    if coding == "gzip":
        bomb = _gzip_bomb()
    elif coding == "br":
        bomb = brotli.compress(bytes(256 << 20), quality=1)
    else:
        bomb = _zstd().compress(bytes(256 << 20))
    t = time.perf_counter()
    with pytest.raises(GatewayError) as e:
        decode_body(bomb, coding, MAX)
    assert e.value.status == 413 and e.value.kind == "request_too_large"
    assert time.perf_counter() - t < 2.0  # inflating 10 MiB, not 1 GiB


def test_ratio_cap_refuses_a_bomb_below_the_size_limit():
    packed = zlib.compress(bytes(4 << 20), 9)  # 4 MiB of zeros in ~4 KiB
    with pytest.raises(GatewayError) as e:
        decode_body(packed, "deflate", 64 << 20)
    assert e.value.status == 413 and "1000:1" in e.value.message
    text = json.dumps([{"content": "hello world " * 1000}] * 200).encode()  # repetitive but real: a few 100:1
    assert decode_body(zlib.compress(text, 9), "deflate", 64 << 20) == text


@pytest.mark.parametrize("coding,data", [
    ("gzip", b"\x1f\x8bnot gzip"), ("gzip", gzip.compress(PAYLOAD)[:-20]), ("gzip", gzip.compress(PAYLOAD) + b"xx"),
    ("deflate", zlib.compress(PAYLOAD)[:-9]), ("br", brotli.compress(PAYLOAD)[:-4]), ("br", b"nonsense"),
    ("zstd", b"nonsense"), ("compress", b"x"), ("utf-8", b"x"),
    ("gzip", gzip.compress(b"{}") * (bodies.MAX_MEMBERS + 1)),
])
def test_undecodable_bodies_are_400(coding, data):
    with pytest.raises(GatewayError) as e:
        decode_body(data, coding, MAX)
    assert e.value.status == 400 and e.value.kind == "invalid_request"


# -- strict JSON -------------------------------------------------------------------------------------------------
def _true_depth(text: str) -> int:
    depth = peak = 0
    in_str = esc = False
    for c in text:
        if in_str:
            esc, in_str = (False, True) if esc else (c == "\\", c != '"')
        elif c == '"':
            in_str = True
        elif c in "[{":
            depth += 1
            peak = max(peak, depth)
        elif c in "]}":
            depth -= 1
    return peak


def _random_json(rng: random.Random, depth: int):
    if depth <= 0 or rng.random() < 0.15:
        return rng.choice(["[x]", "\\\"[", "{", "", 1, None, "\\"])
    if rng.random() < 0.5:
        return [_random_json(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    return {f"k{i}[": _random_json(rng, depth - 1) for i in range(rng.randint(0, 4))}


def test_nesting_check_agrees_with_a_parser():
    rng = random.Random(7)
    for _ in range(400):
        text = json.dumps(_random_json(rng, rng.randint(1, 12)))
        limit = rng.randint(1, 10)
        assert nesting_exceeds(text.encode(), limit) == (_true_depth(text) > limit), text
    for depth in (MAX_DEPTH, MAX_DEPTH + 1):
        body = ("[" * depth + "]" * depth).encode()
        assert nesting_exceeds(body) == (depth > MAX_DEPTH)
        wide = ("[" + ",".join(["[" * (depth - 1) + "]" * (depth - 1)] * 500) + "]").encode()
        assert nesting_exceeds(wide) == (depth > MAX_DEPTH)


def test_nesting_check_is_cheap_on_large_bodies():
    bodies = [b"[" + b"[]," * 3_000_000 + b"[]]",
              b"[" + b",".join([b"[" * 126 + b"]" * 126] * 30_000) + b"]",
              json.dumps([["["]] * 500_000).encode()]
    for body in bodies:
        t = time.perf_counter()
        assert not nesting_exceeds(body)
        assert time.perf_counter() - t < 2.0


@pytest.mark.parametrize("ingress_name", ["openai", "anthropic"])
@pytest.mark.parametrize("body,needle", [
    (b"[" * 100_000 + b"]" * 100_000, "128 levels"),
    (b'{"model":"m","messages":' + b"[" * 200 + b"]" * 200 + b"}", "128 levels"),
    (b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}],"max_tokens":5}', "surrogate (\\ud800)"),
    (b'{"model":"m","messages":[{"role":"user","content":"\\udfff x"}],"max_tokens":5}', "surrogate"),
    (b'{"model":"m","messages":[{"role":"user","content":"\xed\xa0\x80"}],"max_tokens":5}', "surrogate"),
    (b'{"model":"m","messages":[],"temperature":NaN}', "NaN"),
    (b'{"model":"m","messages":[],"temperature":Infinity}', "Infinity"),
    (b'{"model":"m","messages":[],"temperature":-Infinity}', "-Infinity"),
    (b'{"model":"m","messages":[],"temperature":1e999}', "out of range"),
])
def test_request_json_refusals_are_400(ingress_name, body, needle):
    with pytest.raises(GatewayError) as e:
        providers.parse_request(ingress_name, body)
    assert e.value.status == 400 and needle in e.value.message
    assert providers.error_reply(ingress_name, e.value).status == 400  # and the error body encodes


def test_valid_unicode_and_deep_enough_json_pass():
    text = {"model": "m", "messages": [{"role": "user", "content": "😀 \\ud800 [{\"]"}], "max_tokens": 5}
    assert loads_request(json.dumps(text).encode()) == text  # ensure_ascii: the emoji as a surrogate pair
    nested = json.dumps({"a": [[[[{"b": [1.5, -2e10]}]]]]})
    assert loads_request(nested) == json.loads(nested)


@pytest.mark.parametrize("body", [
    json.dumps(CHAT).encode(),
    json.dumps({"a": [1.5, -2e10, 10**40, None, True], "é": "\u2028 😀"}, ensure_ascii=False).encode(),
    json.dumps(CHAT).encode("utf-16"), json.dumps(CHAT).encode("utf-32-le"), b"\xef\xbb\xbf" + json.dumps(CHAT).encode(),
])
def test_request_json_reads_as_json_loads(body):
    """The strict reader decodes bytes exactly as json.loads does (UTF-8/16/32, a BOM), values included."""
    assert loads_request(body) == json.loads(body)


@pytest.mark.parametrize("body", [b"", b"{", b'{"a":1,}', b"\xff{}", b'{"a": tru}', b"[1] x"])
def test_request_json_errors_say_what_json_loads_says(body):
    try:
        json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        expected = f"request body is not valid JSON: {e}"
    with pytest.raises(GatewayError) as got:
        loads_request(body)
    assert got.value.status == 400 and got.value.message == expected


def test_dumps_never_fails_on_a_lone_surrogate():
    assert json.loads(dumps({"t": "a\ud800b", "u": "é"})) == {"t": "a\ud800b", "u": "é"}
    assert dumps({"u": "é"}) == '{"u":"é"}'.encode()


@pytest.mark.parametrize("obj", [CHAT, {"a": [1.5, 1e-07, 10**40, None, True, "\x00\u2028é"]}, {1: 2}, "s", 3,
                                 {"t": "a\ud800b"}, {"a": [0.1, 1e-07, 2.5e300, -0.0, 1e16]}])
def test_dumps_is_compact_json_dumps(obj):
    """The one shared encoder writes what json.dumps(ensure_ascii=False, compact separators) writes: the same
    bytes, but for the spelling of a float (orjson writes 1e-7 for 1e-07), never another value."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    try:
        expected = text.encode()
    except UnicodeEncodeError:
        expected = json.dumps(obj, separators=(",", ":")).encode()
    got = dumps(obj)
    assert json.loads(got) == json.loads(expected)
    assert got == expected or "e-" in text  # only a float's exponent is spelt differently
    assert b": " not in got and b", " not in got


def test_dumps_writes_valid_json_for_non_finite_floats():
    """NaN and Infinity are not JSON (a provider's answer may hold them; json.loads reads them): written as null,
    which every client's JSON parser reads."""
    assert dumps({"n": float("nan"), "i": float("inf"), "x": [float("-inf")]}) == b'{"n":null,"i":null,"x":[null]}'


# -- key masking -------------------------------------------------------------------------------------------------
def test_mask_query():
    m = lambda s: "MASK"  # noqa: E731
    assert mask_query("/v1/x?key=secret&b=1", m) == "/v1/x?key=MASK&b=1"
    assert mask_query("/v1/x?a=1&API_KEY=s;x-api-key=t#frag", m) == "/v1/x?a=1&API_KEY=MASK;x-api-key=MASK#frag"
    assert mask_query("/v1/x?keys=1&monkey=2&key=", m) == "/v1/x?keys=1&monkey=2&key="
    assert mask_query("/v1/x", m) == "/v1/x"


def test_redact_masks_keys_and_returns_what_it_replaced():
    key = "aigw-0123456789abcdef"
    f = _flow(f"/v1beta/models/g:generateContent?alt=sse&key={key}",
              [(b"X-Api-Key", key.encode()), (b"Authorization", b"Bearer sk-provider-secret-1234"),
               (b"x-api-key", b"second-key-value-5678")])
    original = redact(f)
    stored = f.request.path + repr(f.request.headers.fields)
    assert key not in stored and "sk-provider-secret" not in stored and "second-key-value" not in stored
    assert f.request.path == "/v1beta/models/g:generateContent?alt=sse&key=aigw-…cdef"
    assert f.request.headers.get_all("x-api-key") == ["aigw-…cdef", "secon…5678"]
    assert f.request.headers["authorization"] == "Bearer sk-pr…1234"
    assert redact(f) is None  # masks are not masked again
    path, headers = caller_view(f.request, original)  # what the dispatcher sees
    assert path.endswith(f"key={key}") and headers.get_all("x-api-key")[0] == key
    assert headers["authorization"] == "Bearer sk-provider-secret-1234"
    assert "sk-provider-secret" not in repr(f.request.headers.fields)  # while the flow stays masked
    f = _flow(f"/v1/chat/completions?key={key}")  # no header key at all: masked as well
    redact(f)
    assert key not in f.request.path


# -- watchdog ----------------------------------------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _wflow(fid: str, cid: str):
    return SimpleNamespace(id=fid, client_conn=SimpleNamespace(id=cid), metadata={}, response=None,
                           request=SimpleNamespace(path="/v1/chat/completions", headers=http.Headers()))


def test_watchdog_deadlines():
    clock = _Clock()
    ing = Ingress(connections=lambda: {}, clock=clock)
    ing.limits = Limits(client_timeout=10)
    a, b, c = (SimpleNamespace(id=x) for x in "abc")
    for client in (a, b, c):
        ing.client_connected(client)
    clock.t += 5
    ing.requestheaders(_wflow("fb", "b"))  # b: head complete, body due 10 s from now
    ing.requestheaders(_wflow("fc", "c"))
    ing.request(_wflow("fc", "c"))  # c: being served
    clock.t += 5.5
    assert ing.expired() == ["a"]  # no head within 10 s of connecting
    clock.t += 5
    assert sorted(ing.expired()) == ["a", "b"]  # b's body did not arrive within 10 s of its head
    clock.t += 1000
    assert "c" not in ing.expired()  # a request being served (a long stream) is never cut
    ing.response(_wflow("fc", "c"))
    clock.t += 9
    assert "c" not in ing.expired()
    clock.t += 2
    assert "c" in ing.expired()  # keep-alive idle: the next head is due within 10 s of the answer
    for client in (a, b, c):
        ing.client_disconnected(client)
    assert ing.expired() == []
    ing.limits = Limits(client_timeout=0)
    ing.client_connected(a)
    clock.t += 10_000
    assert ing.expired() == []  # 0: no deadline
