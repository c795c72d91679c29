#!/usr/bin/env bash
# Creates .venv and installs xgal with every extra, pinned in pyproject.toml.
# Idempotent: it reinstalls only when pyproject.toml changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.xgal-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # torch first and alone: 2.13.0 is the CPU build on this disk; asked for together with
    # packages that depend on torch, pip could pick a multi-GB CUDA build from the registry.
    .venv/bin/python -m pip install -q "torch==2.13.0"
    .venv/bin/python -m pip install -q -e ".[train,scorer,data,annotate,ray,dev]"
    echo "$want" >"$stamp"
fi
