#!/usr/bin/env bash
# Creates .venv and installs autoresearch-nb into it (with the test tools when given "dev").
# Keeps a torch that is already importable; otherwise installs the CPU build this machine carries.
# On Linux it also installs bubblewrap, the experiments' sandbox, where it can (root with apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0" 2>/dev/null || .venv/bin/python -m pip install -q torch
fi
if [ "${1:-}" = "dev" ]; then
  .venv/bin/python -m pip install -q -e ".[dev]"
else
  .venv/bin/python -m pip install -q -e .
fi
if [ "$(uname -s)" = Linux ] && ! command -v bwrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
      || echo "bubblewrap could not be installed: experiments will run with sandbox: none" >&2
  else
    echo "bubblewrap is not installed: experiments will run with sandbox: none (install it: sudo apt-get install bubblewrap)" >&2
  fi
fi
