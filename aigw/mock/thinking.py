"""Extended thinking in the mock Anthropic API: the request rules the real Messages API enforces with `thinking`
enabled, and the signed thinking block a thinking request is answered with.

A signature is an HMAC of the thinking text under a key fixed for the mock, so a block comes back accepted only
when its text and signature are exactly those the mock produced (as Anthropic checks its own signatures).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from .common import number_problem
from .errors import ApiError

MIN_BUDGET = 1024
_KEY = b"aigw-mock-thinking"
THINKING_TEXT = "Let me think this through step by step."


def signature(text: str) -> str:
    return base64.b64encode(hmac.new(_KEY, text.encode(), hashlib.sha256).digest()).decode()


def _invalid(message: str) -> ApiError:
    return ApiError(400, message, etype="invalid_request_error")


def check_block(p: str, b: dict) -> None:
    """A thinking / redacted_thinking block sent back in an assistant turn."""
    if b["type"] == "redacted_thinking":
        if not isinstance(b.get("data"), str):
            raise _invalid(f"{p}.data: Field required")
        return
    if not isinstance(b.get("thinking"), str):
        raise _invalid(f"{p}.thinking: Field required")
    if not isinstance(b.get("signature"), str):
        raise _invalid(f"{p}.signature: Field required")
    if not hmac.compare_digest(b["signature"], signature(b["thinking"])):
        raise _invalid(f"{p}: Invalid `signature` in `thinking` block")


def enabled(body: dict, turns: list[tuple[str, list[tuple[int, dict]]]]) -> bool:
    """Validate `thinking` and what it forbids; whether the model thinks (enabled or adaptive)."""
    th = body.get("thinking")
    if th is None:
        return False
    if not isinstance(th, dict) or th.get("type") not in ("enabled", "disabled", "adaptive"):
        raise _invalid("thinking: Input tag found using 'type' does not match any of the expected tags: "
                       "'enabled', 'disabled', 'adaptive'")
    if th["type"] == "disabled":
        return False
    if th["type"] == "enabled":
        bt = th.get("budget_tokens")
        problem = number_problem(bt, MIN_BUDGET, None, True)
        if problem == "type":
            raise _invalid("thinking.enabled.budget_tokens: Input should be a valid integer")
        if problem:
            raise _invalid(f"thinking.enabled.budget_tokens: Input should be greater than or equal to {MIN_BUDGET}")
        if bt >= body["max_tokens"]:
            raise _invalid("`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
                           "documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
                           "#max-tokens-and-context-window-size")
    _forbidden(body)
    _history(turns)
    return True


def _forbidden(body: dict) -> None:
    t = body.get("temperature")
    if t is not None and t != 1:
        raise _invalid("`temperature` may only be set to 1 when thinking is enabled. Please consult our "
                       "documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
                       "#feature-compatibility")
    if body.get("top_k") is not None:
        raise _invalid("`top_k` must be unset when thinking is enabled. Please consult our documentation at "
                       "https://docs.claude.com/en/docs/build-with-claude/extended-thinking#feature-compatibility")
    top_p: Any = body.get("top_p")
    if top_p is not None and top_p < 0.95:
        raise _invalid("`top_p` must be greater than or equal to 0.95 or unset when thinking is enabled. Please "
                       "consult our documentation at https://docs.claude.com/en/docs/build-with-claude/"
                       "extended-thinking#feature-compatibility")
    if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        raise _invalid("Thinking may not be enabled when tool_choice forces tool use.")


def _history(turns: list[tuple[str, list[tuple[int, dict]]]]) -> None:
    """No prefill, and the last assistant turn, when it used tools, opens with a thinking block."""
    if turns[-1][0] == "assistant":
        raise _invalid("messages: a final `assistant` message (prefill) is not supported when thinking is enabled")
    last = next((blocks for role, blocks in reversed(turns) if role == "assistant"), None)
    if not last or not any(b.get("type") == "tool_use" for _, b in last):
        return
    i, first = last[0]
    if first.get("type") not in ("thinking", "redacted_thinking"):
        raise _invalid(f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                       f"`{first.get('type')}`. When `thinking` is enabled, a final `assistant` message must start "
                       "with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). "
                       "We recommend you include thinking blocks from previous turns. To avoid this requirement, "
                       "disable `thinking`. Please consult our documentation at "
                       "https://docs.claude.com/en/docs/build-with-claude/extended-thinking")


def block() -> dict:
    """The thinking block a thinking request is answered with."""
    return {"type": "thinking", "thinking": THINKING_TEXT, "signature": signature(THINKING_TEXT)}


def stream_deltas() -> list[dict]:
    """The thinking block's deltas, split as Anthropic streams them: thinking pieces, then the signature."""
    words = THINKING_TEXT.split(" ")
    half = len(words) // 2
    pieces = [" ".join(words[:half]) + " ", " ".join(words[half:])]
    return [*({"type": "thinking_delta", "thinking": t} for t in pieces),
            {"type": "signature_delta", "signature": signature(THINKING_TEXT)}]
