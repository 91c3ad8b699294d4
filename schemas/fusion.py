"""Contract of the hybrid first stage's fusion: how BM25's and the bi-encoder's lists become one.

A `FusionSpec` is what `jobs.fuse` fits on validation queries and registers (task `fusion`,
artifact `fusion.json`), what `jobs.evaluate --fusion` scores, and what serving applies through
`ray_app.search.fusion.fuse`. The default is the fusion the hybrid always had: reciprocal-rank
fusion, k = 60, both lists weighted alike.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FUSION_LISTS: tuple[str, ...] = ("bm25", "dense")  # the lists fused, in the order ties are broken by
FUSION_METHODS: tuple[str, ...] = ("rrf", "minmax", "zscore")
FUSION_FILE = "fusion.json"  # the artifact of a registry version of task FUSION_TASK
FUSION_TASK = "fusion"


class FusionSpec(BaseModel):
    """How two first-stage lists are fused: weighted reciprocal ranks or weighted normalised scores."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["rrf", "minmax", "zscore"] = Field(
        "rrf", description="rrf: sum of weight / (rrf_k + rank); minmax / zscore: sum of weight x the list's "
                           "score normalised per list (min-max to [0, 1], or standardised)")
    weights: dict[str, float] = Field(default_factory=lambda: {name: 1.0 for name in FUSION_LISTS},
                                      description="weight of each list: bm25 and dense, non-negative, not both zero")
    rrf_k: int = Field(60, ge=1, description="rrf: the rank constant (larger flattens the head of each list)")

    @field_validator("weights")
    @classmethod
    def _two_lists(cls, weights: dict[str, float]) -> dict[str, float]:
        if set(weights) != set(FUSION_LISTS):
            got = ", ".join(sorted(weights)) or "none"
            raise ValueError(f"weights must name exactly {', '.join(FUSION_LISTS)}; got {got}")
        negative = {k: w for k, w in weights.items() if not w >= 0}  # `not >=` also catches NaN
        if negative:
            raise ValueError(f"weights must be non-negative; got {negative}")
        if not any(weights.values()):
            raise ValueError("weights must not all be zero: nothing would be fused")
        return {name: float(weights[name]) for name in FUSION_LISTS}

    def dense_share(self) -> float:
        """The dense list's share of the total weight (0: BM25 alone, 0.5: equal, 1: the encoder alone)."""
        return self.weights["dense"] / sum(self.weights.values())

    def is_default(self) -> bool:
        """True for plain reciprocal-rank fusion with equal weights and k = 60 (the hybrid as it always was)."""
        return self.method == "rrf" and self.rrf_k == 60 and self.weights["bm25"] == self.weights["dense"]

    def describe(self) -> str:
        """One line, e.g. 'rrf k=60, weights bm25 0.5 / dense 0.5'."""
        head = f"rrf k={self.rrf_k}" if self.method == "rrf" else f"{self.method} score fusion"
        return f"{head}, weights bm25 {self.weights['bm25']:g} / dense {self.weights['dense']:g}"
