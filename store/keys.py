"""Client API keys: generation and hashing.

Keys are stored only as a sha256 hash (a leaked store file does not leak usable keys); sha256 without a salt is
enough because the keys are 256-bit random, not passwords, and it lets the data plane look a key up by hash.
"""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "aigw-"
#: Characters of the plaintext kept as ``key_prefix`` so people can tell keys apart ("aigw-" + 4 random chars).
DISPLAY_PREFIX_LENGTH = 9


def new_key() -> str:
    """A fresh key: ``aigw-`` followed by 32 random bytes, URL-safe base64 (CSPRNG)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(plaintext: str) -> str:
    """Hex sha256 of the plaintext key, the only form in which keys are stored or looked up."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def display_prefix(plaintext: str) -> str:
    """The recognisable head of a key, safe to show forever."""
    return plaintext[:DISPLAY_PREFIX_LENGTH]
