"""One workspace root: every job's output paths derive from it; $SHOPSEARCH_DB/$SHOPSEARCH_MODELS move those two."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from jobs.main import stage_settings
from jobs.registry import RegistryConfig
from schemas.config import GenerateConfig, IngestConfig, LabelConfig, MainConfig, SnapshotConfig, WorkspaceConfig
from schemas.evaluation import EmbedConfig, EvaluateConfig
from schemas.training import TrainConfig
from schemas.tuning import TuneConfig


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for name in ("SHOPSEARCH_WORKSPACE", "SHOPSEARCH_DB", "SHOPSEARCH_MODELS"):
        monkeypatch.delenv(name, raising=False)


def _paths(config: WorkspaceConfig) -> dict[str, str]:
    """Every path field of the config (those declared with workspace_path)."""
    return {name: getattr(config, name) for name, field in type(config).model_fields.items()
            if isinstance(field.json_schema_extra, dict) and "workspace" in field.json_schema_extra}


def _configs(**common) -> list[WorkspaceConfig]:
    task = {"task": "intent_entity", "snapshot": "s1"}
    return [GenerateConfig(**common), IngestConfig(**common, path="x.csv", table="products"), LabelConfig(**common),
            SnapshotConfig(**common), MainConfig(**common), TrainConfig(**common, **task), TuneConfig(**common, **task),
            EmbedConfig(**common), EvaluateConfig(**common)]


def test_every_output_path_of_every_job_is_under_the_workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "ws"
    for config in _configs(workspace="ws") + [RegistryConfig(workspace="ws")]:
        paths = _paths(config)
        assert paths, type(config).__name__
        assert config.workspace == str(root)  # relative roots are made absolute at startup
        for name, value in paths.items():
            assert Path(value).is_relative_to(root), (type(config).__name__, name, value)
    assert SnapshotConfig(workspace="ws").report_dir == str(root / "reports")
    assert TrainConfig(workspace="ws", task="ranker", snapshot="s").storage_path == str(root / "ray_results")
    assert TuneConfig(workspace="ws", task="ranker", snapshot="s").storage_path == str(root / "tune")
    assert MainConfig(workspace="ws").models_dir == str(root / "models")


def test_the_workspace_comes_from_the_environment_and_defaults_to_dot_workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert SnapshotConfig().db == str(tmp_path / "workspace" / "lancedb")
    monkeypatch.setenv("SHOPSEARCH_WORKSPACE", str(tmp_path / "shop"))
    assert EvaluateConfig().report_dir == str(tmp_path / "shop" / "reports")
    assert SnapshotConfig(workspace=str(tmp_path / "flag")).db == str(tmp_path / "flag" / "lancedb")  # the flag wins


def test_main_job_honours_shopsearch_db_and_models(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOPSEARCH_DB", "s3://bucket/shop")
    monkeypatch.setenv("SHOPSEARCH_MODELS", str(tmp_path / "models"))
    config = MainConfig(workspace=str(tmp_path / "ws"))
    common = stage_settings(config)
    assert config.db == common["db"] == "s3://bucket/shop"
    assert config.models_dir == str(tmp_path / "models")
    train = TrainConfig(**common, task="intent_entity", snapshot="s1")
    assert train.db == "s3://bucket/shop" and train.models_dir == str(tmp_path / "models")
    assert train.storage_path == str(tmp_path / "ws" / "ray_results")
    for stage in _configs(**common):
        assert stage.db == "s3://bucket/shop" and stage.workspace == str(tmp_path / "ws")
    assert MainConfig(workspace=str(tmp_path / "ws"), db="local-db").db == str(Path.cwd() / "local-db")  # the flag wins


def test_store_and_registry_defaults_follow_the_workspace(tmp_path, monkeypatch):
    from ray_app.registry import default_models_dir
    from ray_app.store import default_db_uri

    monkeypatch.setenv("SHOPSEARCH_WORKSPACE", str(tmp_path))
    assert default_db_uri() == str(tmp_path / "lancedb") and default_models_dir() == str(tmp_path / "models")


def test_quiet_by_default_and_verbose_brings_ray_noise_back():
    from ray_app import runtime

    fork_warning = "lancedb fork support is experimental: the internal async runtime has been reset"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        runtime.configure_output(verbose=False)
        warnings.warn(fork_warning, RuntimeWarning)
        assert logging.getLogger("ray.data").getEffectiveLevel() == logging.ERROR
        assert not logging.getLogger("ray").isEnabledFor(logging.WARNING)  # the token-auth warning
        runtime.configure_output(verbose=True)
        warnings.warn(fork_warning, RuntimeWarning)
        assert logging.getLogger("ray.data").isEnabledFor(logging.INFO)
    runtime.configure_output(verbose=False)
    assert [str(w.message) for w in seen] == [fork_warning]
