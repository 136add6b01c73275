"""Strict JSON for request bodies (pure; used by providers.parse_request).

What `json.loads` accepts but no provider does, or what breaks later code, is a 400 here:
- NaN, Infinity, -Infinity and numbers that overflow to infinity (not JSON; forwarded they break the provider);
- nesting deeper than MAX_DEPTH arrays/objects (checked on the bytes before parsing: deeper input would make
  json.loads, the translators or json.dumps raise RecursionError). No real request comes near it: a chat request
  is ~5 levels deep, a tool's JSON schema rarely 20;
- strings holding an unpaired UTF-16 surrogate ("\\ud800"): not Unicode, so the body cannot be re-encoded.
"""
from __future__ import annotations

import itertools
import json
import math
import operator
import re
from typing import Any

from .errors import GatewayError
from .jsoncodec import Undecided, fast_loads

MAX_DEPTH = 128

_NOT_STRUCTURE = bytes(range(256)).translate(None, b'[]{}"')
_SQUARE = bytes.maketrans(b"{}", b"[]")
_OPEN_RUN = re.compile(rb"\[+")
_CLOSE_RUN = re.compile(rb"\]+")
# Where a lone surrogate can come from: a \uD800-\uDFFF escape, or its CESU-8 bytes (json.loads decodes bytes
# with "surrogatepass").
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def _invalid(message: str) -> GatewayError:
    return GatewayError(400, "invalid_request", message)


def nesting_exceeds(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """True when the JSON text nests arrays/objects more than `limit` deep (strings are skipped).

    Linear C-speed byte operations: bracket-only text, then leaf pairs peeled off while that shrinks the text
    fast, then the depth of what is left from its runs of brackets. Malformed text gives an answer that does
    not matter (json.loads refuses it anyway)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    # Drop escaped backslashes and quotes, then every non-structural byte, then strings' contents.
    s = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(_SQUARE, _NOT_STRUCTURE)
    s = s.replace(b'""', b"")  # strings without brackets (adjacent ones merge: harmless)
    if b'"' in s:
        s = b"".join(s.split(b'"')[::2])
    peeled = 0
    while peeled < limit:
        leaves = s.count(b"[]")
        if not leaves:
            return False
        if leaves * 16 < len(s):
            break  # few runs of brackets: count them instead
        s = s.replace(b"[]", b"")
        peeled += 1
    else:
        return b"[]" in s
    if s[:1] != b"[":
        return False
    opens = map(len, _OPEN_RUN.findall(s))
    closes = map(operator.neg, map(len, _CLOSE_RUN.findall(s)))
    prefix = itertools.accumulate(itertools.chain.from_iterable(zip(opens, closes)))
    peak = max(itertools.islice(prefix, 0, None, 2), default=0)  # depth peaks at the end of each run of "["
    return peeled + peak > limit


def _no_constant(name: str) -> Any:
    raise _invalid(f"request body is not valid JSON: {name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _invalid(f"request body has a number out of range: {text[:40]}")
    return value


# What json.loads(..., parse_constant=_no_constant, parse_float=_finite_float) builds on every call: built once.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


def loads_request(body: bytes | str) -> Any:
    """json.loads for a client's request body; every refusal is a GatewayError(400)."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
    if nesting_exceeds(raw):
        raise _invalid(f"request body nests arrays/objects more than {MAX_DEPTH} levels deep")
    try:
        return fast_loads(raw)  # valid UTF-8 JSON without any of the above: what the checks below would accept
    except Undecided:
        pass
    encoding = json.detect_encoding(raw)
    try:
        obj = _DECODER.decode(raw.decode(encoding, "surrogatepass"))  # as json.loads decodes bytes
    except RecursionError:
        raise _invalid(f"request body nests arrays/objects more than {MAX_DEPTH} levels deep") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise _invalid(f"request body is not valid JSON: {e}") from None
    if encoding != "utf-8" or _MAYBE_SURROGATE.search(raw):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            char = e.object[e.start] if isinstance(e.object, str) else "?"
            raise _invalid(f"request body has a string with an unpaired UTF-16 surrogate (\\u{ord(char):04x}): "
                           "not valid Unicode") from None
    return obj
