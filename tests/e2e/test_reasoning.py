"""Reasoning through the real mitmdump: reasoning_effort reaches Anthropic and Gemini targets as the documented
budget, the gateway's reasoning_content switch shows the reasoning to OpenAI-format callers (stream and not), and
Anthropic thinking blocks with their signatures survive a round trip through an Anthropic target."""

from __future__ import annotations

import anthropic
import pytest
from anthropic import Anthropic
from openai import OpenAI

from aigw.mock import thinking as mock_thinking
from aigw.mock.gemini import _GM_THOUGHT
from providers.canonical import EFFORT_BUDGETS
from tests.e2e.harness import anthropic_target, gemini_target, http

TARGETS = {"anthropic": anthropic_target, "gemini": gemini_target}
KEYS = {"anthropic": "sk-ant-test", "gemini": "gm-test"}
THOUGHT = {"anthropic": mock_thinking.THINKING_TEXT, "gemini": _GM_THOUGHT}
ASK = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def served_by(admin, subdomain, mock_factory):
    def make(provider: str, *, stream: bool = False, reasoning_content: bool = False):
        mock = mock_factory(f"{provider}-mock", KEYS[provider], chunk_delay=0.005 if stream else 0.0)
        cfg = admin.guide_setup([TARGETS[provider](mock.port, weight=1)], subdomain=subdomain)
        key = cfg["key"]
        if reasoning_content:
            gw = cfg["gateway"]
            admin.ok("PUT", f"/gateways/{gw['id']}", {"name": gw["name"], "subdomain": gw["subdomain"],
                                                      "reasoning_content": True})
            # A key made after the edit is live only in a snapshot that has the edit too.
            key = admin.ok("POST", f"/gateways/{gw['id']}/keys", {"name": "after-edit"})["key"]
            admin.wait_live(key)
        return mock, key
    return make


def recorded(mock) -> dict:
    """The body the provider got, read from the mock's own record (GET /_mock/requests)."""
    r = http("GET", f"http://127.0.0.1:{mock.port}/_mock/requests")
    assert r.status == 200
    return r.json()[-1]["body"]


def openai_client(proxy, key) -> OpenAI:
    return OpenAI(base_url=f"{proxy.base}/v1", api_key=key, max_retries=0, _strict_response_validation=True,
                  timeout=30)


def test_reasoning_effort_reaches_anthropic_as_the_documented_budget(proxy, served_by):
    mock, key = served_by("anthropic")
    completion = openai_client(proxy, key).chat.completions.create(
        model="gpt-4", messages=ASK, max_tokens=200, reasoning_effort="high")
    body = recorded(mock)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": EFFORT_BUDGETS["high"]}
    assert body["max_tokens"] == EFFORT_BUDGETS["high"] + 200
    assert completion.choices[0].message.content == "Hello from anthropic-mock"
    assert "reasoning_content" not in (completion.choices[0].message.model_extra or {})  # the switch is off


def test_reasoning_effort_reaches_gemini_as_thinking_budget(proxy, served_by):
    mock, key = served_by("gemini")
    completion = openai_client(proxy, key).chat.completions.create(
        model="gpt-4", messages=ASK, max_tokens=200, reasoning_effort="high")
    assert recorded(mock)["generationConfig"]["thinkingConfig"] == {"thinkingBudget": EFFORT_BUDGETS["high"]}
    assert completion.choices[0].message.content == "Hello from gemini-mock"


def test_bad_reasoning_effort_is_a_400_naming_the_field(proxy, served_by):
    mock, key = served_by("anthropic")
    r = http("POST", f"{proxy.base}/v1/chat/completions",
             {"model": "gpt-4", "messages": ASK, "reasoning_effort": "extreme"}, {"Authorization": f"Bearer {key}"})
    assert r.status == 400 and r.json()["error"]["param"] == "reasoning_effort"
    assert mock.requests() == []


@pytest.mark.parametrize("target", list(TARGETS))
def test_reasoning_content_for_openai_callers(proxy, served_by, target):
    mock, key = served_by(target, reasoning_content=True)
    completion = openai_client(proxy, key).chat.completions.create(
        model="gpt-4", messages=ASK, max_tokens=200, reasoning_effort="low")
    msg = completion.choices[0].message
    assert msg.reasoning_content == THOUGHT[target] and msg.content == f"Hello from {target}-mock"
    if target == "gemini":
        assert recorded(mock)["generationConfig"]["thinkingConfig"] == {"thinkingBudget": EFFORT_BUDGETS["low"],
                                                                        "includeThoughts": True}
        assert completion.usage.completion_tokens_details.reasoning_tokens > 0


@pytest.mark.parametrize("target", list(TARGETS))
def test_streamed_reasoning_content_comes_before_the_content(proxy, served_by, target):
    _, key = served_by(target, stream=True, reasoning_content=True)
    stream = openai_client(proxy, key).chat.completions.create(
        model="gpt-4", messages=ASK, max_tokens=200, reasoning_effort="low", stream=True)
    reasoning, content = [], []
    for chunk in stream:
        for choice in chunk.choices:
            piece = (choice.delta.model_extra or {}).get("reasoning_content")
            if piece:
                assert not content, "reasoning after content"
                reasoning.append(piece)
            if choice.delta.content:
                content.append(choice.delta.content)
    assert "".join(reasoning) == THOUGHT[target] and "".join(content) == f"Hello from {target}-mock"


def anthropic_client(proxy, key) -> Anthropic:
    return Anthropic(base_url=proxy.base, api_key=key, max_retries=0, _strict_response_validation=True, timeout=30)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_anthropic_thinking_round_trip_keeps_signatures(proxy, served_by, stream):
    mock, key = served_by("anthropic", stream=stream)
    client = anthropic_client(proxy, key)
    args = dict(model="claude-3-sonnet", max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 2000})
    if stream:
        with client.messages.stream(messages=ASK, **args) as s:
            first = s.get_final_message()
    else:
        first = client.messages.create(messages=ASK, **args)
    assert [b.type for b in first.content] == ["thinking", "text"]
    block = first.content[0].model_dump(exclude_none=True)
    assert block == mock_thinking.block()  # text and signature exactly as the provider made them
    history = [*ASK, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
               {"role": "user", "content": "And again"}]
    second = client.messages.create(messages=history, **args)  # the strict mock checks the signature
    assert second.content[1].text == "Hello from anthropic-mock"
    assert recorded(mock)["messages"][1]["content"][0] == mock_thinking.block()
    forged = [*ASK, {"role": "assistant", "content": [{**block, "thinking": block["thinking"] + " (edited)"},
                                                      {"type": "text", "text": "Hello"}]},
              {"role": "user", "content": "And again"}]
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(messages=forged, **args)
    assert "signature" in str(e.value)


def test_the_switch_is_in_the_openapi_document_and_the_yaml_config(admin, tmp_path):
    from store.config.loader import load_state

    prop = admin.ok("GET", "/openapi.json")["components"]["schemas"]["Gateway"]["properties"]["reasoning_content"]
    assert prop["type"] == "boolean" and prop["default"] is False and "reasoning_content" in prop["description"]
    path = tmp_path / "aigw.yaml"
    path.write_text("gateways:\n  - {name: gw, subdomain: gw, reasoning_content: true}\n")
    assert load_state(str(path)).entities["gateways"][0].reasoning_content is True
