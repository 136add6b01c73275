"""Which object serves which name: provider names (what a target says) → backends, ingress names (the format
a client speaks) → clients. The only place that lists either. Variants of a family are configured instances
of its backend, not branches in code.
"""
from __future__ import annotations

from typing import Any

from .anthropic_backend import AnthropicBackend
from .anthropic_client import AnthropicClient
from .anthropic_passthrough import AnthropicPassthrough
from .errors import GatewayError
from .gemini import GeminiBackend
from .interface import Backend, Client, Passthrough
from .openai_backend import OpenAIBackend
from .openai_client import OpenAIClient
from .openai_passthrough import COMPAT_FIELDS, OpenAIPassthrough
from .responses_client import ResponsesClient
from .responses_passthrough import ResponsesPassthrough

AZURE_API_VERSION = "2024-10-21"

# In the order the admin API lists them (store/models.py takes its provider list from PROVIDERS).
BACKENDS: dict[str, Backend] = {b.name: b for b in (
    # api.openai.com serves Responses clients natively (/v1/responses); Azure and OpenAI-compatible servers are
    # reached through the hub (most compatible servers have no /responses).
    OpenAIBackend("openai", origin=("https", "api.openai.com", 443), max_tokens_field="max_completion_tokens",
                  passthroughs=(OpenAIPassthrough(), ResponsesPassthrough())),
    AnthropicBackend(passthroughs=(AnthropicPassthrough(),)),
    GeminiBackend(),
    OpenAIBackend("azure", default_path="/openai/deployments/{model}/chat/completions", model_in_path=True,
                  api_version=AZURE_API_VERSION, key_header="api-key", key_prefix="",
                  passthroughs=(OpenAIPassthrough(),)),
    OpenAIBackend("openai-compatible",
                  passthroughs=(OpenAIPassthrough(fields=COMPAT_FIELDS, always_usage=False),)),
)}

# In the order request paths are matched against their suffixes.
CLIENTS: dict[str, Client] = {c.name: c for c in (OpenAIClient(), AnthropicClient(), ResponsesClient())}

PROVIDERS: tuple[str, ...] = tuple(BACKENDS)
INGRESSES: tuple[str, ...] = tuple(CLIENTS)

# Errors for a client whose format is not known (a path no ingress serves) are rendered in this one.
DEFAULT_INGRESS = "openai"
# The auth headers for a provider name no backend has: a bearer token, as most servers take.
_GENERIC_BACKEND = BACKENDS["openai-compatible"]


def _get(table: dict, name: Any) -> Any:
    try:
        return table.get(name)
    except TypeError:  # an unhashable name is no name
        return None


def _require(table: dict, name: Any, status: int, kind: str, what: str) -> Any:
    found = _get(table, name)
    if found is None:
        raise GatewayError(status, kind, f"unknown {what} '{name}'")
    return found


def backend(provider: Any) -> Backend:
    return _require(BACKENDS, provider, 500, "api_error", "provider")


def backend_or_generic(provider: Any) -> Backend:
    return _get(BACKENDS, provider) or _GENERIC_BACKEND


def client(ingress: Any) -> Client:
    return _require(CLIENTS, ingress, 404, "not_found", "ingress format")


def error_client(ingress: Any) -> Client:
    """The client format to render an error in: the ingress's own, else DEFAULT_INGRESS."""
    return _get(CLIENTS, ingress) or CLIENTS[DEFAULT_INGRESS]


def ingress_for_path(path: str) -> str | None:
    p = path.split("?", 1)[0].rstrip("/")
    for c in CLIENTS.values():
        if p.endswith(c.path_suffix):
            return c.name
    return None


def serves_natively(ingress: str, provider: Any) -> bool:
    """Whether `provider`'s targets get clients of `ingress` by pass-through (the provider's own API for that
    format, with whatever state it keeps), not through the hub."""
    be = _get(BACKENDS, provider)
    return be is not None and be.passthrough_for(ingress) is not None


def route(ingress: str, provider: Any) -> tuple[Backend, Passthrough | None]:
    """The backend for `provider`, and its pass-through when a client of `ingress` is of its own family
    (then the hub is not used)."""
    be = backend(provider)
    return be, be.passthrough_for(ingress)
