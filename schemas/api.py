"""The HTTP API's contracts (requests, responses) and the typed hops between Serve stages.

Requests forbid unknown fields, so a misspelt filter is a 422 naming it rather than a silently
ignored constraint. Limits are module constants, documented in the OpenAPI schema through the
field descriptions.
"""
from __future__ import annotations

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
