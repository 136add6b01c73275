"""Seeded generators of adversarial requests for the proxy fuzz run (pure: no I/O).

Case ``i`` of seed ``s`` is generated from ``random.Random(f"{s}:{i}")`` alone, so any single case can be re-run
(``AIGW_FUZZ_ONLY=i``) without generating the others. Keys are placeholders (``@@KEY@@`` = the key of the case's
gateway, ``@@OTHER@@`` = a valid key of another gateway) substituted at send time, so a printed case reproduces
against any stack.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import random
import zlib
from dataclasses import dataclass, field
from functools import cache

KEY = b"@@KEY@@"
OTHER_KEY = b"@@OTHER@@"

# name → rule prefix, ingress paths it serves, methods its rule lists. "pt" is an endpoint service (untranslated,
# rule /pt with strip_path onto the endpoint's path /base); the others are upstreams with one provider target.
GATEWAYS = {
    "oa": {"prefix": "/v1", "methods": ("POST",)},
    "an": {"prefix": "/v1", "methods": ("POST",)},
    "gm": {"prefix": "/v1", "methods": ("POST",)},
    "az": {"prefix": "/v1", "methods": ("POST",)},
    "pt": {"prefix": "/pt", "methods": None},
}
INGRESS_PATH = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}


@dataclass
class Case:
    idx: int
    gw: str
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    kinds: list[str] = field(default_factory=list)
    version: bytes = b"HTTP/1.1"
    auto_length: bool = True      # add Content-Length for the body unless a framing header is already there
    framing_ok: bool = True       # False: malformed at the HTTP layer; a close without an answer is acceptable
    deadline: float = 5.0         # an answer must arrive within this many seconds
    expect: tuple[int, ...] | None = None  # when set, the status must be one of these
    stream: bool = False
    ingress: str = "openai"

    def label(self) -> str:
        return "+".join(self.kinds) or "clean"

    def wire(self, keys: dict[str, bytes]) -> bytes:
        """The exact bytes sent, with the placeholders replaced."""
        def sub(b: bytes | None) -> bytes | None:
            return None if b is None else b.replace(KEY, keys["self"]).replace(OTHER_KEY, keys["other"])
        headers = [(sub(k), sub(v)) for k, v in self.headers]
        body = sub(self.body)
        names = {k.strip().lower() for k, _ in headers if k is not None}
        if self.auto_length and b"content-length" not in names and b"transfer-encoding" not in names:
            headers.append((b"Content-Length", str(len(body)).encode()))
        if b"connection" not in names:
            headers.append((b"Connection", b"close"))
        head = b" ".join((self.method, sub(self.target), self.version)) + b"\r\n"
        head += b"".join(k + b": " + v + b"\r\n" if k is not None else v + b"\r\n" for k, v in headers)
        return head + b"\r\n" + body

    def describe(self, limit: int = 300) -> str:
        def short(b: bytes, n: int) -> str:
            r = repr(b[:n])
            return r + (f"… (+{len(b) - n} bytes)" if len(b) > n else "")
        hdrs = self.headers
        shown = [f"    {short(k or b'', 60)}: {short(v, 120)}" for k, v in hdrs[:12]]
        if len(hdrs) > 12:
            shown.append(f"    … {len(hdrs) - 12} more headers")
        return (f"case #{self.idx} [{self.label()}] gw={self.gw} ingress={self.ingress} stream={self.stream}\n"
                f"  {short(self.method, 40)} {short(self.target, 200)} {self.version.decode('latin-1')}\n"
                + "\n".join(shown) + f"\n  body ({len(self.body)} bytes): {short(self.body, limit)}")


# ----------------------------------------------------------------------------------------------------------------
# Bodies
# ----------------------------------------------------------------------------------------------------------------

WEATHER_OA = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                "parameters": {"type": "object",
                                                               "properties": {"city": {"type": "string"}},
                                                               "required": ["city"]}}}
WEATHER_AN = {"name": "get_weather", "description": "Weather of a city",
              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}

# Model ids that must never change where a request goes (Gemini and Azure put the model in the URL).
EVIL_MODELS = [
    "../../_mock/reset", "../../../_mock/faults", "gemini-2.0-flash/../../../_mock/reset", "a/b", "..", ".",
    "%2e%2e%2f%2e%2e%2f_mock%2freset", "%2e%2e", "x?key=stolen&alt=json", "x#frag", "x:streamGenerateContent",
    "model with spaces", "m\r\nX-Injected: 1", "m\nX-Injected: 1", "m\x00null", "名前モデル", "\\..\\..\\x",
    "x" * 5000, "", "//evil.invalid/x", "http://evil.invalid/", "m/../../openai/deployments/other/chat/completions",
    "deployment?api-version=1&x=", "m;param", "m%00", "m%0d%0aX-Injected:%201",
]


def openai_body(rng: random.Random, stream: bool) -> dict:
    body: dict = {"model": rng.choice(["gpt-4", "gpt-3.5-turbo", "gemini-2.0-flash", "claude-3-sonnet"]),
                  "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16}
    if rng.random() < 0.4:
        body["messages"].insert(0, {"role": "system", "content": "Be brief."})
    if stream or rng.random() < 0.3:
        body["stream"] = stream
    if stream and rng.random() < 0.5:
        body["stream_options"] = {"include_usage": True}
    if rng.random() < 0.3:
        body["temperature"] = rng.choice([0, 0.5, 1.0])
    if rng.random() < 0.25:
        body["tools"] = [copy.deepcopy(WEATHER_OA)]  # a copy: mutations must not leak into later cases
        body["messages"][-1]["content"] = "What is the weather in Paris?"
        if rng.random() < 0.5:
            body["tool_choice"] = rng.choice(["auto", "required", "none",
                                              {"type": "function", "function": {"name": "get_weather"}}])
    if rng.random() < 0.15:
        body["stop"] = ["from"]
    return body


def anthropic_body(rng: random.Random, stream: bool) -> dict:
    body: dict = {"model": rng.choice(["claude-3-sonnet", "gpt-4", "gemini-2.0-flash"]), "max_tokens": 16,
                  "messages": [{"role": "user", "content": "Hi"}]}
    if stream or rng.random() < 0.3:
        body["stream"] = stream
    if rng.random() < 0.3:
        body["system"] = rng.choice(["Be brief.", [{"type": "text", "text": "Be brief."}]])
    if rng.random() < 0.25:
        body["tools"] = [copy.deepcopy(WEATHER_AN)]
        body["messages"][-1]["content"] = [{"type": "text", "text": "What is the weather in Paris?"}]
        if rng.random() < 0.5:
            body["tool_choice"] = rng.choice([{"type": "auto"}, {"type": "any"},
                                              {"type": "tool", "name": "get_weather"}])
    if rng.random() < 0.15:
        body["stop_sequences"] = ["from"]
    return body


# Raw JSON tokens placed by text substitution (json.dumps cannot write them, or would refuse the depth).
RAW_TOKENS = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1e-400", b"-0", b"0.0e0",
              b"123456789012345678901234567890123456789", b"-9223372036854775809", b"18446744073709551616",
              b'"\\ud800"', b'"\\udfff"', b'"a\\ud800b"', b'"\\udc00\\ud800"', b'"\\u0000"', b'"\\uffff"',
              b'"\\ud83d\\ude00"', b'"\\x41"', b"tru", b"nul", b"'single'", b"0x10", b"01", b"+1", b".5", b"1.",
              b"[1,]", b"{,}", b'{"a" 1}', b"\"\x01\"", b'"\t"']


def random_value(rng: random.Random, depth: int = 0):
    r = rng.random()
    if r < 0.12:
        return None
    if r < 0.22:
        return rng.choice([True, False])
    if r < 0.38:
        return rng.choice([0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30, 7])
    if r < 0.48:
        return rng.choice([0.5, -0.0, 1e308, -1e-308, 3.14159])
    if r < 0.70:
        return rng.choice(["", "x", "true", "16", "user", "assistant", "system", "tool", "function", "developer",
                           "\u202e\u0000\ufeff", "🙂" * 3, "null", "{}", "[]", "a" * 1000, "gpt-4", "auto"])
    if r < 0.85 or depth > 2:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["type", "text", "role", "content", "x", "", "name", "id"]): random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 3))}


def _paths(obj, prefix=()):
    """Every (container, key) pair of a JSON value, for mutation."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((obj, k))
            out.extend(_paths(v))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((obj, i))
            out.extend(_paths(v))
    return out


PLACEHOLDER = "@@RAW@@"


def mutate_json(rng: random.Random, body: dict, kinds: list[str], ingress: str, gw: str) -> bytes:
    """Apply 1–3 structural mutations; return the serialized body (raw substitutions done)."""
    raw_subs: list[bytes] = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        spots = _paths(body)
        m = rng.choice(["wrong_type", "wrong_type", "delete", "unknown", "giant_string", "deep", "wide", "raw_token",
                        "model", "model", "stream_type", "messages", "numbers", "content_parts"])
        if m == "model" and gw not in ("gm", "az") and rng.random() < 0.5:
            m = "wrong_type"
        kinds.append(f"json:{m}")
        if m == "wrong_type" and spots:
            c, k = rng.choice(spots)
            c[k] = random_value(rng)
        elif m == "delete" and spots:
            c, k = rng.choice(spots)
            del c[k]
        elif m == "unknown":
            target = rng.choice([body] + [c[k] for c, k in spots if isinstance(c[k], dict)])
            for _ in range(rng.randint(1, 4)):
                target[rng.choice(["__proto__", "", "x" * 300, "extra", "provider_options", "model ", "MODEL",
                                   "stream\u0000", "n", "logit_bias", "metadata", "thinking", "cache_control"])] = \
                    random_value(rng)
        elif m == "giant_string":
            size = rng.choice([10_000, 100_000, 1_000_000, 1_500_000])
            text = rng.choice(["a", "é", "🙂", "\\", '"', "\u2028"]) * (size // 4 if rng.random() < 0.5 else size // 8)
            strings = [(c, k) for c, k in spots if isinstance(c[k], str)]
            if strings:
                c, k = rng.choice(strings)
                c[k] = text
            else:
                body["x"] = text
        elif m == "deep":
            depth = rng.choice([64, 500, 5_000, 100_000])
            o, cl = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
            raw_subs.append(o * depth + b"1" + cl * depth)
            _place(rng, body, spots)
        elif m == "wide":
            n = rng.choice([1_000, 20_000, 100_000])
            if "messages" in body and isinstance(body["messages"], list) and rng.random() < 0.6:
                body["messages"] = [{"role": ("user", "assistant")[i % 2], "content": f"m{i}"} for i in range(n // 10)]
            else:
                raw_subs.append(b"[" + b",".join([b"1"] * n) + b"]")
                _place(rng, body, spots)
        elif m == "raw_token":
            raw_subs.append(rng.choice(RAW_TOKENS))
            _place(rng, body, spots)
        elif m == "model":
            body["model"] = rng.choice(EVIL_MODELS)
        elif m == "stream_type":
            body["stream"] = rng.choice(["true", 1, None, [], {}, "false", 0])
        elif m == "messages":
            body["messages"] = rng.choice([
                [], None, "Hi", [None], [{}], [{"role": "user"}], [{"content": "Hi"}],
                [{"role": "tool", "content": "x"}], [{"role": "assistant", "tool_calls": [{"id": 1}]}],
                [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!"}}]}],
                [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "x",
                                                                            "data": "%%%"}}]}],
                [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": None, "content": [{}]}]}],
                [{"role": "function", "name": None, "content": None}],
                [{"role": "user", "content": "Hi"}] * 3,
                [{"role": "developer", "content": [{"type": "text", "text": None}]}],
            ])
        elif m == "numbers":
            body[rng.choice(["max_tokens", "temperature", "top_p", "top_k", "n", "seed", "max_completion_tokens",
                             "presence_penalty", "logprobs", "top_logprobs"])] = rng.choice(
                [-1, 0, 2**63, 10**20, "16", 16.5, None, True, [], 1e308, -1e308])
        elif m == "content_parts":
            msgs = body.get("messages")
            if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict):
                msgs[-1]["content"] = [rng.choice([
                    {"type": "text", "text": 5}, {"type": "unknown"}, {"type": "text"}, "text", 7, None,
                    {"type": "image_url", "image_url": "not-an-object"}, {"type": "input_audio"},
                    {"type": "tool_use", "id": "x", "name": "n", "input": "notobject"},
                    {"type": "document", "source": {}}, {"type": "text", "text": "Hi", "cache_control": 5}])
                    for _ in range(rng.randint(1, 3))]
    text = json.dumps(body, ensure_ascii=rng.random() < 0.5, separators=(",", ":") if rng.random() < 0.5 else None,
                      allow_nan=True).encode("utf-8", "surrogatepass")
    for sub in raw_subs:
        text = text.replace(json.dumps(PLACEHOLDER).encode(), sub, 1)
    return text


def _place(rng, body, spots):
    """Put the raw placeholder at a random spot (or a new field)."""
    if spots and rng.random() < 0.7:
        c, k = rng.choice(spots)
        c[k] = PLACEHOLDER
    else:
        body[rng.choice(["x", "model", "messages", "max_tokens", "stream", "tools", "metadata"])] = PLACEHOLDER


def text_mutation(rng: random.Random, data: bytes, kinds: list[str]) -> bytes:
    """Byte-level damage to a serialized body."""
    m = rng.choice(["truncate", "truncate", "invalid_utf8", "surrogate_bytes", "bom", "trailing", "duplicate_keys",
                    "toplevel", "empty", "random_bytes", "utf16", "comment", "nul"])
    kinds.append(f"bytes:{m}")
    if m == "truncate":
        return data[: rng.randint(0, max(0, len(data) - 1))]
    if m == "invalid_utf8":
        bad = rng.choice([b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xc0\xaf", b"\xe2\x82", b"\xf8\x88\x80\x80\x80",
                          b"\x80", b"\xf4\x90\x80\x80"])
        i = data.find(b'"content":"')
        i = i + 11 if i >= 0 else rng.randint(0, len(data))
        return data[:i] + bad + data[i:]
    if m == "surrogate_bytes":  # CESU-8 encoded lone surrogate inside a string
        i = data.find(b'"Hi')
        return data[: i + 1] + b"\xed\xa0\x80" + data[i + 1:] if i >= 0 else data + b"\xed\xa0\x80"
    if m == "bom":
        return b"\xef\xbb\xbf" + data
    if m == "trailing":
        return data + rng.choice([b"garbage", b"}", b"\x00", b"\n{}", b" " * 1000])
    if m == "duplicate_keys":
        return data[:1] + b'"model":{"x":[1]},"stream":"yes","messages":7,' + data[1:] if data[:1] == b"{" else data
    if m == "toplevel":
        return rng.choice([b"[]", b'"string"', b"1", b"null", b"true", b"[{}]", b"{}", b"  ", b"NaN", b"\"\\ud800\""])
    if m == "empty":
        return b""
    if m == "random_bytes":
        return rng.randbytes(rng.choice([1, 16, 512, 4096]))
    if m == "utf16":
        return data.decode("utf-8", "replace").encode("utf-16")
    if m == "comment":
        return b"/* c */" + data
    return data.replace(b":", b":\x00", 1)


# ----------------------------------------------------------------------------------------------------------------
# Compression (bombs are made cheaply: a raw deflate segment of 1 MiB of zeros after a full flush is repeatable)
# ----------------------------------------------------------------------------------------------------------------

@cache
def _zero_segment() -> tuple[bytes, bytes]:
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    seg = co.compress(bytes(1 << 20)) + co.flush(zlib.Z_FULL_FLUSH)
    return seg, co.flush(zlib.Z_FINISH)


@cache
def bomb(kind: str, mib: int) -> bytes:
    """A body that inflates to ``mib`` MiB of zeros: gzip (valid CRC/size), zlib ("deflate"), or raw deflate."""
    seg, end = _zero_segment()
    deflate = seg * mib + end
    if kind == "raw":
        return deflate
    if kind == "zlib":
        adler = 1
        z = bytes(1 << 20)
        for _ in range(mib):
            adler = zlib.adler32(z, adler)
        return b"\x78\xda" + deflate + adler.to_bytes(4, "big")
    crc = 0
    z = bytes(1 << 20)
    for _ in range(mib):
        crc = zlib.crc32(z, crc)
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + deflate + crc.to_bytes(4, "little")
            + ((mib << 20) & 0xFFFFFFFF).to_bytes(4, "little"))


def _brotli(data: bytes) -> bytes | None:
    try:
        import brotli
    except ImportError:
        return None
    return brotli.compress(data, quality=1)


def encoding_mutation(rng: random.Random, body: bytes, headers: list, kinds: list[str], bomb_mib: int) -> bytes:
    m = rng.choice(["gzip", "deflate", "raw_deflate", "br", "double_gzip", "bogus_gzip", "bogus_br", "zstd_bogus",
                    "unknown", "identity", "upper", "list", "bomb_gzip", "bomb_deflate", "bomb_raw", "truncated_gzip",
                    "gzip_trailing_garbage"])
    kinds.append(f"enc:{m}")
    if m == "gzip":
        headers.append((b"Content-Encoding", b"gzip"))
        return gzip.compress(body, mtime=0)
    if m == "deflate":
        headers.append((b"Content-Encoding", b"deflate"))
        return zlib.compress(body)
    if m == "raw_deflate":
        headers.append((b"Content-Encoding", b"deflate"))
        co = zlib.compressobj(6, zlib.DEFLATED, -15)
        return co.compress(body) + co.flush()
    if m == "br":
        out = _brotli(body)
        if out is None:
            headers.append((b"Content-Encoding", b"gzip"))
            return gzip.compress(body, mtime=0)
        headers.append((b"Content-Encoding", b"br"))
        return out
    if m == "double_gzip":
        headers.append((b"Content-Encoding", b"gzip, gzip"))
        return gzip.compress(gzip.compress(body, mtime=0), mtime=0)
    if m == "bogus_gzip":
        headers.append((b"Content-Encoding", b"gzip"))
        return body
    if m == "bogus_br":
        headers.append((b"Content-Encoding", b"br"))
        return body
    if m == "zstd_bogus":
        headers.append((b"Content-Encoding", b"zstd"))
        return b"\x28\xb5\x2f\xfd" + body
    if m == "unknown":
        headers.append((b"Content-Encoding", rng.choice([b"x-bogus", b"compress", b"*", b"", b"gzip;q=1"])))
        return body
    if m == "identity":
        headers.append((b"Content-Encoding", b"identity"))
        return body
    if m == "upper":
        headers.append((b"Content-Encoding", b"GZIP"))
        return gzip.compress(body, mtime=0)
    if m == "list":
        headers.append((b"Content-Encoding", b"gzip"))
        headers.append((b"Content-Encoding", b"deflate"))
        return zlib.compress(gzip.compress(body, mtime=0))
    if m.startswith("bomb_"):
        kind = {"bomb_gzip": "gzip", "bomb_deflate": "zlib", "bomb_raw": "raw"}[m]
        headers.append((b"Content-Encoding", b"gzip" if kind == "gzip" else b"deflate"))
        return bomb(kind, bomb_mib)
    if m == "truncated_gzip":
        headers.append((b"Content-Encoding", b"gzip"))
        g = gzip.compress(body, mtime=0)
        return g[: max(1, len(g) // 2)]
    headers.append((b"Content-Encoding", b"gzip"))
    return gzip.compress(body, mtime=0) + b"garbage"


# ----------------------------------------------------------------------------------------------------------------
# Headers, paths, methods
# ----------------------------------------------------------------------------------------------------------------

CONTENT_TYPES = [b"application/json", b"text/plain", b"application/json; charset=utf-16", b"", b"*/*",
                 b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=xyz",
                 b'application/json; charset="utf-8"; x=' + b"y" * 2000, b"application/jsonp", b"application/json\t",
                 b"application/vnd.api+json", b"text/event-stream", b"application/json; charset=latin-1"]


def header_mutation(rng: random.Random, headers: list, kinds: list[str], case: Case) -> None:
    m = rng.choice(["many", "many", "long_value", "long_name", "dup_auth", "dup_auth", "crlf", "content_type",
                    "host", "expect", "upgrade", "te", "cl", "sdk", "weird_auth", "hop_by_hop"])
    kinds.append(f"hdr:{m}")
    if m == "many":
        n = rng.choice([100, 255, 257, 300, 1000, 5000, 20000])
        same = rng.random() < 0.3
        headers.extend((b"X-Fuzz" if same else b"X-Fuzz-%d" % i, b"v%d" % i) for i in range(n))
    elif m == "long_value":
        size = rng.choice([8_000, 60_000, 66_000, 200_000, 1_000_000])
        headers.append((rng.choice([b"X-Long", b"User-Agent", b"Cookie", b"Anthropic-Beta", b"Accept"]),
                        b"a" * size))
    elif m == "long_name":
        headers.append((b"X-" + b"n" * rng.choice([1000, 70_000]), b"1"))
    elif m == "dup_auth":
        choice = rng.randrange(6)
        if choice == 0:
            headers.append((b"X-Api-Key", b"aigw-invalid"))
        elif choice == 1:
            headers.insert(0, (b"X-Api-Key", b"aigw-invalid"))
        elif choice == 2:
            headers.append((b"Authorization", b"Bearer " + OTHER_KEY))
        elif choice == 3:
            headers.append((b"X-TG-API-Key", OTHER_KEY))
        elif choice == 4:
            headers.append((b"X-Api-Key", KEY))
        else:
            headers.append((b"x-api-key", b""))
    elif m == "crlf":
        case.framing_ok = False
        headers.append(rng.choice([
            (b"X-Bad", b"a\rb"), (b"X-Bad", b"a\nX-Injected: 1"), (b"X-Bad", b"a\x00b"), (b"X Bad", b"1"),
            (b"X-Bad(", b"1"), (None, b"no-colon-line"), (None, b" folded continuation"), (b"", b"empty-name"),
            (b"X-Bad ", b"1"), (b"X-Api-Key", KEY + b"\r\nX-Injected: 1"), (b"X-Bad", b"\x7f\xff"),
            (b"Content-Length\x00", b"1"), (None, b"\tX-Tab: 1")]))
    elif m == "content_type":
        headers[:] = [(k, v) for k, v in headers if (k or b"").lower() != b"content-type"]
        for _ in range(rng.choice([0, 1, 1, 2])):
            headers.append((b"Content-Type", rng.choice(CONTENT_TYPES)))
    elif m == "host":
        headers[:] = [(k, v) for k, v in headers if (k or b"").lower() != b"host"]
        for _ in range(rng.choice([0, 1, 1, 2])):
            headers.append((b"Host", rng.choice([
                b"127.0.0.1", b"an.fuzz.test", b"oa.fuzz.test", b"nope.fuzz.test", b"[::1]", b"evil.com:99999",
                b"user@oa.fuzz.test", b"a" * 300 + b".fuzz.test", b"", b"oa.fuzz.test:abc", b"..", b"OA.FUZZ.TEST."])))
    elif m == "expect":
        headers.append((b"Expect", rng.choice([b"100-continue", b"200-ok", b""])))
    elif m == "upgrade":
        headers.append((b"Upgrade", rng.choice([b"websocket", b"h2c", b"foo"])))
        headers.append((b"Connection", b"Upgrade"))
        headers.append((b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="))
        headers.append((b"Sec-WebSocket-Version", b"13"))
    elif m == "te":
        case.auto_length = False
        v = rng.randrange(4)
        if v == 0:  # valid chunked
            headers.append((b"Transfer-Encoding", b"chunked"))
            body = case.body
            case.body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 97]), body[i:i + 97])
                                 for i in range(0, len(body), 97)) + b"0\r\n\r\n"
        elif v == 1:  # TE and CL (smuggling shape)
            case.framing_ok = False
            headers.append((b"Transfer-Encoding", b"chunked"))
            headers.append((b"Content-Length", str(len(case.body)).encode()))
            case.body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(case.body), case.body)
        elif v == 2:  # bad chunk size
            case.framing_ok = False
            headers.append((b"Transfer-Encoding", b"chunked"))
            case.body = b"zz\r\n" + case.body + b"\r\n0\r\n\r\n"
        else:
            case.framing_ok = False
            headers.append((b"Transfer-Encoding", rng.choice([b"gzip, chunked", b"identity", b"chunked, chunked",
                                                              b"xchunked"])))
            case.body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(case.body), case.body)
    elif m == "cl":
        case.auto_length = False
        case.framing_ok = False
        v = rng.randrange(4)
        n = len(case.body)
        if v == 0:
            headers.append((b"Content-Length", b"%d" % n))
            headers.append((b"Content-Length", b"%d" % (n + 1)))
        elif v == 1:
            headers.append((b"Content-Length", rng.choice([b"-1", b"abc", b"1e3", b"0x10", b" ", b"+5"])))
        elif v == 2:
            headers.append((b"Content-Length", b"%d, %d" % (n, n)))
        else:  # shorter than the body: the rest is a garbage next request
            headers.append((b"Content-Length", b"%d" % max(0, n // 2)))
    elif m == "sdk":
        headers.extend(sdk_headers(rng))
    elif m == "weird_auth":
        headers[:] = [(k, v) for k, v in headers if (k or b"").lower() not in (b"x-api-key", b"authorization")]
        headers.append(rng.choice([
            (b"Authorization", b"Bearer"), (b"Authorization", b"Bearer  " + KEY + b"  "), (b"authorization",
                                                                                          b"bearer " + KEY),
            (b"Authorization", b"Basic " + base64.b64encode(b"u:" + KEY)), (b"Authorization", KEY),
            (b"X-Api-Key", b" " + KEY + b" "), (b"X-API-KEY", KEY), (b"X-Api-Key", KEY + b"\t"),
            (b"Authorization", b"Bearer " + KEY + b", Bearer other")]))
    else:
        headers.append(rng.choice([(b"Connection", b"keep-alive, x-api-key"), (b"Keep-Alive", b"timeout=5"),
                                   (b"TE", b"trailers"), (b"Trailer", b"X-Api-Key"), (b"Proxy-Authorization", b"x"),
                                   (b"Connection", b"close, te"), (b"X-Forwarded-For", b"1.2.3.4, evil"),
                                   (b"Forwarded", b"for=evil;host=evil.invalid"), (b"Max-Forwards", b"0")]))


def sdk_headers(rng: random.Random) -> list[tuple[bytes, bytes]]:
    """What the OpenAI Python SDK sends (names and shapes)."""
    return [(b"Accept", b"application/json"), (b"Accept-Encoding", b"gzip, deflate, br, zstd"),
            (b"User-Agent", b"OpenAI/Python 1.99.0"), (b"X-Stainless-Lang", b"python"),
            (b"X-Stainless-Package-Version", b"1.99.0"), (b"X-Stainless-OS", b"Linux"),
            (b"X-Stainless-Arch", b"x64"), (b"X-Stainless-Runtime", b"CPython"),
            (b"X-Stainless-Runtime-Version", b"3.13.0"), (b"X-Stainless-Async", b"false"),
            (b"X-Stainless-Retry-Count", b"0"), (b"X-Stainless-Read-Timeout", b"600"),
            (b"OpenAI-Organization", b"org-fuzz"), (b"OpenAI-Project", b"proj_fuzz")]


DOT_SEGMENTS = [b"/../_mock/reset", b"/../../_mock/reset", b"/%2e%2e/_mock/reset", b"/%2E%2E/%2e%2e/_mock/faults",
                b"/.%2e/_mock/reset", b"/%2e./_mock/reset", b"/..%2f_mock%2freset", b"/%2e%2e%2f_mock%2freset",
                b"/..;/_mock/reset", b"/..\\_mock\\reset", b"/./chat/completions", b"/x/../chat/completions",
                b"/chat/completions/..", b"/messages/../../healthz", b"/../../../../etc/passwd", b"/%252e%252e/x",
                b"/.%00./x", b"/..%00/x", b"/%c0%ae%c0%ae/x", b"/....//x"]


def path_for(rng: random.Random, case: Case, kinds: list[str]) -> bytes:
    prefix = GATEWAYS[case.gw]["prefix"].encode()
    base = INGRESS_PATH[case.ingress].encode()
    if case.gw == "pt":
        base = b"/pt" + base
    if rng.random() > 0.35:
        return base
    m = rng.choice(["dots", "dots", "dots", "slash2f", "double_slash", "query", "query", "long", "raw_bytes",
                    "absolute", "case", "trailing", "asterisk", "other_endpoint", "no_slash", "fragment"])
    kinds.append(f"path:{m}")
    if m == "dots":
        return prefix + rng.choice(DOT_SEGMENTS)
    if m == "slash2f":
        return rng.choice([prefix + b"%2fchat%2fcompletions", prefix + b"/chat%2fcompletions", prefix + b"%2F..%2F_mock",
                           prefix + b"/messages%2f..%2f..%2f_mock%2freset"])
    if m == "double_slash":
        return rng.choice([b"/" + base, base.replace(b"/", b"//"), base + b"//", b"//evil.invalid" + base])
    if m == "query":
        return base + rng.choice([b"?key=" + KEY, b"?alt=sse", b"?api-version=1&api-version=2", b"?a=b&a=c",
                                  b"?%00", b"?x=" + b"a" * 10_000, b"?../../_mock/reset", b"?key=" + KEY + b"&beta=true",
                                  b"?stream=true", b"?" + b"&".join(b"p%d=1" % i for i in range(2000)), b"?",
                                  b"??", b"?key=%0d%0aX-Injected:1", b"?model=../../x"])
    if m == "long":
        return prefix + b"/" + b"a" * rng.choice([1000, 10_000, 70_000, 500_000]) + b"/chat/completions"
    if m == "raw_bytes":
        case.framing_ok = False
        return prefix + rng.choice([b"/\xff\xfe", b"/chat completions", b"/chat\tcompletions", b"/\x00", b"/\x7f",
                                    "/ünïcode".encode()])
    if m == "absolute":
        case.framing_ok = False  # absolute-form in reverse mode may be refused at the HTTP layer
        return rng.choice([b"http://127.0.0.1:9", b"http://evil.invalid", b"https://oa.fuzz.test",
                           b"http://user:pw@127.0.0.1"]) + base
    if m == "case":
        return base.upper()
    if m == "trailing":
        return base + rng.choice([b"/", b"/.", b"/..", b"%20", b";x", b"/x"])
    if m == "asterisk":
        case.framing_ok = False
        return b"*"
    if m == "other_endpoint":
        return prefix + rng.choice([b"/models", b"/embeddings", b"/messages/count_tokens", b"/files", b"/_mock/reset",
                                    b"/completions", b"/responses", b"/healthz"])
    if m == "no_slash":
        case.framing_ok = False
        return base[1:]
    return base + b"#frag"


METHODS = [b"GET", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS", b"TRACE", b"CONNECT", b"post", b"PROPFIND",
           b"FOO", b"M" * 1000, b"GET\x00", b"PO ST", b"BREW"]


# ----------------------------------------------------------------------------------------------------------------
# One case
# ----------------------------------------------------------------------------------------------------------------

def make_case(seed: int, idx: int, *, bomb_mib: int) -> Case:
    rng = random.Random(f"{seed}:{idx}")
    gw = rng.choice(["oa", "oa", "an", "an", "gm", "az", "pt"])
    ingress = rng.choice(["openai", "anthropic"])
    stream = rng.random() < 0.4
    case = Case(idx=idx, gw=gw, method=b"POST", target=b"", headers=[], body=b"", ingress=ingress, stream=stream)
    kinds = case.kinds
    obj = openai_body(rng, stream) if ingress == "openai" else anthropic_body(rng, stream)
    clean = rng.random() < 0.12
    if gw in ("gm", "az") and not clean and rng.random() < 0.4:
        obj["model"] = rng.choice(EVIL_MODELS)  # these two put the model id into the URL
        kinds.append("json:url_model")
    r = rng.random()
    if clean:
        body = json.dumps(obj).encode()
    elif r < 0.55:
        body = mutate_json(rng, obj, kinds, ingress, gw)
    elif r < 0.75:
        body = text_mutation(rng, json.dumps(obj).encode(), kinds)
    else:
        body = json.dumps(obj).encode()
    headers: list[tuple[bytes, bytes]] = [(b"Host", b"127.0.0.1"), (b"Content-Type", b"application/json")]
    auth = rng.random()
    if auth < 0.45:
        headers.append((b"X-Api-Key", KEY))
    elif auth < 0.8:
        headers.append((b"Authorization", b"Bearer " + KEY))
    elif auth < 0.95:
        headers.append((b"X-TG-API-Key", KEY))
    if ingress == "anthropic" and rng.random() < 0.6:
        headers.append((b"anthropic-version", b"2023-06-01"))
    case.body = body
    if not clean:
        if rng.random() < 0.2:
            case.body = encoding_mutation(rng, case.body, headers, kinds, bomb_mib)
        for _ in range(rng.choice([0, 1, 1, 2])):
            header_mutation(rng, headers, kinds, case)
        if rng.random() < 0.12:
            case.method = rng.choice(METHODS)
            kinds.append("method")
            if case.method in (b"GET\x00", b"PO ST") or len(case.method) > 100:
                case.framing_ok = False
        if rng.random() < 0.05:
            case.version = rng.choice([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9.9", b"HTTP/1.1 x", b"http/1.1"])
            kinds.append("version")
            if case.version != b"HTTP/1.0":
                case.framing_ok = False
        case.headers = headers
        case.target = path_for(rng, case, kinds)
        return case
    case.headers = headers
    case.target = (b"/pt" if gw == "pt" else b"") + INGRESS_PATH[ingress].encode()
    kinds.append("clean")
    if auth >= 0.95:
        case.expect = (401,)  # no key at all
    elif gw == "pt" and ingress == "anthropic":
        case.expect = None    # the endpoint's mock has no /base/v1/messages (404): only the generic checks
    else:
        case.expect = (200,)
    return case
