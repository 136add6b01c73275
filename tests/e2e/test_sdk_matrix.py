"""{openai SDK, anthropic SDK} × {OpenAI, Anthropic, Gemini target} × {stream, non-stream} × {text, tool call}.

Real SDKs in strict mode, a real mitmdump, strict mock providers. Each case asserts the parsed result: content,
tool name and parsed arguments, finish/stop reason and usage numbers.
"""

from __future__ import annotations

import json

import pytest
from anthropic import Anthropic
from openai import OpenAI

from tests.e2e.harness import anthropic_target, gemini_target, openai_target

WEATHER_TOOL_OPENAI = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
WEATHER_TOOL_ANTHROPIC = {"name": "get_weather", "description": "Current weather for a city",
                          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                           "required": ["city"]}}
TARGETS = {"openai": openai_target, "anthropic": anthropic_target, "gemini": gemini_target}
KEYS = {"openai": "sk-openai-test", "anthropic": "sk-ant-test", "gemini": "gm-test"}


@pytest.fixture
def served_by(admin, subdomain, mock_factory):
    def make(provider: str, stream: bool = False):
        # Streams are paced (5 ms between events) like a real provider's, so they go through the relay; an
        # unpaced stream that is complete on arrival is answered in one piece (covered in test_dataplane).
        mock = mock_factory(f"{provider}-mock", KEYS[provider], chunk_delay=0.005 if stream else 0.0)
        cfg = admin.guide_setup([TARGETS[provider](mock.port, weight=1)], subdomain=subdomain)
        return mock, cfg["key"]
    return make


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", ["text", "tool"])
def test_openai_sdk(proxy, served_by, target, stream, kind):
    mock, key = served_by(target, stream)
    client = OpenAI(base_url=f"{proxy.base}/v1", api_key=key, max_retries=0, _strict_response_validation=True,
                    timeout=30)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is the weather in Paris?" if kind == "tool" else "Say hello"}]
    extra = {"tools": [WEATHER_TOOL_OPENAI]} if kind == "tool" else {}
    if stream:
        with client.chat.completions.stream(model="gpt-4", messages=messages, max_tokens=200,
                                            stream_options={"include_usage": True}, **extra) as s:
            completion = s.get_final_completion()
    else:
        completion = client.chat.completions.create(model="gpt-4", messages=messages, max_tokens=200, **extra)
    choice = completion.choices[0]
    if kind == "tool":
        assert choice.finish_reason == "tool_calls"
        call = choice.message.tool_calls[0]
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}
        assert call.id
    else:
        assert choice.finish_reason == "stop"
        assert choice.message.content == f"Hello from {target}-mock"
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The provider got a request in its own format (the strict mock would have answered 400 otherwise).
    sent = mock.requests()[-1]
    assert sent["provider"] == target


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", ["text", "tool"])
def test_anthropic_sdk(proxy, served_by, target, stream, kind):
    mock, key = served_by(target, stream)
    client = Anthropic(base_url=proxy.base, api_key=key, max_retries=0, _strict_response_validation=True, timeout=30)
    messages = [{"role": "user", "content": "What is the weather in Paris?" if kind == "tool" else "Say hello"}]
    extra = {"tools": [WEATHER_TOOL_ANTHROPIC]} if kind == "tool" else {}
    if stream:
        with client.messages.stream(model="claude-3-sonnet", max_tokens=200, system="Be brief.", messages=messages,
                                    **extra) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(model="claude-3-sonnet", max_tokens=200, system="Be brief.",
                                         messages=messages, **extra)
    if kind == "tool":
        assert message.stop_reason == "tool_use"
        uses = [b for b in message.content if b.type == "tool_use"]
        assert uses and uses[0].name == "get_weather" and uses[0].input == {"city": "Paris"}
        assert uses[0].id
    else:
        assert message.stop_reason == "end_turn"
        assert "".join(b.text for b in message.content if b.type == "text") == f"Hello from {target}-mock"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert mock.requests()[-1]["provider"] == target
