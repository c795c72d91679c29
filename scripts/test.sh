#!/usr/bin/env bash
# The project's checks: setup, lint, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# The Label Studio test's server environment (minutes of pip) builds in the background, beside
# the setup's own pip and then lint and the other tests; the test waits for it (the script holds
# a lock while it builds).
bash scripts/label-studio-env.sh >.label-studio-env.log 2>&1 &
# Debian's Chromium for the browser tests, in the background too (the tests wait for its lock).
bash scripts/browser-env.sh >.browser-env.log 2>&1 &
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Two workers, each given whole test files (--dist loadfile: a module's fixtures are built once):
# on CI's 2 cores the suite waits on subprocesses, servers and sockets enough that one pytest
# process keeps only ~0.7 of a core busy. XGAL_TEST_WORKERS=0 runs it in one process.
.venv/bin/python -m pytest -q -n "${XGAL_TEST_WORKERS:-2}" --dist loadfile "$@"
