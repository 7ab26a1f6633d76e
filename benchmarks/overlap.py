"""What overlapping a worker's next start-up with its last evaluation buys, and what it costs (issue 20).

Nights of the baseline and its noise repeats only (the same code on the same seeds in every night, so
runs compare one to one), alternately without and with overlap (--overlap), on fresh labs:
the night's wall time (first run started to last run ended), a run's wall time outside training, the
duty cycle, and each run's steps and final tokens per second, which overlap must not lower.
    python benchmarks/overlap.py [--profile cpu] [--budget 10] [--runs 7] [--rounds 2]
"""
from __future__ import annotations

import argparse
import re
import statistics

from autoresearch_nb.engine.session import RunOptions
from autoresearch_nb.judge import facts
from autoresearch_nb.lab.lab import Lab

from common import fresh_lab, run_session

TOKENS_PER_S = re.compile(r"tok/s (\d+)")


def night(profile: str, budget: float, runs: int, overlap: str) -> dict:
    lab = Lab.open(fresh_lab(profile))
    run_session(RunOptions(lab=str(lab.root), budget=budget, max_experiments=runs, noise_runs=runs - 1,
                           overlap=overlap == "on"))
    rows = [r for r in lab.rows() if r.get("span") and r.get("harness")]
    speed = {}
    for row in rows:
        steps = [line for line in (lab.root / row["log"]).read_text().splitlines() if line.startswith("step ")]
        speed[row["seed"]] = (row["num_steps"], int(TOKENS_PER_S.search(steps[-1]).group(1)),
                              row["harness"].get("overlap_s", 0.0))
    spans = [r["span"] for r in rows]
    return {"wall": max(s["ended"] for s in spans) - min(s["spawned"] for s in spans), "speed": speed,
            "outside": statistics.median(r["run_wall_s"] - r["harness"].get("overlap_s", 0.0)
                                         - r["harness"]["training_s"] for r in rows),
            "duty": facts.duty(lab.rows())["night"], "runs": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=7, help="runs a night: the baseline and its repeats")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of nights, off then on")
    args = parser.parse_args()
    found = {"off": [], "on": []}
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            result = night(args.profile, args.budget, args.runs, mode)
            found[mode].append(result)
            print(f"overlap {mode:>3}: {result['runs']} runs, night {result['wall']:.1f}s, outside training a run "
                  f"(median) {result['outside']:.2f}s, duty cycle {result['duty']:.0%} of the night", flush=True)
    for mode, nights in found.items():
        walls = [n["wall"] for n in nights]
        print(f"overlap {mode}: night {statistics.mean(walls):.1f}s (mean of {len(walls)})")
    # one to one: the same seed's run in the off and the on night of a round; only runs that overlapped
    pairs = [(off["speed"][seed], on["speed"][seed]) for off, on in zip(found["off"], found["on"])
             for seed in off["speed"] if seed in on["speed"] and on["speed"][seed][2] > 0.5]
    if pairs:
        steps = [b[0] - a[0] for a, b in pairs]
        speed = [b[1] / a[1] - 1 for a, b in pairs]
        print(f"{len(pairs)} runs that started up beside the last evaluation, against the same seed without "
              f"overlap: steps {statistics.mean(steps):+.2f} a run (min {min(steps):+.0f}, max {max(steps):+.0f}), "
              f"tokens/s {statistics.mean(speed):+.1%} (min {min(speed):+.1%}, max {max(speed):+.1%})")
    saved = statistics.mean(n["wall"] for n in found["off"]) - statistics.mean(n["wall"] for n in found["on"])
    print(f"the night with overlap: {saved:+.1f}s shorter "
          f"({saved / statistics.mean(n['wall'] for n in found['off']):.1%})")


if __name__ == "__main__":
    main()
