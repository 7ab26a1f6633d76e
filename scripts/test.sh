#!/usr/bin/env bash
# The whole test suite on a fresh machine: the package with its test tools, Debian's Chromium for
# the dashboard's browser test, then pytest (every test, the slow end-to-end ones included).
# setup.sh installs bubblewrap here (root, apt-get): without it tests/test_sandbox.py fails, not skips.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "chromium could not be installed: the browser test will say so" >&2
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
