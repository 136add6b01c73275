"""addon/routing.py for_model: a mixed upstream sends each request to the targets of its model, while other
providers stay candidates with their default model (the TrustGate guide's cross-provider balancing)."""
from __future__ import annotations

from addon import routing
from store.models import Target


def t(tid: str, models: list[str], default: str | None = None, provider: str = "openai") -> Target:
    return Target(id=tid, provider=provider, models=models, default_model=default)


CHAT, EMB, BOTH, NONE = t("chat", ["gpt-4o"], "gpt-4o"), t("emb", ["text-embedding-3-small"]), \
    t("both", ["gpt-4o", "text-embedding-3-small"]), t("none", [])
PLAN = [CHAT, EMB, BOTH, NONE]
CLAUDE = t("claude", ["claude-3-sonnet"], "claude-3-sonnet", provider="anthropic")
GEMINI = t("gemini", ["gemini-embedding-001"], "gemini-embedding-001", provider="gemini")


def ids(targets):
    return [x.id for x in targets]


def test_a_providers_targets_that_do_not_name_the_model_are_dropped():
    assert ids(routing.for_model(PLAN, "gpt-4o")) == ["chat", "both"]
    assert ids(routing.for_model(PLAN, "text-embedding-3-small")) == ["emb", "both"]
    assert ids(routing.for_model([BOTH, EMB, CHAT], "gpt-4o")) == ["both", "chat"]


def test_other_providers_stay_candidates():
    # The guide: gpt-4 balanced over OpenAI (listing it) and Anthropic (mapped to its default model).
    assert ids(routing.for_model([CHAT, CLAUDE], "gpt-4o")) == ["chat", "claude"]
    assert ids(routing.for_model([EMB, CHAT, GEMINI], "text-embedding-3-small")) == ["emb", "gemini"]
    assert ids(routing.for_model([EMB, CHAT, GEMINI], "gemini-embedding-001")) == ["emb", "chat", "gemini"]


def test_default_model_counts_as_named():
    default_only = Target(id="d", provider="openai", default_model="text-embedding-3-large")
    assert ids(routing.for_model([CHAT, default_only], "text-embedding-3-large")) == ["d"]


def test_the_plan_is_kept_when_no_target_names_the_model():
    assert routing.for_model(PLAN, "unknown") is PLAN
    assert routing.for_model(PLAN, None) is PLAN and routing.for_model(PLAN, "") is PLAN
    assert routing.for_model([], "gpt-4o") == []
