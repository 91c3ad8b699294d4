"""LoRA (peft) or full fine-tuning of a task head, and the saved-model format.

A saved model is a folder: `meta.json` (task, base encoder name, head config incl. label
spaces, LoRA settings) plus either `adapter/` (peft adapter: LoRA matrices + the fully trained
heads via modules_to_save, a few MB) or `model.safetensors` (all weights, full fine-tuning).
Loading rebuilds the base from its name, so an adapter is only meaningful for the exact base
weights it was trained on (tiny-bert is seeded for that reason). `merge` folds the adapter into
the base weights (`merge_and_unload`) for inference without the LoRA indirection.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ray_app.models.encoder import load_encoder
from ray_app.models.heads import build_head
from schemas.training import LoraSettings

META_FILE = "meta.json"
ADAPTER_DIR = "adapter"
WEIGHTS_FILE = "model.safetensors"


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Wrap `model` with LoRA on `settings.target_modules`; its `head_names` stay fully trainable."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in settings.target_modules if t not in names]
    if len(missing) == len(settings.target_modules):
        raise ValueError(f"none of the LoRA target modules {settings.target_modules} exist in the encoder "
                         f"(module names include: {sorted(names)[:20]})")
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), bias="none",
                        modules_to_save=list(getattr(model, "head_names", [])) or None)
    return get_peft_model(model, config)


def is_peft(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP (`.module`) so saving and eval never go through the DDP wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the trained tensors (LoRA + heads, or everything when fully fine-tuned), on CPU."""
    model = unwrap(model)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in names}


def count_parameters(model: nn.Module) -> dict[str, int]:
    model = unwrap(model)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def full_model_bytes(model: nn.Module) -> int:
    """Bytes the whole model's weights take (what a full save would write, base included)."""
    model = unwrap(model)
    if is_peft(model):
        return sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                   if "lora_" not in n and "modules_to_save" not in n)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def build_model(task: str, base_model: str, head_config: dict[str, Any],
                lora: Optional[LoraSettings] = None, init_from: Optional[str | Path] = None):
    """(model, tokenizer): base encoder by name + head, warm-started from the saved model at
    `init_from` when given (a folder, or a version on an object-storage registry: see `warm_start`),
    LoRA-wrapped when `lora` is given."""
    backbone, tokenizer = load_encoder(base_model)
    model = build_head(task, backbone, head_config)
    if init_from is not None:
        from ray_app.registry import version_folder

        warm_start(model, version_folder(init_from), task, base_model)
    if lora is not None:
        model = apply_lora(model, lora)
    return model, tokenizer


def save_model(model: nn.Module, out_dir: str | Path, task: str, base_model: str,
               lora: Optional[LoraSettings], extra: Optional[dict[str, Any]] = None) -> dict[str, int]:
    """Write the saved-model folder; returns {"adapter_bytes", "full_model_bytes", "saved_bytes"}."""
    from safetensors.torch import save_file

    model = unwrap(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    head = model.get_base_model() if is_peft(model) else model
    meta = {"format": 1, "task": task, "base_model": base_model, "head_config": head.head_config(),
            "lora": lora.model_dump() if lora is not None else None, **(extra or {})}
    if lora is not None:
        model.save_pretrained(str(out / ADAPTER_DIR))
        saved = folder_bytes(out / ADAPTER_DIR)
    else:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(out / WEIGHTS_FILE))
        saved = (out / WEIGHTS_FILE).stat().st_size
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return {"adapter_bytes": saved if lora is not None else 0, "full_model_bytes": full_model_bytes(model),
            "saved_bytes": saved}


def read_meta(path: str | Path) -> dict[str, Any]:
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a saved model folder (no {META_FILE})")
    return json.loads(meta_path.read_text())


def load_saved_model(path: str | Path, merge: bool = False, device: Optional[str] = None):
    """(model, tokenizer, meta) from a saved-model folder: base by name + adapter or weights."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_meta(path)
    backbone, tokenizer = load_encoder(meta["base_model"])
    model = build_head(meta["task"], backbone, meta["head_config"])
    if meta.get("lora"):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(path / ADAPTER_DIR), is_trainable=False)
        if merge:
            model = merge_lora(model)
    else:
        missing, unexpected = model.load_state_dict(load_file(str(path / WEIGHTS_FILE)), strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not fit the {meta['task']} head on {meta['base_model']} "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    if device:
        model.to(device)
    model.eval()
    return model, tokenizer, meta


def warm_start(model: nn.Module, path: str | Path, task: str, base_model: str) -> dict[str, int]:
    """Copy a saved model's weights (LoRA merged) into a freshly built, not yet LoRA-wrapped `model`
    of the same task and base: every tensor of the same name and shape, and the rows of embeddings
    keyed by a vocabulary that grew (a head's `warm_rows`, e.g. the recommender's product and locale
    ids: rows of ids both know are copied, new ids keep their fresh initialisation). Returns counts."""
    old, _, meta = load_saved_model(path, merge=True, device="cpu")
    if (meta["task"], meta["base_model"]) != (task, base_model):
        raise ValueError(f"cannot warm-start a {task} model on {base_model} from {path}: it is a {meta['task']} model "
                         f"on {meta['base_model']}")
    old = unwrap(old)
    mine, theirs = model.state_dict(), old.state_dict()
    rows = model.warm_rows(old) if hasattr(model, "warm_rows") else {}
    counts = {"copied": 0, "mapped": 0, "fresh": 0}
    with torch.no_grad():
        for name, tensor in mine.items():
            source = theirs.get(name)
            if name in rows and source is not None:
                new_rows, old_rows = rows[name]
                tensor[new_rows] = source[old_rows].to(tensor.dtype)
                counts["mapped"] += 1
            elif source is not None and source.shape == tensor.shape:
                tensor.copy_(source)
                counts["copied"] += 1
            else:
                counts["fresh"] += 1
    return counts


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA weights into the base (peft merge_and_unload): a plain head module, same outputs."""
    return model.merge_and_unload() if is_peft(model) else model


def average_weights(models: list[nn.Module]) -> dict[str, torch.Tensor]:
    """The uniform average of same-architecture models' weights (a model soup). Floating tensors
    are averaged in float64; integer buffers (e.g. position ids) must agree and are kept."""
    states = [unwrap(m).state_dict() for m in models]
    keys = list(states[0])
    for i, state in enumerate(states[1:], start=1):
        if list(state) != keys or any(state[k].shape != states[0][k].shape for k in keys):
            raise ValueError(f"model {i} has other weights than model 0 (different architecture or head)")
    out = {}
    for k in keys:
        first = states[0][k]
        if first.is_floating_point():
            out[k] = (sum(s[k].detach().double() for s in states) / len(states)).to(first.dtype)
        elif all(torch.equal(s[k], first) for s in states[1:]):
            out[k] = first.clone()
        else:
            raise ValueError(f"non-float tensor {k!r} differs between the models; they cannot be averaged")
    return out
