"""Typed job configs. Each job is `python -m jobs.<name> [--config file.yaml] [--field value ...]`:
YAML gives a base, flags override it, and pydantic validates the result before any work.

Every output path derives from one workspace root (`--workspace`, $SHOPSEARCH_WORKSPACE, else
./workspace), made absolute when the config is validated: a job started by `ray job submit` runs
in a temporary working directory, and its driver and workers must agree on where outputs go. On a
cluster the root may be an object-store URI (`s3://bucket/shop`): the store, registry, Train
checkpoints, Tune runs and reports then all live in the bucket.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.grades import GradeScale
from schemas.records import TABLE_KEYS

WORKSPACE_ENV = "SHOPSEARCH_WORKSPACE"
DEFAULT_WORKSPACE = "workspace"
DB_ENV = "SHOPSEARCH_DB"
MODELS_ENV = "SHOPSEARCH_MODELS"


def absolute(path: str) -> str:
    """A local path made absolute against the current directory; URIs (s3://, gs://) unchanged."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def default_workspace(workspace: Optional[str] = None) -> str:
    """The workspace root: `workspace`, else $SHOPSEARCH_WORKSPACE, else ./workspace; an absolute
    local path or a URI (s3://bucket/prefix)."""
    return absolute(workspace or os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE).rstrip("/") or "/"


def join(root: str, *parts: str) -> str:
    """`root/part/...` for a local folder or a URI (Path() would fold `s3://` into `s3:/`)."""
    if "://" in root:
        return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(root).joinpath(*parts))


def logs_dir(workspace: Optional[str] = None) -> Path:
    """<workspace>/logs; for a workspace on object storage the machine's temp folder (a traceback
    is written while a job fails: no upload that could fail too)."""
    root = default_workspace(workspace)
    return Path(tempfile.gettempdir()) / "shopsearch-logs" if "://" in root else Path(root) / "logs"


def workspace_path(sub: str, description: str, env: Optional[str] = None) -> Any:
    """A path field that defaults to `$env`, else `<workspace>/<sub>` (resolved by WorkspaceConfig)."""
    default = (f"${env} or " if env else "") + f"<workspace>/{sub}"
    return Field(None, description=f"{description} (default {default})",
                 json_schema_extra={"workspace": sub, "env": env})


class WorkspaceConfig(BaseModel):
    """A config whose path fields (declared with `workspace_path`) derive from one root."""

    model_config = ConfigDict(extra="forbid")

    workspace: Optional[str] = Field(None, description=f"root folder of every output path (default ${WORKSPACE_ENV} or ./{DEFAULT_WORKSPACE}); made absolute at startup")

    @model_validator(mode="after")
    def _resolve_paths(self) -> "WorkspaceConfig":
        root = default_workspace(self.workspace)
        self.workspace = root
        for name, field in type(self).model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            if "workspace" not in extra:
                continue
            value = getattr(self, name)
            if value is None and extra.get("env"):
                value = os.environ.get(str(extra["env"])) or None
            setattr(self, name, absolute(value) if value is not None else join(root, str(extra["workspace"])))
        return self

    def logs_dir(self) -> Path:
        """Where tracebacks of unexpected failures are written."""
        return logs_dir(str(self.workspace))


class JobConfig(WorkspaceConfig):
    """Fields shared by every job."""

    db: Optional[str] = workspace_path("lancedb", "LanceDB URI: a local folder or s3://, gs://", env=DB_ENV)
    ray_address: Optional[str] = Field(None, description="Ray address; default: $RAY_ADDRESS when set (ray job submit), else a local Ray")
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs for a local Ray (ignored when joining a cluster)")
    quiet: bool = Field(False, description="less progress output")
    verbose: bool = Field(False, description="also show Ray's own logs and warnings (worker output, progress, auth and fork warnings)")


class GenerateConfig(JobConfig):
    out: Optional[str] = workspace_path("demo", "folder to write the synthetic shop into")
    seed: int = Field(7, description="random seed: the same seed writes the same files")
    products: int = Field(5000, ge=10)
    queries: int = Field(2000, ge=10)
    users: int = Field(500, ge=1)
    events: int = Field(50000, ge=0, description="approximate number of behaviour events")
    gold_fraction: float = Field(0.2, ge=0, le=1, description="share of the train/validation queries whose gold labels are written as a human-annotation file (test queries get gold_test_labels.jsonl)")


class IngestConfig(JobConfig):
    source: Literal["generic", "esci", "snips", "online-retail"] = Field(
        "generic", description="input format; online-retail: an invoice-line log (UCI Online Retail's columns) "
        "filling products and events")
    path: str = Field(..., description="file, folder or object-store URI to read")
    table: Optional[Literal["products", "queries", "users", "events", "judgments", "labels"]] = Field(
        None, description="target table (generic source; ESCI and SNIPS fill their own tables)")
    map: dict[str, str] = Field(default_factory=dict, description="column renames SRC=DST applied before validation")
    format: Optional[Literal["csv", "jsonl", "parquet"]] = Field(None, description="input format; default from the file extension")
    event_type: Optional[str] = Field(None, description="events: the type of rows without an event_type column or value "
                                      "(a purchases log: purchase; a ratings log: rating, stored as a purchase with the rating as value)")
    encoding: Optional[str] = Field(None, description="text encoding of legacy files, e.g. latin-1 (default: strict UTF-8; undecodable rows are quarantined)")
    pseudonym_key: Optional[str] = Field(None, description="key for hashing user ids (default $SHOPSEARCH_PSEUDONYM_KEY, else a development key with a warning)")
    taxonomy: Optional[str] = Field(None, description="YAML file declaring the label taxonomy (intents, entity_types, grades), saved into the store before ingesting; labels are checked against the store's taxonomy")
    max_field_chars: int = Field(100_000, ge=100, description="text fields longer than this are quarantined")
    split: Optional[str] = Field(None, description="force the split of ingested queries/judgments (train/validation/test)")
    block_rows: int = Field(50_000, ge=100, description="rows per parse task (at most 32 MiB of input)")
    resolve_rows: int = Field(250_000, ge=100, description="a feed with more accepted rows than this is de-duplicated and "
                              "merged in Ray tasks of about this many rows each (by a hash of the key), not on the driver")
    grades: Optional[GradeScale] = Field(None, description="scale of the judgments' grades: esci (E=3,S=2,C=1,I=0), "
                                         "numeric:MIN-MAX (gain = grade, fractions allowed, e.g. numeric:0-3) or "
                                         "NAME=GAIN,... (e.g. perfect=3,good=2,bad=0); default: the grades of the store's taxonomy, else esci")
    test_fraction: Optional[float] = Field(None, ge=0, le=1, description="split queries and their judgments by a hash "
                                           "of the query id: this share to test (with --validation-fraction, --seed)")
    validation_fraction: Optional[float] = Field(None, ge=0, le=1, description="share of queries hashed to validation; the rest is train")
    seed: int = Field(13, description="seed of the split hash: the same seed puts a query in the same split on every run")

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

    @field_validator("grades", mode="before")
    @classmethod
    def _parse_grades(cls, value):
        return None if value is None else GradeScale.parse(value)

    @model_validator(mode="after")
    def _check_split_fractions(self) -> "IngestConfig":
        if self.hash_split and self.split is not None:
            raise ValueError(f"--split {self.split} forces one split; it cannot be combined with --test-fraction/--validation-fraction")
        total = (self.test_fraction or 0.0) + (self.validation_fraction or 0.0)
        if total > 1:
            raise ValueError(f"--test-fraction + --validation-fraction is {total:g}, over 1")
        return self

    @property
    def hash_split(self) -> bool:
        """True when splits are assigned by hash of the query id."""
        return self.test_fraction is not None or self.validation_fraction is not None


class LabelConfig(JobConfig):
    action: Literal["weak", "import", "export", "report", "show", "taxonomy", "label-studio-config"] = Field(
        "weak", description="weak: rule and behaviour labels; import/export human labels; report; show one query; "
        "taxonomy: show (or with --taxonomy declare) the store's label taxonomy; label-studio-config: write the "
        "Label Studio labelling XML of the taxonomy to --path")
    path: Optional[str] = Field(None, description="file to import from or export to (.json = Label Studio, .jsonl, .csv); the XML file of label-studio-config")
    taxonomy: Optional[str] = Field(None, description="YAML file declaring intents, out_of_scope, entity_types, grades and annotators; saved into the store before the action (default: the store's declaration, else the built-in e-commerce one)")
    pseudonym_key: Optional[str] = Field(None, description="key of the pseudonyms stored for annotators without a configured name (default $SHOPSEARCH_PSEUDONYM_KEY, else the development key)")
    annotator: str = Field("human", description="who made imported labels when the file does not say")
    query_id: Optional[str] = Field(None, description="query to show (action=show)")
    position_bias_eta: float = Field(1.0, ge=0, description="examination propensity p(pos) = (1/pos)^eta for click debiasing")
    min_impressions: int = Field(3, ge=1, description="impressions a pair needs before behaviour grades it")
    report_out: Optional[str] = Field(None, description="write the label quality report JSON here")


class SnapshotConfig(JobConfig):
    name: Optional[str] = Field(None, description="snapshot name (default: snap-<UTC time>)")
    note: str = ""
    report_dir: Optional[str] = workspace_path("reports", "where the Markdown + JSON quality report go")
    action: Literal["create", "list", "show", "diff"] = "create"
    other: Optional[str] = Field(None, description="second snapshot for diff")


class QuarantineConfig(JobConfig):
    table: Optional[str] = Field(None, description="only rows of this table (products, events, ...)")
    run_id: Optional[str] = Field(None, description="only rows of this ingest run (run_id in the ingest summary)")
    reason: Optional[str] = Field(None, description="only rows whose reason contains this text")
    limit: int = Field(20, ge=0, description="rows to print (0: only the counts)")
    unseal: bool = Field(False, description="print the sealed rows of users/events/labels as read (needs the pseudonym key)")
    pseudonym_key: Optional[str] = Field(None, description="key the rows were sealed with (default $SHOPSEARCH_PSEUDONYM_KEY)")


class MainConfig(JobConfig):
    demo_dir: Optional[str] = workspace_path("demo", "folder the synthetic shop is generated into")
    seed: int = 7
    products: int = 5000
    queries: int = 2000
    users: int = 500
    events: int = 50000
    report_dir: Optional[str] = workspace_path("reports", "data quality and evaluation reports")
    models: bool = Field(True, description="go on after the snapshot: train the intent+entity model (LoRA), embed the catalogue, evaluate")
    train_epochs: int = Field(2, ge=1, description="epochs of the main job's small training run")
    ranker_examples: int = Field(64, ge=1, description="training queries (lists of 24 products) of the main job's one-epoch ranker")
    ranker_gate: Literal["validation", "always"] = Field(
        "validation", description="validation: promote the ranker only if re-ranking (rerank+rrf, at the served depth) "
                                  "scores at least the hybrid first stage's full-catalogue NDCG@10 on the validation "
                                  "split, else serve the first stage with the ranker in shadow mode; always: promote it")
    models_dir: Optional[str] = workspace_path("models", "model registry folder", env=MODELS_ENV)
    serve: bool = Field(True, description="end by starting the search app on Ray Serve and answering over HTTP")
    keep_serving: bool = Field(False, description="keep the app up after the main job (until Ctrl-C)")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the search app")


KEYS = TABLE_KEYS


class SuggestConfig(JobConfig):
    """jobs.suggest: build the autocomplete tables (no Ray work; --ray-address/--num-cpus are accepted and unused)."""

    min_query_users: int = Field(2, ge=1, description="distinct users who must have searched a query before it is suggested to anyone")
    max_digit_run: int = Field(4, ge=0, description="queries holding a longer run of digits (order, phone, postal numbers) are never suggested")
    min_line_products: int = Field(2, ge=1, description="products a product line (brand + category, brand + title words) must cover")
    affinity_top: int = Field(5, ge=1, description="brands and categories kept per user for personalisation (each)")
