"""List, inspect and promote trained model versions.

  python -m jobs.registry --action list [--task ranker]
  python -m jobs.registry --action show --name intent_entity@production
  python -m jobs.registry --action promote --name intent_entity-v3 --alias production
  python -m jobs.registry --action demote --name intent_entity --alias candidate
  python -m jobs.registry --action export --name retriever@candidate --out models/shop-minilm
  python -m jobs.registry --action soup --member ranker-v4 --member ranker-v5 --member ranker-v6 [--alias candidate]

`export` writes the version's fine-tuned encoder (LoRA merged) as a Hugging Face model folder
(config, safetensors weights, tokenizer): `--base-model models/shop-minilm` then trains another
task from it (e.g. a ranker that starts from the domain-tuned retriever), and any
transformers/sentence-transformers tool can load it (mean pooling).

`soup` averages the weights of several versions of one setting (seeds, Tune trials; LoRA merged
first) into one new full-weights version (a uniform model soup): the variance of a fine-tune on
little data goes down at the inference cost of a single model. Its lineage lists the members.

Aliases are per task; Serve resolves them with `ray_app.registry.resolve`.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Sequence

from pydantic import BaseModel, Field

from ray_app.cli import JobError, main_wrapper
from schemas.config import MODELS_ENV, WorkspaceConfig, workspace_path


class RegistryConfig(WorkspaceConfig):
    action: Literal["list", "show", "promote", "demote", "export", "soup"] = "list"
    name: Optional[str] = Field(None, description="version (intent_entity-v3), task@alias, or the task (demote)")
    alias: Optional[str] = Field(None, description="alias to set (promote, soup) or remove (demote)")
    task: Optional[str] = Field(None, description="only this task (list)")
    out: Optional[str] = Field(None, description="folder the encoder is exported to (export)")
    member: list[str] = Field(default_factory=list, description="versions or aliases averaged into a new version (soup; repeat the flag)")
    models_dir: Optional[str] = workspace_path("models", "registry folder", env=MODELS_ENV)
    quiet: bool = False


class RegistryResult(BaseModel):
    ok: bool = True
    action: str
    versions: list[dict[str, Any]] = Field(default_factory=list)
    aliases: dict[str, dict[str, str]] = Field(default_factory=dict)
    exported_to: Optional[str] = None


def _row(v) -> dict[str, Any]:
    return {"name": v.name, "task": v.task, "base_model": v.base_model, "lora": v.lora, "snapshot": v.snapshot,
            "metrics": {k: round(x, 4) for k, x in v.metrics.items() if k.startswith("val_")},
            "aliases": v.aliases, "created_at": v.created_at.isoformat(), "path": v.path}


def export_encoder(reg, name: str, out: str) -> str:
    """The version's encoder, adapter merged, as a Hugging Face folder; returns the folder."""
    import json
    from pathlib import Path

    from ray_app.models.lora import unwrap

    loaded = reg.load_model(name, merge=True, device="cpu")
    backbone = unwrap(loaded.model).backbone
    folder = Path(out)
    if folder.exists() and any(folder.iterdir()):
        raise JobError(f"--out {folder} exists and is not empty; choose a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(str(folder), safe_serialization=True)
    loaded.tokenizer.save_pretrained(str(folder))
    (folder / "shopsearch_export.json").write_text(json.dumps(
        {"version": name, "task": loaded.version.task, "base_model": loaded.version.base_model,
         "snapshot": loaded.version.snapshot, "pooling": "mean"}, indent=2))
    return str(folder.resolve())


def run(config: RegistryConfig) -> RegistryResult:
    from ray_app.registry import Registry

    reg = Registry(config.models_dir)
    if config.action == "list":
        versions = reg.list(config.task)
        if not config.quiet:
            for v in versions:
                print(f"{v.name:24s} {','.join(v.aliases) or '-':22s} {v.base_model:10s} snapshot={v.snapshot} "
                      + " ".join(f"{k}={x:.4f}" for k, x in sorted(v.metrics.items()) if k.startswith("val_")))
        return RegistryResult(action="list", versions=[_row(v) for v in versions], aliases=reg.aliases())
    if config.action == "soup":
        if len(config.member) < 2:
            raise JobError("--action soup needs at least two --member versions")
        v = reg.soup(config.member, config.task)
        if config.alias:
            v = reg.promote(v.name, config.alias)
        return RegistryResult(action="soup", versions=[_row(v)], aliases=reg.aliases())
    if not config.name:
        raise JobError(f"--action {config.action} needs --name")
    if config.action == "show":
        v = reg.resolve(config.name, config.task)
        return RegistryResult(action="show", versions=[{**_row(v), **v.model_dump(mode="json")}])
    if config.action == "export":
        if not config.out:
            raise JobError("--action export needs --out FOLDER")
        v = reg.resolve(config.name, config.task)
        folder = export_encoder(reg, v.name, config.out)
        return RegistryResult(action="export", versions=[_row(v)], exported_to=folder)
    if not config.alias:
        raise JobError(f"--action {config.action} needs --alias")
    if config.action == "promote":
        v = reg.promote(config.name, config.alias)
        return RegistryResult(action="promote", versions=[_row(v)], aliases=reg.aliases())
    reg.demote(config.name, config.alias)
    return RegistryResult(action="demote", aliases=reg.aliases())


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(run, RegistryConfig, "jobs.registry", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
