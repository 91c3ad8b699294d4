"""The online loop, one pass: new events -> behaviour labels -> snapshot -> retrain warm-started
from production -> evaluate against production on the new snapshot -> promote only if better on
the declared metric -> precompute the lists -> running replicas switch.

  python -m jobs.refresh [--model recommender@production] [--metric ndcg@10] [--min-gain 0]
         [--epochs 1] [--max-train-examples N] [--no-labels] [--no-recommend] [--force]
  ray job submit --working-dir . -- python -m jobs.refresh --workspace /shared/shop   # on a schedule

Steps (each named in the summary with its seconds, or why it was skipped):
1. **new data?** The snapshot is named after the data it pins (`refresh-<events>e-<products>p`,
   row counts: events only grow, and a compaction moves versions without adding rows). When
   production was trained on that very snapshot there is nothing to learn: the pass ends there.
2. **labels**: `jobs.label` (weak: rules + click behaviour) when the store has queries, so the
   ranker's behaviour labels follow the new clicks too (the recommender learns from purchases).
3. **snapshot** of every table (reused when a crashed pass already made it).
4. **train**: `jobs.train --task recommender` on the snapshot, warm-started from production's weights
   (`--init-from`: the product and locale ids both know keep their rows, new products start from
   their text), the split and the towers' shape as production's. A version already trained by a
   crashed pass for this snapshot and this production is reused, never trained twice.
5. **evaluate** candidate and production (or, without one, locale popularity) on the snapshot's
   time split, the candidate's own: both rank every product for each test user; paired bootstrap.
6. **gate**: promoted only when the candidate beats the reference on `--metric` by more than
   `--min-gain`; the figures and the verdict are recorded on the candidate's registry entry
   (`gates`) either way, and the alias is untouched until a gate passes.
7. **recommend**: after a promotion, `jobs.recommend` rewrites every user's list with the new
   version. Serve's Recommender replicas follow the alias within their `refresh_s`.

A pass that crashes anywhere can simply be run again: the snapshot and the candidate are found by
name and lineage, so no version is duplicated and production moves only on a passed gate.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Optional, Sequence

from ray_app.cli import JobError, main_wrapper
from ray_app.store import Store, utcnow
from schemas.recs import RefreshConfig, RefreshResult

FAIL_AFTER_ENV = "SHOPSEARCH_REFRESH_FAIL_AFTER"  # test hook: crash right after this step


def _step(result: RefreshResult, name: str, fn: Callable[[], Any], quiet: bool) -> Any:
    started = time.perf_counter()
    if not quiet:
        print(f"[refresh] {name} ...", file=sys.stderr, flush=True)
    out = fn()
    result.steps[name] = round(time.perf_counter() - started, 2)
    if os.environ.get(FAIL_AFTER_ENV) == name:
        raise RuntimeError(f"{FAIL_AFTER_ENV}={name}: simulated crash after the {name} step")
    return out


def snapshot_name(store: Store) -> str:
    return f"refresh-{store.count('events')}e-{store.count('products')}p"


def production(config: RefreshConfig):
    """The version the alias names now, or None when it names none yet."""
    from ray_app.registry import Registry, RegistryError

    try:
        return Registry(config.models_dir).resolve(config.model, "recommender")
    except RegistryError:
        return None


def alias_of(config: RefreshConfig) -> str:
    return config.model.split("@", 1)[1] if "@" in config.model else "production"


def train_config(config: RefreshConfig, snapshot: str, prod) -> Any:
    """What jobs.train gets: production's base, towers and split, warm-started from it."""
    from ray_app.models.lora import read_meta
    from ray_app.registry import version_folder
    from schemas.training import TrainConfig

    shape: dict[str, Any] = {}
    if prod is not None:
        head = read_meta(version_folder(prod.path))["head_config"]
        shape = {"base_model": prod.base_model, "max_history": head.get("max_history", 20),
                 "temperature": head.get("temperature", 0.05), "id_dropout": head.get("id_dropout", 0.3),
                 "text_tower": "frozen" if head.get("frozen_text") else "lora", "lora": bool(prod.lora)}
        for key in ("recs_split", "recs_test_share", "targets_per_basket", "sampled_negatives", "lora_r", "lora_alpha",
                    "max_length", "seed"):
            if prod.config.get(key) is not None:
                shape[key] = prod.config[key]
        shape["init_from"] = prod.name
    return TrainConfig(task="recommender", snapshot=snapshot, workspace=config.workspace, db=config.db,
                       models_dir=config.models_dir, ray_address=config.ray_address, num_cpus=config.num_cpus,
                       quiet=config.quiet, verbose=config.verbose, epochs=config.epochs, lr=config.lr,
                       batch_size=config.batch_size, max_train_examples=config.max_train_examples,
                       num_workers=config.num_workers, cpus_per_worker=config.cpus_per_worker, use_gpu=config.use_gpu,
                       run_name=f"{snapshot}-from-{prod.name if prod else 'scratch'}",
                       **{"base_model": config.base_model, **shape})


def trained_already(config: RefreshConfig, snapshot: str, prod) -> Optional[str]:
    """A version a crashed pass trained for this snapshot from this production (None: none yet)."""
    from ray_app.registry import Registry

    start = prod.name if prod is not None else None
    for v in Registry(config.models_dir).list("recommender"):
        if v.snapshot == snapshot and v.config.get("init_from") == start:
            return v.name
    return None


def evaluate(config: RefreshConfig, store: Store, snapshot: str, candidate: str, prod) -> dict[str, Any]:
    """Candidate against production (or locale popularity) on the candidate's split of the snapshot."""
    from ray_app.recs.baselines import LocalePopularity
    from ray_app.recs.data import item_texts, snapshot_frames
    from ray_app.recs.examples import split_events
    from ray_app.recs.model_system import TwoTowerSystem
    from ray_app.recs.offline import evaluate_systems
    from ray_app.registry import load_model

    events, products = snapshot_frames(store, snapshot)
    texts = item_texts(products)
    loaded = load_model(candidate, config.models_dir, task="recommender")
    options = {k: loaded.version.config.get(k) for k in ("recs_split", "recs_cut", "recs_test_share", "seed")}
    try:
        split = split_events(events, options)
    except ValueError as exc:
        raise JobError(f"snapshot {snapshot!r}: {exc}") from exc
    systems: dict[str, Any] = {candidate: TwoTowerSystem(loaded, texts, user_locale=split.user_locale).fit(split.train)}
    if prod is not None:
        reference = prod.name
        systems[reference] = TwoTowerSystem(load_model(prod.name, config.models_dir, task="recommender"), texts,
                                            user_locale=split.user_locale).fit(split.train)
    else:
        reference = "locale_popularity"
        systems[reference] = LocalePopularity(user_locale=split.user_locale).fit(split.train)
    result = evaluate_systems(split, systems, k=10, reference=reference, resamples=config.resamples, seed=0)
    figures = {name: r["overall"].get(config.metric) for name, r in result["systems"].items()}
    gain = figures[candidate] - figures[reference]
    passed = gain > config.min_gain
    return {"at": utcnow().isoformat(), "snapshot": snapshot, "split": split.name, "test_users": len(split.test),
            "metric": config.metric, "candidate": candidate, "candidate_value": round(figures[candidate], 6),
            "reference": reference, "reference_value": round(figures[reference], 6), "gain": round(gain, 6),
            "min_gain": config.min_gain, "interval": result["vs_reference"]["systems"][candidate]["overall"].get(config.metric),
            "passed": passed, "verdict": (f"{candidate} {config.metric} {figures[candidate]:.4f} vs {reference} "
                                          f"{figures[reference]:.4f} ({gain:+.4f}; needs > {config.min_gain:+.4f}): "
                                          + ("promoted" if passed else "not promoted"))}


def run(config: RefreshConfig) -> RefreshResult:
    from ray_app.registry import Registry

    started = time.perf_counter()
    store = Store(config.db)
    prod = production(config)
    snapshot = snapshot_name(store)
    result = RefreshResult(snapshot=snapshot, production_before=prod.name if prod else "none",
                           production_after=prod.name if prod else "none")
    if prod is not None and prod.snapshot == snapshot and not config.force:
        result.notes.append(f"{prod.name} was trained on {snapshot}: no new events or products since; nothing to do")
        result.steps["new_data"] = "none"
        result.seconds = round(time.perf_counter() - started, 2)
        return result
    if config.labels and store.count("queries"):
        from jobs import label
        from schemas.config import LabelConfig

        _step(result, "labels", lambda: label.run(LabelConfig(workspace=config.workspace, db=config.db, quiet=True,
                                                               ray_address=config.ray_address, num_cpus=config.num_cpus)),
              config.quiet)
    else:
        result.steps["labels"] = "skipped (no queries)" if config.labels else "skipped (--no-labels)"
    if store.find_snapshot(snapshot) is None:
        _step(result, "snapshot", lambda: store.create_snapshot(snapshot, note=f"jobs.refresh from {result.production_before}"),
              config.quiet)
    else:
        result.steps["snapshot"] = "reused"
    candidate = trained_already(config, snapshot, prod)
    if candidate is None:
        from jobs import train

        candidate = _step(result, "train", lambda: train.run(train_config(config, snapshot, prod)).model_version, config.quiet)
    else:
        result.steps["train"] = f"reused {candidate}"
    result.candidate = candidate
    gate = _step(result, "evaluate", lambda: evaluate(config, store, snapshot, candidate, prod), config.quiet)
    registry = Registry(config.models_dir)
    registry.record_gate(candidate, gate)
    result.gate = gate
    if not config.quiet:
        print(f"[refresh] gate: {gate['verdict']}", file=sys.stderr)
    if gate["passed"]:
        _step(result, "promote", lambda: registry.promote(candidate, alias_of(config)), config.quiet)
        result.promoted, result.production_after = True, candidate
        if config.recommend:
            from jobs import recommend
            from schemas.recs import RecommendConfig

            _step(result, "recommend", lambda: recommend.run(RecommendConfig(
                workspace=config.workspace, db=config.db, models_dir=config.models_dir, model=candidate,
                ray_address=config.ray_address, num_cpus=config.num_cpus, k=config.recommend_k, quiet=True,
                use_gpu=config.use_gpu)), config.quiet)
    result.seconds = round(time.perf_counter() - started, 2)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(run, RefreshConfig, "jobs.refresh", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
