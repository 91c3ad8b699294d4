"""The error policy of every job (ray_app.cli.main_wrapper, ray_app.errors): exit codes, one line, JSON last."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import ingest, snapshot
from ray_app.cli import JobError
from ray_app.errors import describe, is_expected

ROOT = Path(__file__).resolve().parents[2]


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_unwritable_report_out_is_one_line_and_exit_1(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.label", "--workspace", str(tmp_path / "ws"), "--action", "report",
         "--report-out", str(blocker / "report.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "SHOPSEARCH_DB": "", "SHOPSEARCH_WORKSPACE": ""})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"jobs.label: error: FileExistsError: [Errno 17] File exists: '{blocker}'"]
    assert "Traceback" not in proc.stdout + proc.stderr
    summary = _last_json(proc.stdout)
    assert summary["ok"] is False and str(blocker) in summary["error"]
    assert not (tmp_path / "ws" / "logs").exists()  # an expected failure writes no traceback log


def test_a_bug_writes_its_traceback_to_a_log(tmp_path, monkeypatch, capsys):
    def broken(config):
        return {}["missing-key"]

    monkeypatch.setattr(snapshot, "run", broken)
    code = snapshot.main(["--workspace", str(tmp_path / "ws")])
    out, err = capsys.readouterr()
    assert code == 1
    summary = _last_json(out)
    log = Path(summary["log"])
    assert summary["ok"] is False and "KeyError" in summary["error"]
    assert log.parent == tmp_path / "ws" / "logs"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in broken" in text
    assert err.strip().splitlines() == [f"jobs.snapshot: internal error: KeyError: 'missing-key' (traceback in {log})"]


@pytest.mark.parametrize("argv, field", [(["--num-cpus", "0"], "num_cpus"), (["--no-such-flag"], "--no-such-flag"),
                                         (["--config", "/no/such/file.yaml"], "/no/such/file.yaml")])
def test_config_errors_exit_2_with_the_json_line_last(argv, field, capsys):
    code = snapshot.main(argv)
    out, err = capsys.readouterr()
    assert code == 2
    summary = _last_json(out)
    assert summary["ok"] is False and field in summary["error"] and field in err


def test_ingest_reports_bad_input_but_lets_a_bug_through(tmp_path, monkeypatch, capsys):
    csv = tmp_path / "products.csv"
    csv.write_text("product_id,title\np1,a lamp\n")
    monkeypatch.setattr(ingest, "init_ray", lambda *a, **k: None)
    argv = ["--workspace", str(tmp_path / "ws"), "--table", "products", "--path", str(csv)]

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(csv))

    monkeypatch.setattr(ingest, "ingest_tables", unreadable)
    assert ingest.main(argv) == 1
    out, err = capsys.readouterr()
    assert _last_json(out)["error"] == f"cannot ingest products from {csv}: PermissionError: [Errno 13] Permission denied: '{csv}'"
    assert "log" not in _last_json(out)

    def buggy(*args, **kwargs):
        raise KeyError("title")

    monkeypatch.setattr(ingest, "ingest_tables", buggy)
    assert ingest.main(argv) == 1
    out, err = capsys.readouterr()
    summary = _last_json(out)
    assert summary["error"] == "internal error: KeyError: 'title'"
    assert "in buggy" in Path(summary["log"]).read_text()


def test_ray_task_errors_are_reduced_to_the_plain_root_cause():
    from ray.exceptions import RayTaskError

    cause = FileNotFoundError(2, "No such file or directory", "/data/x.csv")
    coloured = "\x1b[36mray::read()\x1b[39m (pid=1)\nTraceback (most recent call last):\n  File \"x.py\"\n\x1b[31mFileNotFoundError\x1b[0m"
    wrapped = RayTaskError("read", coloured, cause, proctitle="ray::read", pid=1, ip="127.0.0.1").as_instanceof_cause()
    assert is_expected(wrapped)
    assert describe(wrapped) == "FileNotFoundError: [Errno 2] No such file or directory: '/data/x.csv'"
    lost = RayTaskError("read", coloured, RuntimeError(coloured), proctitle="ray::read", pid=1, ip="127.0.0.1")
    assert "\x1b" not in describe(lost) and not is_expected(lost)
    try:
        try:
            raise KeyError("k")
        except KeyError as exc:
            raise JobError("cannot read the input: k") from exc
    except JobError as outer:
        assert describe(outer) == "cannot read the input: k" and is_expected(outer)


def test_summary_line_is_strict_json():
    from ray_app.cli import strict_json

    assert json.dumps(strict_json({"f1": float("nan"), "xs": [1.0, float("inf")], "ok": True}), allow_nan=False) == \
        '{"f1": null, "xs": [1.0, null], "ok": true}'


def test_ingest_map_destination_must_be_a_column(tmp_path, monkeypatch, capsys):
    """`--map a=b,c=d` is one rename to a column named `b,c=d`: said before any row is read, not
    found out from a quarantine of every row."""
    csv = tmp_path / "catalogue.csv"
    csv.write_text("sku,name\np1,a lamp\n")
    monkeypatch.setattr(ingest, "init_ray", lambda *a, **k: pytest.fail("the check runs before Ray"))
    base = ["--workspace", str(tmp_path / "ws"), "--table", "products", "--path", str(csv)]
    assert ingest.main([*base, "--map", "sku=product_id,name=title"]) == 1
    error = _last_json(capsys.readouterr().out)["error"]
    assert error.startswith("--map sku=product_id,name=title: 'product_id,name=title' is not a column of products")
    assert "repeat --map for each rename" in error and "title" in error
    assert ingest.main([*base, "--map", "name=titel"]) == 1
    error = _last_json(capsys.readouterr().out)["error"]
    assert "'titel' is not a column of products" in error and "repeat" not in error
    # an alias of a column is a destination too; judgments may rename into the queries they name
    assert ingest.check_map(ingest.IngestConfig(table="products", path=str(csv), map=["sku=item_id", "name=title"]),
                            ingest.plan_sources(ingest.IngestConfig(table="products", path=str(csv)))) is None
    judged = ingest.IngestConfig(table="judgments", path=str(csv), map=["q=query", "sku=product_id"])
    assert ingest.check_map(judged, ingest.plan_sources(judged)) is None
    retail = ingest.IngestConfig(source="online-retail", path=str(csv), map=["sku=product_id"])
    with pytest.raises(ingest.JobError, match="--source online-retail reads its own columns"):
        ingest.check_map(retail, [])
