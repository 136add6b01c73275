"""Fault injection: every action, matching, consumption, provider-shaped errors as the SDKs see them."""

from __future__ import annotations

import json
import time

import anthropic
import httpx2
import openai
import pytest
from anthropic import Anthropic
from openai import OpenAI

from aigw.mock import parse_faults

from .conftest import KEY

USER = [{"role": "user", "content": "Hi there"}]
AN_HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}


def _an_stream_body():
    return {"model": "c", "max_tokens": 50, "messages": USER, "stream": True}


# ---- provider-shaped status errors ------------------------------------------------------------------------------

def test_openai_500_and_times_consumed(oa, mock):
    mock.set_faults([{"status": 500, "times": 1}])
    with pytest.raises(openai.InternalServerError) as ei:
        oa.chat.completions.create(model="m", messages=USER)
    assert ei.value.body["type"] == "server_error"
    assert oa.chat.completions.create(model="m", messages=USER).choices[0].message.content == "Hello from a"
    assert mock.faults() == [{"times": 0, "status": 500}]
    assert mock.stats()["by_status"] == {"500": 1, "200": 1}


def test_429_carries_retry_after(oa, an, mock):
    mock.set_faults([{"status": 429, "retry_after": "7"}])
    with pytest.raises(openai.RateLimitError) as ei:
        oa.chat.completions.create(model="m", messages=USER)
    assert ei.value.response.headers["retry-after"] == "7" and ei.value.body["code"] == "rate_limit_exceeded"
    with pytest.raises(anthropic.RateLimitError) as ei:
        an.messages.create(model="c", max_tokens=5, messages=USER)
    assert ei.value.response.headers["retry-after"] == "7"
    assert ei.value.body["error"]["type"] == "rate_limit_error"


def test_anthropic_529_overloaded(an, mock):
    mock.set_faults([{"status": 529}])
    with pytest.raises(anthropic.OverloadedError) as ei:
        an.messages.create(model="c", max_tokens=5, messages=USER)
    assert ei.value.status_code == 529
    assert ei.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}


async def test_gemini_503_shape_and_body_override(amock):
    import aiohttp
    amock.set_faults([{"status": 503, "times": 1}, {"status": 400, "body": {"custom": True}, "headers": {"x-a": "b"}}])
    url = f"{amock.base_url}/v1beta/models/m:generateContent?key={KEY}"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=body) as r:
            assert r.status == 503 and (await r.json())["error"]["status"] == "UNAVAILABLE"
        async with s.post(url, json=body) as r:
            assert r.status == 400 and await r.json() == {"custom": True} and r.headers["x-a"] == "b"


def test_match_path_provider_and_stream(oa, an, mock):
    mock.set_faults([{"match": {"path_contains": "/v1/messages"}, "status": 500},
                     {"match": {"provider": "openai", "stream": True}, "status": 503}])
    assert oa.chat.completions.create(model="m", messages=USER).choices  # non-stream openai: untouched
    with pytest.raises(openai.InternalServerError):
        list(oa.chat.completions.create(model="m", messages=USER, stream=True))
    with pytest.raises(anthropic.InternalServerError):
        an.messages.create(model="c", max_tokens=5, messages=USER)


def test_stream_actions_on_json_answers(oa, an, mock):
    mock.set_faults([{"cut_after": 1, "times": 1}])  # JSON: headers and half the body, then drop
    with pytest.raises(openai.APIConnectionError):
        oa.chat.completions.create(model="m", messages=USER)
    assert mock.requests()[-1]["outcome"] == "cut"
    mock.set_faults([{"error_event_after": 1, "times": 2}])  # JSON: the provider's overloaded error
    with pytest.raises(openai.InternalServerError) as ei:
        oa.chat.completions.create(model="m", messages=USER)
    assert ei.value.status_code == 503
    with pytest.raises(anthropic.OverloadedError):
        an.messages.create(model="c", max_tokens=5, messages=USER)
    mock.set_faults([{"first_token_delay": 0.3, "times": 1}, {"stall_after": 0, "stall": 0.3, "times": 1}])
    for _ in range(2):
        t0 = time.monotonic()
        assert oa.chat.completions.create(model="m", messages=USER).choices[0].message.content == "Hello from a"
        assert time.monotonic() - t0 >= 0.3
    with httpx2.Client(timeout=5) as c:  # first_token_delay: headers first, body after the wait
        mock.set_faults([{"first_token_delay": 0.4, "times": 1}])
        t0 = time.monotonic()
        with c.stream("POST", f"{mock.base_url}/v1/messages", headers=AN_HEADERS,
                      json={"model": "c", "max_tokens": 5, "messages": USER}) as r:
            t_headers = time.monotonic() - t0
            body = r.read()
        t_body = time.monotonic() - t0
        assert t_body >= 0.4 and t_body - t_headers >= 0.3 and json.loads(body)["type"] == "message"


# ---- connection-level faults -----------------------------------------------------------------------------------

def test_close_drops_the_connection(oa, an, mock):
    mock.set_faults([{"close": True, "times": 2}])
    with pytest.raises(openai.APIConnectionError):
        oa.chat.completions.create(model="m", messages=USER)
    with pytest.raises(anthropic.APIConnectionError):
        an.messages.create(model="c", max_tokens=5, messages=USER)
    assert oa.chat.completions.create(model="m", messages=USER).choices
    assert mock.stats()["by_status"] == {"closed": 2, "200": 1}


def test_delay_before_headers_and_hang_hits_client_timeout(mock):
    mock.set_faults([{"delay": 0.3, "times": 1}, {"delay": 30, "times": 1}])
    c = OpenAI(base_url=f"{mock.base_url}/v1", api_key=KEY, max_retries=0, timeout=1.0)
    t0 = time.monotonic()
    assert c.chat.completions.create(model="m", messages=USER).choices
    assert time.monotonic() - t0 >= 0.3
    c = OpenAI(base_url=f"{mock.base_url}/v1", api_key=KEY, max_retries=0, timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(model="m", messages=USER)


def test_first_token_delay_sends_headers_first(mock):
    mock.set_faults([{"first_token_delay": 0.4}])
    with httpx2.Client(timeout=5) as c:
        t0 = time.monotonic()
        with c.stream("POST", f"{mock.base_url}/v1/messages", headers=AN_HEADERS, json=_an_stream_body()) as r:
            t_headers = time.monotonic() - t0
            first = next(r.iter_raw())
            t_first = time.monotonic() - t0
    assert r.status_code == 200 and t_first >= 0.4 and t_first - t_headers >= 0.3
    assert first.startswith(b"event: message_start")


def test_cut_after_truncates_the_stream(mock, an, oa):
    mock.set_faults([{"cut_after": 4, "times": 1}])
    seen = []
    with pytest.raises((anthropic.APIConnectionError, httpx2.RemoteProtocolError)):
        with an.messages.stream(model="c", max_tokens=50, messages=USER) as s:
            for ev in s:
                seen.append(ev.type)
    assert "message_stop" not in seen and "text" in seen
    assert mock.requests()[-1]["outcome"] == "cut"
    mock.set_faults([{"cut_after": 2, "times": 1}])
    chunks = []
    with pytest.raises((openai.APIConnectionError, httpx2.RemoteProtocolError)):
        for ch in oa.chat.completions.create(model="m", messages=USER, stream=True):
            chunks.append(ch)
    assert len(chunks) == 2 and all(c.choices[0].finish_reason is None for c in chunks)


def test_stall_after_pauses_then_continues(mock):
    mock.set_faults([{"stall_after": 2, "stall": 0.4}])
    with httpx2.Client(timeout=5) as c:
        stamps = []
        t0 = time.monotonic()
        with c.stream("POST", f"{mock.base_url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                      json={"model": "m", "messages": USER, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    stamps.append((time.monotonic() - t0, line))
    assert stamps[-1][1] == "data: [DONE]" and len(stamps) == 6
    assert stamps[2][0] >= 0.4 and stamps[2][0] - stamps[1][0] >= 0.3  # the pause sits between events 2 and 3


def test_error_event_after(mock, an, oa):
    mock.set_faults([{"error_event_after": 4, "match": {"provider": "anthropic"}},
                     {"error_event_after": 2, "match": {"provider": "openai"}}])
    with pytest.raises(anthropic.APIStatusError) as ei:
        with an.messages.stream(model="c", max_tokens=50, messages=USER) as s:
            s.get_final_message()
    assert ei.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(openai.APIError) as ei2:
        list(oa.chat.completions.create(model="m", messages=USER, stream=True))
    assert "overloaded" in ei2.value.message
    with httpx2.Client() as c:
        r = c.post(f"{mock.base_url}/v1/messages", headers=AN_HEADERS, json=_an_stream_body())
    assert r.text.endswith('event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                           '"message":"Overloaded"}}\n\n')
    assert "message_stop" not in r.text


async def test_gemini_stream_faults(amock):
    import aiohttp
    amock.set_faults([{"error_event_after": 1}])
    url = f"{amock.base_url}/v1beta/models/m:streamGenerateContent?alt=sse&key={KEY}"
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}) as r:
            events = [json.loads(e[6:]) for e in (await r.text()).split("\r\n\r\n") if e]
    assert len(events) == 2 and events[-1]["error"]["status"] == "UNAVAILABLE"


# ---- rule validation --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rules", [
    {"status": 500}, [{"match": {"path": "/x"}, "status": 500}], [{"status": 99}], [{"times": 1}],
    [{"stall_after": 1}], [{"delay": -1}], [{"cut_after": "3"}], [{"status": 500, "bogus": 1}],
])
def test_invalid_rules_rejected(rules, mock):
    with pytest.raises(ValueError):
        parse_faults(rules)
    with pytest.raises(ValueError):
        mock.set_faults(rules)
    with httpx2.Client() as c:
        r = c.post(f"{mock.base_url}/_mock/faults", json=rules)
    assert r.status_code == 400 and r.json()["error"]
