"""Issue 2's figures: tokens/s and val_bpb of train.py at its budget, and the noise floor.

The noise floor is the spread of val_bpb over runs of identical code: with different seeds, and
with the same seed (what is left is the machine: wall-clock budgets see a busy CPU).
    python benchmarks/train_throughput.py [--profile cpu] [--budget S] [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def train_once(profile: str, budget: float | None, seed: int) -> dict:
    env = {**os.environ, "AUTORESEARCH_PROFILE": profile, "AUTORESEARCH_SEED": str(seed)}
    if budget:
        env["AUTORESEARCH_BUDGET"] = str(budget)
    out = subprocess.run([sys.executable, str(REPO / "nanochat" / "train.py")], env=env, capture_output=True,
                         text=True, check=True).stdout
    summary = {k: float(v) for k, v in re.findall(r"^(\w+):\s+([-\d.]+)$", out, re.M)}
    rates = [float(m) for m in re.findall(r"tok/s (\d+)", out)]
    summary["tok_s"] = rates[-1] if rates else 0.0
    return summary


def spread(values: list[float]) -> str:
    return f"mean {statistics.fmean(values):.4f}  std {statistics.stdev(values):.4f}  range {max(values) - min(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--budget", type=float, default=None, help="default: the profile's")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    subprocess.run([sys.executable, str(REPO / "nanochat" / "prepare.py"), "--profile", args.profile], check=True)
    seeds = [train_once(args.profile, args.budget, 42 + 1000 * i) for i in range(args.runs)]
    same = [seeds[0]] + [train_once(args.profile, args.budget, 42) for _ in range(args.runs - 1)]
    first = seeds[0]
    print(f"profile {args.profile}, budget {first['training_seconds']:.0f}s, {first['num_params_M']}M params, "
          f"device {os.cpu_count()} CPU cores")
    print(f"tokens/s (end of run):     {statistics.fmean(r['tok_s'] for r in seeds):.0f}")
    print(f"steps in the budget:       {statistics.fmean(r['num_steps'] for r in seeds):.0f}")
    print(f"mfu_percent:               {first['mfu_percent']:.2f}   peak_vram_mb {first['peak_vram_mb']:.0f}")
    print(f"val_bpb, different seeds:  {spread([r['val_bpb'] for r in seeds])}   {[round(r['val_bpb'], 4) for r in seeds]}")
    print(f"val_bpb, same seed:        {spread([r['val_bpb'] for r in same])}   {[round(r['val_bpb'], 4) for r in same]}")


if __name__ == "__main__":
    main()
