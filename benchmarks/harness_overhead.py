"""Issue 3's harness overhead: wall time per experiment minus the subprocess and the agent.

Target: under half a second. Runs the heuristic agent on the tiny profile.
    python benchmarks/harness_overhead.py [--experiments 8]
"""
from __future__ import annotations

import argparse
import statistics
import time

from autoresearch_nb.session import RunOptions

from common import fresh_lab, run_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=8)
    parser.add_argument("--profile", default="tiny")
    args = parser.parse_args()
    lab = fresh_lab(args.profile)
    marks: list[tuple[float, dict]] = []
    starts: dict[int, float] = {}

    def on_event(event):
        if event.kind in ("proposing", "experiment_started"):
            starts.setdefault(event.data["index"], time.monotonic())
        elif event.kind == "experiment_finished":
            marks.append((time.monotonic(), event.data["row"]))

    options = RunOptions(lab=str(lab), policy="greedy", max_experiments=args.experiments)
    run_session(options, on_event=on_event)
    overheads = []
    for finished, row in marks:
        started = starts[row["index"]]
        timings = row.get("timings") or {}
        overheads.append(finished - started - timings.get("run_s", 0.0) - timings.get("propose_s", 0.0))
    print(f"{len(overheads)} experiments on the {args.profile} profile")
    print(f"harness overhead per experiment: median {statistics.median(overheads) * 1000:.0f} ms, "
          f"max {max(overheads) * 1000:.0f} ms")
    print(f"subprocess wall per experiment:  median {statistics.median(r['timings']['run_s'] for _, r in marks):.1f}s")


if __name__ == "__main__":
    main()
