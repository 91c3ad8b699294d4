"""Relevance grade scales: how a judgments file grades, and the gain each grade is worth.

A shop's judgments come as ESCI letters, as named levels of its own ("perfect", "good", "bad")
or as numbers (0-3, 0-4, also the fractional mean of several raters, 2.5). The scale is
declared once (ingest `--grades`, or the store's taxonomy), every judgment is checked against
it, and the gain it yields is stored on the judgment, so evaluation never re-derives gains from
letters. The declaration is written as a short spec that is also stored per judgment:

  esci                      E=3, S=2, C=1, I=0 (the default)
  numeric:0-3               any number in [0, 3]; gain = grade
  perfect=3,good=2,bad=0    named levels and their gains (names matched case-insensitively)

A judgment counts as relevant (recall, MRR) when its gain is in the top third of the scale's
gain range: gain >= max - (max - min) / 3. For ESCI that is E and S, for 0-3 grades 2 and up.
"""
from __future__ import annotations

import math
import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.records import ESCI_GAIN

ESCI_SPEC = "esci"
_ESCI_GAINS: dict[str, float] = {k: float(v) for k, v in ESCI_GAIN.items()}
_NUMERIC = re.compile(r"^numeric:\s*(-?\d+(?:\.\d+)?)\s*(?:-|\.\.|to)\s*(-?\d+(?:\.\d+)?)$", re.IGNORECASE)


def _num(value: float) -> str:
    """A number as a grade: '3' not '3.0', '2.5' stays."""
    return f"{value:g}"


def _as_number(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None


class GradeScale(BaseModel):
    """A declared relevance scale: named levels with gains, or a numeric range where gain = grade."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["esci", "labels", "numeric"] = "esci"
    gains: dict[str, float] = Field(default_factory=dict, description="level name -> gain (kind labels)")
    min: Optional[float] = Field(None, description="lowest grade (kind numeric)")
    max: Optional[float] = Field(None, description="highest grade (kind numeric)")

    @model_validator(mode="after")
    def _check(self) -> "GradeScale":
        if self.kind == "esci":
            object.__setattr__(self, "gains", dict(_ESCI_GAINS))
        elif self.kind == "labels":
            if len(self.gains) < 2:
                raise ValueError(f"a labels grade scale needs at least two levels, got {self.gains!r}")
            bad = {k: v for k, v in self.gains.items() if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0)}
            if bad:
                raise ValueError(f"grade gains must be finite numbers >= 0; got {bad!r}")
            folded = [k.strip().casefold() for k in self.gains]
            if len(set(folded)) != len(folded) or not all(folded):
                raise ValueError(f"grade names must be non-empty and distinct ignoring case; got {list(self.gains)}")
        else:
            if self.min is None or self.max is None or not self.min < self.max or self.min < 0:
                raise ValueError(f"a numeric grade scale needs 0 <= min < max; got min={self.min}, max={self.max}")
        return self

    @classmethod
    def parse(cls, value: Any) -> "GradeScale":
        """A scale from its spec text ('esci', 'numeric:0-3', 'a=3,b=1'), a mapping or a scale."""
        if isinstance(value, GradeScale):
            return value
        if isinstance(value, dict):
            return cls.model_validate(value)
        text = str(value).strip()
        try:
            return cls._parse_text(text)
        except ValidationError as exc:  # a readable line naming the spec, not pydantic's dump
            raise ValueError(f"grade scale {text!r}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None

    @classmethod
    def _parse_text(cls, text: str) -> "GradeScale":
        if text.lower() == ESCI_SPEC:
            return cls(kind="esci")
        match = _NUMERIC.match(text)
        if match:
            return cls(kind="numeric", min=float(match.group(1)), max=float(match.group(2)))
        if "=" in text:
            gains: dict[str, float] = {}
            for item in text.split(","):
                name, _, gain = item.partition("=")
                try:
                    gains[name.strip()] = float(gain)
                except ValueError:
                    raise ValueError(f"grade gain of {name.strip()!r} must be a number, got {gain.strip()!r}") from None
            return cls.from_gains(gains)
        raise ValueError(f"unknown grade scale {text!r}: use 'esci', 'numeric:MIN-MAX' (e.g. numeric:0-3) "
                         "or NAME=GAIN,... (e.g. perfect=3,good=2,bad=0)")

    @classmethod
    def from_gains(cls, gains: dict[str, float]) -> "GradeScale":
        """A scale of named levels, e.g. the `grades` a store's taxonomy declares; ESCI's own stay 'esci'."""
        gains = {str(k).strip(): float(v) for k, v in gains.items()}
        if gains == _ESCI_GAINS:
            return cls(kind="esci")
        return cls(kind="labels", gains=gains)

    @property
    def spec(self) -> str:
        """The declaration as text: stored on every judgment, printed in reports, parsed back by `parse`."""
        if self.kind == "esci":
            return ESCI_SPEC
        if self.kind == "numeric":
            return f"numeric:{_num(self.min)}-{_num(self.max)}"
        return ",".join(f"{k}={_num(v)}" for k, v in self.gains.items())

    @property
    def gain_range(self) -> tuple[float, float]:
        if self.kind == "numeric":
            return float(self.min), float(self.max)
        return min(self.gains.values()), max(self.gains.values())

    @property
    def relevant_gain(self) -> float:
        """Gain from which a judgment counts as relevant: the top third of the gain range."""
        lo, hi = self.gain_range
        return hi - (hi - lo) / 3

    def describe(self) -> str:
        """One line for reports: the scale, its gains and what counts as relevant."""
        if self.kind == "numeric":
            return f"`{self.spec}` (gain = grade; relevant: gain >= {_num(round(self.relevant_gain, 4))})"
        gains = ", ".join(f"{k}={_num(v)}" for k, v in self.gains.items())
        relevant = ", ".join(k for k, v in self.gains.items() if v >= self.relevant_gain)
        return f"`{self.spec}` ({gains}; relevant: {relevant})"

    def grade(self, value: Any) -> tuple[str, float]:
        """(canonical grade, gain) of one raw grade; ValueError naming the value and the scale."""
        if self.kind == "numeric":
            try:
                number = float(str(value).strip())
            except ValueError:
                raise ValueError(f"{str(value)!r} is not a number on the scale {self.spec}") from None
            if not math.isfinite(number) or not self.min <= number <= self.max:
                raise ValueError(f"{str(value)!r} is outside the scale {self.spec} ({_num(self.min)} to {_num(self.max)})")
            return _num(number), number
        text = str(value).strip()
        as_number = _as_number(text)
        for name, gain in self.gains.items():
            # levels named by numbers match a spreadsheet's "3.0" too
            if name.casefold() == text.casefold() or (as_number is not None and as_number == _as_number(name)):
                return name, gain
        hint = "" if self.kind == "labels" else " (declare the file's own scale, e.g. --grades numeric:0-3)"
        raise ValueError(f"{text!r} is not one of {', '.join(self.gains)} on the scale {self.spec}{hint}")


ESCI = GradeScale(kind="esci")
