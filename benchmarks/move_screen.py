"""Issue 9's screen: what each move of the heuristic catalogue gains on top of a lab's best, seed by seed.

Every move the offline agent can make from the lab's best (the branch's head) is committed beside
it, not on the branch, and run at the chosen seeds (the k-th run's seed, as the loop gives it).
The best runs again first at each seed, in the same sitting: this machine's speed was seen to
drift by 15% within an hour (the same code and seed then ran 15% fewer steps under the CPU clock
and scored 0.035 worse), so the night's own runs of the best are no partner. Each move's gain is
its difference from that fresh run of the best at the same seed (positive: better), the way the
judge pairs runs; the steps each run took are printed beside it. The rows are not written to the
lab's ledger: this is a measurement of the catalogue, not a night.
Run it on a quiet machine, on a lab a night has run in (the demo's):
    python benchmarks/move_screen.py --lab autoresearch-lab [--seeds 0] [--moves "a,b"] [--combine "a,b"]
"""
from __future__ import annotations

import argparse
import ast
import statistics

from autoresearch_nb.judge import facts
from autoresearch_nb.agents import heuristic
from autoresearch_nb.lab.lab import Lab
from autoresearch_nb.engine.scheduling import BASE_SEED, SEED_STEP
from autoresearch_nb.run.workers import experiment_runner
from autoresearch_nb.lab.worktrees import Worktrees

JOB_BASE = 80000   # log numbers far from the loop's own


def catalogue(source: str, profile: dict) -> list[heuristic.Move]:
    values = heuristic.constants(ast.parse(source), profile)
    moves = [m for tier in heuristic.constant_moves(values, profile) for m in tier]
    return moves + [heuristic.Move(f"switch:{name}", {}, text, why, transform=name)
                    for name, (text, why) in heuristic.SWITCHES.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab", default="autoresearch-lab")
    parser.add_argument("--seeds", default="0", help="which runs' seeds (k = 0, 1, ...), comma list")
    parser.add_argument("--moves", default="", help="only these moves (their descriptions), comma list")
    parser.add_argument("--combine", default="", help="also these moves together, comma list")
    args = parser.parse_args()
    lab = Lab.open(args.lab)
    rows = lab.rows()
    conditions = next((r["conditions"] for r in reversed(rows) if r.get("conditions")), None)
    if conditions is None:
        raise SystemExit(f"{args.lab} has no measured run yet: run a night in it first (scripts/demo.sh)")
    head = lab.head()
    source = lab.file_at_commit(head, heuristic.TRAIN_FILE)
    wanted = [m for m in args.moves.split(",") if m]
    moves = [m for m in catalogue(source, conditions) if not wanted or m.description in wanted]
    screened = {m.description: heuristic.apply_move(source, m) for m in moves}
    together = [m for m in catalogue(source, conditions) if m.description in args.combine.split(",")]
    if together:
        text = source
        for move in together:
            text = heuristic.apply_move(text, move) or text
        screened[" + ".join(m.description for m in together)] = text
    seeds = [BASE_SEED + SEED_STEP * int(k) for k in args.seeds.split(",")]
    trees = Worktrees(lab)
    budget = float(conditions["budget"])
    job = JOB_BASE

    def measure(commit: str, seed: int) -> tuple[float | None, int]:
        nonlocal job
        job += 1
        result = experiment_runner(lab, trees.checkout(0, commit), job, seed, budget, conditions["profile"],
                                   conditions).run()
        return (result.summary.get("val_bpb") if result.ok else None), int(result.summary.get("num_steps") or 0)

    def shown(found: list[tuple[float | None, int]]) -> str:
        return "  ".join(f"{v:>9.4f} ({n:>3} steps)" if v is not None else f"{'failed':>21}" for v, n in found)

    print(f"the best {lab.short(head)}, budget {budget:g} s, seeds {seeds}; gain = best - move at the same seed")
    try:
        best = [measure(head, seed) for seed in seeds]
        night = facts.seeded_runs(rows, facts.current_segment(rows)).get(lab.code_id(head), {})
        print(f"{'best, now':<48} {shown(best)}")
        print(f"{'best, in the night':<48} " + "  ".join(
            f"{statistics.fmean(v for v, _ in night[s]):>9.4f}{'':12}" if s in night else f"{'-':>21}" for s in seeds))
        for description, text in screened.items():
            if text is None or text == source:
                continue
            commit = lab.commit_files({heuristic.TRAIN_FILE: text}, head, f"screen: {description}")
            found = [measure(commit, seed) for seed in seeds]
            gains = [b - v for (b, _), (v, _) in zip(best, found) if b is not None and v is not None]
            print(f"{description[:48]:<48} {shown(found)}   gain " + " ".join(f"{g:+.4f}" for g in gains)
                  + (f"  (mean {statistics.fmean(gains):+.4f})" if len(gains) > 1 else ""), flush=True)
    finally:
        trees.remove_all()


if __name__ == "__main__":
    main()
