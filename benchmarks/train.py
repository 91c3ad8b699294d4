"""Fine-tuning cost and quality in one process run, same data, encoder, batch size, AdamW +
linear warm-up/decay, epochs, per-epoch validation + checkpoint, early stopping off: Ray Train
LoRA (1 and 2 workers, the project's build_trainer + train_loop_per_worker), a plain PyTorch
LoRA loop doing the same work without Ray, and Ray Train full fine-tuning.

Why: LoRA on Ray Train is the project default; this says what Ray costs over a plain loop, what
a second worker buys here, and what LoRA saves against full fine-tuning for how much quality.

Data: SNIPS (`--snips`, default ../shared/data/snips when present) or the synthetic shop's gold
labels (`--synthetic`), ingested + snapshotted into a temp LanceDB by the project's jobs, then
`load_task_data(max_train_examples=N)`. Timing: `total` = the whole run (Ray: `fit()` incl.
worker start-up); `steady` = train examples / median interval between epoch ends for epochs
>= 1 (Ray: mtimes of the persisted epoch checkpoints, uploaded synchronously by the loop).
A psutil thread samples RSS/PSS and CPU seconds of this process and all its descendants (Ray's
processes included): memory peaks, and samples per CPU-second, which other jobs on a shared
machine distort far less than samples per wall-second. Results: benchmarks/results/train.json.

  python -m benchmarks.train [--snips PATH | --synthetic] [--base-model minilm|tiny-bert]
      [--epochs 3] [--max-train-examples 2000] [--runs plain_lora,ray_lora_1w,ray_lora_2w,ray_full_1w]
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_results  # noqa: E402

DEFAULT_SNIPS = ROOT.parent / "shared" / "data" / "snips"
ALL_RUNS = ("plain_lora", "ray_lora_1w", "ray_lora_2w", "ray_full_1w")
SNAPSHOT = "bench"
MB = 1024 * 1024


class TreeSampler:
    """Samples this process and all its descendants in a thread: summed RSS/PSS (peaks, split into
    driver / Ray train workers) and cumulative CPU seconds (a clock that contention slows less than
    the wall clock: other jobs on the machine stretch wall time, not this tree's CPU time)."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.peaks, self.samples = interval, {}, 0
        self.cpu_first: dict[int, float] = {}
        self.cpu_last: dict[int, float] = {}
        self.timeline: list[tuple[float, float]] = []  # (time.time(), tree CPU seconds since start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def snapshot(self, first: bool = False) -> dict[str, float]:
        import psutil

        me = psutil.Process(os.getpid())
        out = {"tree_rss": 0.0, "tree_pss": 0.0, "driver_rss": 0.0, "train_workers_rss": 0.0, "train_workers_pss": 0.0}
        for proc in [me] + me.children(recursive=True):
            try:
                with proc.oneshot():
                    rss = proc.memory_info().rss
                    try:
                        pss = getattr(proc.memory_full_info(), "pss", rss)
                    except (psutil.AccessDenied, OSError):
                        pss = rss
                    cpu = sum(proc.cpu_times()[:2])  # user + system of the process itself
                    worker = proc.pid != me.pid and "RayTrainWorker" in " ".join(proc.cmdline())
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            # a process already alive at the start counts from there; one born later from 0
            self.cpu_first.setdefault(proc.pid, cpu if first else 0.0)
            self.cpu_last[proc.pid] = cpu
            out["tree_rss"] += rss
            out["tree_pss"] += pss
            if proc.pid == me.pid:
                out["driver_rss"] = rss
            elif worker:
                out["train_workers_rss"] += rss
                out["train_workers_pss"] += pss
        self.timeline.append((time.time(), self.cpu_seconds()))
        return out

    def cpu_seconds(self) -> float:
        return sum(self.cpu_last[p] - self.cpu_first[p] for p in self.cpu_last)

    def cpu_at(self, t: float) -> float:
        """Tree CPU seconds at wall time `t` (linear between samples)."""
        import numpy as np

        ts, cs = zip(*self.timeline)
        return float(np.interp(t, ts, cs))

    def _run(self) -> None:
        while not self._stop.is_set():
            for k, v in self.snapshot().items():
                self.peaks[k] = max(self.peaks.get(k, 0.0), v)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeSampler":
        self.baseline = self.snapshot(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.snapshot()  # last CPU reading

    def memory(self) -> dict[str, Any]:
        mb = lambda d: {k: round(v / MB, 1) for k, v in d.items()}  # noqa: E731
        peak = mb(self.peaks)
        return {"peak_mb": peak, "baseline_mb": mb(self.baseline), "samples": self.samples,
                "tree_rss_delta_mb": round(peak["tree_rss"] - self.baseline["tree_rss"] / MB, 1),
                "tree_pss_delta_mb": round(peak["tree_pss"] - self.baseline["tree_pss"] / MB, 1)}


# -- data --------------------------------------------------------------------------------
def prepare_data(args, work: Path):
    """Ingest + snapshot (project jobs) into a temp LanceDB; returns (TaskData, source note)."""
    from jobs import generate, ingest, label, snapshot
    from ray_app.store import Store
    from ray_app.training.data import _hash_unit, load_task_data
    from schemas.config import GenerateConfig, IngestConfig, LabelConfig, SnapshotConfig

    db = str(work / "lancedb")
    common = {"db": db, "num_cpus": 2, "quiet": True}
    if args.snips:
        ingest.run(IngestConfig(**common, source="snips", path=str(args.snips)))
        source = f"snips:{args.snips}"
    else:
        demo = work / "demo"
        queries = int(args.max_train_examples / 0.8 * 1.05) + 50  # ~80% of generated queries are train
        generate.run(GenerateConfig(**common, out=str(demo), seed=args.seed, products=200, queries=queries,
                                    users=10, events=200))
        ingest.run(IngestConfig(**common, table="queries", path=str(demo / "queries.csv")))
        label.run(LabelConfig(**common, action="import", path=str(demo / "gold_labels.jsonl"), annotator="gold"))
        source = f"synthetic: jobs.generate seed {args.seed}, {queries} queries, gold labels"
    snapshot.run(SnapshotConfig(**common, name=SNAPSHOT, report_dir=str(work / "reports")))
    data = load_task_data(Store(db), SNAPSHOT, "intent_entity", seed=args.seed, max_train_examples=args.max_train_examples)
    if args.max_val_examples and len(data.splits["validation"]) > args.max_val_examples:
        val = sorted(data.splits["validation"], key=lambda r: _hash_unit(r["query_id"], args.seed))
        data.splits["validation"] = val[:args.max_val_examples]
        data.notes.append(f"validation capped at {args.max_val_examples} examples")
    return data, source


def start_ray() -> None:
    """A fresh local Ray with 2 CPUs (Ray fork+execs; lancedb's/lance's fork warnings do not apply)."""
    import warnings

    from ray_app.runtime import init_ray

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="lancedb fork support")
        warnings.filterwarnings("ignore", message="lance is not fork-safe")
        init_ray(num_cpus=2, quiet=True)


def train_config(args, work: Path, lora: bool, workers: int):
    from schemas.training import TrainConfig

    return TrainConfig(task="intent_entity", snapshot=SNAPSHOT, base_model=args.base_model, lora=lora,
                       epochs=args.epochs, batch_size=args.batch_size, num_workers=workers, patience=0,
                       keep_checkpoints=args.epochs, max_failures=0, seed=args.seed, quiet=True,
                       storage_path=str(work / "ray_results"), models_dir=str(work / "models"))


# -- runs ---------------------------------------------------------------------------------
def plain_loop(cfg: dict[str, Any], data, threads: int) -> dict[str, Any]:
    """The Ray loop's work without Ray: same model, collate, optimizer, schedule, eval, checkpoint."""
    import numpy as np
    import torch

    from ray_app.models.lora import build_model
    from ray_app.training.loop import linear_schedule, make_optimizer, optimizer_step, save_checkpoint
    from ray_app.training.tasks import EPOCH_START, TASK_FUNCS
    from schemas.training import LoraSettings

    torch.set_num_threads(threads)
    torch.manual_seed(cfg["seed"])
    collate, evaluate, finalize = TASK_FUNCS[cfg["task"]]
    lora = LoraSettings(**cfg["lora"]) if cfg.get("lora") else None
    model, tokenizer = build_model(cfg["task"], cfg["base_model"], cfg["head_config"], lora)
    columns = lambda rows: {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}  # noqa: E731
    train, val = columns(data.splits["train"]), columns(data.splits["validation"])
    n, bs = len(data.splits["train"]), cfg["batch_size"]
    steps_per_epoch = max(1, math.ceil(cfg["num_train_examples"] // 1 / bs))
    total_steps = steps_per_epoch * cfg["epochs"]
    optimizer = make_optimizer(model, cfg["lr"], cfg["weight_decay"])
    scheduler = linear_schedule(optimizer, int(cfg["warmup_ratio"] * total_steps), total_steps)
    device, history, ends, train_s = torch.device("cpu"), [], [], []
    for epoch in range(cfg["epochs"]):
        start = time.perf_counter()
        model.train()
        loss_sum, steps = 0.0, 0
        if cfg["task"] in EPOCH_START:  # per-epoch state of a task (the recommender's item cache), as the Ray loop
            cfg = {**cfg, **EPOCH_START[cfg["task"]](model, _Rows(train), tokenizer, cfg, device)}
        order = np.random.default_rng(cfg["seed"] * 1000 + epoch).permutation(n)
        for i in range(0, n, bs):
            batch = {k: v[order[i:i + bs]] for k, v in train.items()}
            loss = model(**collate(batch, tokenizer, cfg, epoch=epoch))["loss"]
            optimizer_step(model, loss, optimizer, scheduler, cfg["max_grad_norm"])
            loss_sum += float(loss.detach())
            steps += 1
        train_s.append(time.perf_counter() - start)
        model.eval()
        nv = len(data.splits["validation"])
        metrics = finalize(evaluate(model, ({k: v[i:i + bs] for k, v in val.items()} for i in range(0, nv, bs)),
                                    tokenizer, cfg, device))
        metrics.update({"epoch": epoch, "train_loss": loss_sum / max(1, steps)})
        history.append({k: float(v) for k, v in metrics.items()})
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(folder, model, optimizer, scheduler, {"epoch": epoch, "history": history})
        ends.append(time.perf_counter())
    return {"history": history, "epoch_ends": ends, "train_only_s": train_s}


class _Rows:
    """Column arrays behind the one Ray Data method a task's epoch hook calls (`iter_batches`)."""

    def __init__(self, columns: dict[str, Any]):
        self.columns = columns

    def iter_batches(self, batch_size: int = 1024, batch_format: str = "numpy", **_):
        n = len(next(iter(self.columns.values())))
        for i in range(0, n, batch_size):
            yield {k: v[i:i + batch_size] for k, v in self.columns.items()}


def ray_run(config, data) -> dict[str, Any]:
    from ray_app.training.trainer import build_trainer

    result = build_trainer(config, data).fit()
    ends = {}
    for ckpt, metrics in result.best_checkpoints or []:
        state = Path(ckpt.path) / "train_state.json"
        if state.is_file():
            ends[int(metrics["epoch"])] = state.stat().st_mtime
    return {"history": (result.return_value or {}).get("history", []),
            "epoch_ends_wall": [ends[e] for e in sorted(ends)]}


def measure(name: str, fn: Callable[[], dict[str, Any]], n_train: int, interval: float) -> dict[str, Any]:
    print(f"[train bench] {name} ...", file=sys.stderr, flush=True)
    with TreeSampler(interval) as tree:
        wall0, start = time.time(), time.perf_counter()
        out = fn()
        total = time.perf_counter() - start
    # epoch end times as wall-clock (Ray: checkpoint mtimes; plain: perf_counter mapped onto time.time)
    ends = out.pop("epoch_ends_wall") if "epoch_ends_wall" in out else [wall0 + t - start for t in out.pop("epoch_ends")]
    intervals = [b - a for a, b in zip(ends, ends[1:])]
    cpu_intervals = [tree.cpu_at(b) - tree.cpu_at(a) for a, b in zip(ends, ends[1:])]
    steady = statistics.median(intervals) if intervals else None
    steady_cpu = statistics.median(cpu_intervals) if cpu_intervals else None
    history = out.pop("history")
    last = history[-1] if history else {}
    samples, cpu_total = n_train * len(history), tree.cpu_seconds()
    res = {
        "epochs_run": len(history), "samples": samples, "total_seconds": round(total, 2),
        "samples_per_s_total": round(samples / total, 2),
        "epoch_end_s": [round(t - wall0, 2) for t in ends], "epoch_interval_s": [round(t, 2) for t in intervals],
        "steady_epoch_seconds": round(steady, 2) if steady else None,
        "samples_per_s_steady": round(n_train / steady, 2) if steady else None,
        # time before the first epoch (start-up, model load, data setup), assuming epoch 0 takes a steady epoch
        "startup_estimate_s": round(ends[0] - wall0 - steady, 2) if steady and ends else None,
        "cpu_seconds_total": round(cpu_total, 1), "samples_per_cpu_s_total": round(samples / cpu_total, 2) if cpu_total else None,
        "epoch_interval_cpu_s": [round(c, 1) for c in cpu_intervals],
        "samples_per_cpu_s_steady": round(n_train / steady_cpu, 2) if steady_cpu else None,
        "memory": tree.memory(),
        "val_final": {k: round(v, 4) for k, v in last.items() if k.startswith("val_") or k == "train_loss"},
        "val_score_by_epoch": [round(h.get("val_score", float("nan")), 4) for h in history],
        **{k: [round(t, 2) for t in v] if isinstance(v, list) else v for k, v in out.items()},
    }
    print(f"[train bench] {name}: {res['samples_per_s_total']} samples/s total, {res['samples_per_s_steady']} steady "
          f"({res['samples_per_cpu_s_steady']} per CPU-s), tree peak RSS {res['memory']['peak_mb']['tree_rss']} MB, "
          f"val_score {last.get('val_score')}", file=sys.stderr, flush=True)
    return res


def _ratio(a: Optional[float], b: Optional[float], nd: int = 2) -> Optional[float]:
    return round(a / b, nd) if a and b else None


def ratios(r: dict[str, dict[str, Any]]) -> dict[str, Any]:
    get = lambda run, *keys: _dig(r.get(run, {}), keys)  # noqa: E731
    pairs = {"ray_lora_1w_vs_plain_lora": ("ray_lora_1w", "plain_lora"), "ray_lora_2w_vs_plain_lora": ("ray_lora_2w", "plain_lora"),
             "ray_lora_2w_vs_1w": ("ray_lora_2w", "ray_lora_1w"), "lora_vs_full": ("ray_lora_1w", "ray_full_1w")}
    out: dict[str, Any] = {}
    for kind in ("s_steady", "s_total", "cpu_s_steady", "cpu_s_total"):
        for label, (a, b) in pairs.items():
            out[f"{label}_samples_per_{kind}"] = _ratio(get(a, f"samples_per_{kind}"), get(b, f"samples_per_{kind}"))
    for key in ("tree_rss", "tree_pss", "train_workers_rss", "train_workers_pss"):
        for label in (("ray_lora_1w_vs_plain_lora", "lora_vs_full") if key.startswith("tree") else ("lora_vs_full",)):
            a, b = pairs[label]
            out[f"{label}_{key}_peak"] = _ratio(get(a, "memory", "peak_mb", key), get(b, "memory", "peak_mb", key))
    lora, full, plain = (get(k, "val_final") or {} for k in ("ray_lora_1w", "ray_full_1w", "plain_lora"))
    out["quality_lora_minus_full"] = {k: round(lora[k] - full[k], 4) for k in ("val_score", "val_intent_acc", "val_span_f1",
                                                                                  "val_exact_match") if k in lora and k in full}
    out["quality_ray_lora_1w_minus_plain_lora_val_score"] = (round(lora["val_score"] - plain["val_score"], 4)
                                                             if "val_score" in lora and "val_score" in plain else None)
    return out


def _dig(d: Any, keys) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def model_sizes(args, data, work: Path) -> dict[str, Any]:
    """Parameters and the fp32 bytes of weights + grads + AdamW moments (the part LoRA shrinks)."""
    from ray_app.models.lora import build_model, count_parameters
    from ray_app.training.trainer import head_config

    out = {}
    for lora in (True, False):
        config = train_config(args, work, lora=lora, workers=1)
        model, _ = build_model("intent_entity", args.base_model, head_config(config, data.label_spaces), config.lora_settings())
        c = count_parameters(model)
        out["lora" if lora else "full"] = {**c, "weights_grads_adam_mb": round((c["total"] + 3 * c["trainable"]) * 4 / MB, 1)}
    return out


def machine_info() -> dict[str, Any]:
    import psutil
    import ray
    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
            "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__, "torch_threads_default": torch.get_num_threads()}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snips", type=Path, default=DEFAULT_SNIPS if DEFAULT_SNIPS.is_dir() else None,
                        help="SNIPS folder (default ../shared/data/snips when it exists, else synthetic data)")
    parser.add_argument("--synthetic", action="store_true", help="use the synthetic generator even when SNIPS exists")
    parser.add_argument("--base-model", default="minilm", help="minilm (default) or tiny-bert for a smoke run")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the project's (32 for intent_entity)")
    parser.add_argument("--max-train-examples", type=int, default=2000)
    parser.add_argument("--max-val-examples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--runs", default=",".join(ALL_RUNS), help=f"comma list out of {', '.join(ALL_RUNS)}")
    parser.add_argument("--plain-threads", type=int, default=1,
                        help="torch threads of the plain loop (1 = what one Ray worker with cpus_per_worker=1 uses)")
    parser.add_argument("--sample-interval", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train.json"))
    args = parser.parse_args(argv)
    if args.synthetic:
        args.snips = None
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in ALL_RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; known: {', '.join(ALL_RUNS)}")

    import ray

    from ray_app.training.trainer import loop_config

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    started, load_start, machine = time.perf_counter(), os.getloadavg(), machine_info()
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        start_ray()
        t = time.perf_counter()
        data, source = prepare_data(args, work)
        prep_s = time.perf_counter() - t
        ray.shutdown()  # the plain loop runs without any Ray process around it
        n_train = len(data.splits["train"])
        results: dict[str, dict[str, Any]] = {}
        if "plain_lora" in runs:
            cfg = loop_config(train_config(args, work, lora=True, workers=1), data)
            results["plain_lora"] = measure("plain_lora", lambda: plain_loop(cfg, data, args.plain_threads),
                                            n_train, args.sample_interval)
            results["plain_lora"].update(torch_threads=args.plain_threads, lr=cfg["lr"],
                                         optimizer_steps_per_epoch=math.ceil(n_train / cfg["batch_size"]))
        ray_runs = [r for r in runs if r.startswith("ray_")]
        for name in ray_runs:  # a fresh Ray per run: same start state (no idle workers left by the previous run)
            start_ray()
            config = train_config(args, work, lora="lora" in name, workers=int(name[-2]))
            results[name] = measure(name, lambda c=config: ray_run(c, data), n_train, args.sample_interval)
            results[name].update(num_workers=config.num_workers, torch_threads_per_worker=1, lr=config.peak_lr(),
                                 optimizer_steps_per_epoch=math.ceil(n_train // config.num_workers / config.batch()))
            ray.shutdown()
        lora_cfg = train_config(args, work, lora=True, workers=1)
        summary = {
            "benchmark": "train", "task": "intent_entity",
            "data": {"source": source, "examples": data.counts(), "intents": len(data.label_spaces["intents"]),
                     "entity_types": len(data.label_spaces["entity_types"]), "notes": data.notes,
                     "prepare_seconds": round(prep_s, 1)},
            "config": {"base_model": args.base_model, "epochs": args.epochs, "batch_size_per_worker": lora_cfg.batch(),
                       "max_length": lora_cfg.seq_len(), "lora_r": lora_cfg.lora_r, "lora_alpha": lora_cfg.lora_alpha,
                       "lora_targets": lora_cfg.lora_targets, "lr_lora": lora_cfg.peak_lr(),
                       "lr_full": train_config(args, work, lora=False, workers=1).peak_lr(),
                       "warmup_ratio": lora_cfg.warmup_ratio, "seed": args.seed, "runs": runs,
                       "plain_torch_threads": args.plain_threads, "memory_sample_interval_s": args.sample_interval},
            "machine": {**machine, "load_average_at_start": [round(x, 2) for x in load_start],
                        "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
            "model": model_sizes(args, data, work),
            "method": {"samples": "train examples x epochs (2 workers: ~half each, so half the optimizer steps)",
                       "steady": "train + validation + checkpoint of one epoch, median over epochs >= 1",
                       "memory": "psutil RSS/PSS summed over the process tree; train_workers = RayTrainWorker "
                                 "processes; the plain loop runs with Ray shut down",
                       "cpu": "user+system seconds of the same tree (Ray's gcs/raylet/controller included)",
                       "quality": "validation metrics after the last epoch"},
            "results": results, "ratios": ratios(results), "benchmark_seconds": round(time.perf_counter() - started, 1),
        }
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    write_results(args.out, summary)


if __name__ == "__main__":
    main()
