"""Write a deterministic synthetic shop (products, queries, users, events, gold and human labels)
and its held-out evaluation set: gold labels and graded judgments (ESCI letters) of the test split.

The files are plain shop exports, the input of `jobs.ingest`; the same seed writes the same
bytes. No Ray: numpy and pandas only, a 5000-product shop takes about a second.

    python -m jobs.generate --out workspace/demo --seed 7 --products 5000 --queries 2000 \\
        --users 500 --events 50000 --gold-fraction 0.2
"""
from __future__ import annotations

import sys
import time
from typing import Optional, Sequence

from ray_app.cli import main_wrapper
from ray_app.synth import GenerateResult, generate
from schemas.config import GenerateConfig

__all__ = ["GenerateResult", "run", "main"]


def run(config: GenerateConfig) -> GenerateResult:
    """Generate the shop into `config.out` and report rows per file (db/ray fields are unused)."""
    start = time.perf_counter()
    result = generate(config)
    if not config.quiet:
        sizes = ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in result.files.items())
        print(f"generated {result.out} in {time.perf_counter() - start:.1f} s: {sizes}", file=sys.stderr)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(run, GenerateConfig, "jobs.generate", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
