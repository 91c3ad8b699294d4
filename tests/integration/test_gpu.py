"""The GPU code paths, run where CUDA is present (the `gpu` marker skips them elsewhere, see
tests/conftest.py): Ray Train on GPU workers (TorchTrainer with use_gpu: NCCL process group, bf16
autocast in ray_app/training/loop.py), the GPU embed actors of jobs.embed (`--use-gpu`), and a Serve
replica that reserves a GPU and encodes on it. Each uses the session's local Ray, which sees the
machine's GPUs (ray.init detects them)."""
from __future__ import annotations

import pytest

from tests.integration.test_embed_evaluate import fill_store
from tests.integration.test_train import _config, fill_tiny_store

pytestmark = [pytest.mark.integration, pytest.mark.model, pytest.mark.gpu]


def gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def test_train_on_gpu_workers_nccl_bf16(ray_session, store, tmp_path):
    import torch

    from ray_app.registry import Registry
    from ray_app.training.trainer import run_training

    assert gpus() >= 1 and torch.cuda.is_bf16_supported()
    fill_tiny_store(store)
    workers = min(2, gpus())  # 2 workers -> an NCCL all-reduce between two GPUs where there are two
    result = run_training(_config(tmp_path, use_gpu=True, num_workers=workers, cpus_per_worker=1), store)
    assert result.epochs_run == 3 and result.restarts == 0
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0], losses
    version = Registry(tmp_path / "models").get(result.model_version)
    assert version.config["use_gpu"] is True
    loaded = Registry(tmp_path / "models").load_model(result.model_version, device="cuda")
    assert next(loaded.model.parameters()).device.type == "cuda"
    assert loaded.predict(["black sony headphones"])[0]["raw_intent"] in version.label_spaces["intents"]


def test_embed_job_on_a_gpu_actor(ray_session, store):
    import numpy as np

    from jobs import embed
    from ray_app.index import load_text_encoder
    from ray_app.training.data import product_text
    from schemas.evaluation import EmbedConfig

    fill_store(store, n=120)
    result = embed.run(EmbedConfig(db=store.uri, model="tiny-bert", batch_size=32, use_gpu=True, quiet=True))
    assert (result.embedded, result.dim) == (120, 32)
    rows = store.read("products").to_pylist()
    on_cpu = load_text_encoder("tiny-bert", device="cpu")
    texts = [product_text(r) for r in rows[:8]]
    want = np.asarray(on_cpu.encode(texts))
    got = np.asarray([r["vector"] for r in rows[:8]])
    assert np.allclose(got, want, atol=2e-3)  # the GPU's vectors are the CPU's, to float tolerance


def test_serve_replica_reserving_a_gpu_encodes_on_it(ray_session):
    from ray import serve

    @serve.deployment(ray_actor_options={"num_gpus": 1, "num_cpus": 0.1})
    class GpuEncoder:
        def __init__(self):
            from ray_app.index import load_text_encoder

            self.encoder = load_text_encoder("tiny-bert", device="cuda")

        def __call__(self, texts: list[str]) -> dict:
            import ray
            import torch

            vectors = self.encoder.encode(texts)
            return {"cuda": torch.cuda.is_available(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                    "dim": len(vectors[0]), "n": len(vectors)}

    handle = serve.run(GpuEncoder.bind(), name="gpu-check", route_prefix="/gpu-check")
    try:
        out = handle.remote(["red running shoes", "usb-c cable"]).result(timeout_s=120)
        assert out["cuda"] and out["gpu_ids"] and (out["n"], out["dim"]) == (2, 32)
    finally:
        serve.delete("gpu-check")
