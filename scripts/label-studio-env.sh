#!/usr/bin/env bash
# A Label Studio server for the Label Studio hand-off test, in its own virtual environment
# (.venv-label-studio): label-studio pins numpy below xgal's, so the two cannot share one.
# Also migrates a template database (.venv-label-studio/template) that each test server copies,
# so that it starts in seconds, not minutes. Idempotent; a lock serialises the background build
# scripts/test.sh starts and the test that waits for it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-label-studio
PY=${PYTHON:-python3}
# The stamp names the Python and the pins too: an environment made otherwise is made again.
VERSION="1.23.2 $("$PY" --version 2>&1) $(sha256sum scripts/label-studio-constraints.txt | cut -c1-16)"
exec 9>"$VENV.lock"
flock 9
if [ "$(cat "$VENV/.ready" 2>/dev/null)" != "$VERSION" ]; then
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -c scripts/label-studio-constraints.txt "label-studio==1.23.2"
    site=$("$VENV/bin/python" -c "import label_studio, os; print(os.path.dirname(label_studio.__file__))")
    LABEL_STUDIO_BASE_DATA_DIR="$PWD/$VENV/template" "$VENV/bin/python" "$site/manage.py" migrate --no-color -v 0
    echo "$VERSION" >"$VENV/.ready"
fi
