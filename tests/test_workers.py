"""Several experiments at once and proposals drafted while the workers train, on a scored target whose
runs sleep for as long as their code says: who ran what and when is known, and so is every verdict."""
from __future__ import annotations

import re
import time

import pytest

from autoresearch_nb.judge import facts
from autoresearch_nb.lab.ledger import RESULTS_HEADER
from autoresearch_nb.engine.loop import LoopOptions, ResearchLoop
from autoresearch_nb.lab.worktrees import Worktrees
from test_loop import TRAIN, ScriptedAgent, assert_consistent, scored_lab

pytestmark = pytest.mark.slow

# A, B and C are one-line switches; a run sleeps longer when B or C is on.
SCORED = '''import time

A = 0
B = 0
C = 0
time.sleep(0.5 + 2.5 * B + 1.0 * C)
SCORE = 1.0 - 0.1 * A - 0.15 * B + 0.1 * C
'''


def switch(name: str, description: str):
    """A proposal that turns one switch on in whatever code the agent was shown (its draft's base)."""
    def propose(context):
        source = context.files[TRAIN]
        return {TRAIN: re.sub(rf"^{name} = 0$", f"{name} = 1", source, flags=re.M)}, description
    return propose


def research(lab, agent, **options):
    options.setdefault("policy", "greedy")
    loop = ResearchLoop(lab, agent, LoopOptions(budget=1.0, profile="tiny", **options))
    started, finished = {}, {}
    loop.bus.subscribe(lambda e: started.setdefault(e.data["description"], time.monotonic())
                       if e.kind == "experiment_started" else None)
    loop.bus.subscribe(lambda e: finished.setdefault(e.data["row"]["description"], time.monotonic())
                       if e.kind == "experiment_finished" else None)
    reason = loop.run()
    return loop, reason, started, finished


def test_two_workers_run_at_once_and_a_late_winner_is_re_applied_and_confirmed(tmp_path):
    lab = scored_lab(tmp_path / "lab", baseline=SCORED)
    agent = ScriptedAgent([switch("A", "A on"), switch("B", "B on"), switch("C", "C on")])
    _, reason, started, finished = research(lab, agent, workers=2, depth=1)
    rows = assert_consistent(lab)
    by = {}
    for row in rows:
        by.setdefault(row["description"], []).append(row)
    # A and B ran side by side on two workers
    assert started["B on"] < finished["A on"]
    assert {by["A on"][0]["worker"], by["B on"][0]["worker"]} == {"w0", "w1"}
    # A finished first and was kept; C, drafted on the baseline, was re-applied onto A and lost to it
    assert [r["status"] for r in by["A on"]] == ["keep"]
    c = by["C on"][0]
    assert c["status"] == "discard" and c["rebased"] and c["drafted_on"] == by["baseline"][0]["commit"]
    # B beat its own parent (the baseline) after the best had moved: re-applied onto A, confirmed there
    original, again = by["B on"]
    assert original["status"] == "discard" and "re-applied onto the new best" in original["reason"]
    assert again["status"] == "keep" and again["rebased"] and again["rebased_from"] == original["commit"]
    assert again["parent"] == by["A on"][0]["commit"] and again["val_bpb"] == pytest.approx(0.75)
    assert "A = 1" in lab.read(TRAIN) and "B = 1" in lab.read(TRAIN) and "C = 0" in lab.read(TRAIN)
    # each row says where it ran; results.tsv keeps autoresearch's five columns; no worktree is left
    for row in rows:
        if row["status"] in ("keep", "discard"):
            assert row["worker"] in ("w0", "w1") and row["host"] and row["device"] and row["parent"]
    assert lab.results_path.read_text().splitlines()[0] == RESULTS_HEADER
    assert all(len(line.split("\t")) == 5 for line in lab.results_path.read_text().splitlines())
    assert Worktrees(lab).leftovers() == []
    assert not any((lab.state_dir / "worktrees").glob("slot-*"))


def test_the_agent_drafts_the_next_proposal_while_an_experiment_trains(tmp_path):
    lab = scored_lab(tmp_path / "lab", baseline=SCORED)
    proposed_at = []

    def timed(entry):
        def propose(context):
            proposed_at.append((time.monotonic(), list(context.in_flight)))
            return entry(context)
        return propose

    agent = ScriptedAgent([timed(switch("B", "B on")), timed(switch("A", "A on"))])
    _, _, started, finished = research(lab, agent, workers=1, depth=1)
    rows = assert_consistent(lab)
    # the second draft was written while B trained, and its context named B as running
    assert proposed_at[1][0] < finished["B on"]
    assert proposed_at[1][1] == ["B on"]
    # B was kept, so A (drafted on the baseline) was re-applied onto B before it ran
    a = next(r for r in rows if r["description"] == "A on")
    assert a["rebased"] and a["status"] == "keep" and a["val_bpb"] == pytest.approx(0.75)
    assert facts.value_to_beat(rows).mean == pytest.approx(0.75)


def test_without_pipelining_each_proposal_sees_the_last_result(tmp_path):
    lab = scored_lab(tmp_path / "lab", baseline=SCORED)
    contexts = []

    def seen(entry):
        def propose(context):
            contexts.append(context)
            return entry(context)
        return propose

    agent = ScriptedAgent([seen(switch("A", "A on")), seen(switch("B", "B on"))])
    research(lab, agent, workers=1, depth=0)
    assert [len(c.history) for c in contexts] == [1, 2] and all(not c.in_flight for c in contexts)
    rows = assert_consistent(lab)
    assert not any(r.get("rebased") for r in rows)


def test_two_workers_on_one_gpu_are_refused_in_one_line(tmp_path):
    """Runs sharing a card slow each other's timed training: refused before anything runs, saying what to
    do. The CUDA case is decided from the probe (a pure function here: no GPU on this machine); a GPU named
    twice is refused on any machine, through the CLI."""
    from autoresearch_nb.engine.session import shared_gpu
    from conftest import cli

    assert "--gpus" in shared_gpu("cuda", 2, None)
    assert shared_gpu("cuda", 1, None) is None and shared_gpu("cuda", 2, ["0", "1"]) is None
    assert shared_gpu("cpu", 2, None) is None  # CPU slots share the cores on purpose (their clock is CPU time)
    lab = tmp_path / "lab"
    assert cli("init", str(lab), "--profile", "tiny").returncode == 0
    done = cli("run", "--lab", str(lab), "--gpus", "0,0", "--max-experiments", "2")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "autoresearch-nb: --gpus 0,0 names a GPU twice: two workers on one card slow each other's timed "
        "training; give each worker its own GPU"]
    assert not (lab / ".autoresearch" / "ledger.jsonl").exists() or not (lab / ".autoresearch" / "ledger.jsonl").read_text()
