"""Cleaning and validation of one raw record into one table row (pure functions, no Ray).

A record either becomes a typed row that matches the table's schema, or raises `Reject`
naming the field and why. Missing optional values are filled with a default and flagged
(Product.missing_fields) rather than dropped.
"""
from __future__ import annotations

import json
from typing import Callable, Optional

from ray_app.ids import label_id, stable_id
# the field parsers live in ray_app.ingest.fields; Reject and CleanContext are re-exported from here
from ray_app.ingest.fields import (CleanContext, Reject, _missing, attributes_field, list_field, number_field,  # noqa: F401
                                   parse_number, split_field, text_field, timestamp_field)
from ray_app.ingest.judged import QUERY_TEXT_COLUMNS, query_key, query_text
from ray_app.privacy import pseudonymise, pseudonymise_session
from ray_app.taxonomy import annotator_name
from schemas.records import ANONYMOUS_USER_PREFIX, EVENT_TYPES, LABEL_SOURCES, LABEL_TASKS, TABLE_MODELS
from schemas.taxonomy import TaxonomyError


# Common alternative column names, used only when the canonical column is absent.
ALIASES: dict[str, dict[str, str]] = {
    "products": {"id": "product_id", "item_id": "product_id", "sku": "product_id", "name": "title",
                 "product_title": "title", "product_brand": "brand", "product_description": "description",
                 "category": "category_path", "categories": "category_path", "image": "image_url",
                 "quantity": "stock", "inventory": "stock"},
    "queries": {"id": "query_id", "query": "text", "utterance": "text", "q": "text"},
    "users": {"id": "user_id", "customer_id": "user_id"},
    "events": {"id": "event_id", "type": "event_type", "event": "event_type", "item_id": "product_id",
               "ts": "timestamp", "time": "timestamp", "customer_id": "user_id", "rank": "position"},
    "judgments": {"esci_label": "grade", "label": "grade"},
    "labels": {},
}
EVENT_ALIASES = {"view": "impression", "impression": "impression", "click": "click", "add-to-cart": "add_to_cart",
                 "add_to_cart": "add_to_cart", "addtocart": "add_to_cart", "cart": "add_to_cart", "atc": "add_to_cart",
                 "purchase": "purchase", "order": "purchase", "buy": "purchase", "conversion": "purchase",
                 "return": "return", "refund": "return", "cancel": "return", "cancellation": "return",
                 "rating": "purchase", "rate": "purchase", "review": "purchase"}  # a rating says the shopper had the item
ANONYMOUS_PREFIX = ANONYMOUS_USER_PREFIX
def product_missing_fields(row: dict) -> list[str]:
    """Optional product fields that are empty (filled with a default) in a finished row."""
    return [f for f in ("description", "brand", "price", "rating", "stock", "image_url")
            if row.get(f) in ("", None)] + ([] if row.get("category_path") else ["category_path"])


def price_currency(value) -> str:
    """The currency a price string names ("€129,00" -> EUR), or ""."""
    parsed = parse_number(value) if isinstance(value, str) else None
    return parsed[1] if parsed else ""


def clean_product(d: dict, ctx: CleanContext) -> dict:
    # A feed without a title column is a partial update (price + stock, say): the title is then
    # kept from the stored product, and a product not yet stored is quarantined by the pipeline.
    row = {"product_id": text_field(d, "product_id", ctx, required=True),
           "title": text_field(d, "title", ctx, required="title" in d),
           "description": text_field(d, "description", ctx, html=True),
           "brand": text_field(d, "brand", ctx),
           "category_path": list_field(d, "category_path"),
           "attributes": attributes_field(d),
           "price": number_field(d, "price", lo=0),
           "currency": text_field(d, "currency", ctx).upper() or price_currency(d.get("price")) or "USD",
           "rating": number_field(d, "rating", lo=0, hi=5),
           "rating_count": number_field(d, "rating_count", lo=0, integer=True),
           "stock": number_field(d, "stock", lo=0, integer=True),
           "image_url": text_field(d, "image_url", ctx),
           "locale": (text_field(d, "locale", ctx) or "us").lower(),
           "source": ctx.dataset,
           "updated_at": timestamp_field(d, "updated_at", ctx) or ctx.now}
    row["missing_fields"] = product_missing_fields(row)
    return row


def clean_query(d: dict, ctx: CleanContext) -> dict:
    text = text_field(d, "text", ctx, required=True)
    locale = (text_field(d, "locale", ctx) or "us").lower()
    # Without an id the query is keyed by its normalised text, as judgments keyed by text are.
    query_id = text_field(d, "query_id", ctx) or query_key(text, locale)
    return {"query_id": query_id, "text": text, "locale": locale, "split": split_field(d, ctx, query_id),
            "dataset": text_field(d, "dataset", ctx) or ctx.dataset, "updated_at": timestamp_field(d, "updated_at", ctx) or ctx.now}


def clean_user(d: dict, ctx: CleanContext) -> dict:
    return {"user_id": pseudonymise(text_field(d, "user_id", ctx, required=True), ctx.pseudonym_key),
            "locale": (text_field(d, "locale", ctx) or "us").lower(), "segment": text_field(d, "segment", ctx),
            "signup_at": timestamp_field(d, "signup_at", ctx), "updated_at": timestamp_field(d, "updated_at", ctx) or ctx.now}


def clean_event(d: dict, ctx: CleanContext) -> dict:
    raw_type = (text_field(d, "event_type", ctx) or ctx.event_type or "").lower()
    if not raw_type:
        raise Reject("event_type", "required value is missing (a log of one kind of event: --event-type purchase)")
    if raw_type not in EVENT_ALIASES:
        raise Reject("event_type", f"{raw_type!r} is not one of {', '.join(EVENT_TYPES)}")
    session = pseudonymise_session(text_field(d, "session_id", ctx), ctx.pseudonym_key)
    raw_user = text_field(d, "user_id", ctx)
    if not raw_user and not session:
        raise Reject("user_id", "required value is missing (and no session_id to keep the event as an anonymous session's)")
    # no account: the session is the user, marked anonymous so it never counts as a returning shopper
    user = pseudonymise(raw_user, ctx.pseudonym_key) if raw_user else ANONYMOUS_PREFIX + session
    quantity = number_field(d, "quantity", integer=True)
    if quantity is not None and quantity == 0:
        raise Reject("quantity", "0 units: nothing was bought or returned")
    if quantity is not None and quantity < 0 and EVENT_ALIASES[raw_type] != "return":
        raise Reject("quantity", f"{quantity} units on a {EVENT_ALIASES[raw_type]}: a stock adjustment, or a return not marked as one")
    row = {"event_type": EVENT_ALIASES[raw_type], "user_id": user, "session_id": session,
           "query_id": text_field(d, "query_id", ctx), "product_id": text_field(d, "product_id", ctx, required=True),
           "position": number_field(d, "position", lo=1, integer=True),
           "timestamp": timestamp_field(d, "timestamp", ctx, required=True), "device": text_field(d, "device", ctx).lower(),
           "locale": (text_field(d, "locale", ctx) or "us").lower(),
           "quantity": abs(quantity) if quantity is not None else None, "value": number_field(d, "value"),
           "ref_event_id": text_field(d, "ref_event_id", ctx) or None}
    # Without an id from the feed, the id derives from the content; the pipeline then numbers
    # repeats of the same content within one feed (a double click, two lines of one invoice), so
    # genuine repeats stay separate events while a re-run of the same feed adds nothing.
    given = text_field(d, "event_id", ctx)
    row["event_id"] = given or stable_id(
        "event", row["event_type"], user, row["session_id"], row["query_id"], row["product_id"], row["position"], row["timestamp"])
    row[AUTO_KEY] = not given
    return row


def clean_judgment(d: dict, ctx: CleanContext) -> dict:
    raw = text_field(d, "grade", ctx, required=True)
    try:
        grade, gain = ctx.grades.grade(raw)
    except ValueError as exc:
        alias = ctx.taxonomy.grade_aliases.get(raw.lower()) if ctx.taxonomy is not None else None
        try:  # a spelling the taxonomy declares ("exact" for E)
            grade, gain = ctx.grades.grade(alias) if alias else (None, None)
        except ValueError:
            grade = None
        if grade is None:
            raise Reject("grade", str(exc)) from None
    query_id = text_field(d, "query_id", ctx)
    if not query_id:  # keyed by query text: the id its row in `queries` gets too
        text = query_text(d)
        if text is None:
            raise Reject("query_id", f"required value is missing, and no query text column ({', '.join(QUERY_TEXT_COLUMNS)}) "
                                     "to key the judgment by")
        query_id = query_key(text_field({"text": text}, "text", ctx, required=True),
                             (text_field(d, "locale", ctx) or "us").lower())
    return {"query_id": query_id, "product_id": text_field(d, "product_id", ctx, required=True),
            "grade": grade, "gain": gain, "scale": ctx.grades.spec, "split": split_field(d, ctx, query_id),
            "source": ctx.dataset or text_field(d, "source", ctx), "updated_at": ctx.now}


def clean_label(d: dict, ctx: CleanContext) -> dict:
    """A label row: values checked against ctx.taxonomy, a person stored by display name or pseudonym."""
    task = text_field(d, "task", ctx, required=True)
    source = text_field(d, "source", ctx) or "human"
    if task not in LABEL_TASKS:
        raise Reject("task", f"{task!r} is not one of {', '.join(LABEL_TASKS)}")
    if source not in LABEL_SOURCES:
        raise Reject("source", f"{source!r} is not one of {', '.join(LABEL_SOURCES)}")
    target = text_field(d, "target_id", ctx, required=True)
    spans = d.get("spans") or []
    if isinstance(spans, str):
        try:
            spans = json.loads(spans) if spans.strip() else []
        except json.JSONDecodeError:
            raise Reject("spans", "not a JSON list of {start, end, type}")
    text = d.get("text")
    clean_spans = []
    for s in spans:
        try:
            start, end, etype = int(s["start"]), int(s["end"]), str(s["type"])
        except (KeyError, TypeError, ValueError):
            raise Reject("spans", f"span {s!r} needs integer start, end and a type")
        if not 0 <= start < end or (text is not None and end > len(text)):
            raise Reject("spans", f"span [{start}, {end}) is outside the text")
        try:
            etype = ctx.taxonomy.check_entity_type(etype) if ctx.taxonomy is not None else etype
        except TaxonomyError as exc:
            raise Reject("spans", str(exc))
        clean_spans.append({"start": start, "end": end, "type": etype, "text": str(s.get("text") or (text[start:end] if text else ""))})
    value = text_field(d, "value", ctx)
    if task != "entity" and not value:
        raise Reject("value", f"{'an' if task[0] in 'aeiou' else 'a'} {task} label needs a value")
    try:
        value = ctx.taxonomy.check(task, value) if ctx.taxonomy is not None and task != "entity" else value
    except TaxonomyError as exc:
        raise Reject("value", str(exc))
    annotator = text_field(d, "annotator", ctx) or ctx.dataset
    if source == "human":  # a person: never stored as given (an e-mail); rule and model names stay
        annotator = annotator_name(annotator, ctx.taxonomy, ctx.pseudonym_key, keep={ctx.dataset})
    return {"label_id": label_id(target, task, source, annotator), "target_type": text_field(d, "target_type", ctx) or ("query_product" if "::" in target else "query"),
            "target_id": target, "task": task, "value": value, "spans": clean_spans, "source": source,
            "confidence": number_field(d, "confidence", lo=0, hi=1) if not _missing(d.get("confidence")) else 1.0,
            "annotator": annotator, "created_at": timestamp_field(d, "created_at", ctx) or ctx.now}


CLEANERS: dict[str, Callable[[dict, CleanContext], dict]] = {
    "products": clean_product, "queries": clean_query, "users": clean_user,
    "events": clean_event, "judgments": clean_judgment, "labels": clean_label,
}


# Row keys that are bookkeeping for the pipeline, not table columns.
AUTO_KEY, PRESENT_KEY, IGNORED_KEY = "_auto_key", "_present", "_ignored"
# Tables whose feeds may carry only some columns: absent columns keep the stored values.
PARTIAL_TABLES: dict[str, tuple[str, ...]] = {"products": ("title",), "users": ()}
# Columns always rewritten on an update (derived by the cleaner, not read from the feed).
DERIVED_COLUMNS: dict[str, tuple[str, ...]] = {"products": ("source", "updated_at", "missing_fields"), "users": ("updated_at",)}
# Input columns a cleaner reads although they are not columns of its table.
EXTRA_INPUTS: dict[str, set[str]] = {"labels": {"text"}, "judgments": {*QUERY_TEXT_COLUMNS, "locale"}}


def apply_mapping(data: dict, table: str, mapping: dict[str, str]) -> dict:
    """User renames first (SRC=DST), then built-in aliases for columns still absent."""
    out = {mapping.get(k, k): v for k, v in data.items()}
    for alias, canonical in ALIASES.get(table, {}).items():
        if canonical not in out and alias in out:
            out[canonical] = out.pop(alias)
    return out


def clean_record(data: dict, ctx: CleanContext, mapping: Optional[dict[str, str]] = None) -> dict:
    """Map, clean and validate one record against the table's pydantic model."""
    data = apply_mapping(data, ctx.table, mapping or {})
    columns = set(TABLE_MODELS[ctx.table].model_fields)
    row = CLEANERS[ctx.table](data, ctx)
    row[PRESENT_KEY] = sorted(set(data) & columns)
    row[IGNORED_KEY] = sorted(str(k) for k in set(data) - columns - EXTRA_INPUTS.get(ctx.table, set()))
    try:
        TABLE_MODELS[ctx.table].model_validate(row)
    except Exception as exc:  # pydantic ValidationError: name the first failing field
        errors = getattr(exc, "errors", lambda: [])()
        first = errors[0] if errors else {"loc": ("",), "msg": str(exc)}
        raise Reject(".".join(map(str, first["loc"])), f"schema validation failed: {first['msg']}")
    return row
