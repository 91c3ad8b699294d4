#!/usr/bin/env bash
# Sets up everything on a fresh machine with Python 3.11: a .venv holding the pinned stack
# (pyproject.toml) and this project in editable mode. Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
want="$(cat pyproject.toml setup.sh | sha1sum | cut -d' ' -f1)"
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the pinned stack into .venv (first run takes a few minutes)..." >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
  echo "$want" > .venv/.setup-stamp
fi
