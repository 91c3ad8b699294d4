"""The README's "Bring your own catalogue" section, run as written: every command of its bash
blocks, in order, on the example files it names (training with one epoch to keep the suite quick).

This keeps the section true: a flag renamed or a step broken fails here, not for a new user.
"""
from __future__ import annotations

import importlib
import json
import re
import shlex

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.realweights]
PREFIX = ".venv/bin/python -m "


def byo_commands() -> list[str]:
    """The commands of the section's bash blocks, continuation lines joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Bring your own catalogue", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line:
                commands.append(line)
    return commands


def test_bring_your_own_catalogue_as_written(ray_session, tmp_path, monkeypatch, capsys):
    workspace = tmp_path / "workspace"
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("SHOPSEARCH_WORKSPACE", str(workspace))
    for var in ("SHOPSEARCH_DB", "SHOPSEARCH_MODELS"):
        monkeypatch.delenv(var, raising=False)
    commands = byo_commands()
    assert [c.split()[2] for c in commands] == ["jobs.ingest"] * 3 + ["jobs.label", "jobs.snapshot", "jobs.embed",
                                                "jobs.evaluate", "jobs.train", "jobs.train", "jobs.evaluate"]
    summaries = []
    for command in commands:
        assert command.startswith(PREFIX), command
        module, *argv = shlex.split(command[len(PREFIX):])
        argv = [a.replace("workspace/", f"{workspace}/", 1) if a.startswith("workspace/") else a for a in argv]
        if module == "jobs.train":
            argv += ["--epochs", "1"]
        code = importlib.import_module(module).main(argv)
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert code == 0 and summary.get("ok", True), (command, summary)
        summaries.append(summary)
    products, judgments, labels = summaries[:3]
    assert products["accepted"] == 8 and products["tables"][0]["ignored_columns"] == ["colour"]
    assert {t["table"]: t["accepted"] for t in judgments["tables"]} == {"queries": 7, "judgments": 15}
    assert {t["table"]: t["accepted"] for t in labels["tables"]} == {"queries": 12, "labels": 12}
    assert "translate" not in (workspace / "label-studio.xml").read_text() and "store_hours" in (workspace / "label-studio.xml").read_text()
    first, last = summaries[6], summaries[9]
    assert first["grade_scales"] == ["numeric:0-3"] and {"bm25", "minilm", "hybrid"} <= set(first["full_catalogue"])
    assert last["intent_model"].startswith("intent_entity-v") and last["query_understanding"]["intent_queries"] > 0
    assert any(name.startswith("rerank") for name in last["full_catalogue"])
