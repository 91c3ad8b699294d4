"""The HTTP API's contracts (requests, responses) and the typed hops between Serve stages.

Requests forbid unknown fields, so a misspelt filter is a 422 naming it rather than a silently
ignored constraint. Limits are module constants, documented in the OpenAPI schema through the
field descriptions.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_QUERY_CHARS = 256
MAX_PAGE_SIZE = 100
MAX_PAGE = 20  # deeper pages are beyond what a shopper pages through; results stop at MAX_PAGE * size
MAX_PREFIX_CHARS = MAX_QUERY_CHARS  # a suggestion is asked for while the query is typed
MAX_SUGGESTIONS = 20
MAX_USER_ID_CHARS = 128


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _clean_text(value: str, what: str, limit: int) -> str:
    text = " ".join(str(value).split())
    if not text:
        raise ValueError(f"{what} is empty")
    if len(text) > limit:
        raise ValueError(f"{what} has {len(text)} characters; at most {limit}")
    return text


class PriceRange(_Strict):
    min: Optional[float] = Field(None, ge=0, description="lowest price, inclusive")
    max: Optional[float] = Field(None, ge=0, description="highest price, inclusive")

    @model_validator(mode="after")
    def _ordered(self) -> "PriceRange":
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"price.min {self.min} is above price.max {self.max}")
        return self


class SearchFilters(_Strict):
    """Structured filters; every one given must hold for a product to be returned."""

    category: Optional[list[str]] = Field(None, description="any of these categories (a level of the category path, case-insensitive)")
    brand: Optional[list[str]] = Field(None, description="any of these brands (case-insensitive)")
    price: Optional[PriceRange] = None
    in_stock: Optional[bool] = Field(None, description="true: only products with stock > 0 (unknown stock counts as in stock)")
    locale: Optional[str] = Field(None, max_length=16, description="the product's locale")

    @field_validator("category", "brand", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def is_empty(self) -> bool:
        return not any(v is not None for v in self.model_dump().values())


class SearchContext(_Strict):
    """Where the request comes from: business rules may be conditioned on it."""

    locale: Optional[str] = Field(None, max_length=16)
    device: Optional[Literal["desktop", "mobile", "tablet", "app"]] = None
    hour: Optional[int] = Field(None, ge=0, le=23, description="the shopper's local hour; the server's UTC hour when absent")


class SearchRequest(_Strict):
    query: str = Field(..., description=f"the shopper's text, 1 to {MAX_QUERY_CHARS} characters")
    user_id: Optional[str] = Field(None, max_length=MAX_USER_ID_CHARS, description="the shop's user id (pseudonymised at the edge; never stored raw)")
    session_id: Optional[str] = Field(None, max_length=MAX_USER_ID_CHARS)
    filters: Optional[SearchFilters] = None
    page: int = Field(1, ge=1, le=MAX_PAGE, description=f"1-based page, at most {MAX_PAGE}")
    size: int = Field(10, ge=1, le=MAX_PAGE_SIZE, description=f"results per page, at most {MAX_PAGE_SIZE}")
    context: Optional[SearchContext] = None
    explain: bool = Field(False, description="each result's per-stage ranks and scores")

    @field_validator("query")
    @classmethod
    def _query(cls, value: str) -> str:
        return _clean_text(value, "query", MAX_QUERY_CHARS)


class UnderstandRequest(_Strict):
    query: str = Field(..., description=f"the shopper's text, 1 to {MAX_QUERY_CHARS} characters")

    @field_validator("query")
    @classmethod
    def _query(cls, value: str) -> str:
        return _clean_text(value, "query", MAX_QUERY_CHARS)


class Entity(BaseModel):
    """A span of the query: [start, end) characters, its entity type and its text."""

    start: int
    end: int
    type: str
    text: str


class Understanding(BaseModel):
    """The query understanding stage's answer for one text."""

    intent: str
    raw_intent: str = ""
    confidence: float = 0.0
    entities: list[Entity] = []
    version: str = ""


class StageScore(BaseModel):
    rank: Optional[int] = None  # 1-based; None: the product was not in that stage's list
    score: Optional[float] = None


class ProductFields(BaseModel):
    """What a result shows of a product (the catalogue's columns, no second table read)."""

    product_id: str
    score: float
    title: str = ""
    brand: str = ""
    category_path: list[str] = []
    price: Optional[float] = None
    currency: str = ""
    stock: Optional[int] = None
    image_url: str = ""


class SearchHit(ProductFields):
    explain: Optional[dict[str, StageScore]] = None


class FiltersApplied(BaseModel):
    """The filters the search ran with: the request's merged with what understanding derived."""

    filters: dict[str, Any] = {}
    derived: list[str] = []  # e.g. "price_range 'under 50' -> price.max 50", or why an entity was ignored


class SearchResponse(BaseModel):
    request_id: str
    query: str
    results: list[SearchHit]
    page: int
    size: int
    total: int  # candidates that passed the filters and the rules' exclusions, at most the retrieval depth
    facets: dict[str, dict[str, int]] = {}  # brand / category -> value -> count among those `total`
    understanding: Optional[Understanding] = None
    filters_applied: FiltersApplied = FiltersApplied()
    rules_applied: list[str] = []
    versions: dict[str, str] = {}
    arm: str = ""
    degraded: list[str] = []  # stages that failed or were skipped, e.g. "ranker: timeout"
    timings_ms: dict[str, float] = {}
    served_by: Optional[dict[str, str]] = None  # with explain: the replica of each stage


class UnderstandResponse(Understanding):
    request_id: str = ""


class Suggestion(BaseModel):
    text: str
    score: float
    kind: str
    personalised: bool = False


class SuggestResponse(BaseModel):
    request_id: str
    prefix: str
    suggestions: list[Suggestion]
    version: str = ""


class DeploymentHealth(BaseModel):
    ready: bool
    version: str = ""
    detail: str = ""


class HealthResponse(BaseModel):
    ok: bool
    deployments: dict[str, DeploymentHealth]


class ErrorDetail(BaseModel):
    field: str
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: what was wrong and where."""

    error: str
    detail: list[ErrorDetail] = []
    request_id: str = ""


MAX_RECOMMENDATIONS = 50
MAX_CART_ITEMS = 100
MAX_EVENTS_PER_BATCH = 1000
MAX_EVENTS_BODY_BYTES = 512 * 1024  # a POST /v1/events body above this is a 413 before it is parsed
MAX_ID_CHARS = 128
EventType = Literal["impression", "click", "add_to_cart", "purchase", "return"]  # = schemas.records.EVENT_TYPES


class RecommendedItem(ProductFields):
    sources: list[str] = Field([], description="what put it there: precomputed, session, co_purchase, vector, popular[:locale]")


class RecommendResponse(BaseModel):
    """One list of recommendations. Feedback events cite `request_id` and `versions`."""

    request_id: str
    strategy: Literal["personal", "session", "popular", "similar", "cart"] = Field(
        ..., description="personal: the precomputed list; session: merged with the shopper's latest events; "
                         "popular: cold start (a shopper we know nothing about); similar / cart: item-to-item")
    cold_start: bool
    items: list[RecommendedItem]
    versions: dict[str, str] = {}
    rules_applied: list[str] = []
    locale: str = ""
    unknown_products: list[str] = Field([], description="cart products not in the catalogue (ignored)")
    degraded: list[str] = []


class CartRequest(_Strict):
    product_ids: list[str] = Field(..., min_length=1, max_length=MAX_CART_ITEMS, description="what is in the basket")
    user_id: Optional[str] = Field(None, max_length=MAX_USER_ID_CHARS)
    session_id: Optional[str] = Field(None, max_length=MAX_USER_ID_CHARS)
    locale: Optional[str] = Field(None, max_length=16)
    device: Optional[Literal["desktop", "mobile", "tablet", "app"]] = None
    size: int = Field(10, ge=1, le=MAX_RECOMMENDATIONS)

    @field_validator("product_ids")
    @classmethod
    def _ids(cls, value: list[str]) -> list[str]:
        for i, pid in enumerate(value):
            if not str(pid).strip() or len(pid) > MAX_ID_CHARS:
                raise ValueError(f"product_ids[{i}] must be 1 to {MAX_ID_CHARS} characters")
        return list(dict.fromkeys(value))


class EventIn(_Strict):
    """One behaviour event as a shop's front end reports it, citing the response it followed."""

    event_id: str = Field(..., min_length=1, max_length=MAX_ID_CHARS, description="the client's id: a retry with the same id is stored once")
    event_type: EventType
    product_id: str = Field(..., min_length=1, max_length=MAX_ID_CHARS)
    timestamp: datetime = Field(..., description="ISO 8601; without an offset it is UTC; at most a day ahead of the server")
    user_id: Optional[str] = Field(None, max_length=MAX_USER_ID_CHARS, description="raw id: pseudonymised before it is stored")
    session_id: Optional[str] = Field(None, max_length=MAX_USER_ID_CHARS, description="raw id: pseudonymised before it is stored")
    query_id: Optional[str] = Field(None, max_length=MAX_ID_CHARS)
    position: Optional[int] = Field(None, ge=1, le=10_000, description="1-based rank where the product was shown")
    request_id: Optional[str] = Field(None, max_length=MAX_ID_CHARS, description="the request id of the response shown")
    model_versions: dict[str, str] = Field({}, max_length=16, description="the response's `versions`")
    arm: Optional[str] = Field(None, max_length=64, description="the response's A/B arm")
    quantity: Optional[int] = Field(None, ge=1, le=1_000_000)
    value: Optional[float] = Field(None, ge=0, le=1e9, description="unit price of a purchase or return")
    locale: str = Field("", max_length=16)
    device: Optional[Literal["desktop", "mobile", "tablet", "app"]] = None
    ref_event_id: Optional[str] = Field(None, max_length=MAX_ID_CHARS, description="a return: the purchase event it cancels")

    @field_validator("timestamp")
    @classmethod
    def _when(cls, value: datetime) -> datetime:
        value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        if value > datetime.now(timezone.utc) + timedelta(days=1):
            raise ValueError(f"timestamp {value.isoformat()} is more than a day in the future")
        return value.astimezone(timezone.utc)

    @model_validator(mode="after")
    def _who(self) -> "EventIn":
        if not (self.user_id or "").strip() and not (self.session_id or "").strip():
            raise ValueError("user_id or session_id: one is required")
        return self


class EventBatch(_Strict):
    events: list[EventIn] = Field(..., min_length=1, max_length=MAX_EVENTS_PER_BATCH,
                                  description=f"1 to {MAX_EVENTS_PER_BATCH} events, stored together or not at all")


class EventsResponse(BaseModel):
    """Sent only once every event of the batch is committed to the events table."""

    request_id: str
    accepted: int = Field(..., description="events of the batch now stored (retried ones included)")
    duplicates: int = Field(..., description="of them, already stored before (a retry) or repeated in the batch")
    table_version: int


# ---- hops between stages (plain dicts on the wire: model_dump of these) ----

class Candidate(ProductFields):
    """One first-stage candidate with what later stages need: the text the ranker reads, the
    attributes rules match on, its rank and score in each list."""

    text: str
    attributes: str = "{}"
    stages: dict[str, StageScore] = {}


class Candidates(BaseModel):
    query: str
    candidates: list[Candidate]
    filters_applied: FiltersApplied = FiltersApplied()
    boosts: dict[str, list[str]] = {}  # from understanding, e.g. {"brand": ["acme"]}
    version: str = ""
    degraded: list[str] = []
