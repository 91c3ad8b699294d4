"""Contracts of the A/B read-out (jobs.abtest)."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, Field

from schemas.config import MODELS_ENV, JobConfig, workspace_path


class AbtestConfig(JobConfig):
    """`python -m jobs.abtest`: per-arm rates of the logged feedback events, and optionally an offline estimate of a candidate."""

    control: Optional[str] = Field(None, description="the control arm (default: 'control' when present, else the first by name)")
    since: Optional[str] = Field(None, description="only events at or after this ISO time")
    until: Optional[str] = Field(None, description="only events before this ISO time")
    shares: list[str] = Field(default_factory=list, description="declared arm shares for the sample-ratio check, arm=share "
                                                               "(repeatable; default: equal)")
    alpha: float = Field(0.05, gt=0, lt=0.5)
    mde: float = Field(0.1, gt=0, description="relative lift the power figure is for (0.1 = +10%)")
    resamples: int = Field(1000, ge=100)
    candidate: Optional[str] = Field(None, description="a ranker version or alias: estimate its clicks per request offline "
                                                       "from the logged search impressions (position-based IPS)")
    logged_arm: Optional[str] = Field(None, description="whose impressions the estimate reads (default: the control arm)")
    models_dir: Optional[str] = workspace_path("models", "model registry folder", env=MODELS_ENV)
    eta: float = Field(1.0, ge=0, description="examination propensity (1/rank)^eta of the IPS estimate")
    clip: float = Field(20.0, ge=1, description="largest IPS weight")
    report_dir: Optional[str] = workspace_path("reports", "folder of the markdown report")
    out: Optional[str] = Field(None, description="also write the full read-out as JSON here")


class AbtestResult(BaseModel):
    ok: bool = True
    control: str
    arms: dict[str, dict[str, Any]]
    versus_control: dict[str, dict[str, Any]]
    sample_ratio: dict[str, Any]
    offline_estimate: Optional[dict[str, Any]] = None
    events: int
    report: str
    notes: list[str] = Field(default_factory=list)
