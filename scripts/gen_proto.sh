#!/usr/bin/env bash
# Generates the Python stubs of proto/xgal/v1/*.proto into xgal/v1/ (the one documented way;
# tests/test_proto_stubs.py fails when the checked-in stubs differ from what this makes).
# Usage: bash scripts/gen_proto.sh [OUT_ROOT]   (default: the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out/xgal/v1"
"$py" -m grpc_tools.protoc -I proto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" proto/xgal/v1/*.proto
touch "$out/xgal/v1/__init__.py"
