"""providers/jsoncodec.py reads what json.loads reads, exactly, and strict request parsing keeps its refusals."""
import json
import math

import pytest

from providers import GatewayError
from providers.jsoncodec import Undecided, fast_loads, loads
from providers.jsonsafe import loads_request

SAME_AS_STDLIB = [
    b'{"model":"gpt-4","messages":[{"role":"user","content":"hi \\u00e9 \xc3\xa9"}],"temperature":0.7}',
    b'{"seed":1234567890123456789012345,"neg":-9223372036854775809,"u":18446744073709551615}',  # beyond 64 bits
    b'{"a":1,"a":2}', b'[1.5e-400,-0.0,1e308]', b'"s"', b'null', '{"t":"\u2028"}', b' {"x" : [ ] } ',
    b'\xef\xbb\xbf{"bom":1}'.decode("utf-8-sig").encode(),
]


@pytest.mark.parametrize("text", SAME_AS_STDLIB)
def test_loads_is_json_loads(text):
    got, want = loads(text), json.loads(text)
    assert got == want and json.dumps(got) == json.dumps(want)  # ints stay ints, floats the same floats


def test_long_integers_are_left_to_the_stdlib():
    with pytest.raises(Undecided):
        fast_loads(b'{"seed":1234567890123456789012345}')
    assert loads(b'{"seed":1234567890123456789012345}')["seed"] == 1234567890123456789012345


@pytest.mark.parametrize("text", [b'{"a":NaN}', b'{"a":Infinity}', b'{"a":1e400}', b'\xef\xbb\xbf{"a":1}',
                                  '{"a":1}'.encode("utf-16"), b'{"a":"\\ud800"}'])
def test_what_orjson_refuses_the_stdlib_decides(text):
    with pytest.raises(Undecided):
        fast_loads(text)
    try:
        want = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            loads(text)
    else:
        got = loads(text)
        assert got.keys() == want.keys()
        assert all(g == w or (isinstance(g, float) and math.isnan(g) and math.isnan(w))
                   for g, w in zip(got.values(), want.values()))


@pytest.mark.parametrize("text", [b'{"a":NaN}', b'{"a":1e400}', b'{"a":"\\ud800"}', b"{" * 200 + b"}" * 200])
def test_strict_request_parsing_still_refuses(text):
    with pytest.raises(GatewayError) as err:
        loads_request(text)
    assert err.value.status == 400


def test_strict_request_parsing_keeps_long_integers_exact():
    assert loads_request(b'{"seed":123456789012345678901234}')["seed"] == 123456789012345678901234
