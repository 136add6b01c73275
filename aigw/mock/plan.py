"""Reply planning, shared by the three providers: the fixed reply cut into tokens, tool calls, why it stopped."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

from .common import _rid

_WORD = re.compile(r"\s*\S+")
_TOOL_ARGS = ({"city": "Paris"}, {"city": "Rome"})


def _ntokens(chars: int) -> int:
    return max(1, math.ceil(chars / 4))


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    args: dict
    args_json: str

    @classmethod
    def make(cls, prefix: str, name: str, i: int) -> "ToolCall":
        args = _TOOL_ARGS[i % len(_TOOL_ARGS)]
        return cls(prefix + _rid(12), name, args, json.dumps(args))

    def fragments(self) -> list[str]:
        """The argument JSON cut into a few pieces, as real streams deliver it."""
        s = self.args_json
        step = max(1, math.ceil(len(s) / 4))
        return [s[i:i + step] for i in range(0, len(s), step)]


@dataclass(slots=True)
class Plan:
    """What the mock answers: text pieces (one token each), tool calls, why it stopped, token counts."""

    pieces: list[str]
    tool_calls: list[ToolCall]
    finish: str  # "stop" | "length" | "stop_sequence" | "tool"
    stop_sequence: str | None
    prompt_tokens: int
    cached_tokens: int = 0  # part of prompt_tokens served from the provider's prompt cache

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces) + sum(_ntokens(len(tc.name) + len(tc.args_json)) for tc in self.tool_calls)


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """A request's tool choice in common terms: mode auto | none | any, an optional required tool name, and
    whether several calls may be returned at once."""

    mode: str = "auto"
    forced: str | None = None
    parallel: bool = True


def choose_tools(tool_names: Sequence[str], last_user_text: str | None, choice: ToolChoice) -> list[str]:
    """Names of the tools to call: when tools are given and the choice forces one, or the last plain user turn
    mentions the weather; "parallel" in that text asks for two calls (unless parallel calls are disabled)."""
    if not tool_names or choice.mode == "none":
        return []
    text = (last_user_text or "").lower()
    if choice.forced or choice.mode == "any" or "weather" in text:
        name = choice.forced or tool_names[0]
        return [name, name] if "parallel" in text and choice.parallel else [name]
    return []


def make_plan(reply_pieces: list[str], *, prompt_tokens: int, max_tokens: int | None, stops: Sequence[str],
              tools: list[str], tool_prefix: str) -> Plan:
    pieces, finish, matched = reply_pieces, "stop", None
    if stops:
        text = "".join(pieces)
        hits = [(text.find(s), s) for s in stops if s and s in text]
        if hits:
            pos, matched = min(hits)
            pieces, finish = _WORD.findall(text[:pos]), "stop_sequence"
    if max_tokens is not None and len(pieces) > max_tokens:
        return Plan(pieces[:max_tokens], [], "length", None, prompt_tokens)
    if tools:
        calls = [ToolCall.make(tool_prefix, name, i) for i, name in enumerate(tools)]
        return Plan(pieces, calls, "tool", None, prompt_tokens)
    return Plan(pieces, [], finish, matched, prompt_tokens)


def _text_len(content: Any) -> int:
    """Characters of prompt text in a message content (string, or blocks/parts with ``text``)."""
    if isinstance(content, str):
        return len(content)
    n = 0
    if isinstance(content, list):
        for b in content:
            if isinstance(b, dict):
                t = b.get("text")
                if isinstance(t, str):
                    n += len(t)
                elif "content" in b:  # anthropic tool_result
                    n += _text_len(b["content"])
    return n


def _chunks(pieces: list[str], per_chunk: int) -> list[str]:
    return ["".join(pieces[i:i + per_chunk]) for i in range(0, len(pieces), per_chunk)]
