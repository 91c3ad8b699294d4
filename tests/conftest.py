"""Shared fixtures: one session-scoped local Ray with a fixed num_cpus, tiny stores under tmp_path."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHOPSEARCH_SHARED_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("SHOPSEARCH_PSEUDONYM_KEY", "test-key-not-secret")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3-compatible server on loopback (SeaweedFS `weed mini`), one bucket, signed access.
    Started before the session's Ray, with its AWS_* variables in the environment, so Ray's
    workers and Serve's replicas reach `s3://<bucket>/...` exactly as on a cluster."""
    from ray_app.local_s3 import LocalS3

    server = LocalS3(str(tmp_path_factory.mktemp("s3")), bucket="shop").start()
    os.environ.update(server.env())
    # local copies of registry versions on s3:// (the session's processes share one, not ~/.cache)
    os.environ["SHOPSEARCH_MODEL_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_session(s3):
    """A local Ray started once for the whole test session (num_cpus fixed at 2); its processes
    see the session's S3 server."""
    import ray

    from ray_app.runtime import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=2, quiet=True)
    yield ray
    ray.shutdown()


@pytest.fixture
def store(tmp_path):
    """An empty LanceDB store in a temporary folder."""
    from ray_app.store import Store

    return Store(str(tmp_path / "db"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests where no CUDA device is present."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # torch missing or broken: no GPU tests either way
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
