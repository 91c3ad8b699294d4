"""Pseudonymisation of user identifiers before anything is stored.

A keyed HMAC-SHA256 keeps ids joinable across tables and runs (same key -> same pseudonym)
while a leaked table cannot be reversed or re-identified by hashing guessed ids without the key.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
from typing import Optional

KEY_ENV = "SHOPSEARCH_PSEUDONYM_KEY"
DEV_KEY = "dev-only-pseudonym-key-change-me"
PREFIX = "u_"
log = logging.getLogger(__name__)


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


def pseudonymise(user_id: str, key: str) -> str:
    """Stable keyed pseudonym of a raw user id; already-pseudonymised ids pass through."""
    if user_id.startswith(PREFIX) and len(user_id) == len(PREFIX) + 24:
        return user_id
    digest = hmac.new(key.encode(), user_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return PREFIX + digest[:24]
