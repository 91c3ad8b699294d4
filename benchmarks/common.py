"""What the benchmarks share: the machine's load and one way to write a results file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def load_avg() -> float:
    """1-minute load average: these machines are shared, so every figure says how busy it was."""
    return round(os.getloadavg()[0], 2)


def write_results(path: str | Path, summary: dict[str, Any]) -> None:
    """Write the figures to `path` (pretty JSON) and print them as one line on stdout."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
