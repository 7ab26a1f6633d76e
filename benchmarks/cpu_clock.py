"""Issue 9's clock benchmark: the spread of identical runs on a quiet machine and beside one busy
process, with the wall clock (as before) and with the CPU clock (the cpu profile's default now).

Each configuration runs the baseline train.py three times with one seed, the way the loop runs it
(sandbox, second-process evaluation). The busy neighbour is `python -c "while True: pass"` in a
session of its own, as another program would be. Run it on an otherwise quiet machine.
    python benchmarks/cpu_clock.py [--budget 20] [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from autoresearch_nb.lab.lab import Lab
from autoresearch_nb.run.workers import experiment_runner

from common import fresh_lab


def conditions(lab: Lab, clock: str) -> dict:
    env = {**os.environ, "AUTORESEARCH_CLOCK": clock}
    done = subprocess.run([sys.executable, "nanochat/prepare.py", "--conditions"], cwd=lab.root, env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def runs(lab: Lab, clock: str, budget: float, count: int, busy: bool) -> list[tuple[float, float, int]]:
    """(val_bpb, wall seconds, steps) of `count` identical runs."""
    facts = conditions(lab, clock)
    os.environ["AUTORESEARCH_CLOCK"] = clock  # the runner passes the environment on to the experiment
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) if busy else None
    try:
        out = []
        for n in range(count):
            result = experiment_runner(lab, lab.root, 90000 + n, 42, budget, "cpu", facts).run()
            if not result.ok:
                raise SystemExit(f"a run failed: {result.kind}: {result.reason}")
            out.append((result.summary["val_bpb"], result.wall_seconds, int(result.summary.get("num_steps") or 0)))
        return out
    finally:
        if neighbour:
            neighbour.kill()
            neighbour.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    lab = Lab.open(fresh_lab("cpu"))
    print(f"cpu profile, budget {args.budget:g} s, {args.runs} runs of the baseline with one seed each")
    print(f"{'clock':<5} {'machine':<22} {'val_bpb runs':<30} {'mean':>8} {'spread (sd)':>11} {'steps':>12} {'wall s':>7}")
    for clock in ("wall", "cpu"):
        for busy in (False, True):
            found = runs(lab, clock, args.budget, args.runs, busy)
            values = [v for v, _, _ in found]
            print(f"{clock:<5} {'beside a busy process' if busy else 'quiet':<22} "
                  f"{', '.join(f'{v:.4f}' for v in values):<30} {statistics.fmean(values):>8.4f} "
                  f"{statistics.stdev(values) if len(values) > 1 else 0:>11.4f} "
                  f"{'/'.join(str(s) for _, _, s in found):>12} {statistics.fmean(w for _, w, _ in found):>7.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
