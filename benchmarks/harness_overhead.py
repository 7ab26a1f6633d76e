"""Harness overhead per experiment: the loop's own work (issue 3), and what evaluating in a second
process adds (issue 10): the export in train.py, then the evaluator's load and checks once told "go".

Targets: loop overhead under half a second; the second process under 2 s on the cpu profile.
    python benchmarks/harness_overhead.py [--experiments 8] [--profile tiny]
    python benchmarks/harness_overhead.py --boundary --profile cpu --budget 10 --experiments 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from autoresearch_nb.run import boundary
from autoresearch_nb.lab.lab import Lab
from autoresearch_nb.engine.loop import timeout_for
from autoresearch_nb.run.runner import Runner, clean_environment
from autoresearch_nb.engine.session import RunOptions

from common import fresh_lab, run_session


def loop_overhead(profile: str, experiments: int) -> None:
    lab = fresh_lab(profile)
    marks: list[tuple[float, dict]] = []
    starts: dict[int, float] = {}

    def on_event(event):
        if event.kind == "experiment_started":
            starts.setdefault(event.data["job"], time.monotonic())
        elif event.kind == "experiment_finished":
            marks.append((time.monotonic(), event.data["row"]))

    # depth 0: the agent proposes between runs, so its time is the row's propose_s and not overlapped
    options = RunOptions(lab=str(lab), policy="greedy", max_experiments=experiments, depth=0)
    run_session(options, on_event=on_event)
    overheads, previous = [], None
    for finished, row in marks:
        if row.get("job") not in starts:
            continue  # a row that is not a run (a rejected proposal)
        timings = row.get("timings") or {}
        after = finished - starts[row["job"]] - timings.get("run_s", 0.0)      # records, results.tsv
        before = 0.0 if previous is None else max(0.0, starts[row["job"]] - previous - timings.get("propose_s", 0.0))
        overheads.append(before + after)                                        # + validation, commit, worktree
        previous = finished
    print(f"{len(overheads)} experiments on the {profile} profile")
    print(f"harness overhead per experiment: median {statistics.median(overheads) * 1000:.0f} ms, "
          f"max {max(overheads) * 1000:.0f} ms")
    print(f"subprocess wall per experiment:  median {statistics.median(r['timings']['run_s'] for _, r in marks):.1f}s")


def boundary_cost(profile: str, experiments: int, budget: float | None) -> None:
    """The baseline train.py run as the loop runs it; what the hand-over and the second process cost."""
    lab = Lab.open(fresh_lab(profile))
    done = subprocess.run([sys.executable, "nanochat/prepare.py", "--conditions"], cwd=lab.root,
                          capture_output=True, text=True, check=True)
    facts = json.loads(done.stdout.splitlines()[-1])
    budget = budget or facts["time_budget"]
    rows = []
    for index in range(experiments):
        env = clean_environment({"AUTORESEARCH_BUDGET": budget, "AUTORESEARCH_SEED": 42 + index,
                                 "AUTORESEARCH_PROFILE": profile, "AUTORESEARCH_DATA_KEY": facts["data_key"]})
        result = Runner(lab.config["command"], lab.root, env, lab.log_path(index), budget,
                        timeout_for(budget, profile, None, facts["clock"]),
                        **boundary.for_lab(lab, lab.state_dir / "runs" / f"{index:04d}", facts, budget)).run()
        if not result.ok:
            raise SystemExit(f"run {index} failed: {result.kind}: {result.reason}")
        t = result.timings
        second = t["evaluate_s"] - t.get("eval_compute_s", 0.0)  # go -> exit, less the arithmetic it always did
        rows.append((t["export_s"], second, t["export_s"] + second, t["evaluator_cpu_s"], result.wall_seconds))
        print(f"  run {index}: export {t['export_s']:.2f}s, second process {second:.2f}s "
              f"(evaluation itself {t.get('eval_compute_s', 0.0):.2f}s), evaluator CPU {t['evaluator_cpu_s']:.2f}s, "
              f"val_bpb {result.summary['val_bpb']:.4f}")
    export, second, added, cpu, wall = (statistics.median(column) for column in zip(*rows))
    print(f"{experiments} runs on the {profile} profile, budget {budget:g}s ({facts['clock']} clock)")
    print(f"added per experiment: median {added:.2f}s (export {export:.2f}s, second process after training "
          f"{second:.2f}s); the evaluator's start-up runs beside training: {cpu:.2f} CPU-s in all; "
          f"run wall {wall:.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=8)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--boundary", action="store_true", help="measure the export and the second process")
    parser.add_argument("--budget", type=float, default=None, help="with --boundary: seconds of training per run")
    args = parser.parse_args()
    if args.boundary:
        boundary_cost(args.profile, args.experiments, args.budget)
    else:
        loop_overhead(args.profile, args.experiments)


if __name__ == "__main__":
    main()
