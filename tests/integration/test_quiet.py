"""Quiet by default: a job's stderr holds its own lines, not Ray's or lancedb's (a subprocess with its own Ray)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The job's own lines, plus the one line Ray prints when it reads RAY_BACKEND_LOG_LEVEL (the
# setting that silences its core_worker errors; see ray_app/runtime.py).
OWN = re.compile(r"^(\s*products: read \d+ .*|.*logging\.cc:\d+: Set ray log level from environment variable .*)$")


@pytest.mark.integration
def test_ingest_prints_only_its_own_lines(tmp_path):
    env = {**os.environ, "SHOPSEARCH_WORKSPACE": str(tmp_path / "ws"), "RAY_ADDRESS": ""}
    env.pop("RAY_BACKEND_LOG_LEVEL", None)

    def job(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)

    gen = job("jobs.generate", "--products", "200", "--queries", "20", "--users", "5", "--events", "50")
    assert gen.returncode == 0, gen.stderr
    products = tmp_path / "ws" / "demo" / "products.jsonl"
    proc = job("jobs.ingest", "--table", "products", "--path", str(products), "--num-cpus", "1")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert [line for line in lines if not OWN.match(line)] == []
    assert any(line.strip().startswith("products: read 200") for line in lines)  # the job's own summary stays
    assert json.loads(proc.stdout.strip().splitlines()[-1])["accepted"] == 200
