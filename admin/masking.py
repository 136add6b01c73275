"""Provider credentials are write-only: reads show a masked value, and a masked value sent back unchanged on
PUT keeps the stored secret (so GET -> edit -> PUT does not destroy the key)."""

from __future__ import annotations

from store.models import Credentials, Target, Upstream

from .errors import ApiError

MASK = "…"
#: Secrets shorter than this are masked completely: showing 7 characters of a short secret leaks most of it.
MIN_PARTIAL_LENGTH = 16
#: Authorization schemes kept readable, so "Bearer sk-…abcd" still shows which scheme is configured.
AUTH_SCHEMES = ("bearer", "basic", "token")


def mask_secret(secret: str) -> str:
    """``sk-proj-abcdefgh1234`` -> ``sk-…1234``; ``Bearer <token>`` -> ``Bearer <masked token>``; short -> ``…``."""
    scheme, space, token = secret.partition(" ")
    if space and scheme.lower() in AUTH_SCHEMES and token:
        return f"{scheme} {mask_secret(token)}"
    if len(secret) < MIN_PARTIAL_LENGTH:
        return MASK
    return secret[:3] + MASK + secret[-4:]


def is_masked(value: str) -> bool:
    return MASK in value


def _secret_field(credentials: Credentials) -> str:
    return "api_key" if credentials.api_key is not None else "header_value"


def masked_credentials(credentials: Credentials) -> Credentials:
    field = _secret_field(credentials)
    return credentials.model_copy(update={field: mask_secret(credentials.secret())})


def masked_upstream(upstream: Upstream) -> dict:
    """The upstream as the admin API shows it."""
    targets = [
        target.model_copy(update={"credentials": masked_credentials(target.credentials)})
        if target.credentials is not None
        else target
        for target in upstream.targets
    ]
    return upstream.model_copy(update={"targets": targets}).model_dump(mode="json")


def restore_masked_secrets(upstream: Upstream, previous: Upstream | None) -> Upstream:
    """Swap masked credential values for the stored secrets they stand for.

    A masked value is resolved against the stored target with the same id, or else against the one stored
    secret that masks to it. A masked value that resolves to nothing is refused (storing ``"sk-…abcd"`` as the
    secret would silently break the target).
    """
    targets = [
        _restore_target(index, target, previous) for index, target in enumerate(upstream.targets)
    ]
    return upstream.model_copy(update={"targets": targets})


def _restore_target(index: int, target: Target, previous: Upstream | None) -> Target:
    credentials = target.credentials
    if credentials is None or not is_masked(credentials.secret()):
        return target
    field = _secret_field(credentials)
    secret = _stored_secret(credentials.secret(), target.id, previous)
    if secret is None:
        raise ApiError(
            400,
            f"targets.{index}.credentials.{field} is a masked value that matches no stored secret; send the real one",
            [{"loc": f"targets.{index}.credentials.{field}", "msg": "masked value; send the real secret"}],
        )
    return target.model_copy(update={"credentials": credentials.model_copy(update={field: secret})})


def _stored_secret(masked: str, target_id: str, previous: Upstream | None) -> str | None:
    if previous is None:
        return None
    same_target = previous.target(target_id)
    if same_target is not None and same_target.credentials is not None:
        secret = same_target.credentials.secret()
        if mask_secret(secret) == masked:
            return secret
    candidates = {
        t.credentials.secret()
        for t in previous.targets
        if t.credentials is not None and mask_secret(t.credentials.secret()) == masked
    }
    return candidates.pop() if len(candidates) == 1 else None
