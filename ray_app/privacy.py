"""Pseudonymisation of personal identifiers before anything is stored.

A keyed HMAC-SHA256 keeps ids joinable across tables and runs (same key -> same pseudonym)
while a leaked table cannot be reversed or re-identified by hashing guessed ids without the key.
A pseudonym carries a keyed check code, so an id that is already a pseudonym (a re-ingested
export, a client that sends back what it was given) is recognised by the key, never by its
shape: a raw id that merely looks like `u_` + 24 characters is hashed like any other.

Rows that must be kept whole but may hold raw identifiers (a quarantined row of the `users`
or `events` table) are sealed: encrypted with a key derived from the same secret (Fernet,
AES-128-CBC + HMAC), so whoever holds the key can read them back and nobody else can.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from functools import lru_cache
from typing import Optional

KEY_ENV = "SHOPSEARCH_PSEUDONYM_KEY"
DEV_KEY = "dev-only-pseudonym-key-change-me"
PREFIX = "u_"
SESSION_PREFIX = "s_"
BODY_HEX, CHECK_HEX = 16, 8  # 64-bit pseudonym + 32-bit keyed check = 24 hex characters
SEAL_PREFIX = "sealed:v1:"


def resolve_key(explicit: Optional[str] = None) -> tuple[str, bool]:
    """The pseudonymisation key and whether it is the built-in development key."""
    key = explicit or os.environ.get(KEY_ENV)
    if key:
        return key, False
    return DEV_KEY, True


DEV_KEY_WARNING = (
    "WARNING: user ids are pseudonymised with the BUILT-IN DEVELOPMENT KEY. Anyone with this "
    f"repository can re-identify them. Set ${KEY_ENV} (or --pseudonym-key) to a secret before "
    "ingesting real users."
)


def _mac(key: str, *parts: str) -> str:
    joined = "\x1f".join(parts).encode("utf-8", "surrogatepass")
    return hmac.new(key.encode("utf-8", "surrogatepass"), joined, hashlib.sha256).hexdigest()


def _check(key: str, prefix: str, body: str) -> str:
    return _mac(key, "pseudonym-check", prefix, body)[:CHECK_HEX]


def is_pseudonym(value: str, key: str, prefix: str = PREFIX) -> bool:
    """True only for a pseudonym made with this key and prefix (the keyed check code matches)."""
    if len(value) != len(prefix) + BODY_HEX + CHECK_HEX or not value.startswith(prefix):
        return False
    body, check = value[len(prefix):len(prefix) + BODY_HEX], value[len(prefix) + BODY_HEX:]
    return hmac.compare_digest(check, _check(key, prefix, body))


@lru_cache(maxsize=1 << 16)  # an event log names each shopper and session many times over
def pseudonymise(raw_id: str, key: str, prefix: str = PREFIX) -> str:
    """Stable keyed pseudonym of a raw id; a pseudonym of this key and prefix passes through."""
    if not raw_id or is_pseudonym(raw_id, key, prefix):
        return raw_id
    body = _mac(key, "pseudonym", prefix, raw_id)[:BODY_HEX]
    return prefix + body + _check(key, prefix, body)


def pseudonymise_session(session_id: str, key: str) -> str:
    """Session ids are personal too (they link a shopper's events): same scheme, own prefix."""
    return pseudonymise(session_id, key, SESSION_PREFIX)


def _fernet(key: str):
    from cryptography.fernet import Fernet

    derived = hashlib.sha256(("shopsearch-seal\x1f" + key).encode("utf-8", "surrogatepass")).digest()
    return Fernet(base64.urlsafe_b64encode(derived))


def seal(text: str, key: str) -> str:
    """Encrypt `text` so only the key holder can read it back (see `unseal`)."""
    return SEAL_PREFIX + _fernet(key).encrypt(text.encode("utf-8", "surrogatepass")).decode("ascii")


def unseal(token: str, key: str) -> str:
    """The text `seal` encrypted; raises ValueError with a wrong key or a damaged token."""
    from cryptography.fernet import InvalidToken

    if not token.startswith(SEAL_PREFIX):
        raise ValueError("not a sealed value")
    try:
        return _fernet(key).decrypt(token[len(SEAL_PREFIX):].encode("ascii")).decode("utf-8", "surrogatepass")
    except InvalidToken as exc:
        raise ValueError("cannot unseal: wrong key or damaged value") from exc
