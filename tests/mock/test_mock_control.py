"""Recording, control endpoints, model lists, lifecycle (async, thread, CLI)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import anthropic
import httpx2
import openai
import pytest
from anthropic import Anthropic
from openai import OpenAI

from aigw.mock import MockProvider, MockProviderThread

from .conftest import KEY

USER = [{"role": "user", "content": "Hi"}]
ROOT = Path(__file__).resolve().parents[2]


def test_control_endpoints(oa, mock):
    oa.chat.completions.create(model="m", messages=USER)
    with httpx2.Client(base_url=mock.base_url) as c:
        c.post("/v1/messages", json={})  # 401: recorded and counted too
        reqs = c.get("/_mock/requests").json()
        assert [r["path"] for r in reqs] == ["/v1/chat/completions", "/v1/messages"]
        assert reqs[0]["body"]["model"] == "m" and reqs[0]["method"] == "POST" and reqs[0]["provider"] == "openai"
        assert all(k == k.lower() for k in reqs[0]["headers"])
        assert c.get("/_mock/requests", params={"path_contains": "messages"}).json()[0]["status"] == 401
        assert c.get("/_mock/stats").json() == {"total": 2, "by_status": {"200": 1, "401": 1}}
        r = c.post("/_mock/faults", json=[{"status": 503, "match": {"path_contains": "/chat/"}, "times": 2}])
        assert r.status_code == 200
        assert c.get("/_mock/faults").json() == [{"match": {"path_contains": "/chat/"}, "times": 2, "status": 503}]
        assert mock.faults()[0]["status"] == 503
        assert c.post("/_mock/reset").json() == {"ok": True}
        assert c.get("/_mock/requests").json() == [] and c.get("/_mock/faults").json() == []
        assert c.get("/_mock/stats").json()["total"] == 0
        assert c.get("/healthz").json() == {"status": "ok", "name": "a"}
        assert c.post("/v2/unknown").status_code == 404
    # Control calls and health checks are not recorded; a request to an unknown route is (to spot misrouting).
    assert [(r["path"], r["status"]) for r in mock.requests()] == [("/v2/unknown", 404)]


def test_model_lists(mock):
    oa = OpenAI(base_url=f"{mock.base_url}/v1", api_key=KEY, max_retries=0, _strict_response_validation=True)
    assert [m.id for m in oa.models.list()] == ["mock-model"]
    an = Anthropic(base_url=mock.base_url, api_key=KEY, max_retries=0, _strict_response_validation=True)
    assert [m.id for m in an.models.list()] == ["mock-model"]
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{mock.base_url}/v1", api_key="bad", max_retries=0).models.list()
    with httpx2.Client(base_url=mock.base_url) as c:
        assert c.get("/v1beta/models", headers={"x-goog-api-key": KEY}).json()["models"][0]["name"] == \
            "models/mock-model"
    mock.set_faults([{"match": {"path_contains": "/v1/models"}, "status": 503}])  # active-probe failures
    with pytest.raises(openai.InternalServerError):
        oa.models.list()


def test_known_models_are_enforced():
    with MockProviderThread(api_key=None, models=["gpt-4o", "claude-x"]) as mp:
        oa = OpenAI(base_url=f"{mp.base_url}/v1", api_key="anything", max_retries=0)
        assert oa.chat.completions.create(model="gpt-4o", messages=USER).choices
        with pytest.raises(openai.NotFoundError) as ei:
            oa.chat.completions.create(model="gpt-5", messages=USER)
        assert ei.value.body["code"] == "model_not_found"
        an = Anthropic(base_url=mp.base_url, api_key="anything", max_retries=0)
        with pytest.raises(anthropic.NotFoundError) as ei:
            an.messages.create(model="claude-y", max_tokens=5, messages=USER)
        assert ei.value.body["error"]["type"] == "not_found_error"


def test_recording_is_bounded_and_reply_configurable():
    with MockProviderThread(max_records=3, name="z", reply="One two three four five", tokens_per_chunk=2) as mp:
        oa = OpenAI(base_url=f"{mp.base_url}/v1", api_key="x", max_retries=0, _strict_response_validation=True)
        for _ in range(5):
            r = oa.chat.completions.create(model="m", messages=USER)
        assert r.choices[0].message.content == "One two three four five" and r.usage.completion_tokens == 5
        assert [r["seq"] for r in mp.requests()] == [3, 4, 5] and mp.stats()["total"] == 5
        chunks = list(oa.chat.completions.create(model="m", messages=USER, stream=True))
        assert [c.choices[0].delta.content for c in chunks[1:-1]] == ["One two", " three four", " five"]


async def test_async_provider_context_manager():
    async with MockProvider(api_key="k", name="b") as mp:
        assert mp.port and mp.base_url.endswith(str(mp.port))
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{mp.base_url}/v1/messages", json={"model": "m", "max_tokens": 5, "messages": USER},
                              headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}) as r:
                assert (await r.json())["content"][0]["text"] == "Hello from b"
        assert mp.requests()[0]["headers"]["x-api-key"] == "k"


def test_cli_prints_port_and_stops_on_sigterm():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "aigw.mock", "--port", "0", "--api-key", "k",
                             "--name", "cli", "--faults", '[{"status": 500, "times": 1}]'],
                            stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        port = int(proc.stdout.readline())
        oa = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.InternalServerError):
            oa.chat.completions.create(model="m", messages=USER)
        assert oa.chat.completions.create(model="m", messages=USER).choices[0].message.content == "Hello from cli"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
