#!/usr/bin/env bash
# The CUDA check, for a machine with a GPU (under 8 minutes on an H100-class card): prepares the data,
# runs the cuda profile's baseline on a short budget, then a three-experiment heuristic loop, and
# prints the GPU, tokens/s, MFU, peak memory, compile seconds, val_bpb and the per-experiment
# overhead (wall minus training). BUDGET (seconds of training per run, default 45) changes its length.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this check needs a GPU')"
LAB="${LAB:-$(mktemp -d)/gpu-lab}"
.venv/bin/autoresearch-nb init "$LAB" --profile cuda
.venv/bin/autoresearch-nb run --lab "$LAB" --agent heuristic --budget "${BUDGET:-45}" --max-experiments 4 \
  --policy greedy --tag gpu-check
.venv/bin/python benchmarks/run_report.py "$LAB"
