"""The providers layer's JSON codec: orjson where it gives exactly what the stdlib would, the stdlib otherwise.

Every body and stream event the gateway reads or writes goes through `loads`/`dumps` (strict request parsing adds
its checks on top: providers/jsonsafe.py). orjson is 3-10x faster, but it differs from `json` in a few corners,
each of which falls back to the stdlib so the result is the same:
- it refuses NaN/Infinity, numbers that overflow, lone surrogates, a UTF-8 BOM and non-UTF-8 text (the stdlib
  then decides: accepts, or raises its own ValueError);
- it reads an integer beyond 64 bits as a float: text holding a run of 19 or more digits is read by the stdlib;
- it cannot write integers beyond 64 bits, non-string keys or lone surrogates (TypeError): the stdlib writes those.
Written JSON is compact UTF-8 (`separators=(",", ":")`, `ensure_ascii=False`); floats may be spelt differently
(`1e-7` for `1e-07`), never with another value; NaN and Infinity, which are not JSON (the stdlib would write them
bare), are written as `null`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_NUMBER = re.compile(rb"\d{19}")
_LONG_NUMBER_TEXT = re.compile(r"\d{19}")
# What json.dumps(obj, ensure_ascii=False, separators=(",", ":")) builds on every call: built once.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class Undecided(ValueError):
    """orjson cannot read this text exactly as the stdlib would (or cannot read it at all): ask the stdlib."""


def fast_loads(data: bytes | bytearray | str) -> Any:
    """orjson's reading of `data`, when it is the stdlib's; else `Undecided`."""
    if (_LONG_NUMBER_TEXT if isinstance(data, str) else _LONG_NUMBER).search(data) is not None:
        raise Undecided("a number of 19 or more digits")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise Undecided(str(err)) from None


def loads(data: bytes | bytearray | str) -> Any:
    """`json.loads(data)`, faster. Raises ValueError (json.JSONDecodeError or UnicodeDecodeError) like it."""
    try:
        return fast_loads(data)
    except Undecided:
        return json.loads(data)


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON of `obj`. An unpaired surrogate (request bodies holding one are refused at parse; a
    provider's answer may still carry one) is kept as its \\u escape, which is valid JSON, instead of failing."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        pass
    text = _ENCODER.encode(obj)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode()
