"""Golden transcripts: every recorded stream translated into the other ingress format.

Regenerate with `AIGW_UPDATE_GOLDEN=1 pytest tests/providers/test_golden.py` and review the diff by eye.
Each input is also replayed split at random chunk boundaries (50 seeds), at every byte (one fixture per
direction), with CRLF line endings and with `: keep-alive` comments: the output must be byte-identical.
"""
import json
import os
import pathlib
import random

import pytest

import providers as P

from .sdk import IdCounter, fixed_now, read_anthropic_stream, read_openai_stream

HERE = pathlib.Path(__file__).parent
FIXTURES = HERE.parent / "fixtures"
GOLDEN = HERE / "golden"
UPDATE = os.environ.get("AIGW_UPDATE_GOLDEN") == "1"

OA_REQ = json.dumps({"model": "m", "stream": True, "stream_options": {"include_usage": True},
                     "messages": [{"role": "user", "content": "x"}]}).encode()
AN_REQ = json.dumps({"model": "m", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "x"}]}).encode()


def _cases():
    cases = []
    for f in sorted((FIXTURES / "anthropic-sdk").glob("*.sse")):
        cases.append((f, "anthropic", "openai"))
    for f in sorted((FIXTURES / "openai-sdk").glob("*.sse")):
        cases.append((f, "openai", "anthropic"))
    for f in sorted((HERE / "fixtures" / "gemini").glob("*.sse")):
        cases.append((f, "gemini", "openai"))
        cases.append((f, "gemini", "anthropic"))
    return cases


CASES = _cases()
IDS = [f"{p.parent.name}/{p.stem}->{ing}" for p, _, ing in CASES]


def translate(raw: bytes, provider: str, ingress: str, chunks=None) -> bytes:
    req = P.parse_request(ingress, OA_REQ if ingress == "openai" else AN_REQ)
    t = P.open_stream(req, provider, now=fixed_now, new_id=IdCounter())
    out = []
    for c in chunks if chunks is not None else [raw]:
        out.append(t.feed(c))
    out.append(t.finish())
    assert t.done and t.upstream_error is None
    return b"".join(out)


def golden_path(src: pathlib.Path, ingress: str) -> pathlib.Path:
    return GOLDEN / f"{src.parent.name}__{src.stem}.{ingress}.sse"


def random_chunks(raw: bytes, seed: int) -> list:
    rng = random.Random(seed)
    top = rng.choice((2, 7, 64, 300))
    chunks, i = [], 0
    while i < len(raw):
        n = rng.randint(1, top)
        chunks.append(raw[i:i + n])
        i += n
    return chunks


@pytest.mark.parametrize("src,provider,ingress", CASES, ids=IDS)
def test_golden(src, provider, ingress):
    raw = src.read_bytes()
    out = translate(raw, provider, ingress)
    path = golden_path(src, ingress)
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_bytes(out)
    assert out == path.read_bytes(), f"{path.name} differs; AIGW_UPDATE_GOLDEN=1 to regenerate, then review"
    # the golden output is what the real SDKs accept
    if ingress == "openai":
        read_openai_stream(out)
    else:
        read_anthropic_stream(out)


@pytest.mark.parametrize("src,provider,ingress", CASES, ids=IDS)
def test_split_replay_is_byte_identical(src, provider, ingress):
    raw = src.read_bytes()
    want = golden_path(src, ingress).read_bytes()
    for seed in range(50):
        assert translate(raw, provider, ingress, random_chunks(raw, seed)) == want, f"seed {seed}"
    crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert translate(crlf, provider, ingress, random_chunks(crlf, 99)) == want
    lone_cr = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r")
    assert translate(lone_cr, provider, ingress, random_chunks(lone_cr, 98)) == want
    body = raw.replace(b"\r\n", b"\n")
    keepalive = b": keep-alive\n\n" + body.replace(b"\n\n", b"\n\n: keep-alive\n\n\n")
    assert translate(keepalive, provider, ingress, random_chunks(keepalive, 97)) == want


@pytest.mark.parametrize("name,provider,ingress", [
    ("anthropic-sdk/tool_use_response.sse", "anthropic", "openai"),
    ("openai-sdk/parallel_tool_calls.sse", "openai", "anthropic"),
])
def test_every_byte_split(name, provider, ingress):
    src = FIXTURES / name
    raw = src.read_bytes()
    want = golden_path(src, ingress).read_bytes()
    assert translate(raw, provider, ingress, [raw[i:i + 1] for i in range(len(raw))]) == want


def test_gemini_every_byte_split_with_multibyte_utf8():
    src = HERE / "fixtures" / "gemini" / "text.sse"
    raw = src.read_bytes()
    assert "🎉".encode() in raw and b"\r\n" in raw
    for ingress in ("openai", "anthropic"):
        want = golden_path(src, ingress).read_bytes()
        assert translate(raw, "gemini", ingress, [raw[i:i + 1] for i in range(len(raw))]) == want


def test_events_are_emitted_as_soon_as_complete():
    """Feeding one upstream event at a time yields its translation immediately (no hold-back except
    Anthropic's message_delta, which waits for the usage chunk by design)."""
    raw = (FIXTURES / "anthropic-sdk" / "basic_response.sse").read_bytes()
    req = P.parse_request("openai", OA_REQ)
    t = P.open_stream(req, "anthropic", now=fixed_now, new_id=IdCounter())
    events = raw.split(b"\n\n")
    outs = [t.feed(e + b"\n\n") for e in events]
    assert outs[0].count(b"data: ") == 1          # message_start → role chunk
    assert outs[1] == b"" and outs[2] == b""      # text block start, ping
    assert all(o.count(b"data: ") == 1 for o in outs[3:6])  # three text deltas
    assert b'"finish_reason":"stop"' in outs[7]   # message_delta → finish chunk
    assert outs[8].endswith(b"data: [DONE]\n\n")  # message_stop → usage chunk + [DONE]
    assert t.finish() == b""


# ------------------------------------------------------------------ passthrough keeps bytes
@pytest.mark.parametrize("src", sorted((FIXTURES / "openai-sdk").glob("*.sse")), ids=lambda p: p.stem)
def test_openai_to_openai_passthrough_is_byte_identical(src):
    raw = src.read_bytes()
    assert translate(raw, "openai", "openai", random_chunks(raw, 1)) == raw
    read_openai_stream(raw)


@pytest.mark.parametrize("src", sorted((FIXTURES / "anthropic-sdk").glob("*.sse")), ids=lambda p: p.stem)
def test_anthropic_to_anthropic_passthrough_keeps_event_bytes(src):
    raw = src.read_bytes()
    out = translate(raw, "anthropic", "anthropic", random_chunks(raw, 2))
    assert out == raw.rstrip(b"\n") + b"\n\n"
    read_anthropic_stream(out, strict_blocks=False)
