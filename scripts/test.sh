#!/usr/bin/env bash
# The whole test suite on a fresh machine: the package with its test tools, Debian's Chromium for
# the dashboard's browser test, aider for the command agent's test, Claude Code and Codex for
# theirs, then pytest (every test, the slow end-to-end ones included).
# setup.sh installs bubblewrap here (root, apt-get): without it tests/test_sandbox.py fails, not skips.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "chromium could not be installed: the browser test will say so" >&2
fi
# aider, the real coding-agent CLI tests/test_agent_aider.py drives, in a venv of its own (its
# pinned dependencies clash with ours). Without it that test fails and says so.
AIDER_VERSION=0.86.2
if ! .venv-aider/bin/aider --version 2>/dev/null | grep -qx "aider $AIDER_VERSION"; then
  rm -rf .venv-aider
  ("${PYTHON:-python3}" -m venv .venv-aider \
    && .venv-aider/bin/python -m pip install -q "aider-chat==$AIDER_VERSION" >/dev/null) \
    || echo "aider-chat $AIDER_VERSION could not be installed: its test will fail and say so" >&2
fi
# Claude Code and Codex, the real CLIs tests/test_agent_claude_code.py and test_agent_codex.py drive,
# from npm into .npm-agents (Node from apt where it is missing). Without them those tests fail and say so.
CLAUDE_CODE_VERSION=2.1.332
CODEX_VERSION=0.171.0
if ! .npm-agents/node_modules/.bin/claude --version 2>/dev/null | grep -q "^$CLAUDE_CODE_VERSION " \
    || ! .npm-agents/node_modules/.bin/codex --version 2>/dev/null | grep -q " $CODEX_VERSION$"; then
  if ! command -v npm >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null) || true
  fi
  npm install --prefix .npm-agents --no-fund --no-audit "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" \
      "@openai/codex@$CODEX_VERSION" >/dev/null \
    || echo "Claude Code $CLAUDE_CODE_VERSION or Codex $CODEX_VERSION could not be installed: their tests will fail and say so" >&2
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
