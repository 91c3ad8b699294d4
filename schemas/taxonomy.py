"""The label taxonomy: which intent classes, entity types and relevance grades a store accepts.

A shop declares its own (dozens or hundreds of intents, its entity types, a grade scale with
gains) in a YAML file; `ray_app.taxonomy` saves it into the store, where snapshots pin it. The
built-in e-commerce taxonomy (schemas/records.py INTENTS, ENTITY_TYPES, ESCI grades) applies
when none is declared. Label import, ingest, rules, training and evaluation all check values
with the same `check_*` methods, so an error always names the value and the declared ones.
"""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.records import ENTITY_TYPES, ESCI_GAIN, INTENTS

MAX_KNOWN_IN_ERROR = 30  # a taxonomy of 300 intents would otherwise bury the value in the message


class TaxonomyError(ValueError):
    """A value that the taxonomy does not declare, or a declaration that is inconsistent."""


def _known(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_KNOWN_IN_ERROR])
    more = len(names) - MAX_KNOWN_IN_ERROR
    return shown + (f" ... and {more} more (python -m jobs.label --action taxonomy lists them)" if more > 0 else "")


def _lookup(value: str, names: list[str], aliases: dict[str, str]) -> Optional[str]:
    """The declared spelling of `value`: exact, then alias, then a unique case-insensitive match."""
    if value in names:
        return value
    low = value.lower()
    if low in aliases:
        return aliases[low]
    folded = [n for n in names if n.lower() == low]
    return folded[0] if len(folded) == 1 else None


class Taxonomy(BaseModel):
    """Intent classes, entity types, relevance grades (name -> gain) and annotator display names."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("custom", description="a name for the declaration, shown in summaries")
    intents: list[str] = Field(..., min_length=1, description="intent classes, in the order models index them")
    out_of_scope: Optional[str] = Field(None, description="the intent meaning 'not a request this shop serves' (one of intents)")
    entity_types: list[str] = Field(default_factory=list, description="entity span types")
    entity_aliases: dict[str, str] = Field(default_factory=dict, description="alternative spelling -> declared entity type")
    grades: dict[str, float] = Field(default_factory=lambda: {k: float(v) for k, v in ESCI_GAIN.items()},
                                     description="relevance grade name -> gain (default ESCI E/S/C/I -> 3/2/1/0)")
    grade_aliases: dict[str, str] = Field(default_factory=dict, description="alternative spelling -> declared grade")
    annotators: dict[str, str] = Field(default_factory=dict, description="annotator id (e.g. e-mail) -> display name stored instead")
    annotators_keyed: bool = Field(False, description="annotators keys are keyed pseudonyms (the form saved in the store)")

    @model_validator(mode="after")
    def _consistent(self) -> "Taxonomy":
        for field, names in (("intents", self.intents), ("entity_types", self.entity_types), ("grades", list(self.grades))):
            blank = [n for n in names if not str(n).strip()]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if blank or dupes:
                raise TaxonomyError(f"taxonomy {field}: " + ("blank names" if blank else f"duplicate names {dupes}"))
        if self.out_of_scope is not None and self.out_of_scope not in self.intents:
            raise TaxonomyError(f"taxonomy out_of_scope {self.out_of_scope!r} is not one of the declared intents")
        if not self.grades:
            raise TaxonomyError("taxonomy grades: declare at least one relevance grade (name: gain)")
        self.entity_aliases = {k.lower(): v for k, v in self.entity_aliases.items()}
        self.grade_aliases = {k.lower(): v for k, v in self.grade_aliases.items()}
        for field, aliases, names in (("entity_aliases", self.entity_aliases, self.entity_types),
                                      ("grade_aliases", self.grade_aliases, list(self.grades))):
            bad = sorted(v for v in aliases.values() if v not in names)
            if bad:
                raise TaxonomyError(f"taxonomy {field} point at undeclared names {bad}")
        return self

    def check_intent(self, value: str) -> str:
        """The declared intent for `value`; TaxonomyError naming it and the known ones otherwise."""
        found = _lookup(str(value).strip(), self.intents, {})
        if found is None:
            hint = " (the built-in taxonomy: declare your own classes with --taxonomy FILE)" if self.name == "ecommerce" else ""
            raise TaxonomyError(f"unknown intent {value!r}; known ({len(self.intents)}): {_known(self.intents)}{hint}")
        return found

    def check_entity_type(self, value: str) -> str:
        """The declared entity type for `value` (aliases and case folded)."""
        found = _lookup(str(value).strip(), self.entity_types, self.entity_aliases)
        if found is None:
            raise TaxonomyError(f"unknown entity type {value!r}; known ({len(self.entity_types)}): {_known(self.entity_types)}")
        return found

    def check_grade(self, value: str) -> str:
        """The declared grade for `value`; "2.0" matches a grade named "2"."""
        text = str(value).strip()
        found = _lookup(text, list(self.grades), self.grade_aliases)
        if found is None:
            try:
                number = float(text)
                found = next((g for g in self.grades if _as_float(g) == number), None)
            except ValueError:
                pass
        if found is None:
            raise TaxonomyError(f"unknown relevance grade {value!r}; known: {_known(list(self.grades))}")
        return found

    def check(self, task: str, value: str) -> str:
        """check_intent or check_grade by label task ("entity" labels carry no value)."""
        return self.check_intent(value) if task == "intent" else self.check_grade(value) if task == "relevance" else value

    def gain(self, grade: str) -> float:
        """The gain of a declared grade."""
        return self.grades[self.check_grade(grade)]

    def grade_for_gain(self, gain: float) -> Optional[str]:
        """The declared grade with exactly this gain (behaviour labels are made on the ESCI scale)."""
        return next((g for g, v in self.grades.items() if v == gain), None)


def _as_float(name: str) -> Optional[float]:
    try:
        return float(name)
    except ValueError:
        return None


def builtin_taxonomy() -> Taxonomy:
    """The built-in e-commerce taxonomy, used when a store declares none."""
    return Taxonomy(name="ecommerce", intents=list(INTENTS), out_of_scope="out_of_scope", entity_types=list(ENTITY_TYPES),
                    entity_aliases={"color": "colour", "price": "price_range", "price range": "price_range"},
                    grade_aliases={"exact": "E", "substitute": "S", "complement": "C", "irrelevant": "I"})
