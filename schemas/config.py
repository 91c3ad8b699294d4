"""Typed job configs. Each job is `python -m jobs.<name> [--config file.yaml] [--field value ...]`:
YAML gives a base, flags override it, and pydantic validates the result before any work."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.records import TABLE_KEYS


class JobConfig(BaseModel):
    """Fields shared by every job."""

    model_config = ConfigDict(extra="forbid")

    db: Optional[str] = Field(None, description="LanceDB URI: a local folder or s3://, gs:// (default $SHOPSEARCH_DB or data/lancedb)")
    ray_address: Optional[str] = Field(None, description="Ray address; default: $RAY_ADDRESS when set (ray job submit), else a local Ray")
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs for a local Ray (ignored when joining a cluster)")
    quiet: bool = Field(False, description="less progress output")


class GenerateConfig(JobConfig):
    out: str = Field("data/demo", description="folder to write the synthetic shop into")
    seed: int = Field(7, description="random seed: the same seed writes the same files")
    products: int = Field(5000, ge=10)
    queries: int = Field(2000, ge=10)
    users: int = Field(500, ge=1)
    events: int = Field(50000, ge=0, description="approximate number of behaviour events")
    gold_fraction: float = Field(0.2, ge=0, le=1, description="share of queries whose gold labels are written as a human-annotation file")


class IngestConfig(JobConfig):
    source: Literal["generic", "esci", "snips"] = Field("generic", description="input format")
    path: str = Field(..., description="file, folder or object-store URI to read")
    table: Optional[Literal["products", "queries", "users", "events", "judgments", "labels"]] = Field(
        None, description="target table (generic source; ESCI and SNIPS fill their own tables)")
    map: dict[str, str] = Field(default_factory=dict, description="column renames SRC=DST applied before validation")
    format: Optional[Literal["csv", "jsonl", "parquet"]] = Field(None, description="input format; default from the file extension")
    encoding: Optional[str] = Field(None, description="text encoding of legacy files, e.g. latin-1 (default: strict UTF-8; undecodable rows are quarantined)")
    pseudonym_key: Optional[str] = Field(None, description="key for hashing user ids (default $SHOPSEARCH_PSEUDONYM_KEY, else a development key with a warning)")
    max_field_chars: int = Field(100_000, ge=100, description="text fields longer than this are quarantined")
    split: Optional[str] = Field(None, description="force the split of ingested queries/judgments (train/validation/test)")
    block_rows: int = Field(20_000, ge=100, description="rows per Ray Data block when cleaning")

    @field_validator("map", mode="before")
    @classmethod
    def _parse_map(cls, value):
        if isinstance(value, (list, tuple)):
            out = {}
            for item in value:
                if "=" not in item:
                    raise ValueError(f"--map expects SRC=DST, got {item!r}")
                src, dst = item.split("=", 1)
                out[src.strip()] = dst.strip()
            return out
        return value


class LabelConfig(JobConfig):
    action: Literal["weak", "import", "export", "report", "show"] = Field("weak", description="weak: rule and behaviour labels; import/export human labels; report; show one query")
    path: Optional[str] = Field(None, description="file to import from or export to (.json = Label Studio, .jsonl, .csv)")
    annotator: str = Field("human", description="who made imported labels when the file does not say")
    query_id: Optional[str] = Field(None, description="query to show (action=show)")
    position_bias_eta: float = Field(1.0, ge=0, description="examination propensity p(pos) = (1/pos)^eta for click debiasing")
    min_impressions: int = Field(3, ge=1, description="impressions a pair needs before behaviour grades it")
    report_out: Optional[str] = Field(None, description="write the label quality report JSON here")


class SnapshotConfig(JobConfig):
    name: Optional[str] = Field(None, description="snapshot name (default: snap-<UTC time>)")
    note: str = ""
    report_dir: str = Field("artifacts/reports", description="where the Markdown + JSON quality report go")
    action: Literal["create", "list", "show", "diff"] = "create"
    other: Optional[str] = Field(None, description="second snapshot for diff")


class MainConfig(JobConfig):
    demo_dir: str = "data/demo"
    seed: int = 7
    products: int = 5000
    queries: int = 2000
    users: int = 500
    events: int = 50000
    report_dir: str = "artifacts/reports"
    models: bool = Field(True, description="go on after the snapshot: train the intent+entity model (LoRA), embed the catalogue, evaluate")
    train_epochs: int = Field(2, ge=1, description="epochs of the main job's small training run")
    models_dir: str = Field("artifacts/models", description="model registry folder")


KEYS = TABLE_KEYS
