"""What a job's failure means to its user: expected (one line) or a bug (a traceback in a log file).

Ray wraps an exception raised in a worker in `RayTaskError` (an instance of both RayTaskError and
the original class) whose message is the remote traceback with ANSI colour codes; Ray Data adds
its own wrappers. The user needs the root cause's message, plain, on one line; the traceback
belongs in a log file, and only when the failure is a bug.
"""
from __future__ import annotations

import csv
import os
import re
import tempfile
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from pydantic import ValidationError

from ray_app.cli import JobError

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """`text` without terminal colour and cursor codes."""
    return _ANSI.sub("", text)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc`, then what it wraps: a Ray error's `.cause`, else the explicit `raise ... from` cause."""
    out: list[BaseException] = []
    current: Optional[BaseException] = exc
    while current is not None and all(current is not seen for seen in out):
        out.append(current)
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else current.__cause__
    return out


def reported(exc: BaseException) -> BaseException:
    """The exception the user is told about: the first JobError in the chain, else the root cause."""
    chain = _chain(exc)
    return next((e for e in chain if isinstance(e, JobError)), chain[-1])


def _expected_types() -> tuple[type[BaseException], ...]:
    import pyarrow as pa

    from ray_app.store import StoreError

    # bad input (a file that does not parse, a value that does not validate), a missing or
    # unwritable path, an unknown table/snapshot/version: the user can act on each of these
    return (JobError, OSError, StoreError, ValidationError, UnicodeError, csv.Error, pa.ArrowInvalid)


def is_expected(exc: BaseException) -> bool:
    """Whether the failure is one a user can fix (else it is a bug in the job)."""
    return isinstance(reported(exc), _expected_types())


def describe(exc: BaseException) -> str:
    """One plain line: the reported exception's message (with its class unless it is a JobError)."""
    err = reported(exc)
    text = strip_ansi(str(err))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        lines = lines[-1:]  # a wrapper whose cause did not survive pickling: the last line names it
    message = " ".join(lines) or repr(err)
    return message if isinstance(err, JobError) else f"{type(err).__name__}: {message}"


def write_log(exc: BaseException, prog: str, workspace: Optional[str] = None) -> Path:
    """Write the full traceback (ANSI stripped) under <workspace>/logs, else the temp folder; return the file."""
    from schemas.config import logs_dir

    name = f"{prog}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{os.getpid()}.log"
    text = strip_ansi("".join(traceback.format_exception(exc)))
    for folder in (logs_dir(workspace), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8")
            return folder / name
        except OSError:
            continue  # an unwritable workspace must not hide the bug's traceback
    raise RuntimeError(f"cannot write the traceback of {prog} anywhere:\n{text}")
