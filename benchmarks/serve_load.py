"""What benchmarks/serve.py needs around the load generator: the machine's state, the CPU time of
process trees, one load level run in a pinned `benchmarks.loadgen` process, the time to a first
successful search, Suggest latency, the single-process baseline's launcher, and the figures derived
from a run's levels (Serve / single ratios, the CPU the Serve graph used while the single process ran)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory and the software under test."""
    import ray
    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gb": round(psutil.virtual_memory().total / 2 ** 30, 1),
            "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_busy() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, wall time) from /proc/stat, to take differences of."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), time.monotonic()


def tree_cpu(root_pid: int, exclude: Sequence[int] = (), include_root: bool = True) -> float:
    """User + system CPU seconds of a process and its descendants (minus the `exclude` subtrees)."""
    try:
        root = psutil.Process(root_pid)
        procs = ([root] if include_root else []) + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    skip: set[int] = set()
    for pid in exclude:
        try:
            skip |= {pid} | {c.pid for c in psutil.Process(pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            skip.add(pid)
    total = 0.0
    for p in procs:
        if p.pid in skip:
            continue
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_level(url: str, queries_file: str, concurrency: int, seconds: float, warmup: float, loadgen_cpu: Optional[int],
              trees: dict[str, tuple[int, Sequence[int], bool]], target: str) -> dict[str, Any]:
    """One closed-loop level in a loadgen process (pinned with taskset), with the machine's load and
    busy CPU, each named process tree's CPU seconds over the level, and the `target` tree's CPU per answer."""
    cmd = [PYTHON, "-m", "benchmarks.loadgen", "--url", url, "--queries", queries_file, "--concurrency",
           str(concurrency), "--seconds", str(seconds), "--warmup", str(warmup)]
    if loadgen_cpu is not None:
        cmd = ["taskset", "-c", str(loadgen_cpu)] + cmd
    before, busy0 = load_avg(), machine_busy()
    cpu0 = {name: tree_cpu(*spec) for name, spec in trees.items()}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 900)
    busy1 = machine_busy()
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr[-2000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    wall = busy1[1] - busy0[1]
    out["load_avg_before"], out["load_avg_after"] = before, load_avg()
    out["machine_busy_cores"] = round((busy1[0] - busy0[0]) / wall, 2)  # of os.cpu_count(), everyone's work
    out["cpu_s"] = {name: round(tree_cpu(*spec) - cpu0[name], 1) for name, spec in trees.items()}
    out["cpu_s"]["loadgen"] = out["loadgen"]["cpu_s"]
    out["server_cpu_ms_per_answer"] = round(1000 * out["cpu_s"][target] / max(1, out["answered_total"]), 1)
    out["level_wall_s"] = round(wall, 1)
    return out


class FirstSearch:
    """Polls POST /v1/search every `interval` s from construction until an answer is 200 and not degraded."""

    def __init__(self, base: str, query: str, interval: float = 0.1, timeout_s: float = 900.0):
        self.t0 = time.perf_counter()
        self.first_200: Optional[float] = None
        self.first_full: Optional[float] = None
        self.first_full_latency_ms: Optional[float] = None  # that request's own latency (it may have waited for replicas)
        self._args = (base, query, interval, timeout_s)
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        base, query, interval, timeout_s = self._args
        while time.perf_counter() - self.t0 < timeout_s:
            sent = time.perf_counter()
            try:
                r = requests.post(f"{base}/v1/search", json={"query": query, "size": 10}, timeout=120)
                if r.status_code == 200:
                    now = time.perf_counter()
                    self.first_200 = self.first_200 or now - self.t0
                    if not r.json().get("degraded"):
                        self.first_full, self.first_full_latency_ms = now - self.t0, round(1000 * (now - sent), 1)
                        return
            except requests.RequestException:
                pass
            time.sleep(interval)

    def wait(self) -> dict[str, Any]:
        """The times to the first answers, and the latency of one more search sent once they came."""
        self._thread.join()
        base, query = self._args[:2]
        t0, ok = time.perf_counter(), None
        if self.first_full is not None:
            ok = requests.post(f"{base}/v1/search", json={"query": query + " deals", "size": 10}, timeout=120).status_code
        return {"to_first_200_s": round(self.first_200, 2) if self.first_200 else None,
                "to_first_full_answer_s": round(self.first_full, 2) if self.first_full else None,
                "first_full_answer_request_ms": self.first_full_latency_ms,
                "next_request_ms": round(1000 * (time.perf_counter() - t0), 1), "next_request_status": ok}


def suggest_latency(base: str, prefixes: list[str]) -> dict[str, Any]:
    """Sequential GET /v1/suggest over the prefixes (after 20 warm-up calls): p50/p99 ms, non-200 count."""
    session = requests.Session()
    for p in prefixes[:20]:
        session.get(f"{base}/v1/suggest", params={"q": p}, timeout=30)
    times, bad = [], 0
    for p in prefixes:
        t0 = time.perf_counter()
        r = session.get(f"{base}/v1/suggest", params={"q": p}, timeout=30)
        times.append(1000 * (time.perf_counter() - t0))
        bad += r.status_code != 200
    arr = np.asarray(times)
    return {"prefixes": len(prefixes), "non_200": bad, "p50_ms": round(float(np.percentile(arr, 50)), 2),
            "p99_ms": round(float(np.percentile(arr, 99)), 2), "mean_ms": round(float(arr.mean()), 2)}


def start_single(workspace: str, port: int, ranker_model: str, threads: int, cpus: Optional[str], query: str,
                 log_path: Path, quantize: str = "none") -> tuple[subprocess.Popen, dict[str, Any]]:
    """Launch benchmarks.single_process (pinned to `cpus`) and time it to its first full search answer."""
    cmd = [PYTHON, "-m", "benchmarks.single_process", "--workspace", workspace, "--port", str(port),
           "--ranker-model", ranker_model, "--torch-threads", str(threads), "--ranker-quantize", quantize]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus] + cmd
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    cold = FirstSearch(f"http://127.0.0.1:{port}", query, timeout_s=600).wait()
    if cold["to_first_full_answer_s"] is None:
        proc.kill()
        raise RuntimeError(f"the single-process server did not answer; see {log_path}")
    return proc, cold


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server we started (by its own pid), kill it if it lingers."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def ratios(levels: dict[str, dict[str, Any]]) -> dict[str, dict[str, Optional[float]]]:
    """Serve / single at each level: throughput (all and full answers), p50, p99."""
    def div(a, b):
        return round(a / b, 3) if a is not None and b else None

    out = {}
    for c, pair in levels.items():
        s, b = pair["serve"], pair["single"]
        out[c] = {"throughput": div(s["throughput_rps"], b["throughput_rps"]),
                  "full_answer_throughput": div(s["full_answer_throughput_rps"], b["full_answer_throughput_rps"]),
                  "p50": div(s["latency_ms"]["p50"], b["latency_ms"]["p50"]),
                  "p99": div(s["latency_ms"]["p99"], b["latency_ms"]["p99"])}
    return out


def derived(summary: dict[str, Any]) -> dict[str, Any]:
    """Per mode and level: the Serve graph's CPU (cores) while the single process was measured, and
    each server's share of the machine's busy CPU during its own level (the rest: loadgen and others)."""
    out: dict[str, Any] = {}
    for mode, res in (summary.get("load") or {}).items():
        if not isinstance(res, dict) or "levels" not in res:
            continue
        rows = {}
        for c, pair in res["levels"].items():
            single, serve = pair["single"], pair["serve"]
            rows[c] = {"serve_cores_while_single_ran": round(single["cpu_s"]["serve"] / single["level_wall_s"], 3),
                       "serve_cores_own_level": round(serve["cpu_s"]["serve"] / serve["level_wall_s"], 3),
                       "single_cores_own_level": round(single["cpu_s"]["single"] / single["level_wall_s"], 3),
                       "machine_busy_cores_serve_level": serve["machine_busy_cores"],
                       "machine_busy_cores_single_level": single["machine_busy_cores"]}
        out[mode] = rows
    return out
