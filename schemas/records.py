"""Table records of the data platform.

Each class is at once the pydantic contract, the Arrow schema of its LanceDB table
(`Model.to_arrow_schema()`) and the typed row read back. Keys used for upserts are
declared in `TABLE_KEYS`; free-form attributes are a JSON object in a string column so
that every shop's own attributes fit one schema.
"""
from __future__ import annotations

import math
from datetime import datetime
from typing import Optional

from lancedb.pydantic import LanceModel
from pydantic import field_validator


def _one_of(allowed: tuple[str, ...], name: str):
    """A validator restricting a str column to a closed vocabulary (Arrow has no enum type)."""

    def check(cls, value: str) -> str:
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        return value

    return field_validator(name)(classmethod(check))

# The built-in label taxonomy (docs/labelling.md describes each class and entity type). A store may
# declare its own (schemas/taxonomy.py), so Label.value and span types are free text here and are
# checked against the store's taxonomy where labels are written.
INTENTS: tuple[str, ...] = (
    "product_search",
    "brand_query",
    "price_comparison",
    "review_lookup",
    "order_support",
    "out_of_scope",
)
ENTITY_TYPES: tuple[str, ...] = ("brand", "category", "product", "colour", "size", "price_range")
ESCI_GRADES: tuple[str, ...] = ("E", "S", "C", "I")
ESCI_GAIN: dict[str, int] = {"E": 3, "S": 2, "C": 1, "I": 0}  # the default scale (schemas.grades.ESCI)
EVENT_TYPES: tuple[str, ...] = ("impression", "click", "add_to_cart", "purchase", "return")
LABEL_TASKS: tuple[str, ...] = ("intent", "entity", "relevance")
LABEL_SOURCES: tuple[str, ...] = ("rule", "behaviour", "human", "model")
# Higher wins when two sources label the same target and task.
SOURCE_PRIORITY: dict[str, int] = {"model": 0, "rule": 1, "behaviour": 2, "human": 3}
SPLITS: tuple[str, ...] = ("", "train", "validation", "test")
ANONYMOUS_USER_PREFIX = "anon-"  # Event.user_id of a shopper without an account (see Event)


class Product(LanceModel):
    """A catalogue item."""

    product_id: str
    title: str
    description: str = ""
    brand: str = ""
    category_path: list[str] = []
    attributes: str = "{}"  # JSON object of attribute name -> value
    price: Optional[float] = None
    currency: str = "USD"
    rating: Optional[float] = None
    rating_count: Optional[int] = None
    stock: Optional[int] = None
    image_url: str = ""
    locale: str = "us"
    source: str = ""
    missing_fields: list[str] = []  # fields that were empty and filled with a default
    updated_at: datetime


class Query(LanceModel):
    """A search query (or any utterance to be understood)."""

    query_id: str
    text: str
    locale: str = "us"
    split: str = ""  # "", train, validation or test: fixed at ingest so splits never leak
    dataset: str = ""
    updated_at: datetime


class User(LanceModel):
    """A shopper; `user_id` is always the keyed pseudonym, never the shop's raw id."""

    user_id: str
    locale: str = "us"
    segment: str = ""
    signup_at: Optional[datetime] = None
    updated_at: datetime


class Event(LanceModel):
    """One behaviour event: impression, click, add_to_cart, purchase or return.

    A user id starting with `anon-` is a shopper without an account: the pseudonym of the session
    (an invoice without a customer), so an anonymous basket stays one user but never links to another.
    """

    event_id: str
    event_type: str  # one of EVENT_TYPES
    user_id: str  # pseudonymised
    session_id: str = ""
    query_id: str = ""
    product_id: str
    position: Optional[int] = None  # 1-based rank where the product was shown
    timestamp: datetime
    device: str = ""
    locale: str = "us"
    quantity: Optional[int] = None  # units bought or returned (always >= 1; the type says which way)
    value: Optional[float] = None  # unit price of a purchase or return, or a rating (a ratings log)
    ref_event_id: Optional[str] = None  # a return: the purchase it cancels (None when that purchase is not in the store)
    request_id: Optional[str] = None  # feedback (POST /v1/events): the response the event followed
    model_versions: Optional[str] = None  # feedback: that response's versions, as JSON
    arm: Optional[str] = None  # feedback: that response's A/B arm

    _check_type = _one_of(EVENT_TYPES, "event_type")


class Judgment(LanceModel):
    """A human relevance judgment of a product for a query, with the gain its declared scale gives it."""

    query_id: str
    product_id: str
    grade: str  # as declared: an ESCI letter, a level name, or a number ("2.5")
    gain: float  # what the grade is worth in NDCG, from the scale (schemas.grades)
    scale: str = ""  # the scale's spec ("esci", "numeric:0-3", "perfect=3,good=1,bad=0"); "" = esci
    split: str = ""
    source: str = ""
    updated_at: datetime

    @field_validator("grade")
    @classmethod
    def _check_grade(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("grade must not be empty")
        return value

    @field_validator("gain")
    @classmethod
    def _check_gain(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"gain must be a finite number >= 0; got {value!r}")
        return value


class EntitySpan(LanceModel):
    """A labelled entity: character offsets into the query text, end exclusive."""

    start: int
    end: int
    type: str
    text: str = ""


class Label(LanceModel):
    """A label of one task on one target, with where it came from."""

    label_id: str
    target_type: str  # "query" or "query_product"
    target_id: str  # query_id, or "query_id::product_id"
    task: str  # one of LABEL_TASKS
    value: str = ""  # intent class or relevance grade; "" for entity labels
    spans: list[EntitySpan] = []
    source: str  # one of LABEL_SOURCES
    confidence: float = 1.0
    annotator: str = ""  # rule name, model version or person
    created_at: datetime

    _check_target = _one_of(("query", "query_product"), "target_type")
    _check_task = _one_of(LABEL_TASKS, "task")
    _check_source = _one_of(LABEL_SOURCES, "source")


class QuarantineRecord(LanceModel):
    """A row that failed cleaning or validation, kept whole with the reason."""

    quarantine_id: str
    table: str
    source: str  # file or URI the row came from
    row_number: int  # 1-based line or row number in that source
    raw: str  # the row exactly as read (bytes decoded with replacement where broken); for users and
    # events, the parsed row with its identifiers pseudonymised ("" when it could not be parsed)
    raw_sealed: str = ""  # users and events only: the row exactly as read, encrypted (privacy.unseal)
    reason: str
    field: str = ""
    run_id: str
    created_at: datetime


class IngestRun(LanceModel):
    """The ledger of one ingest into one table: rows in = accepted + quarantined + duplicates."""

    run_id: str
    table: str
    source: str
    read: int
    accepted: int
    quarantined: int
    duplicates: int
    inserted: int
    updated: int
    version: int
    started_at: datetime
    finished_at: datetime


class TaxonomyRecord(LanceModel):
    """The store's declared label taxonomy (schemas/taxonomy.py); one row, a new version per
    declaration, pinned by snapshots like the data it describes."""

    name: str  # key: always "current"
    declaration: str  # JSON of the Taxonomy; annotator ids only as keyed pseudonyms
    fingerprint: str  # sha256 of `declaration`, shown in summaries
    source: str = ""  # the file it was declared from
    declared_at: datetime


class Recommendation(LanceModel):
    """A user's precomputed top-N (jobs.recommend), stamped with the model version that made it."""

    user_id: str  # pseudonymised, as in events
    product_ids: list[str]
    scores: list[float]  # the model's purchase probability per product, same order
    locale: str = ""
    history_items: int = 0  # how many past items the user vector read (0: a cold-start list)
    model_version: str
    snapshot: str = ""  # the data it was computed from ("" = the live tables)
    created_at: datetime


class Snapshot(LanceModel):
    """A named, readable-later set of table versions."""

    name: str
    versions: str  # JSON object table -> version
    note: str = ""
    report: str = "{}"  # JSON data-quality report taken with the snapshot
    created_at: datetime


TABLE_MODELS: dict[str, type[LanceModel]] = {
    "products": Product,
    "queries": Query,
    "users": User,
    "events": Event,
    "judgments": Judgment,
    "labels": Label,
    "quarantine": QuarantineRecord,
    "ingest_runs": IngestRun,
    "snapshots": Snapshot,
    "taxonomy": TaxonomyRecord,
    "recommendations": Recommendation,
}
TABLE_KEYS: dict[str, list[str]] = {
    "products": ["product_id"],
    "queries": ["query_id"],
    "users": ["user_id"],
    "events": ["event_id"],
    "judgments": ["query_id", "product_id"],
    "labels": ["label_id"],
    "quarantine": ["quarantine_id"],
    "ingest_runs": ["run_id"],
    "snapshots": ["name"],
    "taxonomy": ["name"],
    "recommendations": ["user_id"],
}
# Tables holding the shop's data (what a snapshot pins); the rest is bookkeeping.
DATA_TABLES: tuple[str, ...] = ("products", "queries", "users", "events", "judgments", "labels", "quarantine", "taxonomy")
