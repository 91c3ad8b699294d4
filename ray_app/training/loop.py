"""The per-worker Ray Train loop: `train_loop_per_worker(config: dict)`.

It takes a plain dict (what `TrainConfig` + label spaces become, see trainer.loop_config) and
reports per-epoch validation metrics with a checkpoint, so Ray Tune can drive the same
function with a search space over lr, lora_r, batch_size... Resume: the checkpoint holds the
trained tensors, optimizer, scheduler and loop state (epoch, best, patience, history), and
`ray.train.get_checkpoint()` hands back the latest one after a worker-group restart.
Validation sums are all-reduced so every rank takes the same early-stopping decision.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

STATE_FILE = "train_state.json"
MODEL_FILE = "model.pt"
OPTIM_FILE = "optimizer.pt"
SCHED_FILE = "scheduler.pt"


def linear_schedule(optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up from 0 to the peak lr, then linear decay to 0 at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; biases and LayerNorm weights are not decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def optimizer_step(model: torch.nn.Module, loss: torch.Tensor, optimizer, scheduler, max_grad_norm: float) -> None:
    """One update: backward, clip the trainable parameters' gradient norm, AdamW step, lr schedule step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    scheduler.step()


def save_checkpoint(folder: str, model, optimizer, scheduler, state: dict[str, Any]) -> None:
    from ray_app.models.lora import trainable_state_dict

    torch.save(trainable_state_dict(model), os.path.join(folder, MODEL_FILE))
    torch.save(optimizer.state_dict(), os.path.join(folder, OPTIM_FILE))
    torch.save(scheduler.state_dict(), os.path.join(folder, SCHED_FILE))
    Path(folder, STATE_FILE).write_text(json.dumps(state))


def load_trained_tensors(model: torch.nn.Module, folder: str) -> None:
    """Load a checkpoint's trained tensors into an identically built model (strict on those keys)."""
    from ray_app.models.lora import unwrap

    tensors = torch.load(os.path.join(folder, MODEL_FILE), map_location="cpu", weights_only=True)
    _, unexpected = unwrap(model).load_state_dict(tensors, strict=False)
    if unexpected:
        raise ValueError(f"checkpoint {folder} does not fit the model: unexpected keys {unexpected[:5]}")


def _maybe_fail(cfg: dict[str, Any], epoch: int, rank: int) -> None:
    """Test hook: kill this worker process once (marker file), mid-epoch, to exercise restart + resume.

    It first waits until the controller has registered the previous epoch's checkpoint: Train V2
    processes reports asynchronously (health-check polling), and a report still in flight when
    a worker dies is dropped, which would make the restart begin from scratch.
    """
    marker = cfg.get("fail_once_marker")
    if marker and epoch == cfg.get("fail_at_epoch", 1) and rank == cfg.get("fail_rank", 1) and not os.path.exists(marker):
        import ray.train

        ray.train.get_all_reported_checkpoints(timeout_s=60)
        Path(marker).write_text(f"killed rank {rank} in epoch {epoch}\n")
        os._exit(1)


def rank_slice(batches: Iterable[dict[str, Any]], rank: int, world: int) -> Iterator[dict[str, Any]]:
    """The rows of each batch whose query_id (recommender: user_id) hashes to `rank` (whole queries stay together)."""
    for batch in batches:
        keys = batch["query_id"] if "query_id" in batch else batch["user_id"]
        keep = np.array([zlib.crc32(str(q).encode()) % world == rank for q in keys], dtype=bool)
        if keep.any():
            yield {k: v[keep] for k, v in batch.items()}


def all_reduce(values: list[float], device: torch.device, op: str = "sum") -> list[float]:
    """`values` reduced over the ranks of the run (sum or max); as they are on a single worker."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    # NCCL only reduces CUDA tensors; gloo takes CPU ones
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=on)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.cpu().tolist()


def _all_reduce(sums: dict[str, float], device: torch.device) -> dict[str, float]:
    keys = sorted(sums)
    return dict(zip(keys, all_reduce([float(sums[k]) for k in keys], device)))


def _outcome(state: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What the loop returns (rank 0's is the run's): the epoch history and the best epoch."""
    return {"history": state["history"], "best_epoch": state["best_epoch"], "best": state["best"],
            "restarts": state["restarts"], "epochs_run": state["epoch"] + 1, **extra}


def train_loop_per_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    import ray.train
    import ray.train.torch

    from ray_app.models.lora import build_model, unwrap
    from ray_app.training.stop import StopSignal
    from ray_app.training.tasks import EPOCH_START, TASK_FUNCS
    from schemas.training import LoraSettings

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg.get("cpus_per_worker", 1))))
    torch.manual_seed(cfg["seed"])
    collate, evaluate, finalize = TASK_FUNCS[cfg["task"]]
    lora = LoraSettings(**cfg["lora"]) if cfg.get("lora") else None
    model, tokenizer = build_model(cfg["task"], cfg["base_model"], cfg["head_config"], lora, cfg.get("init_from"))
    device = ray.train.torch.get_device()
    use_bf16 = bool(cfg.get("use_gpu")) and device.type == "cuda"
    model.to(device)  # before the optimizer, so restored optimizer state lands on the same device

    steps_per_epoch = max(1, math.ceil(cfg["num_train_examples"] // world / cfg["batch_size"]))
    total_steps = steps_per_epoch * cfg["epochs"]
    optimizer = make_optimizer(model, cfg["lr"], cfg["weight_decay"])
    scheduler = linear_schedule(optimizer, int(cfg["warmup_ratio"] * total_steps), total_steps)
    state = {"epoch": -1, "best": -math.inf, "best_epoch": -1, "bad_epochs": 0, "history": [], "restarts": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            load_trained_tensors(model, folder)
            optimizer.load_state_dict(torch.load(os.path.join(folder, OPTIM_FILE), weights_only=True))
            scheduler.load_state_dict(torch.load(os.path.join(folder, SCHED_FILE), weights_only=True))
            state = json.loads(Path(folder, STATE_FILE).read_text())
        state["restarts"] += 1
    model = ray.train.torch.prepare_model(model)  # DDP (gloo on CPU, NCCL on GPU) + device placement
    metric = cfg["metric"]
    stop_signal = StopSignal(cfg.get("stop_board"), cfg.get("stop_key"))  # a Tune trial's: ASHA stopped it

    for epoch in range(state["epoch"] + 1, cfg["epochs"]):
        model.train()
        loss_sum, steps = 0.0, 0
        shard = ray.train.get_dataset_shard("train")
        if cfg["task"] in EPOCH_START:  # per-epoch state of a task (the recommender's item cache)
            cfg = {**cfg, **EPOCH_START[cfg["task"]](unwrap(model), shard, tokenizer, cfg, device)}
        for batch in shard.iter_batches(batch_size=cfg["batch_size"], batch_format="numpy",
                                        local_shuffle_buffer_size=max(cfg.get("shuffle_buffer", 256), 4 * cfg["batch_size"]),
                                        local_shuffle_seed=cfg["seed"] * 1000 + epoch):
            inputs = {k: v.to(device) for k, v in collate(batch, tokenizer, cfg, epoch=epoch).items()}
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = model(**inputs)["loss"]
            optimizer_step(model, loss, optimizer, scheduler, cfg["max_grad_norm"])
            loss_sum += float(loss.detach())
            steps += 1
            _maybe_fail(cfg, epoch, rank)
            if stop_signal.requested(device):  # all ranks at this same step: the run ends, Train frees its workers
                return _outcome(state, stopped=True)
        head = unwrap(model)
        head.eval()
        val_shard = ray.train.get_dataset_shard("validation")
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            batches = val_shard.iter_batches(batch_size=cfg["batch_size"] * world, batch_format="numpy")
            sums = evaluate(head, rank_slice(batches, rank, world), tokenizer, cfg, device)
        sums.update({"_loss_sum": loss_sum, "_steps": float(steps)})
        sums = _all_reduce(sums, device)
        metrics = finalize(sums)
        metrics.update({"epoch": epoch, "train_loss": sums["_loss_sum"] / max(1.0, sums["_steps"]),
                        "lr": scheduler.get_last_lr()[0]})
        score = metrics[metric]
        if score > state["best"] + 1e-9:
            state.update(best=score, best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        state["history"].append({k: float(v) for k, v in metrics.items()})
        stop = cfg["patience"] > 0 and state["bad_epochs"] >= cfg["patience"]
        metrics.update({"best_epoch": state["best_epoch"], "restarts": state["restarts"], "early_stopped": int(stop)})
        if rank == 0:  # one line per epoch in the driver's log (Ray forwards worker stdout)
            shown = {k: round(float(v), 4) for k, v in metrics.items() if k.startswith("val_") or k == "train_loss"}
            print(f"epoch {epoch + 1}/{cfg['epochs']}: {json.dumps(shown)}", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                save_checkpoint(folder, model, optimizer, scheduler, state)
            ckpt = ray.train.Checkpoint.from_directory(folder) if rank == 0 else None
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch_{epoch:03d}_try{state['restarts']}")
        if stop:
            break
    return _outcome(state)
