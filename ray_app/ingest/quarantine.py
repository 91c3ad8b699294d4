"""What a quarantined row keeps: its reason (grouped for summaries) and, for tables with
personal identifiers, a readable copy with the ids pseudonymised plus the row as read, sealed.

Nothing identifying is stored raw, quarantine included: a `users`, `events` or `labels` row that
failed keeps its own table's columns readable, with `user_id`, `session_id` or `annotator`
(wherever they appear in the row) replaced by their keyed pseudonyms (an annotator by its
configured name); the exact original line, other columns included, is encrypted with the
pseudonymisation key (`ray_app.privacy.unseal` reads it back), so the row is still kept whole
for whoever holds the key.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable, Optional

from ray_app.ingest.clean import EXTRA_INPUTS, CleanContext, apply_mapping
from ray_app.privacy import pseudonymise, pseudonymise_session, seal
from ray_app.taxonomy import annotator_name
from ray_app.text import normalize_text
from schemas.records import TABLE_MODELS

# The identifying columns of each table and how each is stored; a quarantined row of these
# tables is redacted (these values replaced wherever they appear in the row) and sealed.
PERSONAL_FIELDS: dict[str, dict[str, Callable[[str, CleanContext], str]]] = {
    "users": {"user_id": lambda v, ctx: pseudonymise(v, ctx.pseudonym_key)},
    "events": {"user_id": lambda v, ctx: pseudonymise(v, ctx.pseudonym_key),
               "session_id": lambda v, ctx: pseudonymise_session(v, ctx.pseudonym_key)},
    "labels": {"annotator": lambda v, ctx: annotator_name(v, ctx.taxonomy, ctx.pseudonym_key, keep={ctx.dataset})},
}
PERSONAL_TABLES = tuple(PERSONAL_FIELDS)


def redact_personal(raw: str, data: Optional[dict], reason: str, ctx: CleanContext,
                    mapping: dict[str, str]) -> tuple[str, str, str]:
    """(readable row with its ids pseudonymised, reason likewise, the row as read sealed).

    A row that could not be parsed cannot be redacted field by field: only its sealed copy is kept."""
    sealed = seal(raw, ctx.pseudonym_key)
    if not isinstance(data, dict):
        return "", reason, sealed
    mapped = apply_mapping(data, ctx.table, mapping)
    # pseudonyms of the values as the cleaner stores them (normalised), so they join with accepted rows
    ids: dict[str, str] = {}
    for name, fn in PERSONAL_FIELDS[ctx.table].items():
        value = normalize_text(str(mapped.get(name) or ""))
        if value:  # replaced as written and as normalised
            ids[str(mapped[name])] = ids[value] = fn(value, ctx)
    # longest first, so a normalised id inside its padded spelling is not replaced half-way; a configured name stays
    replacements = sorted(((raw_id, alias) for raw_id, alias in ids.items() if raw_id != alias), key=lambda kv: -len(kv[0]))

    def scrub(text: str) -> str:  # an id may also sit in another field (a shifted column, a free-text note)
        for raw_id, alias in replacements:
            text = text.replace(raw_id, alias)
        return text

    # only the table's own columns are readable; any other column (an e-mail, a name) stays sealed alone
    readable = set(TABLE_MODELS[ctx.table].model_fields) | EXTRA_INPUTS.get(ctx.table, set())
    redacted: dict[str, Any] = {}
    for name, value in mapped.items():
        if name not in readable:
            continue
        if isinstance(value, str):
            redacted[name] = scrub(value)
        else:  # a number or a list stays as it is unless an id hides in it
            dumped = json.dumps(value, ensure_ascii=False, default=str)
            scrubbed = scrub(dumped)
            redacted[name] = value if scrubbed == dumped else scrubbed
    return json.dumps(redacted, ensure_ascii=False, default=str), scrub(reason), sealed


# Values that vary from row to row inside otherwise equal reasons: quoted literals, sizes, positions.
_LITERAL = re.compile(r"'[^']*'|\"[^\"]*\"|(?<=value is )[\d,]+(?= characters)|(?<=at byte )\d+|(?<=at column )\d+"
                      r"|(?<=CSV row has )\d+(?= fields)|(?<=^)-?[\d.]+(?= is outside)")


def reason_kind(field: str, reason: str) -> str:
    """The reason with the row's own values elided, so alike reasons count together but stay whole:
    "grade: '3.0' is not one of E, S, C, I" -> "grade: … is not one of E, S, C, I" (a scale or a
    limit in the reason is kept)."""
    text = _LITERAL.sub("…", reason)
    if len(text) > 300:
        text = text[:299] + "…"
    return f"{field}: {text}" if field else text
