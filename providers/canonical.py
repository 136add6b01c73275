"""The hub: one provider-neutral shape for requests, responses and stream events.

Every provider module translates *to* and *from* these dataclasses only, so adding a provider is one
spoke, never N×N special cases. The shape follows Anthropic's content-block model (it is the richer
one): a message is a role plus an ordered list of parts; tool results are parts of a user turn.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from .errors import invalid
from . import jsoncodec
from .jsoncodec import loads

# The one JSON writer of the translators (providers/jsoncodec.py), importable from here with the vocabulary.
dumps = jsoncodec.dumps


# ---------------------------------------------------------------- content parts
@dataclass
class TextPart:
    text: str
    type: str = "text"


@dataclass
class MediaPart:
    """An image or document. Exactly one of `data` (base64) or `url` is set; never downloaded."""
    kind: str                 # "image" | "document"
    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    type: str = "media"


@dataclass
class ToolCallPart:
    id: str
    name: str
    # Arguments are kept in the form they arrived in: OpenAI gives a JSON string, Anthropic and Gemini
    # an object. Converting lazily avoids a parse/dump round trip and keeps the client's bytes.
    arguments_json: str | None = None
    arguments_obj: dict | None = None
    type: str = "tool_call"

    @property
    def arguments(self) -> str:
        if self.arguments_json is not None:
            return self.arguments_json
        return json.dumps(self.arguments_obj if self.arguments_obj is not None else {}, ensure_ascii=False)

    @property
    def input(self) -> dict:
        if self.arguments_obj is not None:
            return self.arguments_obj
        return parse_arguments(self.arguments_json)


@dataclass
class ToolResultPart:
    tool_call_id: str
    content: list                      # TextPart | MediaPart
    is_error: bool = False
    name: str | None = None            # function name, looked up from the matching call (Gemini needs it)
    text_form: bool = True             # the source sent a plain string
    type: str = "tool_result"

    @property
    def text(self) -> str:
        return "\n".join(p.text for p in self.content if isinstance(p, TextPart))


@dataclass
class RefusalPart:
    text: str
    type: str = "refusal"


@dataclass
class ThinkingPart:
    """A model's reasoning: visible `text` with the provider's `signature` (Anthropic), or `redacted` opaque data
    (Anthropic redacted_thinking). Only a provider of the family that produced it can take it back."""
    text: str = ""
    signature: str | None = None
    redacted: str | None = None
    type: str = "thinking"


Part = Union[TextPart, MediaPart, ToolCallPart, ToolResultPart, RefusalPart, ThinkingPart]


@dataclass
class Message:
    role: str                          # "user" | "assistant"
    parts: list
    text_form: bool = False            # content was one plain string in the source (kept for fidelity)


@dataclass
class Tool:
    name: str
    description: str | None = None
    parameters: dict | None = None


@dataclass
class ToolChoice:
    mode: str                          # "auto" | "required" | "none" | "tool"
    name: str | None = None


# OpenAI's reasoning efforts, in order (one source: each family maps them; docs/translation.md gives the budgets).
REASONING_EFFORTS = ("minimal", "low", "medium", "high", "xhigh", "max")
REASONING_OFF = "none"             # the effort that turns reasoning off (OpenAI's "none")
DYNAMIC_BUDGET = -1                # a budget the provider chooses (Gemini's -1)
# The one table: the thinking budget (tokens) each effort means on every provider that takes a budget. Every value
# is within Anthropic's (≥ 1024) and Gemini 2.5's ranges (Flash: ≤ 24576, so only "max" exceeds it there).
EFFORT_BUDGETS: dict[str, int] = {"minimal": 1024, "low": 4096, "medium": 8192, "high": 16384, "xhigh": 24576,
                                  "max": 32768}


@dataclass
class Reasoning:
    """What the caller asked of the model's thinking: an `effort` (REASONING_EFFORTS, or "none": off) and/or an
    explicit token `budget` (Anthropic budget_tokens, Gemini thinkingBudget; 0 = off, -1 = the provider decides).
    `include` asks for the reasoning itself in the answer where the provider can give it."""
    effort: str | None = None
    budget: int | None = None
    include: bool = False

    @property
    def tokens(self) -> int | None:
        """The budget this setting means: the explicit budget, else the effort's (EFFORT_BUDGETS; 0 for "none");
        None when neither says anything."""
        if self.budget is not None:
            return self.budget
        if self.effort == REASONING_OFF:
            return 0
        return EFFORT_BUDGETS.get(self.effort or "")

    @property
    def level(self) -> str | None:
        """The effort this setting means: the explicit effort, else the highest level whose budget the budget
        reaches ("minimal" below that); None when it is off (0), dynamic (-1) or unset: the model's default."""
        if self.effort is not None:
            return self.effort
        if self.budget is None or self.budget <= 0:
            return None
        reached = [e for e in REASONING_EFFORTS if EFFORT_BUDGETS[e] <= self.budget]
        return reached[-1] if reached else REASONING_EFFORTS[0]


@dataclass
class CanonicalRequest:
    ingress: str
    model: str | None
    stream: bool = False
    system: list = field(default_factory=list)      # list[str]
    messages: list = field(default_factory=list)    # list[Message]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: list = field(default_factory=list)
    n: int | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    tools: list = field(default_factory=list)       # list[Tool]
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    response_format: dict | None = None
    include_usage: bool = False
    reasoning: Reasoning | None = None
    # Render the model's reasoning as `reasoning_content` for an OpenAI-format caller (the gateway's switch,
    # set by the dispatcher; other formats ignore it).
    expose_reasoning: bool = False
    legacy_functions: bool = False
    # Shortened tool name → original, filled when a target limits names (see openai_backend.short_name).
    tool_names: dict = field(default_factory=dict)
    # Client headers forwarded to a same-family target (anthropic-beta), lower-cased names.
    client_headers: dict = field(default_factory=dict)
    # The parsed client body: same-family targets are served from it so that nothing the client sent
    # (cache_control, thinking, logprobs, ...) is lost on a path that needs no translation.
    raw: dict = field(default_factory=dict)


# ---------------------------------------------------------------- responses
# Canonical finish reasons: the union of what the families can express.
FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "stop_sequence", "refusal",
                  "pause_turn", "context_exceeded")


@dataclass
class Usage:
    prompt_tokens: int = 0        # everything the model read, cached tokens included (OpenAI's meaning)
    completion_tokens: int = 0    # reasoning tokens included
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int | None = None

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def uncached_input(self) -> int:
        return max(0, self.prompt_tokens - self.cache_read - self.cache_write)


def token_counts(obj: dict, keys: tuple[str, ...]) -> list[int | None] | None:
    """The token counts under `keys` of a provider's usage object (None where absent or null); None when one of
    them is no count (a non-negative integer; an integral float is taken): malformed usage reads as none
    reported, never as an error. Each family's wire module reads its usage object with it."""
    out: list[int | None] = []
    for k in keys:
        v = obj.get(k)
        if v is None:
            out.append(None)
        elif type(v) is int and v >= 0:
            out.append(v)
        elif type(v) is float and v >= 0 and v.is_integer():
            out.append(int(v))
        else:
            return None
    return out


@dataclass
class CanonicalResponse:
    id: str
    model: str
    parts: list
    finish: str = "stop"
    stop_sequence: str | None = None
    usage: Usage | None = None


# ---------------------------------------------------------------- helpers
def parse_arguments(raw: Any) -> dict:
    """Tool arguments are model output: "" or broken JSON must not crash a translation (§4.7-8)."""
    if isinstance(raw, dict):
        return raw
    if not raw or not isinstance(raw, str):
        return {}
    try:
        val = loads(raw)
    except ValueError:
        return {}
    return val if isinstance(val, dict) else {}


def default_new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


IdFactory = Callable[[str], str]
Clock = Callable[[], float]




def want(obj: dict, key: str, types: tuple, what: str, required: bool = False) -> Any:
    """Typed field access with the precise 400 the brief asks for."""
    if key not in obj or obj[key] is None:
        if required:
            raise invalid(f"'{key}' is a required property", param=key)
        return None
    val = obj[key]
    if isinstance(val, bool) and bool not in types:
        raise invalid(f"'{key}' must be {what}, got a boolean", param=key)
    if not isinstance(val, types):
        raise invalid(f"'{key}' must be {what}, got {type(val).__name__}", param=key)
    return val


NUM = (int, float)


def put_settings(out: dict, req: CanonicalRequest, names: dict, temperature_max: float | None = None) -> None:
    """The request's settings that are set (not None), copied into `out` under the target's field names, in
    the order of `names` (canonical attribute → field); temperature is clamped to 0..temperature_max."""
    for attr, key in names.items():
        val = getattr(req, attr)
        if val is not None:
            out[key] = min(max(val, 0), temperature_max) if attr == "temperature" else val


def split_data_url(url: str) -> Optional[tuple[str, str]]:
    """'data:image/png;base64,XXX' → ('image/png', 'XXX'); None for anything else."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    media_type = head[:-7].strip().lower() or "application/octet-stream"
    # "image/jpg" is a common client spelling that Anthropic's media_type enum rejects.
    return _MEDIA_ALIASES.get(media_type, media_type), data


_MEDIA_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}


def media_kind(media_type: str | None) -> str:
    return "image" if (media_type or "image/").startswith("image/") else "document"


def merge_messages(messages: list) -> list:
    """Merge consecutive same-role turns and put tool results first in their user turn (§4.1)."""
    out: list = []
    for m in messages:
        if not m.parts:
            continue
        if out and out[-1].role == m.role:
            prev = out[-1]
            prev.parts = prev.parts + m.parts
            prev.text_form = False
        else:
            out.append(Message(m.role, list(m.parts), m.text_form))
    for m in out:
        if m.role == "user" and any(isinstance(p, ToolResultPart) for p in m.parts):
            results = [p for p in m.parts if isinstance(p, ToolResultPart)]
            if len(results) != len(m.parts) or m.parts[:len(results)] != results:
                m.parts = results + [p for p in m.parts if not isinstance(p, ToolResultPart)]
                m.text_form = False
    return out


def fill_tool_result_names(messages: list) -> None:
    """Tool results refer to calls by id; Gemini wants the function name, so resolve it once here."""
    names: dict[str, str] = {}
    for m in messages:
        for p in m.parts:
            if isinstance(p, ToolCallPart):
                names[p.id] = p.name
            elif isinstance(p, ToolResultPart) and not p.name:
                p.name = names.get(p.tool_call_id)
