"""cluster.yaml passes Ray's own cluster-config validation (what `ray up` runs before it launches
anything) and has the shape the README promises: GPU and CPU workers from zero, an idle timeout,
the project's setup on every node, the dashboard reachable."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ray_app.fake_cluster import fake_config

pytestmark = pytest.mark.unit
CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"


def load() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load()))  # raises on a field the schema does not know or a bad value


def test_workers_start_from_zero_and_only_gpu_work_needs_the_gpu_type():
    config = load()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = {n: t for n, t in types.items() if n != config["head_node_type"]}
    assert "GPU" not in head["resources"]
    gpu = [t for t in workers.values() if t["resources"].get("GPU")]
    cpu = [t for t in workers.values() if not t["resources"].get("GPU")]
    assert gpu and cpu
    assert all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in workers.values())
    assert 0 < config["idle_timeout_minutes"] <= 30
    assert config["provider"]["cache_stopped_nodes"] is False  # idle nodes end, they are not kept stopped


def test_every_node_gets_the_project_and_ray_runs_from_its_venv():
    config = load()
    assert config["file_mounts"]["~/shopsearch"] == "."
    assert any("./setup.sh" in c for c in config["setup_commands"])
    head = " ".join(config["head_start_ray_commands"])
    assert "shopsearch/.venv/bin/ray start --head" in head and "--dashboard-host=0.0.0.0" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert all("shopsearch/.venv/bin/ray" in c for c in config["worker_start_ray_commands"])


def test_the_fake_cluster_keeps_cluster_yamls_worker_types():
    from ray.autoscaler._private.util import validate_config

    config = load()
    fake = fake_config(config, "127.0.0.1:1234", 0.1)
    validate_config(fake)
    for name, spec in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue
        assert fake["available_node_types"][name]["resources"] == spec["resources"]
        assert fake["available_node_types"][name]["min_workers"] == 0
