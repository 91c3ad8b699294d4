"""The store's label taxonomy: load a declaration from YAML, save it into the store, read it back
(now or as a snapshot pinned it), and name annotators without storing who they are.

The declaration lives in the `taxonomy` table (one row, a new table version per declaration),
so a snapshot pins the taxonomy its labels were made under and training reads exactly that one.
A store that declares nothing uses the built-in e-commerce taxonomy. Annotator ids (e-mails in a
Label Studio export) are never stored: the declaration keeps its `annotators:` mapping keyed by
keyed pseudonyms, and an annotator without a configured name is stored as a keyed pseudonym.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Collection, Optional

import pyarrow as pa
import yaml
from pydantic import ValidationError

from ray_app.privacy import pseudonymise
from ray_app.store import Store, StoreError, rows_to_arrow, utcnow
from schemas.taxonomy import Taxonomy, TaxonomyError, builtin_taxonomy

ROW_NAME = "current"


def load_taxonomy_file(path: str) -> Taxonomy:
    """A Taxonomy from a YAML (or JSON) file; TaxonomyError naming the file and the bad field."""
    p = Path(path)
    if not p.is_file():
        raise TaxonomyError(f"taxonomy file {path!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise TaxonomyError(f"taxonomy file {path!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise TaxonomyError(f"taxonomy file {path!r} must be a mapping with intents, entity_types, grades")
    if isinstance(data.get("grades"), list):  # a plain list of grade names: gains count down to 0
        data["grades"] = {str(g): float(len(data["grades"]) - 1 - i) for i, g in enumerate(data["grades"])}
    data = {**data, **{k: [str(v) for v in data[k]] for k in ("intents", "entity_types") if isinstance(data.get(k), list)}}
    data.pop("annotators_keyed", None)  # only the stored form is keyed
    try:
        return Taxonomy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "".join(f"{'.'.join(map(str, first['loc']))}: " if first["loc"] else "")
        raise TaxonomyError(f"taxonomy file {path!r}: {where}{first['msg'].removeprefix('Value error, ')}") from exc


def stored_form(taxonomy: Taxonomy, key: str) -> Taxonomy:
    """The declaration as saved: annotator ids replaced by their keyed pseudonyms."""
    if taxonomy.annotators_keyed:
        return taxonomy
    keyed = {pseudonymise(raw, key): name for raw, name in taxonomy.annotators.items()}
    return taxonomy.model_copy(update={"annotators": keyed, "annotators_keyed": True})


def fingerprint(taxonomy: Taxonomy) -> str:
    """A short content hash of a declaration (equal declarations, equal fingerprints)."""
    return hashlib.sha256(taxonomy.model_dump_json().encode()).hexdigest()[:16]


def declare_taxonomy(store: Store, taxonomy: Taxonomy, key: str, source: str = "") -> list[str]:
    """Save `taxonomy` as the store's declaration (no new version when unchanged); returns
    warnings naming stored label values the new declaration no longer covers."""
    saved = stored_form(taxonomy, key)
    current = declared_taxonomy(store)
    if current is None or fingerprint(current) != fingerprint(saved):
        row = dict(name=ROW_NAME, declaration=saved.model_dump_json(), fingerprint=fingerprint(saved),
                   source=source, declared_at=utcnow())
        store.upsert("taxonomy", rows_to_arrow([row], "taxonomy"))
    return [f"{n} stored labels use {what} the taxonomy does not declare: {values}"
            for what, (n, values) in outside_taxonomy(store.read("labels"), saved).items() if n]


def _parse(rows: list[dict]) -> Optional[Taxonomy]:
    return Taxonomy.model_validate_json(rows[0]["declaration"]) if rows else None


def declared_taxonomy(store: Store) -> Optional[Taxonomy]:
    """The store's current declaration, None when it declares none."""
    return _parse(store.read("taxonomy").to_pylist())


def store_taxonomy(store: Store) -> Taxonomy:
    """The taxonomy labels are checked against now: the declared one, else the built-in one."""
    return declared_taxonomy(store) or builtin_taxonomy()


def snapshot_taxonomy(store: Store, snapshot: str) -> Optional[Taxonomy]:
    """The declaration snapshot `snapshot` pinned; None when it pinned none (taken before any)."""
    if "taxonomy" not in store.snapshot_versions(snapshot):
        return None
    try:
        return _parse(store.read_snapshot(snapshot, "taxonomy").to_pylist())
    except StoreError:
        return None


def taxonomy_summary(taxonomy: Taxonomy, declared: bool) -> dict:
    """What a job prints about a taxonomy: name, sizes, fingerprint."""
    return {"name": taxonomy.name, "declared": declared, "intents": len(taxonomy.intents),
            "out_of_scope": taxonomy.out_of_scope, "entity_types": len(taxonomy.entity_types),
            "grades": taxonomy.grades, "annotators": len(taxonomy.annotators), "fingerprint": fingerprint(taxonomy)}


def taxonomy_from_labels(labels: pa.Table, name: str) -> Optional[Taxonomy]:
    """A declaration of exactly the intents and entity types a dataset's labels use (SNIPS brings
    its own vocabulary); grades stay the default ESCI scale. None when there are no intent labels."""
    rows = labels.select(["task", "value", "spans"]).to_pylist()
    intents = sorted({r["value"] for r in rows if r["task"] == "intent" and r["value"]})
    types = sorted({s["type"] for r in rows if r["task"] == "entity" for s in r["spans"] or []})
    return Taxonomy(name=name, intents=intents, entity_types=types) if intents else None


def outside_taxonomy(labels: pa.Table, taxonomy: Taxonomy) -> dict[str, tuple[int, list[str]]]:
    """Stored label values the taxonomy does not declare: {"intents"|"entity types"|"grades": (count, first values)}."""
    bad: dict[str, Counter] = {"intents": Counter(), "entity types": Counter(), "grades": Counter()}
    for r in labels.select(["task", "value", "spans"]).to_pylist():
        try:
            taxonomy.check(r["task"], r["value"])
        except TaxonomyError:
            bad["intents" if r["task"] == "intent" else "grades"][r["value"]] += 1
        for s in r["spans"] or []:
            if s["type"] not in taxonomy.entity_types:
                bad["entity types"][s["type"]] += 1
    return {k: (sum(c.values()), [v for v, _ in c.most_common(10)]) for k, c in bad.items()}


def annotator_name(raw: str, taxonomy: Optional[Taxonomy], key: str, keep: Collection[str] = ()) -> str:
    """What is stored for a person who labelled: the configured display name, the value itself
    when it is already a stored or configured name (`keep`), else its keyed pseudonym."""
    raw = str(raw or "").strip()
    if not raw:
        return raw
    names = taxonomy.annotators if taxonomy is not None else {}
    keyed = taxonomy is not None and taxonomy.annotators_keyed
    found = names.get(pseudonymise(raw, key) if keyed else raw)
    if found is not None:
        return found
    if raw in keep or raw in names.values():
        return raw
    return pseudonymise(raw, key)

