"""Issue 16's soak: a night of real training (the tiny profile) on 2 workers, killed and resumed, with hostile edits.

The night runs in a child process (this script with --child) so that it can be killed for real: every
`--kill-every` runs it gets a SIGKILL at a random instant and is resumed with --resume. Now and then
the agent proposes a hostile train.py: one that appends a forged kept row to the ledger, one that
hangs until the hard timeout. After each resume ends at rest, and at the end, the lab check
(labcheck.py) runs, and every row recorded before a kill must still be there, unchanged. Then a
clean night of one worker and one of two measure experiments per hour on the same machine.
    python benchmarks/soak.py [--experiments 60] [--kill-every 15] [--budget 2] [--rate-experiments 16]
                              [--sandbox auto|none]
Target: 0 invariants broken, 0 rows lost or repeated.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

from autoresearch_nb.judge import facts
from autoresearch_nb.agents.base import Proposal, ProposalError
from autoresearch_nb.agents.heuristic import HeuristicAgent
from autoresearch_nb.lab.lab import Lab
from autoresearch_nb.lab.labcheck import broken

from common import fresh_lab

TRAIN = "nanochat/train.py"
HOSTILE = (  # (after this many runs, description, lines put at the top of train.py)
    (8, "soak: writes the ledger (1)", 'import pathlib as _p\n(_p.Path.cwd().parents[1] / "ledger.jsonl").open("a")'
     '.write(\'{"index": 999, "status": "keep", "val_bpb": 0.1, "role": "experiment"}\\n\')\n'),
    (22, "soak: hangs", "import time as _t\nwhile True:\n    _t.sleep(1)\n"),
    (38, "soak: writes the ledger (2)", 'import pathlib as _p\n(_p.Path.cwd().parents[1] / "ledger.jsonl").open("a")'
     '.write(\'{"index": 999, "status": "keep", "val_bpb": 0.1, "role": "experiment"}\\n\')\n'),
)


class SoakAgent(HeuristicAgent):
    """The heuristic agent, with a hostile train.py once the lab has run enough (each one once), and
    null edits (a new constant) once its catalogue is spent, so that the night goes on."""

    def __init__(self):
        super().__init__()
        self.soak_issued: set[str] = set()

    def propose(self, context):
        ran = sum(1 for r in context.history if r.get("job") is not None)
        seen = {r.get("description") for r in context.history} | self.soak_issued
        for after, description, code in HOSTILE:
            if ran >= after and description not in seen:
                self.soak_issued.add(description)
                return Proposal({TRAIN: code + context.files[TRAIN]}, description, rationale="the soak's hostile edit")
        try:
            return super().propose(context)
        except ProposalError:  # the catalogue is spent: a null edit, a run all the same
            n = next(k for k in range(1, 10**6) if f"soak: a null edit ({k})" not in seen)
            self.soak_issued.add(f"soak: a null edit ({n})")
            return Proposal({TRAIN: context.files[TRAIN] + f"SOAK_{n} = {n}\n"}, f"soak: a null edit ({n})")


def child(args) -> int:
    """One session of the night, in the foreground (the parent kills it)."""
    from autoresearch_nb.front.cli import drive
    from autoresearch_nb.engine.session import RunOptions, Session

    options = RunOptions(lab=args.lab, budget=args.budget, max_experiments=args.experiments, workers=args.workers,
                         resume=args.resume, tag="soak")
    return drive(Session(options, agent=SoakAgent(), audit=False))  # the run-time defences, not the audit


def others_on_the_machine() -> str:
    """What else used the CPU: the load average and other processes' busy share over 2 s."""
    mine = {os.getpid()}
    done = subprocess.run(["ps", "-eo", "pid,pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True)
    busy = [line.split(None, 2) for line in done.stdout.splitlines()[1:]]
    busy = [f"{comm} {cpu}%" for pid, cpu, comm in busy if int(pid) not in mine and float(cpu) >= 5.0][:5]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"load average {load}; other processes at >= 5% CPU: {', '.join(busy) or 'none'}"


def soak(args) -> dict:
    lab_dir = fresh_lab("tiny", "soak")
    lab = Lab.open(lab_dir)
    base = [sys.executable, __file__, "--child", "--lab", str(lab_dir), "--budget", str(args.budget),
            "--experiments", str(args.experiments), "--workers", "2"]
    if args.sandbox == "none":
        os.environ["AUTORESEARCH_SANDBOX"] = "none"  # the children inherit it: the RecordKeeper is the wall
    rng = random.Random(args.seed)
    kills, sessions, problems, lost = 0, 0, [], []
    started = time.monotonic()
    next_kill = args.kill_every
    while True:
        resume = bool(lab.rows()) or lab.inflight_path.exists()
        process = subprocess.Popen(base + (["--resume"] if resume else []), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        sessions += 1
        before = lab.rows()
        killed = False
        while process.poll() is None:
            time.sleep(0.5)
            if next_kill is not None and facts.counted(lab.rows()) >= next_kill:
                time.sleep(rng.uniform(0.0, 4.0))  # a random instant: mid-run, mid-evaluation, mid-write
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    killed = True
                next_kill = next_kill + args.kill_every if next_kill + args.kill_every < args.experiments else None
        out = process.stdout.read()
        rows = lab.rows()
        if rows[:len(before)] != before:
            lost.append(f"session {sessions}: rows recorded before it changed or went")
        if killed:
            kills += 1
            print(f"  killed session {sessions} at {facts.counted(rows)} runs", flush=True)
            continue
        if process.returncode != 0:
            raise SystemExit(f"session {sessions} failed (exit {process.returncode}):\n{out[-3000:]}")
        print(f"  session {sessions}: {out.strip().splitlines()[-1][:300]}", flush=True)
        problems += broken(lab)
        break
    wall = time.monotonic() - started
    rows = lab.rows()
    jobs = Counter(r["job"] for r in rows if r.get("job") is not None)
    lost += [f"job {job} recorded {n} times" for job, n in jobs.items() if n > 1]
    hostile = [(r["description"], r["status"], r.get("kind"), (r.get("reason") or "")[:120])
               for r in rows if any(r.get("description") == h[1] for h in HOSTILE)]
    return {"lab": lab_dir, "rows": len(rows), "runs": facts.ran(rows), "counted": facts.counted(rows),
            "kills": kills, "sessions": sessions, "broken": problems, "lost": lost, "wall": wall,
            "hostile": hostile, "forged_left": '"index": 999' in lab.ledger_path.read_text()}


def rate(workers: int, experiments: int, budget: float) -> tuple[float, int, float]:
    """(runs per hour, runs, wall seconds) of a clean night on a fresh lab, from its first row to its end."""
    from common import run_session
    from autoresearch_nb.engine.session import RunOptions

    lab_dir = fresh_lab("tiny", f"rate{workers}")
    first = []
    session, wall = run_session(RunOptions(lab=str(lab_dir), budget=budget, max_experiments=experiments,
                                           workers=workers),
                                on_event=lambda e: first.append(time.monotonic())
                                if e.kind == "experiment_finished" and not first else None)
    end = time.monotonic()
    rows = Lab.open(lab_dir).rows()
    runs = facts.ran(rows) - 1
    problems = broken(Lab.open(lab_dir))
    if problems:
        print(f"  the {workers}-worker night broke: {problems}")
    return runs * 3600.0 / (end - first[0]), runs, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=60)
    parser.add_argument("--kill-every", type=int, default=15)
    parser.add_argument("--budget", type=float, default=2.0)
    parser.add_argument("--rate-experiments", type=int, default=16, help="runs of each clean rate night")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sandbox", choices=["auto", "none"], default="auto",
                        help="none: run unconfined, so the hostile writes reach the lab and the RecordKeeper must catch them")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lab", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.exit(child(args))
    from autoresearch_nb.run import sandbox

    if args.sandbox == "none":
        os.environ["AUTORESEARCH_SANDBOX"] = "none"
    print(f"soak: {args.experiments} runs on 2 workers, tiny profile, budget {args.budget:g} s, a kill -9 every "
          f"~{args.kill_every} runs; sandbox: {sandbox.probe()}")
    print(f"before: {others_on_the_machine()}", flush=True)
    result = soak(args)
    print(f"rows {result['rows']}, runs {result['runs']} ({result['counted']} counted), sessions {result['sessions']}, "
          f"kills survived {result['kills']}, {result['wall'] / 60:.1f} min")
    for line in result["hostile"]:
        print(f"  hostile: {line[0]}: {line[1]} ({line[2]}) {line[3]}")
    print(f"forged row left in the ledger: {'YES' if result['forged_left'] else 'no'}")
    print(f"invariants broken: {len(result['broken'])} {result['broken'] or ''}  (target 0)")
    print(f"rows lost or repeated: {len(result['lost'])} {result['lost'] or ''}  (target 0)")
    if args.rate_experiments <= 0:
        return
    one, n1, w1 = rate(1, args.rate_experiments, args.budget)
    two, n2, w2 = rate(2, args.rate_experiments, args.budget)
    print(f"clean nights of {args.rate_experiments} runs: 1 worker {one:.0f} runs/h ({n1} in {w1:.0f} s), "
          f"2 workers {two:.0f} runs/h ({n2} in {w2:.0f} s): {two / one:.2f}x")
    print(f"after: {others_on_the_machine()}")


if __name__ == "__main__":
    main()
