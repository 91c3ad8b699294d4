"""Fine-tune a task model on a dataset snapshot with Ray Train and register it.

  python -m jobs.train --task intent_entity --snapshot s1 [--base-model minilm] [--lora/--no-lora]
      [--lora-r 8] [--epochs 3] [--num-workers 2] [--use-gpu] [--alias candidate]

Tasks: intent_entity (joint intent + BIO entities from queries + resolved labels), ranker
(cross-encoder on ESCI judgments, --ranker-loss listwise|pointwise), retriever (bi-encoder,
InfoNCE with in-batch + hard negatives), recommender (two towers on purchases: the item tower the
encoder over product text, LoRA or --text-tower frozen; trained on the train part of the
--recs-split time|per_user split that jobs.evaluate_recs reproduces). The last stdout line is the JSON TrainResult: model
version, snapshot, best-epoch metrics, train seconds.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ray_app.cli import main_wrapper
from schemas.training import TrainConfig, TrainResult


def run(config: TrainConfig) -> TrainResult:
    from ray_app.training.trainer import run_training

    return run_training(config)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(run, TrainConfig, "jobs.train", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
