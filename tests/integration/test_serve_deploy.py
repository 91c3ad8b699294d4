"""`serve deploy serve/config.yaml` against a `ray start --head` cluster of its own, as the README
documents it: the workspace comes from the cluster's $SHOPSEARCH_WORKSPACE (the tiny shop; its
store and registry on the session's S3 server), the app is built inside the cluster, answers
search, suggest and understand, and `serve shutdown` removes it. The cluster uses free ports and its own temp dir, so the session's Ray (or anyone
else's on this machine) is never touched; it is stopped through its own `ray start --block`
process, never `ray stop` (which stops every Ray on the machine)."""
from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
import requests
import yaml

from ray_app.net import free_ports

pytestmark = [pytest.mark.integration, pytest.mark.model]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the .venv's `ray` and `serve`: the project is installed in it
READY_S = 300.0  # tiny models load in seconds; a loaded 2-core box is slower


def free_range(taken: list[int], size: int = 100) -> tuple[int, int]:
    """A run of `size` ports, all free now and none of `taken`, for the cluster's workers."""
    for _ in range(50):
        start = random.randrange(20000, 32000 - size)  # below Linux's ephemeral range, where free_ports picks
        if any(start <= port < start + size for port in taken):
            continue
        try:
            socks = []
            for port in range(start, start + size):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return start, start + size - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no run of {size} free ports found")


def log_tail(temp_dir: str, lines: int = 15) -> str:
    """The last lines of the `ray start` output and of each Serve log of the cluster."""
    files = [Path(temp_dir) / "ray-start.log", *sorted((Path(temp_dir) / "session_latest" / "logs" / "serve").glob("*"))]
    out = []
    for f in files:
        if f.is_file():
            text = f.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {f.name}\n" + "\n".join(text))
    return "\n".join(out)[-12000:] or f"(no logs under {temp_dir})"


def wait_for(what: str, check: Callable[[], Optional[Any]], temp_dir: str, timeout_s: float = READY_S) -> Any:
    """Poll `check` until it returns something other than None; a failure naming `what` with the logs' tail."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            got = check()
            if got is not None:
                return got
        except (requests.RequestException, subprocess.SubprocessError) as exc:
            last = exc
        time.sleep(1.0)
    pytest.fail(f"{what} not reached in {timeout_s:.0f}s (last error: {last})\n{log_tail(temp_dir)}")


def stop_cluster(proc: subprocess.Popen, temp_dir: str) -> None:
    """Stop our `ray start --block` (it tears its processes down), then anything still running from our temp dir."""
    import psutil

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` drains (up to 30 s), then stops its processes
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    ours = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if temp_dir in " ".join(p.info["cmdline"] or []):
                ours.append(p)
                p.terminate()
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(ours, timeout=15)
    for p in alive:
        p.kill()
    _, alive = psutil.wait_procs(alive, timeout=10)
    assert not alive, f"processes of the test cluster still running: {[p.pid for p in alive]}"


@pytest.fixture(scope="module")
def cluster(tiny_shop) -> Iterator[dict[str, Any]]:
    """`ray start --head --block` with the dashboard on free ports, run from the repository root."""
    # Ray's socket paths must stay short (AF_UNIX limit), so /tmp/rdXXXX rather than pytest's tmp_path
    temp_dir = tempfile.mkdtemp(prefix="rd", dir="/tmp")
    gcs, dashboard, client, node, objects, metrics, agent, agent_grpc, runtime_env, http = free_ports(10)
    low, high = free_range([gcs, dashboard, client, node, objects, metrics, agent, agent_grpc, runtime_env, http])
    # Ray turns token auth on for `ray start` whenever ~/.ray/auth_token exists, and the `serve` CLI
    # sends a token only under RAY_AUTH_MODE=token: the cluster and the CLI share a token of their own
    token = secrets.token_hex(32)
    env = {**os.environ, "SHOPSEARCH_WORKSPACE": str(Path(tiny_shop["root"]).resolve()),
           "SHOPSEARCH_DB": tiny_shop["db"],  # the shop's LanceDB on the session's S3 server (AWS_* inherited)
           "SHOPSEARCH_MODELS": tiny_shop["models_dir"],  # and its model registry there too
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--num-cpus=2", "--num-gpus=0", "--object-store-memory=200000000", f"--temp-dir={temp_dir}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
           f"--ray-client-server-port={client}", f"--node-manager-port={node}", f"--object-manager-port={objects}",
           f"--metrics-export-port={metrics}", f"--dashboard-agent-listen-port={agent}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
           f"--min-worker-port={low}", f"--max-worker-port={high}", "--disable-usage-stats"]
    log = open(Path(temp_dir) / "ray-start.log", "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        def dashboard_up() -> Optional[bool]:
            if proc.poll() is not None:
                pytest.fail(f"`ray start` exited with {proc.returncode}\n{log_tail(temp_dir)}")
            r = requests.get(f"{address}/api/version", headers={"authorization": f"Bearer {token}"}, timeout=5)
            r.raise_for_status()
            return True

        wait_for("the cluster's dashboard answering", dashboard_up, temp_dir)
        yield {"address": address, "http_port": http, "temp_dir": temp_dir, "env": env}
    finally:
        stop_cluster(proc, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def serve_cli(cluster: dict[str, Any], *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    """`serve <args> -a <dashboard>` from the repository root, failing with its output and the logs."""
    cmd = [str(BIN / "serve"), *args, "-a", cluster["address"]]
    done = subprocess.run(cmd, cwd=ROOT, env=cluster["env"], capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}: {done.stdout}{done.stderr}\n{log_tail(cluster['temp_dir'])}")
    return done


def app_status(cluster: dict[str, Any]) -> Optional[str]:
    """The shopsearch application's status in `serve status`, None when it is not there."""
    status = yaml.safe_load(serve_cli(cluster, "status").stdout) or {}
    app = (status.get("applications") or {}).get("shopsearch")
    return app.get("status") if app else None


def test_serve_deploy_checked_in_config_on_ray_start_head(cluster, tiny_shop, tmp_path):
    config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    config["http_options"]["port"] = cluster["http_port"]
    app = config["applications"][0]
    assert "workspace" not in app["args"] and "db" not in app["args"]  # the store comes from $SHOPSEARCH_WORKSPACE / _DB
    # the tiny shop's models (as the session's serve_app); everything else as checked in, the
    # relative `rules: serve/rules.yaml` included (resolved where `ray start` ran)
    app["args"].update(encoder="tiny-bert", torch_threads=1, reload_s=1.0, refresh_s=1.0)
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    rules_version = str(yaml.safe_load((ROOT / "serve" / "rules.yaml").read_text())["version"])
    temp_dir, base = cluster["temp_dir"], f"http://127.0.0.1:{cluster['http_port']}"

    serve_cli(cluster, "deploy", str(path))

    def running() -> Optional[str]:
        status = app_status(cluster)
        if status == "DEPLOY_FAILED":
            pytest.fail(f"serve deploy failed: {serve_cli(cluster, 'status').stdout}\n{log_tail(temp_dir)}")
        return status if status == "RUNNING" else None

    wait_for("application shopsearch RUNNING", running, temp_dir)
    health = wait_for("GET /healthz 200", lambda: (r := requests.get(f"{base}/healthz", timeout=10)).status_code == 200
                      and r.json() or None, temp_dir)
    assert health["ok"] and set(health["deployments"]) == {"QueryUnderstanding", "Retriever", "Ranker", "Suggest", "Recommender", "EventWriter"}

    r = requests.post(f"{base}/v1/search", json={"query": "sony headphones", "size": 5}, timeout=60)
    assert r.status_code == 200, r.text
    out, v = r.json(), tiny_shop["versions"]
    assert len(out["results"]) == 5 and out["request_id"] and out["degraded"] == []
    assert out["versions"]["understanding"] == v["intent"] and out["versions"]["ranker"] == v["ranker"]
    assert out["versions"]["retriever"].startswith("tiny-bert+") and out["versions"]["rules"] == rules_version
    assert all(h["stock"] != 0 for h in out["results"])  # the checked-in exclusion rule holds
    s = requests.get(f"{base}/v1/suggest", params={"q": "nike run"}, timeout=30)
    assert s.status_code == 200 and s.json()["suggestions"], s.text
    u = requests.post(f"{base}/v1/understand", json={"query": "nike running shoe under 50"}, timeout=30)
    assert u.status_code == 200 and u.json()["version"] == v["intent"], u.text

    serve_cli(cluster, "shutdown", "-y")
    wait_for("application shopsearch gone after serve shutdown", lambda: True if app_status(cluster) is None else None,
             temp_dir, timeout_s=120)

    def http_gone() -> Optional[bool]:
        try:
            requests.get(f"{base}/healthz", timeout=5)
        except requests.ConnectionError:
            return True  # the proxy went with the app
        return None

    wait_for("the app's HTTP port closed after serve shutdown", http_gone, temp_dir, timeout_s=60)
