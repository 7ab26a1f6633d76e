"""Issue 12's throughput benchmark: experiments per hour with 1, 2, 4 and 8 workers.

The target sleeps instead of training (sleeping_lab.py), the agent answers at once, so the figure
is what the coordinator, the worktrees, the sandbox and git let N slots do. Target: at least
0.9 * N times one worker's rate.
    python benchmarks/workers_throughput.py [--run-s 3] [--per-worker 6]
"""
from __future__ import annotations

import argparse
import os
import time

from autoresearch_nb.judge import facts
from autoresearch_nb.engine.loop import LoopOptions, ResearchLoop

from sleeping_lab import NullAgent, sleeping_lab


def rate(workers: int, run_s: float, per_worker: int) -> tuple[float, int]:
    """(experiments per hour, experiments) for one run of `workers` slots."""
    lab = sleeping_lab()
    os.environ["BENCH_RUN_S"] = str(run_s)
    limit = 1 + per_worker * workers          # the baseline, then the experiments
    loop = ResearchLoop(lab, NullAgent(), LoopOptions(budget=run_s, policy="greedy", profile="tiny",
                                                      workers=workers, depth=1, max_experiments=limit))
    first_done = []
    loop.bus.subscribe(lambda e: first_done.append(time.monotonic())
                       if e.kind == "experiment_finished" and not first_done else None)
    loop.run()
    end = time.monotonic()
    experiments = facts.ran(lab.rows()) - 1
    return experiments * 3600.0 / (end - first_done[0]), experiments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-s", type=float, default=3.0, help="seconds each run sleeps")
    parser.add_argument("--per-worker", type=int, default=6, help="experiments per worker")
    args = parser.parse_args()
    print(f"runs sleep {args.run_s:g} s; {args.per_worker} experiments per worker after the baseline")
    print(f"{'workers':>7} {'experiments':>11} {'per hour':>9} {'vs one':>7} {'target':>7}")
    one = None
    for workers in (1, 2, 4, 8):
        per_hour, count = rate(workers, args.run_s, args.per_worker)
        one = one or per_hour
        ratio = per_hour / one
        print(f"{workers:>7} {count:>11} {per_hour:>9.0f} {ratio:>6.2f}x {'ok' if ratio >= 0.9 * workers else 'MISS':>7}")


if __name__ == "__main__":
    main()
