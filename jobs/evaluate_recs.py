"""Offline evaluation of recommendations: baselines and the trained model side by side, one run.

  python -m jobs.evaluate_recs [--snapshot NAME] [--model recommender@production] [--splits time --splits per_user]
         [--cut 2011-10-01] [--baselines popularity --baselines als] [--out recs.json]

Protocols (ray_app/recs/split.py): `time` trains on purchases before a cut and tests each known
user's distinct purchases after it, already-bought items removed (the only protocol with new
items and new users); `per_user` holds out 25% of each user's distinct products (comparable with
published tables; train holds the future, so it flatters every system). Systems: popularity
(global, per locale), item-to-item co-purchase kNN, implicit's ALS and BPR (implicit 0.7.2), and
the two-tower model (`--model`) on the split it was trained for (its config names it; the model
never saw that split's test). Metrics at k: NDCG, recall, precision, MAP, hit rate, MRR, sampled
AUC, catalogue coverage; slices: new items (relevance restricted to products first sold after
the cut), new users, heavy users; paired bootstrap intervals against the best baseline. Writes
<report-dir>/recs-<UTC time>.md (and --out JSON); last stdout line: JSON summary.
"""
from __future__ import annotations

import json
import time
from typing import Any, Optional, Sequence

from ray_app.cli import JobError, main_wrapper
from ray_app.recs.data import item_texts, snapshot_frames
from ray_app.store import Store, utcnow
from schemas.config import join
from schemas.recs import EvaluateRecsConfig, EvaluateRecsResult


def baseline_systems(names: Sequence[str], split, factors: int, seed: int) -> dict[str, Any]:
    """The named baselines, fitted on the split's train purchases."""
    from ray_app.recs.baselines import ALSBaseline, BPRBaseline, ItemKNN, LocalePopularity, Popularity

    make = {"popularity": lambda: Popularity(), "locale_popularity": lambda: LocalePopularity(user_locale=split.user_locale),
            "item_knn": lambda: ItemKNN(), "als": lambda: ALSBaseline(factors=factors, seed=seed),
            "bpr": lambda: BPRBaseline(factors=factors, seed=seed)}
    return {n: make[n]().fit(split.train) for n in names}


def run(config: EvaluateRecsConfig) -> EvaluateRecsResult:
    """Every split: fit the baselines, add the model where it was trained for the split, evaluate, report."""
    from ray_app.recs.examples import split_events
    from ray_app.recs.offline import evaluate_systems, markdown_table

    started = time.perf_counter()
    store = Store(config.db)
    events, products = snapshot_frames(store, config.snapshot)
    texts = item_texts(products)
    loaded, trained_for, notes = None, {}, []
    if config.model:
        from ray_app.registry import load_model

        loaded = load_model(config.model, config.models_dir, task="recommender")
        trained_for = {k: loaded.version.config.get(k) for k in ("recs_split", "recs_cut", "recs_test_share", "seed")}
        if config.snapshot and loaded.version.snapshot and loaded.version.snapshot != config.snapshot:
            notes.append(f"the model was trained on snapshot {loaded.version.snapshot!r}, evaluated on {config.snapshot!r}")
    results: dict[str, dict[str, Any]] = {}
    sections = []
    for name in config.splits:
        use_model = loaded is not None and trained_for.get("recs_split") == name
        options = {"recs_split": name, "recs_cut": config.cut, "recs_test_share": config.test_share, "seed": config.seed}
        if use_model:  # the model's own split exactly, so its test is unseen
            options.update({k: v for k, v in trained_for.items() if v is not None})
        elif loaded is not None:
            notes.append(f"{name} split: the model was trained on the {trained_for.get('recs_split')} split's train part, "
                         f"which overlaps this split's test; it is left out here")
        try:
            split = split_events(events, options)
        except ValueError as exc:
            raise JobError(f"{name} split: {exc}") from exc
        systems = baseline_systems(config.baselines, split, config.als_factors, config.seed)
        if use_model:
            from ray_app.recs.model_system import TwoTowerSystem

            systems["two_tower"] = TwoTowerSystem(loaded, texts, user_locale=split.user_locale).fit(split.train)
        result = evaluate_systems(split, systems, k=config.k, resamples=config.resamples, seed=config.seed,
                                  auc_negatives=config.auc_negatives)
        results[name] = result
        sections.append(f"## {name} split\n\n{json.dumps(split.protocol, default=str)}\n\n{markdown_table(result)}\n")
    from ray_app.object_store import write_text

    header = f"# Recommendation evaluation\n\nmodel: {loaded.version.name if loaded else 'none'}; snapshot: {config.snapshot or 'live tables'}\n\n"
    report = write_text(join(str(config.report_dir), f"recs-{utcnow():%Y%m%d-%H%M%S}.md"),
                        header + "\n".join(sections) + "".join(f"\n- {n}" for n in notes) + "\n")
    if config.out:
        write_text(config.out, json.dumps(results, indent=2, default=str))
    k = config.k
    summary = {name: {s: {m: r["systems"][s]["overall"].get(m) for m in (f"ndcg@{k}", f"recall@{k}")}
                      | {"auc": r["systems"][s].get("auc"), "coverage": r["systems"][s].get("coverage"),
                         "new_item_ndcg": (r["systems"][s]["slices"].get("new_items") or {}).get(f"ndcg@{k}")}
                      for s in r["systems"]} for name, r in results.items()}
    return EvaluateRecsResult(splits=summary, model=loaded.version.name if loaded else None, report=str(report),
                              seconds=round(time.perf_counter() - started, 2), notes=notes)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(run, EvaluateRecsConfig, "jobs.evaluate_recs", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
