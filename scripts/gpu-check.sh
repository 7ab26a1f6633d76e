#!/usr/bin/env bash
# The CUDA check, for a machine with a GPU (about 9 minutes on an H100-class card at the default budget).
# Prints, with the card's name: (1) a cold compile against one from the lab's compile cache; (2) the
# same short night without and with overlap (duty cycle, wall outside training, tokens/s of matched runs);
# (3) the forced float16 path with its overflow steps; (4) that two workers on one card are refused;
# then every run's figures (tokens/s, MFU, peak memory, start-up, overhead). BUDGET (seconds of
# training per run, default 20) and RUNS (runs per overlap night, default 4) change its length.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
CLI=.venv/bin/autoresearch-nb
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this check needs a GPU')"
$PY -c "import torch; p = torch.cuda.get_device_properties(0); print(f'card: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB; torch {torch.__version__}')"
BUDGET="${BUDGET:-20}"
WORK="${WORK:-$(mktemp -d)}"

echo "== 1. compile: cold, then from the lab's cache"
$CLI init "$WORK/cache-lab" --profile cuda >/dev/null
$CLI run --lab "$WORK/cache-lab" --budget "$BUDGET" --max-experiments 1 --tag cold >/dev/null
$CLI run --lab "$WORK/cache-lab" --budget "$BUDGET" --max-experiments 2 --resume >/dev/null
$PY - "$WORK/cache-lab" <<'EOF'
import sys
from autoresearch_nb.lab.lab import Lab
rows = Lab.open(sys.argv[1]).rows()
for row, what in zip(rows, ("cold", "cached")):
    print(f"{what}: start-up (compile included) {row['harness']['startup_s']:.1f} s, status {row['status']}")
EOF

echo "== 2. overlap: the same night without and with it"
(cd benchmarks && ../$PY overlap.py --profile cuda --budget "$BUDGET" --runs "${RUNS:-4}" --rounds 1)

echo "== 3. float16 with loss scaling, forced (what a T4 or V100 runs)"
$CLI init "$WORK/fp16-lab" --profile cuda >/dev/null
AUTORESEARCH_DTYPE=float16 $CLI run --lab "$WORK/fp16-lab" --budget "$BUDGET" --max-experiments 1 >/dev/null
$PY - "$WORK/fp16-lab" <<'EOF'
import sys
from autoresearch_nb.lab.lab import Lab
row = Lab.open(sys.argv[1]).rows()[0]
print(f"float16: {row['status']}, val_bpb {row.get('val_bpb')}, overflow steps {row.get('overflow_steps')} of "
      f"{row.get('num_steps')}, dtype in the conditions: {row['conditions']['dtype']}")
EOF

echo "== 4. two workers on one card"
if $CLI run --lab "$WORK/fp16-lab" --workers 2 --max-experiments 3 --resume 2>"$WORK/refused.txt"; then
  echo "NOT refused: two workers shared the card"
else
  cat "$WORK/refused.txt"
fi

echo "== every run"
$PY benchmarks/run_report.py "$WORK/cache-lab"
$PY benchmarks/run_report.py "$WORK/fp16-lab"
