"""Training gains, pointwise targets and retriever positives from judgments on declared grade scales.

Each judgment carries the gain its declared scale (schemas.grades) gave it and the scale's spec.
Training reads those, never grade letters, so a shop's numeric grades (0-3, 0-4, fractional
means of several raters) or named levels train the ranker and the retriever as ESCI's do:
- gains (listwise loss, validation NDCG): the stored gains, the figures jobs.evaluate scores with.
  When the snapshot's scales span different gain ranges (judgments on 0-4, behaviour labels on
  ESCI's 0-3), each gain is put on its own scale's [0, 1] and then onto 0..the highest top gain
  (a 4 of 0-4 and an E weigh the same), and a note says so.
- targets (pointwise BCE): (gain - lowest) / (highest - lowest) of the judgment's own scale, in
  [0, 1]. ESCI's E/S/C/I = 3/2/1/0 give 1, 2/3, 1/3, 0 = gain / 3, what training always used.
- retriever positives: relevant by evaluation's own rule (`Graded.of(...).relevant`: the top
  third of the scale's gain range; ESCI: E and S); hard negatives: the scale's lowest grade (I).
A scale that cannot be normalised (every grade worth the same gain), a spec that does not parse
or a stored gain outside its scale's range is a JobError naming the scale and the judgment.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from ray_app.cli import JobError
from ray_app.evaluation import Graded
from schemas.grades import ESCI, GradeScale
from schemas.taxonomy import Taxonomy

_EPS = 1e-9  # stored gains are floats: a 3.0000000001 from a rater mean is still the top grade


def parse_scale(spec: Optional[str], cache: dict[str, GradeScale]) -> GradeScale:
    """The scale of a stored spec ('' = esci, the column's default); JobError naming a spec that does not parse."""
    spec = spec or ESCI.spec
    if spec not in cache:
        try:
            cache[spec] = GradeScale.parse(spec)
        except ValueError as exc:
            raise JobError(f"judgments: stored grade scale {spec!r} cannot be read: {exc}") from None
    return cache[spec]


def _check_range(scale: GradeScale) -> tuple[float, float]:
    lo, hi = scale.gain_range
    if not hi > lo:
        raise JobError(f"grade scale {scale.spec!r} gives every grade the gain {hi:g}: its judgments cannot be "
                       "normalised into training targets (declare grades with different gains and re-ingest)")
    return lo, hi


def graded(grade: str, gain: float, scale: GradeScale, where: str) -> Graded:
    """A stored judgment as evaluation grades it (relevance by `Graded.of`), its gain checked against its scale."""
    lo, hi = _check_range(scale)
    gain = float(gain)
    if not lo - _EPS <= gain <= hi + _EPS:
        raise JobError(f"{where}: stored gain {gain:g} (grade {grade!r}) is outside its scale {scale.spec!r} "
                       f"({lo:g} to {hi:g}); re-ingest the judgments with the scale they were graded on")
    return Graded.of(grade, gain, scale)


def relevance_scale(taxonomy: Taxonomy) -> GradeScale:
    """The scale relevance labels are on: the grades (name -> gain) the snapshot's taxonomy declares."""
    try:
        return GradeScale.from_gains(taxonomy.grades)
    except ValueError as exc:
        raise JobError(f"taxonomy {taxonomy.name!r}: its grades {taxonomy.grades} are not a usable grade scale "
                       f"for relevance labels: {exc}") from None


def _plain(x: float) -> float | int:
    """3.0 -> 3: gains serialise as they did when they were ESCI's integers (same rows, same shuffle)."""
    return int(x) if float(x).is_integer() else float(x)


@dataclass(frozen=True)
class GainMap:
    """How one snapshot's stored gains become training gains and [0, 1] targets."""

    ranges: dict[str, tuple[float, float]]  # scale spec -> (lowest, highest gain)
    top: Optional[float] = None  # set when the scales' ranges differ: gains are rescaled onto 0..top

    def target(self, g: Graded) -> float:
        """Pointwise target in [0, 1]: the gain's place in its own scale's range."""
        lo, hi = self.ranges[g.scale]
        return min(1.0, max(0.0, (g.gain - lo) / (hi - lo)))

    def gain(self, g: Graded) -> float | int:
        """Gain for the listwise loss and validation NDCG: as stored, or rescaled when ranges differ."""
        return _plain(g.gain if self.top is None else self.target(g) * self.top)

    def negative(self, g: Graded) -> bool:
        """A hard negative for the retriever: the lowest grade of its scale (ESCI: I)."""
        return g.gain <= self.ranges[g.scale][0] + _EPS

    def notes(self) -> list[str]:
        if self.top is None:
            return []
        shown = ", ".join(f"{spec} ({lo:g} to {hi:g})" for spec, (lo, hi) in sorted(self.ranges.items()))
        return [f"judgments on grade scales with different gain ranges: {shown}; training gains are each scale's "
                f"[0, 1] position times {self.top:g}, so validation NDCG is not jobs.evaluate's figure"]


def gain_map(judged: Iterable[Graded]) -> GainMap:
    """The GainMap of the judgments a task trains on (JobError on a scale that cannot be normalised)."""
    cache: dict[str, GradeScale] = {}
    for g in judged:
        parse_scale(g.scale, cache)
    ranges = {scale.spec: _check_range(scale) for scale in cache.values()}
    top = max(hi for _, hi in ranges.values()) if len(set(ranges.values())) > 1 else None
    return GainMap(ranges, top)
