#!/usr/bin/env bash
# A check of the checks: each defence broken in turn in a copy of the tree, and the tests that then fail
# (scripts/mutate.py; run scripts/test.sh once first for the venv and the test tools).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/mutate.py "$@"
