"""Structured search filters three ways that select exactly the same products: a numpy mask over
the catalogue's columns (`CatalogueColumns.mask`), a LanceDB SQL `where` for prefiltered FTS and
vector search (`filter_sql`), and a predicate on one product dict (`row_matches`); plus the
filters and boosts query understanding adds (`understanding_filters`).

Semantics (schemas/api.SearchFilters): brand and category match case-insensitively (filter values
are also trimmed); category matches any level of the path; price bounds are inclusive and a
product with unknown price (null or NaN) fails any price bound; `in_stock: true` keeps stock > 0
or unknown stock (`false` constrains nothing); locale matches case-insensitively. A list filter
that is empty after trimming (an unticked facet) constrains nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ray_app.index import sql_list
from ray_app.search.price_text import parse_price
from schemas.api import PriceRange, SearchFilters

# category levels are joined with a control character no shop puts in a category name, so one
# strpos() over the lower-cased, delimited path is an exact, case-insensitive level match
_LEVELS_SQL = "concat(chr(31), lower(array_to_string(category_path, chr(31))), chr(31))"
PRICE_LABELS = {"price_range", "price", "price range"}  # the taxonomy's aliases of price_range


def _values(values: Optional[list[str]]) -> list[str]:
    return sorted({v.strip().lower() for v in values or [] if v.strip()})


def _bounds(price: Optional[PriceRange]) -> Optional[tuple[float, float]]:
    """(min, max) with open sides as -inf/+inf; None when no bound is given (any bound needs a known price)."""
    if price is None or (price.min is None and price.max is None):
        return None
    return (-math.inf if price.min is None else price.min), (math.inf if price.max is None else price.max)


def _codes(col: pa.ChunkedArray) -> tuple[np.ndarray, dict[str, int]]:
    """Per row a code of its lower-cased value (-1 for null) and the value -> code vocabulary."""
    enc = pc.dictionary_encode(col.combine_chunks())
    lowered = [str(v).lower() for v in enc.dictionary.to_pylist()]
    vocab = {v: i for i, v in enumerate(sorted(set(lowered)))}
    remap = np.array([vocab[v] for v in lowered] + [-1], dtype=np.int64)
    idx = enc.indices.fill_null(len(lowered)).to_numpy(zero_copy_only=False)
    return remap[idx], vocab


@dataclass
class CatalogueColumns:
    """Filterable columns of the whole catalogue, built once per replica."""

    ids: list[str]
    brand: np.ndarray  # code into brands, -1 unknown
    brands: dict[str, int]  # lower-cased brand -> code
    locale: np.ndarray
    locales: dict[str, int]
    category_rows: dict[str, np.ndarray]  # lower-cased category level -> sorted row indices
    price: np.ndarray  # float64, NaN unknown
    stock: np.ndarray  # float64, NaN unknown
    row_of: dict[str, int]

    @classmethod
    def from_table(cls, tbl: pa.Table) -> "CatalogueColumns":
        """Columns from a products table (product_id required; a missing column is unknown everywhere)."""
        n = tbl.num_rows
        ids = [str(x) for x in tbl.column("product_id").to_pylist()]

        def col(name: str, typ: pa.DataType) -> pa.ChunkedArray:
            return tbl.column(name) if name in tbl.column_names else pa.chunked_array([pa.nulls(n, typ)])

        brand, brands = _codes(col("brand", pa.string()).cast(pa.string()))
        locale, locales = _codes(col("locale", pa.string()).cast(pa.string()))
        paths = col("category_path", pa.list_(pa.string())).combine_chunks()
        flat, parents = pc.list_flatten(paths), pc.list_parent_indices(paths).to_numpy(zero_copy_only=False)
        level_codes, levels = _codes(pa.chunked_array([flat.cast(pa.string())]))
        keep = level_codes >= 0
        pairs = np.unique(np.stack([level_codes[keep], parents[keep]]), axis=1) if keep.any() else np.zeros((2, 0), np.int64)
        cuts = np.searchsorted(pairs[0], np.arange(len(levels) + 1))
        rows = {name: pairs[1, cuts[c]:cuts[c + 1]] for name, c in levels.items()}

        def num(name: str) -> np.ndarray:
            return col(name, pa.float64()).cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)

        return cls(ids, brand, brands, locale, locales, rows, num("price"), num("stock"),
                   {p: i for i, p in enumerate(ids)})

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self, filters: Optional[SearchFilters]) -> np.ndarray:
        """Boolean mask over the catalogue rows of the products `filters` selects."""
        keep = np.ones(len(self.ids), dtype=bool)
        if filters is None:
            return keep
        if brands := _values(filters.brand):
            wanted = np.zeros(len(self.brands) + 1, dtype=bool)  # last slot: code -1, unknown brand
            wanted[[self.brands[b] for b in brands if b in self.brands]] = True
            keep &= wanted[self.brand]
        if cats := _values(filters.category):
            in_cat = np.zeros(len(self.ids), dtype=bool)
            for c in cats:
                in_cat[self.category_rows.get(c, np.zeros(0, np.int64))] = True
            keep &= in_cat
        if (bounds := _bounds(filters.price)) is not None:
            lo, hi = bounds
            # NaN compares False, so an unknown price fails; min +inf selects nothing (as in the SQL)
            keep &= (self.price >= lo) & (self.price <= hi) & (lo < math.inf)
        if filters.in_stock:
            keep &= np.isnan(self.stock) | (self.stock > 0)
        if filters.locale is not None:
            keep &= self.locale == self.locales.get(filters.locale.strip().lower(), -2)
        return keep

    def allowed_ids(self, filters: Optional[SearchFilters]) -> set[str]:
        """Product ids `filters` selects."""
        return {self.ids[i] for i in np.flatnonzero(self.mask(filters))}

    def predicate(self, filters: Optional[SearchFilters]) -> Callable[[dict], bool]:
        """A hit/product dict -> passes `filters` (by its product_id; unknown ids fail), mask computed once."""
        keep = self.mask(filters)
        return lambda row: (i := self.row_of.get(str(row.get("product_id")))) is not None and bool(keep[i])


def row_matches(filters: Optional[SearchFilters], row: dict) -> bool:
    """Whether one product dict (a Product or Candidate dump) passes `filters`; missing fields are unknown."""
    if filters is None:
        return True
    if (brands := _values(filters.brand)) and str(row.get("brand") or "").lower() not in brands:
        return False
    levels = {str(c).lower() for c in row.get("category_path") or [] if c is not None}
    if (cats := _values(filters.category)) and not levels.intersection(cats):
        return False
    if (bounds := _bounds(filters.price)) is not None:
        price = row.get("price")
        if price is None or math.isnan(float(price)) or not bounds[0] <= float(price) <= bounds[1] or bounds[0] == math.inf:
            return False
    stock = row.get("stock")
    if filters.in_stock and stock is not None and not math.isnan(float(stock)) and float(stock) <= 0:
        return False
    return filters.locale is None or str(row.get("locale") or "").lower() == filters.locale.strip().lower()


def filter_sql(filters: Optional[SearchFilters]) -> Optional[str]:
    """The same filter as a LanceDB SQL `where` (exact: selects what `mask` selects); None when no constraint."""
    if filters is None:
        return None
    parts: list[str] = []
    if brands := _values(filters.brand):
        parts.append(f"lower(brand) IN ({sql_list(brands)})")
    if cats := _values(filters.category):
        parts.append("(" + " OR ".join(f"strpos({_LEVELS_SQL}, concat(chr(31), {sql_list([c])}, chr(31))) > 0"
                                       for c in cats) + ")")
    if (bounds := _bounds(filters.price)) is not None:
        lo, hi = bounds
        if lo == math.inf:
            return "FALSE"
        # NaN sorts above every number in Arrow comparisons, so it is excluded explicitly
        parts.append("(" + " AND ".join(["price IS NOT NULL", "NOT isnan(price)"] + [f"price >= {lo!r}"] * (lo > -math.inf)
                                        + [f"price <= {hi!r}"] * (hi < math.inf)) + ")")
    if filters.in_stock:
        parts.append("(stock IS NULL OR stock > 0)")
    if filters.locale is not None:
        parts.append(f"lower(locale) = {sql_list([filters.locale.strip().lower()])}")
    return " AND ".join(parts) or None


def _tighter(a: Optional[float], b: Optional[float], pick: Callable[[float, float], float]) -> Optional[float]:
    return b if a is None else a if b is None else pick(a, b)


def understanding_filters(entities: list[dict], filters: Optional[SearchFilters],
                          brands: Union[set[str], CatalogueColumns],
                          brand_policy: Literal["boost", "filter", "off"] = "boost",
                          price_policy: Literal["filter", "off"] = "filter",
                          ) -> tuple[SearchFilters, dict[str, list[str]], list[str]]:
    """(effective filters, boosts e.g. {"brand": ["nike"]}, what was applied and why) from the
    query's entities; the request's own filters always win over derived ones."""
    known = set(brands.brands) if isinstance(brands, CatalogueColumns) else {b.strip().lower() for b in brands}
    base = filters or SearchFilters()
    update: dict[str, Any] = {}
    boosts: dict[str, list[str]] = {}
    applied: list[str] = []
    derived_brands: list[str] = []
    lo: Optional[float] = None
    hi: Optional[float] = None
    for ent in entities:
        label, text = str(ent.get("type", ent.get("label", ""))).strip().lower(), str(ent.get("text", "")).strip()
        if label == "brand" and brand_policy != "off":
            if text.lower() not in known:
                applied.append(f"brand {text!r} -> not a catalogue brand; ignored")
            elif text.lower() not in derived_brands:
                derived_brands.append(text.lower())
        elif label in PRICE_LABELS and price_policy != "off":
            parsed = parse_price(text)
            if parsed is None:
                applied.append(f"price_range {text!r} -> not understood as a price; no filter")
                continue
            lo = _tighter(lo, parsed[0], max)
            hi = _tighter(hi, parsed[1], min)
            if base.price is not None:
                applied.append(f"price_range {text!r} -> ignored: the request's price filter wins")
            else:
                sides = [f"price.{side} {value:g}" for side, value in zip(("min", "max"), parsed) if value is not None]
                applied.append(f"price_range {text!r} -> " + ", ".join(sides))
    if (lo is not None or hi is not None) and base.price is None:
        if lo is not None and hi is not None and lo > hi:
            applied.append(f"price_range bounds contradict (min {lo:g} > max {hi:g}); no price filter")
        else:
            update["price"] = PriceRange(min=lo, max=hi)
    if derived_brands and brand_policy == "boost":
        boosts["brand"] = derived_brands
        applied.append(f"brand {derived_brands} -> boost")
    elif derived_brands and brand_policy == "filter":
        if _values(base.brand):
            applied.append(f"brand {derived_brands} -> ignored: the request's brand filter wins")
        else:
            update["brand"] = derived_brands
            applied.append(f"brand {derived_brands} -> brand filter")
    return base.model_copy(update=update), boosts, applied
