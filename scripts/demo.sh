#!/usr/bin/env bash
# The main job: an offline research session on the CPU with the heuristic agent (no key, no network).
# About 12 minutes on 2 cores. Run it again to continue the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
LAB=${LAB:-autoresearch-lab}
.venv/bin/autoresearch-nb init "$LAB" --profile cpu
RESUME=""
[ -s "$LAB/.autoresearch/ledger.jsonl" ] && RESUME="--resume"
.venv/bin/autoresearch-nb run --lab "$LAB" --agent heuristic --budget "${BUDGET:-30}" \
  --max-experiments "${MAX_EXPERIMENTS:-14}" $RESUME
.venv/bin/autoresearch-nb status --lab "$LAB" | tail -4
