"""Fixtures: one mock server per module (thread wrapper, for the sync SDKs), reset before every test."""

from __future__ import annotations

import pytest
from anthropic import Anthropic
from openai import OpenAI

from aigw.mock import MockProvider, MockProviderThread

KEY = "sk-mock-test-key"
TOOLS_OA = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOLS_AN = [{"name": "get_weather", "description": "Get the weather",
             "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


@pytest.fixture(scope="module")
def server():
    mp = MockProviderThread(api_key=KEY, name="a")
    mp.start()
    yield mp
    mp.stop()


@pytest.fixture
def mock(server):
    server.reset()
    return server


@pytest.fixture
def oa(mock) -> OpenAI:
    return OpenAI(base_url=f"{mock.base_url}/v1", api_key=KEY, max_retries=0, timeout=10,
                  _strict_response_validation=True)


@pytest.fixture
def an(mock) -> Anthropic:
    return Anthropic(base_url=mock.base_url, api_key=KEY, max_retries=0, timeout=10,
                     _strict_response_validation=True)


@pytest.fixture
async def amock():
    """An asyncio MockProvider on the test's loop (for raw aiohttp clients)."""
    mp = MockProvider(api_key=KEY, name="g")
    await mp.start()
    yield mp
    await mp.stop()
