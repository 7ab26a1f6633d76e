"""The figures of a finished lab's runs, one line each: what scripts/gpu-check.sh prints at its end.

    python benchmarks/run_report.py LAB
"""
from __future__ import annotations

import argparse

from autoresearch_nb.lab.lab import Lab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lab")
    args = parser.parse_args()
    lab = Lab.open(args.lab)
    rows = [r for r in lab.rows() if r.get("status") in ("keep", "discard", "crash")]
    conditions = next((r.get("conditions") for r in rows if r.get("conditions")), {})
    print(f"device: {conditions.get('device_name', '?')}; torch {conditions.get('torch', '?')}; profile "
          f"{conditions.get('profile', '?')} (seq {conditions.get('seq_len')}, depth {conditions.get('depth')}, "
          f"width {conditions.get('n_embd')}, {conditions.get('dtype')}); budget {conditions.get('budget')} s")
    print(f"{'#':>3} {'status':<8} {'val_bpb':>9} {'tokens/s':>10} {'MFU %':>6} {'peak GB':>8} {'startup s':>9} "
          f"{'train s':>8} {'wall s':>7} {'overhead s':>10}  description")
    for row in rows:
        training = row.get("training_seconds") or 0.0
        tokens = (row.get("total_tokens_M") or 0.0) * 1e6
        harness = row.get("harness") or {}
        wall = row.get("run_wall_s") or 0.0
        value = f"{row['val_bpb']:.4f}" if row.get("val_bpb") else "-"
        print(f"{row['index']:>3} {row['status']:<8} {value:>9} {tokens / training if training else 0:>10.0f} "
              f"{row.get('mfu_percent') or 0:>6.2f} {(row.get('peak_vram_mb') or 0) / 1024:>8.2f} "
              f"{harness.get('startup_s', 0):>9.1f} {training:>8.1f} {wall:>7.1f} {wall - training:>10.1f}  "
              f"{row.get('description', '')[:50]}" + (f" [{row.get('kind')}: {row.get('reason', '')[:80]}]"
                                                      if row["status"] == "crash" else ""))
    print("startup s: imports, data and torch.compile before the training clock started (compile seconds on CUDA)")


if __name__ == "__main__":
    main()
