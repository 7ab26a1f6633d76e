#!/usr/bin/env bash
# The main job: an offline research session on the CPU with the heuristic agent (no key, no network).
# About 10 minutes on 2 cores. Run it again to continue the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# A fresh install leaves about 1.4 GB of writes in flight; flushed in the background beside the first
# runs, it cost them 7-17% of their steps (measured: 25 steps against 27-30) and made the noise
# estimate several times too wide. Wait for them here, before anything is measured.
sync
LAB=${LAB:-autoresearch-lab}
.venv/bin/autoresearch-nb init "$LAB" --profile cpu
RESUME=""
[ -s "$LAB/.autoresearch/ledger.jsonl" ] && RESUME="--resume"
.venv/bin/autoresearch-nb run --lab "$LAB" --agent heuristic --budget "${BUDGET:-10}" \
  --max-experiments "${MAX_EXPERIMENTS:-20}" $RESUME
# the night in a few lines (the table under them is newest first: `autoresearch-nb status` shows it all)
.venv/bin/autoresearch-nb status --lab "$LAB" | sed -n '1,/^$/p'
