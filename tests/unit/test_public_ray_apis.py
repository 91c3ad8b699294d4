"""The project imports no private Ray module (`ray._private`, `ray.*._internal`, the internal KV)
and relies on no Tune internals such as `__mixins__`: a Ray upgrade may change those at will."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRIVATE = re.compile(r"^\s*(from\s+ray[\w.]*\._\w+[\w.]*\s+import|import\s+ray[\w.]*\._\w+)"  # private modules
                     r"|internal_kv|__mixins__|_internal_kv_", re.M)


def test_no_private_ray_api_in_the_project():
    offenders = []
    for folder in ("ray_app", "jobs", "serve", "tune", "schemas", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for match in PRIVATE.finditer(path.read_text()):
                line = path.read_text()[:match.start()].count("\n") + 1
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {match.group(0).strip()}")
    assert not offenders, "private Ray APIs:\n" + "\n".join(offenders)


def test_the_pattern_catches_what_tune_used_before():
    for code in ("from ray.experimental import internal_kv", "from ray.train.v2._internal.execution.callback import X",
                 "import ray._private.state", "run_trial.__mixins__ = (A,)"):
        assert PRIVATE.search(code), code
    assert not PRIVATE.search('_CLEANER = "ray.train.v2._internal.execution.controller"')  # a logger's name
