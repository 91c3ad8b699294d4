"""API keys of the write endpoints (`POST /v1/events`): `X-API-Key` against the keys named by
`$SHOPSEARCH_API_KEYS` (comma-separated), the file `$SHOPSEARCH_API_KEYS_FILE` or the app
config's `api_keys_file` (one key per line, `#` comments). No key lives in the repository; a
server with none configured refuses every write (403) and says how to configure one."""
from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import Optional

KEYS_ENV = "SHOPSEARCH_API_KEYS"
KEYS_FILE_ENV = "SHOPSEARCH_API_KEYS_FILE"
HEADER = "x-api-key"


def load_keys(keys_file: Optional[str] = None) -> list[str]:
    """Every configured key (environment and files together); ValueError for a file that cannot be read."""
    keys = [k.strip() for k in os.environ.get(KEYS_ENV, "").split(",") if k.strip()]
    for path in (keys_file, os.environ.get(KEYS_FILE_ENV)):
        if not path:
            continue
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"API keys file {path!r} cannot be read: {exc}") from exc
        keys += [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    return keys


def check(given: Optional[str], keys: list[str]) -> Optional[tuple[int, str]]:
    """None when `given` is a configured key, else (401 or 403, why). Constant-time per key."""
    if not given:
        return 401, f"missing API key: send it in the {HEADER} header"
    if not keys:
        return 403, f"no API key is configured on this server (set ${KEYS_ENV}, ${KEYS_FILE_ENV} or api_keys_file)"
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given.encode("utf-8", "surrogatepass"), key.encode("utf-8", "surrogatepass"))
    return None if ok else (403, "API key not accepted")
