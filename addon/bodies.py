"""Bounded decoding of a compressed request body: Content-Encoding (gzip, deflate, br, zstd, lists of them)
inflated incrementally, never past the body limit (413 at once), nor past MAX_RATIO:1 once the output exceeds
RATIO_FLOOR (a decompression bomb). Truncated or corrupt data is a 400. No I/O; used by the addon's request hook.
"""

from __future__ import annotations

import zlib

from providers import GatewayError

# A decoded body larger than this many times its compressed size (once past RATIO_FLOOR) is a bomb: 413.
# Real JSON compresses 5-20:1, highly repetitive JSON up to a few hundred:1; gzip's own ceiling is ~1030:1.
MAX_RATIO = 1000
RATIO_FLOOR = 1024 * 1024
MAX_MEMBERS = 64          # gzip members / zstd frames one body may hold (each one is a new decoder)
_IN_STEP = 64 * 1024      # compressed bytes fed per decoder call
_OUT_STEP = 1024 * 1024   # decoded bytes produced per decoder call


# -- bounded decoding ------------------------------------------------------------------------------------------
class _Budget:
    def __init__(self, limit: int, compressed: int) -> None:
        self.limit = limit
        self.compressed = max(1, compressed)

    def room(self, have: int) -> int:
        return max(1, min(_OUT_STEP, self.limit - have + 1))

    def check(self, have: int) -> None:
        if have > self.limit:
            raise GatewayError(413, "request_too_large",
                               f"Request body is larger than {self.limit} bytes once decoded (Content-Encoding).")
        if have > RATIO_FLOOR and have > MAX_RATIO * self.compressed:
            raise GatewayError(413, "request_too_large",
                               f"Request body expands more than {MAX_RATIO}:1 when decoded (Content-Encoding); "
                               "refused as a decompression bomb.")


def _undecodable(coding: str, why: str) -> GatewayError:
    return GatewayError(400, "invalid_request",
                        f"The request body could not be decoded (Content-Encoding: {coding}): {why}.")


def _inflate_zlib(data: bytes, wbits: int, budget: _Budget, coding: str, members: bool) -> bytearray:
    out = bytearray()
    view = memoryview(data)
    pos, count = 0, 0
    while True:
        count += 1
        if count > MAX_MEMBERS:
            raise _undecodable(coding, f"more than {MAX_MEMBERS} gzip members")
        d = zlib.decompressobj(wbits)
        try:
            while not d.eof:
                if d.unconsumed_tail:  # the output step was reached before this input was used up
                    chunk = d.unconsumed_tail
                else:
                    chunk = view[pos:pos + _IN_STEP]
                    pos += len(chunk)
                piece = d.decompress(chunk, budget.room(len(out)))
                if not piece and not len(chunk) and not d.eof:
                    raise _undecodable(coding, "the compressed data is truncated")
                out += piece
                budget.check(len(out))
        except zlib.error as e:
            raise _undecodable(coding, str(e)) from None
        pos -= len(d.unused_data)  # the next member starts where this one's input ended
        if not members or pos >= len(view):
            return out  # (deflate: anything after the stream is ignored, as zlib.decompress does)
        if view[pos:pos + 2] != b"\x1f\x8b":
            if view[pos:].tobytes().strip(b"\0"):
                raise _undecodable(coding, "unexpected data after the gzip stream")
            return out  # zero padding after the last member


def _gzip(data: bytes, budget: _Budget, coding: str) -> bytearray:
    return _inflate_zlib(data, 31, budget, coding, members=True)


def _deflate(data: bytes, budget: _Budget, coding: str) -> bytearray:
    # "deflate" is zlib-wrapped by the spec; some clients send a raw deflate stream (mitmproxy accepts both).
    zlib_wrapped = len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
    return _inflate_zlib(data, 15 if zlib_wrapped else -15, budget, coding, members=False)


def _brotli(data: bytes, budget: _Budget, coding: str) -> bytearray:
    import brotli
    out = bytearray()
    d = brotli.Decompressor()
    view = memoryview(data)
    try:
        for pos in range(0, len(view), _IN_STEP):
            out += d.process(view[pos:pos + _IN_STEP], output_buffer_limit=budget.room(len(out)))
            budget.check(len(out))
            while not d.can_accept_more_data():
                out += d.process(b"", output_buffer_limit=budget.room(len(out)))
                budget.check(len(out))
    except brotli.error as e:
        raise _undecodable(coding, str(e) or "invalid brotli data") from None
    if not d.is_finished():
        raise _undecodable(coding, "the compressed data is truncated")
    return out


def _zstd_module():
    try:
        from compression import zstd  # Python 3.14
    except ImportError:
        from backports import zstd  # what mitmproxy uses before 3.14
    return zstd


def _zstd(data: bytes, budget: _Budget, coding: str) -> bytearray:
    zstd = _zstd_module()
    out = bytearray()
    view = memoryview(data)
    pos, count = 0, 0
    while pos < len(view):
        count += 1
        if count > MAX_MEMBERS:
            raise _undecodable(coding, f"more than {MAX_MEMBERS} frames")
        d = zstd.ZstdDecompressor()
        try:
            chunk = b""
            while not d.eof:
                if d.needs_input:
                    chunk = view[pos:pos + _IN_STEP]
                    pos += len(chunk)
                    if not len(chunk):
                        raise _undecodable(coding, "the compressed data is truncated")
                else:
                    chunk = b""
                out += d.decompress(chunk, budget.room(len(out)))
                budget.check(len(out))
        except zstd.ZstdError as e:
            raise _undecodable(coding, str(e)) from None
        pos -= len(d.unused_data)
    return out


_DECODERS = {"gzip": _gzip, "x-gzip": _gzip, "deflate": _deflate, "deflateraw": _deflate, "br": _brotli,
             "zstd": _zstd}


def decode_body(raw: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The request body without its Content-Encoding, never more than `limit` bytes.

    Raises GatewayError 413 (too large once decoded, or a bomb) or 400 (unknown coding, corrupt data)."""
    if not content_encoding:  # nearly every request: nothing to decode, nothing to set up
        return bytes(raw)
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    body: bytes | bytearray = raw
    budget = _Budget(limit, len(raw))
    for coding in reversed(codings):  # codings are listed in the order they were applied
        if coding in ("identity", "none"):
            continue
        decoder = _DECODERS.get(coding)
        if decoder is None:
            raise GatewayError(400, "invalid_request", f"Unsupported Content-Encoding '{coding[:40]}' "
                                                       "(supported: gzip, deflate, br, zstd).")
        if not body:
            continue
        body = decoder(bytes(body), budget, coding)
    return bytes(body)
