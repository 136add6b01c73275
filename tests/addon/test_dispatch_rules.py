"""Pure decisions of the dispatcher: which statuses fail over, what the caller gets when every target failed."""

from types import SimpleNamespace as NS

import pytest

from addon.dispatch import Dispatcher, credential_headers, target_origin
from addon.upstream import classify_status
from providers import GatewayError


@pytest.mark.parametrize("status,reason", [(200, None), (400, None), (404, None), (422, None), (401, "401"),
                                           (403, "403"), (408, "timeout"), (429, "429"), (500, "5xx"),
                                           (503, "5xx"), (529, "5xx")])
def test_which_statuses_fail_over(status, reason):
    assert classify_status(status) == reason


def exhausted(reasons, retry_afters=()):
    return Dispatcher._exhausted(list(reasons), list(retry_afters), ["a:x"] * len(reasons))


def test_all_rate_limited_is_429_with_the_shortest_retry_after():
    err = exhausted(["429", "429"], [7.0, 3.2])
    assert (err.status, err.retry_after) == (429, "3")
    assert exhausted(["429"]).retry_after == "1"


def test_all_timed_out_is_504_and_mixed_failures_are_502():
    assert exhausted(["timeout", "timeout"]).status == 504
    assert exhausted(["timeout", "connect"]).status == 502
    assert exhausted(["5xx", "429"]).status == 502
    assert exhausted([]).status == 503
    assert isinstance(exhausted(["connect"]), GatewayError)


def test_credentials_and_origin_of_a_target():
    t = NS(provider="anthropic", host=None, port=None, protocol=None, headers={"anthropic-version": "2023-06-01"},
           credentials=NS(header_name=None, header_value=None, api_key="k"))
    assert credential_headers(t) == {"anthropic-version": "2023-06-01", "x-api-key": "k"}
    assert target_origin(t) == ("https", "api.anthropic.com", 443)
    t = NS(provider=None, host="10.0.0.5", port=None, protocol="http", headers=None,
           credentials=NS(header_name="Authorization", header_value="Bearer x", api_key=None))
    assert credential_headers(t) == {"Authorization": "Bearer x"}
    assert target_origin(t) == ("http", "10.0.0.5", 80)


def test_passthrough_headers_drop_framing_encoding_and_the_gateway_key():
    from mitmproxy.http import Headers

    from addon.dispatch import _passthrough_headers

    def headers(**fields):  # what the hook hands over: mitmproxy's case-insensitive headers
        return Headers([(k.replace("_", "-").encode(), v.encode()) for k, v in fields.items()])

    t = NS(provider=None, headers={"x-extra": "1"}, credentials=None)
    client = headers(Content_Encoding="gzip", Content_Length="10", Host="gw", X_Api_Key="aigw-k",
                     Authorization="Bearer sk-callers-own", Accept="application/json", Connection="keep-alive")
    # The body is forwarded decoded, so its Content-Encoding must not travel with it.
    assert _passthrough_headers(client, t) == {"Authorization": "Bearer sk-callers-own",
                                               "Accept": "application/json", "x-extra": "1"}
    assert "Authorization" not in _passthrough_headers(headers(Authorization="Bearer aigw-k"), t)
