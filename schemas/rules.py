"""The business rules file: a version string and a list of rules (boost, pin, exclude, diversity),
each optionally conditioned on the query, the shopper's locale, device and hour.

Rules are config, not code: merchandisers edit the YAML and the Ranker swaps it in through
`reconfigure()`. Every model forbids unknown fields, so a misspelt key is an error naming the rule
id and the field instead of a rule that silently never fires.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Device = Literal["desktop", "mobile", "tablet", "app"]
BOOST_FIELD = re.compile(r"^(brand|category|attribute:.+)$")
_KINDS = ("boost", "pin", "exclude", "diversity")


class RulesError(ValueError):
    """A rules file or mapping that does not validate; the message names the rule id and the field."""


def normalise_query(text: str) -> str:
    """Lower case, single spaces: how rule conditions and pins compare query text."""
    return " ".join(str(text).lower().split())


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class When(_Strict):
    """All given conditions must hold; within one list, any value."""

    query_equals: Optional[list[str]] = Field(None, description="the normalised query equals one of these")
    query_contains: Optional[list[str]] = Field(None, description="the normalised query contains one of these as whole words")
    locale: Optional[list[str]] = Field(None, description="the request's locale (case-insensitive)")
    device: Optional[list[Device]] = None
    hours: Optional[tuple[int, int]] = Field(None, description="[start, end) local hours 0-24; start > end wraps past midnight")

    @field_validator("query_equals", "query_contains", "locale", "device", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("query_equals", "query_contains", "locale")
    @classmethod
    def _normalise(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        if value is not None and not [v for v in value if normalise_query(v)]:
            raise ValueError("needs at least one non-empty value")
        return None if value is None else [normalise_query(v) for v in value if normalise_query(v)]

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: Optional[tuple[int, int]]) -> Optional[tuple[int, int]]:
        if value is not None:
            start, end = value
            if not (0 <= start <= 23 and 0 <= end <= 24) or start == end:
                raise ValueError(f"hours {list(value)} must be [start, end) with 0 <= start <= 23, 0 <= end <= 24, start != end")
        return value


class _Rule(_Strict):
    id: str = Field(..., min_length=1)
    when: Optional[When] = None


class BoostRule(_Rule):
    """Multiply matching products' scores by `factor` (sign-aware; see ray_app/search/rules.py)."""

    kind: Literal["boost"]
    field: str = Field(..., description="brand, category (any level) or attribute:<name>")
    values: list[str] = Field(..., min_length=1, description="case-insensitive; `value` for one")
    factor: float = Field(..., gt=0, description="> 1 raises, < 1 lowers")

    @model_validator(mode="before")
    @classmethod
    def _value(cls, data: Any) -> Any:
        if isinstance(data, dict) and "value" in data and "values" not in data:
            data = {**{k: v for k, v in data.items() if k != "value"}, "values": _as_list(data["value"])}
        return data

    @field_validator("field")
    @classmethod
    def _field(cls, value: str) -> str:
        if not BOOST_FIELD.match(value):
            raise ValueError(f"{value!r} is not brand, category or attribute:<name>")
        return value

    @field_validator("values", mode="before")
    @classmethod
    def _values(cls, value: Any) -> Any:
        return _as_list(value)


class PinRule(_Rule):
    """Put `product_id` at 1-based `position` when the query equals one of `query` (normalised)."""

    kind: Literal["pin"]
    query: list[str] = Field(..., min_length=1)
    product_id: str = Field(..., min_length=1)
    position: int = Field(1, ge=1)

    @field_validator("query", mode="before")
    @classmethod
    def _query(cls, value: Any) -> Any:
        return [normalise_query(v) for v in _as_list(value)] if isinstance(value, (str, list)) else value


class ExcludeRule(_Rule):
    """Drop out-of-stock products (stock known and <= 0), these ids, these brands (case-insensitive)."""

    kind: Literal["exclude"]
    out_of_stock: bool = False
    product_ids: list[str] = []
    brands: list[str] = []

    @model_validator(mode="after")
    def _something(self) -> "ExcludeRule":
        if not (self.out_of_stock or self.product_ids or self.brands):
            raise ValueError("excludes nothing: set out_of_stock, product_ids or brands")
        return self


class DiversityRule(_Rule):
    """Within the first `first_n` results: at most `max_per_brand` per brand, or MMR re-ordering."""

    kind: Literal["diversity"]
    first_n: int = Field(10, ge=1)
    max_per_brand: Optional[int] = Field(None, ge=1)
    mmr_lambda: Optional[float] = Field(None, ge=0, le=1, description="weight of relevance against similarity")

    @model_validator(mode="after")
    def _one(self) -> "DiversityRule":
        if (self.max_per_brand is None) == (self.mmr_lambda is None):
            raise ValueError("set exactly one of max_per_brand and mmr_lambda")
        return self


Rule = Annotated[Union[BoostRule, PinRule, ExcludeRule, DiversityRule], Field(discriminator="kind")]


class RuleSet(_Strict):
    """A versioned rules file."""

    version: str = Field(..., min_length=1, description='e.g. "2026-12-01"; quote it in YAML')
    understanding_boost: float = Field(1.5, gt=0, description="factor for boosts derived from query understanding")
    rules: list[Rule] = []

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        # an unquoted 2026-12-01 is a YAML date; it means the same version string
        return value.isoformat() if isinstance(value, dt.date) else value

    @model_validator(mode="after")
    def _unique(self) -> "RuleSet":
        seen: set[str] = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)
        return self


def parse_rules(data: Any, source: str = "rules") -> RuleSet:
    """A RuleSet from a mapping; RulesError naming `source`, the rule id and the field."""
    if not isinstance(data, dict):
        raise RulesError(f"{source}: must be a mapping with version and rules, got {type(data).__name__}")
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        raise RulesError(f"{source}: " + "; ".join(_describe(e, data) for e in exc.errors())) from exc


def _describe(err: dict, data: dict) -> str:
    loc, msg = list(err["loc"]), err["msg"].removeprefix("Value error, ")
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        raw = data["rules"][loc[1]] if isinstance(data.get("rules"), list) else None
        rid = raw.get("id") if isinstance(raw, dict) else None
        who = f"rule {rid!r} (rules[{loc[1]}])" if rid else f"rules[{loc[1]}]"
        rest = loc[3:] if len(loc) > 2 and loc[2] in _KINDS else loc[2:]  # drop the union's tag
        if not rest and err["type"].startswith("union_tag"):
            rest = ["kind"]
        return f"{who} field {'.'.join(map(str, rest))}: {msg}" if rest else f"{who}: {msg}"
    return f"field {'.'.join(map(str, loc))}: {msg}" if loc else msg
