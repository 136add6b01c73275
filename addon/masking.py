"""How the gateway shows a secret: never whole. One place for the mask, used for the caller's key headers in a
flow (addon/gateway.py), key-like query parameters (addon/ingress.py) and the credentials in attempt flows
(addon/wire.py). See docs/architecture.md."""

from __future__ import annotations

# Request headers that carry a key — the gateway's (X-TG-API-Key, X-Api-Key, a bearer token) or, untranslated,
# the caller's own provider credential (Authorization): masked in what the flow keeps.
KEY_HEADERS = ("x-tg-api-key", "x-api-key", "authorization")
# Headers in which providers take their credentials (OpenAI/Anthropic/Gemini/Azure): masked in attempt flows.
CREDENTIAL_HEADERS = frozenset({*KEY_HEADERS, "x-goog-api-key", "api-key", "proxy-authorization"})


def mask(secret: str) -> str:
    return f"{secret[:5]}…{secret[-4:]}" if len(secret) > 12 else "…"


def mask_once(secret: str) -> str:
    return secret if "…" in secret else mask(secret)  # a mask masked again would lose its prefix


def mask_header_value(name: str, value: str, *, force: bool = False) -> str:
    """`value` masked when `name` (lower case) carries a credential (or `force`); other headers unchanged."""
    if not force and name not in CREDENTIAL_HEADERS:
        return value
    value = value.strip()
    if "…" in value or not value:
        return value
    if name in ("authorization", "proxy-authorization"):
        scheme, sep, credential = value.partition(" ")
        if sep and credential.strip():
            return f"{scheme} {mask(credential.strip())}"
    return mask(value)
