"""cluster.yaml's node types on Ray's fake multi-node provider: autoscaling from zero, on one machine.

`python -m ray_app.fake_cluster [--config cluster.yaml]` starts a head (`ray start --head` with the
`fake_multinode` provider, RAY_FAKE_CLUSTER=1) whose worker types are cluster.yaml's (same names,
resources, min/max workers) but with a short idle timeout, then from a driver:
  1. asks for more CPUs than the head has (a task with num_cpus=2): the autoscaler starts a
     `cpu_worker` from zero, and no GPU node, and the task runs there;
  2. asks for a GPU (num_gpus=1): it starts a `gpu_worker` from zero and the task runs there;
  3. waits with no work: the workers are terminated after the idle timeout.
It prints one JSON line (what started where, how long each step took) and exits 0 when every step
held. Only this cluster's processes are ended at the end (`ray stop` would end every Ray on the
machine): they are the ones started with this run's own temp dir and GCS port.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from ray_app.net import free_port

HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head node's type


def fake_config(cluster: dict[str, Any], gcs_address: str, idle_timeout_minutes: float) -> dict[str, Any]:
    """The autoscaler config of a fake cluster with `cluster`'s worker node types."""
    workers = {name: {"resources": dict(spec.get("resources", {})), "node_config": {},
                      "min_workers": spec.get("min_workers", 0), "max_workers": spec.get("max_workers", 1)}
               for name, spec in cluster["available_node_types"].items() if name != cluster["head_node_type"]}
    empty: dict[str, Any] = {k: [] for k in ("cluster_synced_files", "rsync_exclude", "rsync_filter",
                                             "initialization_commands", "setup_commands", "head_setup_commands",
                                             "worker_setup_commands", "head_start_ray_commands",
                                             "worker_start_ray_commands")}
    return {**empty, "cluster_name": f"fake-{cluster['cluster_name']}", "max_workers": cluster.get("max_workers", 4),
            "upscaling_speed": cluster.get("upscaling_speed", 1.0), "idle_timeout_minutes": idle_timeout_minutes,
            "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "disable_launch_config_check": True,
                         "disable_node_updaters": True, "use_node_id_as_ip": True},
            "auth": {"ssh_user": "ubuntu"}, "docker": {}, "file_mounts": {}, "file_mounts_sync_continuously": False,
            "head_node_type": HEAD_TYPE,
            "available_node_types": {**workers, HEAD_TYPE: {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0}}}


def our_processes(marker: str) -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            env = proc.info.get("environ") or {}
        except (psutil.Error, TypeError):
            continue
        if marker in cmd or env.get("SHOPSEARCH_FAKE_CLUSTER") == marker:
            found.append(proc.info["pid"])
    return [p for p in found if p != os.getpid()]


def stop(marker: str) -> int:
    """End the processes of this fake cluster only (TERM, then KILL)."""
    pids = our_processes(marker)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while time.time() < deadline and (pids := our_processes(marker)):
            time.sleep(0.3)
        if not pids:
            break
    return len(pids)


def alive_nodes(ray) -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n["Alive"]]


def wait_for(predicate, timeout: float, what: str) -> float:
    t0 = time.time()
    while not predicate():
        if time.time() - t0 > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)
    return round(time.time() - t0, 1)


def drive(address: str, timeout: float) -> dict[str, Any]:
    """Steps 1 to 3 of the module docstring, from a driver connected to the fake cluster."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    out: dict[str, Any] = {"nodes_at_start": len(alive_nodes(ray))}

    @ray.remote
    def where() -> dict[str, Any]:
        return {"node_type": os.environ.get("RAY_NODE_TYPE_NAME", HEAD_TYPE),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    def kinds() -> list[str]:
        return sorted("head" if n["Resources"].get("CPU") == 1 and "GPU" not in n["Resources"]
                      else "gpu" if n["Resources"].get("GPU") else "cpu" for n in alive_nodes(ray))

    t0 = time.time()  # CPU work first: it must bring up a CPU worker, not a GPU one
    out["cpu_task"] = ray.get(where.options(num_cpus=2).remote(), timeout=timeout)
    out["cpu_scale_up_s"], out["nodes_after_cpu_task"] = round(time.time() - t0, 1), kinds()
    t0 = time.time()
    out["gpu_task"] = ray.get(where.options(num_gpus=1, num_cpus=1).remote(), timeout=timeout)
    out["gpu_scale_up_s"], out["nodes_after_gpu_task"] = round(time.time() - t0, 1), kinds()
    out["scale_down_s"] = wait_for(lambda: len(alive_nodes(ray)) == 1, timeout, "idle workers removed")
    out["nodes_at_end"] = len(alive_nodes(ray))
    ray.shutdown()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "cluster.yaml"))
    parser.add_argument("--idle-timeout-minutes", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args(argv)
    cluster = yaml.safe_load(Path(args.config).read_text())
    port = free_port()
    temp = tempfile.mkdtemp(prefix="rf", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    marker = temp  # in every command line of this cluster's processes, and in their environment
    config_path = Path(temp) / "autoscaling.yaml"
    config_path.write_text(json.dumps(fake_config(cluster, f"127.0.0.1:{port}", args.idle_timeout_minutes)))
    # `ray start` turns Ray's token auth on once ~/.ray/auth_token exists (any local ray.init writes it):
    # the head and this driver then agree on it only if both run in token mode
    if (Path.home() / ".ray" / "auth_token").is_file():
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "SHOPSEARCH_FAKE_CLUSTER": marker, "RAY_USAGE_STATS_ENABLED": "0"}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    result: dict[str, Any] = {"ok": False, "config": args.config,
                              "worker_types": {n: t["resources"] for n, t in cluster["available_node_types"].items()
                                               if n != cluster["head_node_type"]}}
    try:
        subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=1", "--node-ip-address=127.0.0.1",
                        f"--temp-dir={temp}", "--include-dashboard=false", f"--autoscaling-config={config_path}",
                        "--disable-usage-stats"], env=env, check=True, capture_output=True, text=True, timeout=120)
        result.update(drive(f"127.0.0.1:{port}", args.timeout))
        result["ok"] = (result["nodes_at_start"] == 1 and result["cpu_task"]["node_type"] == "cpu_worker"
                        and result["nodes_after_cpu_task"] == ["cpu", "head"]
                        and result["gpu_task"]["node_type"] == "gpu_worker" and result["gpu_task"]["gpu_ids"]
                        and "gpu" in result["nodes_after_gpu_task"] and result["nodes_at_end"] == 1)
        # (the CPU worker may already have gone idle and been removed while the GPU node came up)
    except subprocess.CalledProcessError as exc:
        result["error"] = f"ray start failed: {exc.stderr[-2000:]}"
    except Exception as exc:  # noqa: BLE001 - reported in the JSON line, exit 1
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        result["left_running"] = stop(marker)
        if os.environ.get("SHOPSEARCH_FAKE_CLUSTER_KEEP"):
            result["temp_dir"] = temp
        else:
            shutil.rmtree(temp, ignore_errors=True)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
