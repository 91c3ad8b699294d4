"""Hyperparameter search end to end on a tiny store: 4 trials of tiny BERT under ASHA (2 at a time
on the session's 2 CPUs), every trial in the summary, TensorBoard event files per trial, the best
checkpoint registered and promoted, and no placement group left behind by stopped trials. The
search's storage (trials, TensorBoard logs, checkpoints, summary) is on the session's S3 server,
as on a cluster; the registry is a local folder."""
from __future__ import annotations

import json
import time

import pytest

from tests.integration.test_train import fill_tiny_store


def _config(tmp_path, **overrides):
    from schemas.tuning import TuneConfig

    base = dict(task="intent_entity", snapshot="s1", db=str(tmp_path / "db"), base_model="tiny-bert",
                num_samples=4, max_concurrent=2, epochs=2, grace_period=1, batch_size=8, max_length=16,
                # half the trials learn nothing (lr 1e-6): ASHA has something to stop after epoch 1
                search=["lr=choice:3e-2,1e-6", "batch_size=8"], storage_path=str(tmp_path / "tune"),
                models_dir=str(tmp_path / "models"), run_name="search1", promote="candidate", quiet=True)
    return TuneConfig(**{**base, **overrides})


@pytest.mark.integration
@pytest.mark.model
def test_asha_search_summarises_every_trial_and_registers_best(ray_session, s3, store, tmp_path):
    import pyarrow.fs as pafs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ray_app.registry import Registry
    from tune.search import run

    fill_tiny_store(store)
    storage = f"s3://{s3.bucket}/tune-test/{tmp_path.name}"
    result = run(_config(tmp_path, storage_path=storage))

    run_dir = f"{storage}/search1"
    assert result.num_trials == 4 and result.statuses == {"TERMINATED": 4}, result
    assert result.tensorboard_logdir == run_dir and result.metric == "val_score"
    assert result.summary_path == f"{run_dir}/tune_summary.md"
    assert not (tmp_path / "tune").exists()  # nothing of the search on the local disk
    fs, base = pafs.FileSystem.from_uri(run_dir)
    local = tmp_path / "search1"  # the run folder as any node would fetch it
    pafs.copy_files(base, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    run_dir = local
    trials = json.loads((run_dir / "tune_summary.json").read_text())
    assert len(trials) == 4
    for t in trials:  # ASHA saw per-epoch results: a stopped trial ran fewer epochs than planned
        assert 1 <= t["epochs_run"] <= t["max_epochs"] == 2
        assert t["stopped_early"] == (t["epochs_run"] < 2) and t["stopped_by"] == ("asha" if t["stopped_early"] else "")
        assert t["config"]["lora_alpha"] == 2 * t["config"]["lora_r"]  # default space: alpha tied to r
    assert result.early_stopped == sum(t["stopped_early"] for t in trials) >= 1
    table = (run_dir / "tune_summary.md").read_text()
    csv_lines = (run_dir / "tune_summary.csv").read_text().strip().splitlines()
    assert all(t["trial_id"] in table for t in trials) and len(csv_lines) == 5

    events = sorted(run_dir.glob("*/events.out.tfevents.*"))
    assert len(events) == 4, events
    acc = EventAccumulator(str(events[0].parent)).Reload()
    steps = [e.step for e in acc.Scalars("ray/tune/val_score")]
    trial = next(t for t in trials if t["trial_id"] in events[0].parent.name)
    assert steps == list(range(1, trial["epochs_run"] + 1))

    best = max(trials, key=lambda t: t["metric_best"])
    assert result.best_trial == best["trial_id"] and result.best_metric == best["metric_best"]
    assert result.best_config["lr"] == 3e-2
    version = Registry(tmp_path / "models").resolve("intent_entity@candidate")
    assert version.name == result.model_version == "intent_entity-v1" and result.aliases == ["candidate"]
    assert version.metrics["val_score"] == result.best_metric and version.config["lr"] == result.best_config["lr"]
    assert version.config["lora_r"] == result.best_config["lora_r"] and version.lora
    assert version.config["storage_path"] == f"{storage}/search1/train"  # lineage: the trial's Train run
    pred = Registry(tmp_path / "models").load_model("candidate").predict(["black sony headphones"])[0]
    assert pred["raw_intent"] in version.label_spaces["intents"]

    # stopped trials aborted their Train runs: no placement group keeps the CPUs
    deadline = time.monotonic() + 30
    while ray_session.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert ray_session.available_resources().get("CPU", 0) == 2


@pytest.mark.integration
def test_search_errors_are_messages_not_tracebacks(store, tmp_path, capsys):
    from tune.search import main

    fill_tiny_store(store)
    common = ["--task", "intent_entity", "--db", str(tmp_path / "db"), "--base-model", "tiny-bert"]
    # bad search-space syntax: exit 2 naming the field
    assert main([*common, "--snapshot", "s1", "--search", "lr=logunif:1e-4:1e-3"]) == 2
    assert "unknown kind 'logunif'" in capsys.readouterr().err
    assert main([*common, "--snapshot", "s1", "--search", "lora_dropout=uniform:0:1.5"]) == 2
    assert "less than 1" in capsys.readouterr().err
    assert main([*common, "--snapshot", "nope"]) == 1  # unknown snapshot
    out = capsys.readouterr()
    assert "Traceback" not in out.err and json.loads(out.out.strip().splitlines()[-1])["ok"] is False
    assert main([*common, "--snapshot", "s1", "--task", "ranker"]) == 1  # no judgments: empty split
    assert "no training examples" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
