#!/usr/bin/env bash
# Debian's Chromium and its driver for the browser tests (the report, Label Studio's web page),
# driven by Playwright for Python through `executable_path` (Playwright's own browser download
# does not work on this project's machines). Installs with apt-get when Chromium is absent and we
# are root; idempotent. scripts/test.sh starts it in the background; the tests' fixture runs it
# again, which waits on the lock while the background install runs.
# Exit 0: /usr/bin/chromium is there. Exit 3: it is absent and cannot be installed here (not
# root, or no apt-get): the browser tests skip, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
exec 9>.browser-env.lock
flock 9
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "no chromium on PATH and cannot install it (needs root and apt-get)" >&2
    exit 3
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends chromium chromium-driver
command -v chromium >/dev/null
