"""Runs disturbed from outside are run again, not judged: real load from other processes, real step logs.

The target works the processor for a fixed CPU time per step and prints a step line, as training
does. The test starts busy processes beside one run for a stretch of its steps (what another
program on a laptop or a shared box does), so that stretch goes slower in wall time while other
processes use the CPU; the runner sees it from outside and the loop runs the experiment again.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from autoresearch_nb.judge import facts
from autoresearch_nb.lab.ledger import read_results_tsv
from autoresearch_nb.engine.loop import LoopOptions, ResearchLoop
from autoresearch_nb.ui import text
from test_loop import ScriptedAgent, TRAIN, assert_consistent, git, scored_lab

pytestmark = pytest.mark.slow

WORKING_SCORER = '''"""Scores train.py: STEPS steps of CPU work (or of sleep, SLEEP), then the summary block."""
import os
import runpy
import time

namespace = runpy.run_path("nanochat/train.py", run_name="__main__")
steps = namespace.get("STEPS", 100)
for step in range(1, steps + 1):
    if namespace.get("SLEEP") and 20 <= step < 70:
        time.sleep(0.08)           # the run slows itself: nobody else is busy
    started = time.process_time()
    while time.process_time() - started < 0.03:
        pass
    print(f"step {step} | loss 2.5 | progress {step / steps:.2f} | elapsed {step * 0.03:.2f}s", flush=True)
print("---")
print(f"val_bpb:          {namespace.get('SCORE', 1.0):.6f}")
print("training_seconds: 3.0")
'''
SPINNERS = 4


class Neighbour:
    """Busy processes started and stopped on given step lines of given experiment runs (counted in the
    order they start from 0; the baseline's runs are not counted, so a baseline that other work on the
    machine disturbed shifts nothing): other work on the machine."""

    def __init__(self, runs: set[int], start_step: int = 20, stop_step: int = 70):
        self.runs, self.start_step, self.stop_step = runs, start_step, stop_step
        self.processes: list[subprocess.Popen] = []
        self.disturbed: list[int] = []
        self.jobs: list = []          # job ids in the order their runs started

    def on_event(self, event) -> None:
        if event.kind == "experiment_started" and event.data.get("role") == "experiment":
            self.jobs.append(event.data["job"])
        if event.kind != "step" or event.data.get("job") not in self.jobs:
            return
        number = self.jobs.index(event.data["job"])
        if number not in self.runs:
            return
        step = event.data.get("step", 0)
        if step >= self.start_step and not self.processes and number not in self.disturbed:
            self.disturbed.append(number)
            # programs of their own (own sessions): Linux schedules sessions fairly against each other
            self.processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
                              for _ in range(SPINNERS)]
        elif step >= self.stop_step and self.processes:
            self.stop()

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
        self.processes = []


def working_lab(tmp_path, baseline: str = "SCORE = 1.0\n"):
    lab = scored_lab(tmp_path / "lab", baseline=baseline, allowance=60.0)
    (lab.root / "score.py").write_text(WORKING_SCORER)
    git(lab.root, "commit", "-qam", "a scorer that works per step")
    return lab


def run(lab, agent, neighbour: Neighbour, **options) -> list[dict]:
    """The rows of the run, less those that other work on the machine (not the test's neighbour, say a
    parallel build) disturbed: each such row must say so, and is then run again like any other."""
    loop = ResearchLoop(lab, agent, LoopOptions(budget=5.0, policy="greedy", profile="tiny", depth=0, **options))
    loop.bus.subscribe(neighbour.on_event)
    try:
        loop.run()
    finally:
        neighbour.stop()
    rows = assert_consistent(lab)
    ours = {neighbour.jobs[n] for n in neighbour.disturbed}
    # a run the neighbour slowed is run again, unless it is the one judged after the cap of re-runs
    assert all(r["status"] == "disturbed" or "judged anyway" in (r.get("reason") or "")
               for r in rows if r.get("job") in ours), "a run the neighbour slowed was judged"
    outside = [r for r in rows if r["status"] == "disturbed" and r.get("job") not in ours]
    assert all(r["kind"] == "disturbed" and "disturbed from outside" in r["reason"] for r in outside)
    return [r for r in rows if r not in outside]


def test_a_run_disturbed_from_outside_is_run_again_and_the_clean_run_is_judged(tmp_path):
    lab = working_lab(tmp_path)
    neighbour = Neighbour(runs={0})
    rows = run(lab, ScriptedAgent([({TRAIN: "SCORE = 0.9\n"}, "better")]), neighbour)[:-1]
    assert [(r["role"], r["status"]) for r in rows] == [
        ("baseline", "keep"), ("experiment", "disturbed"), ("experiment", "keep")]
    assert rows[1]["index"] < rows[2]["index"]
    disturbed = rows[1]
    assert disturbed["kind"] == "disturbed" and "disturbed from outside" in disturbed["reason"]
    assert disturbed["disturbance"]["share"] >= 0.1 and disturbed["val_bpb"] == 0.9
    assert rows[2]["commit"] == disturbed["commit"] and rows[2]["seed"] == disturbed["seed"]
    assert "disturbance" not in rows[2]
    results = [line for line in read_results_tsv(lab.results_path) if line["commit"] == disturbed["commit"]]
    assert results[0]["status"] == "discard" and results[0]["description"].endswith("[disturbed: run again]")


def test_a_disturbed_run_is_not_charged_to_max_experiments(tmp_path):
    # the limit would otherwise end the night on a run the loop had said it would repeat
    lab = working_lab(tmp_path)
    rows = run(lab, ScriptedAgent([({TRAIN: "SCORE = 0.9\n"}, "better"), ({TRAIN: "SCORE = 0.8\n"}, "more")]),
               Neighbour(runs={0}), max_experiments=2)
    assert [(r["role"], r["status"]) for r in rows] == [
        ("baseline", "keep"), ("experiment", "disturbed"), ("experiment", "keep")]
    assert rows[2]["description"] == rows[1]["description"] == "better"
    header = text.header_lines(text.summarize(rows, {"max_experiments": 2}))
    assert "3 (2/2 counted) runs" in header[1]


def test_a_run_disturbed_again_and_again_is_judged_after_the_cap(tmp_path):
    lab = working_lab(tmp_path)
    neighbour = Neighbour(runs={0, 1, 2})
    rows = run(lab, ScriptedAgent([({TRAIN: "SCORE = 0.9\n"}, "better")]), neighbour)[:-1]
    assert [r["status"] for r in rows] == ["keep", "disturbed", "disturbed", "keep"]
    assert "judged anyway after 2 re-runs" in rows[3]["reason"] and rows[3]["disturbance"]
    # the row says how busy the machine was: a run beside other work is not paired by seed with a quiet one
    assert rows[3]["others_load"] >= 0.5 and rows[3]["others_load"] > rows[0]["others_load"]


def test_a_run_that_slows_itself_is_judged_as_it_is(tmp_path):
    lab = working_lab(tmp_path)
    rows = run(lab, ScriptedAgent([({TRAIN: "SCORE = 0.9\nSLEEP = True\n"}, "sleeps in training")]),
               Neighbour(runs=set()))[:-1]
    assert [r["status"] for r in rows] == ["keep", "keep"]


class PricedAgent(ScriptedAgent):
    """Each proposal costs $0.50, as an SDK or CLI agent's usage says."""

    def propose(self, context):
        proposal = super().propose(context)
        proposal.usage = {"input_tokens": 100, "output_tokens": 10, "cost_usd": 0.5}
        return proposal


def test_what_a_proposal_cost_is_counted_once_when_its_first_run_is_disturbed(tmp_path):
    # the re-run is a row of its own: were the draft's usage copied onto it, --max-cost and the
    # header would count the proposal twice
    lab = working_lab(tmp_path)
    rows = run(lab, PricedAgent([({TRAIN: "SCORE = 0.9\n"}, "better")]), Neighbour(runs={0}))[:-1]
    assert [r["status"] for r in rows] == ["keep", "disturbed", "keep"]
    assert rows[1]["usage"]["cost_usd"] == 0.5 and not (rows[2].get("usage") or {}).get("cost_usd")
    assert facts.spent(lab.rows())[0] == 0.5
    assert rows[2]["rationale"] == rows[1]["rationale"] == "test: better"
    # the re-run's span is its own: it began after the disturbed run ended, not when the draft was begun
    assert facts.timestamp(rows[2]["started_at"]) >= facts.timestamp(rows[1]["finished_at"]), rows[1:3]
