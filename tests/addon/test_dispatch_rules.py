"""Pure decisions of the dispatcher: which statuses fail over, what the caller gets when every target failed."""

import pytest

from addon import routing
from addon.attempt import classify_status
from addon.tally import exhausted as exhausted_error
from addon.targets import credential_headers, passthrough_headers, target_origin
from providers import GatewayError
from store.models import Target


@pytest.mark.parametrize("status,reason", [(200, None), (400, None), (404, None), (422, None), (401, "401"),
                                           (403, "403"), (408, "timeout"), (429, "429"), (500, "5xx"),
                                           (503, "5xx"), (529, "5xx")])
def test_which_statuses_fail_over(status, reason):
    assert classify_status(status) == reason


def exhausted(reasons, retry_afters=()):
    return exhausted_error(list(reasons), list(retry_afters), ["a:x"] * len(reasons))


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
    t = Target.model_validate({"provider": "anthropic", "headers": {"anthropic-version": "2023-06-01"},
                               "credentials": {"api_key": "k"}})
    assert credential_headers(t) == {"anthropic-version": "2023-06-01", "x-api-key": "k"}
    assert target_origin(t) == ("https", "api.anthropic.com", 443)
    # A record stored before a port was required (no validation, as the snapshot may hold it).
    t = Target.model_construct(provider=None, host="10.0.0.5", port=None, protocol="http",
                               credentials={"header_name": "Authorization", "header_value": "Bearer x"})
    assert credential_headers(t) == {"Authorization": "Bearer x"}
    assert target_origin(t) == ("http", "10.0.0.5", 80)


def test_passthrough_headers_drop_framing_encoding_and_the_gateway_key():
    from mitmproxy.http import Headers

    def headers(**fields):  # what the hook hands over: mitmproxy's case-insensitive headers
        return Headers([(k.replace("_", "-").encode(), v.encode()) for k, v in fields.items()])

    t = Target.model_validate({"host": "h", "port": 80, "protocol": "http", "headers": {"x-extra": "1"}})

    def _passthrough_headers(caller, target):  # the gateway key is read once per request, by the dispatcher
        return passthrough_headers(caller, target, routing.client_key(caller))
    client = headers(Content_Encoding="gzip", Content_Length="10", Host="gw", X_Api_Key="aigw-k",
                     Authorization="Bearer sk-callers-own", Accept="application/json", Connection="keep-alive")
    # The body is forwarded decoded, so its Content-Encoding must not travel with it.
    assert _passthrough_headers(client, t) == {"Authorization": "Bearer sk-callers-own",
                                               "Accept": "application/json", "x-extra": "1"}
    assert "Authorization" not in _passthrough_headers(headers(Authorization="Bearer aigw-k"), t)
