"""Named dataset snapshots and their data quality reports.

  python -m jobs.snapshot --name v1 [--note "..."]      pin every data table's version + report
  python -m jobs.snapshot --action list                  all snapshots
  python -m jobs.snapshot --action show --name v1        the report of one snapshot
  python -m jobs.snapshot --action diff --name v2 --other v1

A snapshot pins table versions with LanceDB tags; training records the snapshot it read, and
`Store.read_snapshot(name, table)` reads exactly those rows back through the tags, whatever
changed since (a table re-created since is a clear error, not the new rows). The snapshots row
is written after every tag, so a run that failed half-way left no snapshot: just run it again.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Optional, Sequence

from pydantic import BaseModel

from ray_app.cli import JobError, main_wrapper
from ray_app.quality import report_markdown, snapshot_report
from ray_app.store import Store, StoreError, utcnow
from schemas.config import SnapshotConfig


class SnapshotResult(BaseModel):
    ok: bool = True
    action: str
    name: Optional[str] = None
    versions: dict[str, int] = {}
    row_counts: dict[str, int] = {}
    quarantined: int = 0
    report_path: Optional[str] = None
    snapshots: list[str] = []


def write_report(report: dict[str, Any], report_dir: str) -> str:
    """quality-<snapshot>.{json,md} in `report_dir` (a local folder or s3://); the Markdown's place."""
    from ray_app.object_store import Output

    with Output(report_dir) as out:
        (out.folder / f"quality-{report['snapshot']}.json").write_text(json.dumps(report, indent=2, default=str))
        path = out.folder / f"quality-{report['snapshot']}.md"
        path.write_text(report_markdown(report))
        return out.uri(path)


def run(config: SnapshotConfig) -> SnapshotResult:
    store = Store(config.db)
    try:
        if config.action == "list":
            snaps = store.list_snapshots()
            for s in snaps:
                print(f"{s.name:<32} {s.created_at:%Y-%m-%d %H:%M:%S}  {s.versions}  {s.note}", file=sys.stderr)
            return SnapshotResult(action="list", snapshots=[s.name for s in snaps])
        if config.action in ("show", "diff"):
            if not config.name:
                raise JobError(f"--name is required with --action {config.action}")
            previous = config.other if config.action == "diff" else _previous(store, config.name)
            report = snapshot_report(store, config.name, previous)
        else:
            name = config.name or f"snap-{utcnow():%Y%m%d-%H%M%S}"
            previous = store.list_snapshots()[-1].name if store.list_snapshots() else None
            store.create_snapshot(name, note=config.note)
            report = snapshot_report(store, name, previous)
            store.set_snapshot_report(name, report)
    except StoreError as exc:
        raise JobError(str(exc)) from exc
    path = write_report(report, config.report_dir)
    if not config.quiet:
        print(report_markdown(report), file=sys.stderr)
    return SnapshotResult(action=config.action, name=report["snapshot"], versions=report["versions"],
                          row_counts=report["row_counts"], quarantined=report["quarantine"]["total"], report_path=str(path))


def _previous(store: Store, name: str) -> Optional[str]:
    names = [s.name for s in store.list_snapshots()]
    i = names.index(name) if name in names else -1
    return names[i - 1] if i > 0 else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    return main_wrapper(run, SnapshotConfig, "jobs.snapshot", __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
