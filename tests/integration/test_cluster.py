"""Autoscaling from zero with cluster.yaml's node types, on Ray's fake multi-node provider (a
second, separate Ray cluster on loopback: `python -m ray_app.fake_cluster`). CPU work brings up a
CPU worker and no GPU one; a GPU task brings up a GPU worker and runs there; both go away once idle.
Only that cluster's processes are ended afterwards (the session's Ray is untouched)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_gpu_worker_from_zero_and_back():
    done = subprocess.run([sys.executable, "-m", "ray_app.fake_cluster", "--idle-timeout-minutes", "0.1",
                           "--timeout", "120"], capture_output=True, text=True, timeout=420)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0 and result["ok"], (result, done.stderr[-3000:])
    assert result["nodes_at_start"] == 1
    assert result["nodes_after_cpu_task"] == ["cpu", "head"]  # CPU work did not start a GPU node
    assert result["gpu_task"]["node_type"] == "gpu_worker" and result["gpu_task"]["gpu_ids"]
    assert "gpu" in result["nodes_after_gpu_task"]  # the CPU worker may already be gone: it was idle
    assert result["nodes_at_end"] == 1 and result["left_running"] == 0
