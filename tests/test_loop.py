"""The research loop on a real lab (real git, real subprocesses) with a scored target and scripted agents.

The target here is a different lab config, as DESIGN.md allows: the command is `score.py`, which
runs the agent's train.py and prints the summary block with val_bpb = its SCORE constant (plus a
per-seed JITTER the test chooses). Every outcome is then known in advance and each run takes a
fraction of a second, so keep, discard, confirm, crash, timeout and rejection are all exercised.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from autoresearch_nb.judge import facts, plan
from autoresearch_nb.agents.base import Agent, Proposal, ProposalError
from autoresearch_nb.lab.lab import Lab, init_lab
from autoresearch_nb.lab.ledger import read_results_tsv
from autoresearch_nb.engine.loop import BASE_SEED, SEED_STEP, LoopOptions, ResearchLoop

TRAIN = "nanochat/train.py"
SCORER = '''"""Scores nanochat/train.py: runs it, then prints the summary with val_bpb = SCORE + JITTER[seed]."""
import os
import runpy

namespace = runpy.run_path("nanochat/train.py", run_name="__main__")
seed = int(os.environ["AUTORESEARCH_SEED"])
value = namespace.get("SCORE", 1.0) + namespace.get("JITTER", {}).get(seed, 0.0)
print("step 1 | loss 2.5 | progress 1.00 | elapsed 1.0s", flush=True)
print("---")
print(f"val_bpb:          {value:.6f}")
print("training_seconds: 1.0")
print("total_seconds:    1.2")
print("peak_vram_mb:     2048.0")
'''
BASELINE = "SCORE = 1.0                          # what score.py reports\nJITTER = {}\n"


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout.strip()


def scored_lab(root: Path, baseline: str = BASELINE, allowance: float = 3.0) -> Lab:
    """A real lab from the template whose command is score.py, committed on main like the template."""
    lab, created = init_lab(root, profile="tiny")
    assert created
    (lab.root / TRAIN).write_text(baseline)
    (lab.root / "score.py").write_text(SCORER)
    git(lab.root, "add", "score.py", TRAIN)
    git(lab.root, "commit", "-qm", "scored target")
    lab.config["command"] = ["{python}", "score.py"]
    lab.config["evaluate"] = None  # score.py prints its own summary: no exported model, no evaluator
    lab.config["ends_with"] = None  # score.py, not a call at the end of train.py, reports the result
    lab.config["startup_allowance"] = allowance
    lab.save_config()
    git(lab.root, "checkout", "-qb", "autoresearch/test")
    return Lab.open(root)


class ScriptedAgent(Agent):
    """Proposes what the test scripted, in order; a callable entry gets the context first."""

    name = "scripted"

    def __init__(self, script: list):
        self.script = list(script)
        self.contexts = []

    def propose(self, context):
        self.contexts.append(context)
        if not self.script:
            raise ProposalError("the scripted agent has tried every change it was given")
        entry = self.script.pop(0)
        if callable(entry):
            entry = entry(context)
        if isinstance(entry, Exception):
            raise entry
        files, description = entry
        return Proposal(files, description, rationale=f"test: {description}")


def score(value: float, jitter: dict | None = None, extra: str = "") -> dict:
    return {TRAIN: f"SCORE = {value}                          # what score.py reports\nJITTER = {jitter or {}}\n{extra}"}


def run_loop(lab: Lab, agent: Agent, policy: str = "greedy", **options) -> tuple[ResearchLoop, str]:
    options.setdefault("depth", 0)  # proposals one after another, each seeing the last result
    loop = ResearchLoop(lab, agent, LoopOptions(budget=1.0, policy=policy, profile="tiny", **options))
    reason = loop.run()
    return loop, reason


def assert_consistent(lab: Lab) -> list[dict]:
    """What must hold after any run: contiguous rows, results.tsv = ran rows, tree clean at the best."""
    rows = lab.rows()
    assert [r["index"] for r in rows] == list(range(len(rows)))
    ran = [r for r in rows if r["status"] in ("keep", "discard", "crash", "interrupted", "disturbed")]
    results = read_results_tsv(lab.results_path)
    assert [r["commit"] for r in results] == [r["commit"] for r in ran]
    shown = {"keep": "keep", "discard": "discard", "disturbed": "discard"}  # autoresearch's three statuses
    assert [r["status"] for r in results] == [shown.get(r["status"], "crash") for r in ran]
    assert lab.dirty_files() == []
    best = [r for r in rows if r["status"] == "keep"][-1]
    assert lab.short(lab.head()) == best["commit"]
    assert not lab.inflight_path.exists()
    from autoresearch_nb.lab.labcheck import broken

    assert broken(lab) == []  # and every invariant `autoresearch-nb check` verifies
    return rows


def is_ancestor(lab: Lab, commit: str, of: str = "HEAD") -> bool:
    return subprocess.run(["git", "-C", str(lab.root), "merge-base", "--is-ancestor", commit, of]).returncode == 0


def test_keep_advances_the_branch_and_discard_resets_it(tmp_path):
    lab = scored_lab(tmp_path / "lab")
    agent = ScriptedAgent([(score(0.9), "better"), (score(0.95), "worse than the best"), (score(0.8), "better again")])
    _, reason = run_loop(lab, agent)
    assert "tried every change" in reason
    rows = assert_consistent(lab)
    assert (rows[-1]["status"], rows[-1]["kind"]) == ("rejected", "agent")  # the agent said it was done
    rows = rows[:-1]
    assert [(r["role"], r["status"]) for r in rows] == [("baseline", "keep"), ("experiment", "keep"),
                                                        ("experiment", "discard"), ("experiment", "keep")]
    assert [r["val_bpb"] for r in rows] == [1.0, 0.9, 0.95, 0.8]
    assert lab.branch() == "autoresearch/test"
    assert "SCORE = 0.8 " in lab.read(TRAIN)
    assert is_ancestor(lab, rows[1]["commit"]) and not is_ancestor(lab, rows[2]["commit"])
    assert rows[3]["parent"] == rows[1]["commit"] and rows[2]["parent"] == rows[1]["commit"]
    # the discarded experiment stays readable for the morning's review
    assert "SCORE = 0.95" in lab.file_at(2)
    assert "-SCORE = 0.9 " in lab.diff(2) and "+SCORE = 0.95" in lab.diff(2)
    assert rows[3]["best"] == 0.8 and rows[2]["best"] == 0.9
    assert rows[1]["memory_gb"] == 2.0 and rows[1]["diff"] == {"files": 1, "added": 1, "removed": 1}
    assert rows[1]["rationale"] == "test: better" and rows[1]["agent"] == "scripted"
    # each run's output is in its log; the context the agent saw carried the history and the best
    assert "val_bpb:          0.900000" in lab.log_tail(1)
    assert agent.contexts[2].best == 0.9 and len(agent.contexts[2].history) == 3
    assert "+SCORE = 0.9 " in agent.contexts[2].best_diff


def test_hostile_and_broken_proposals(tmp_path):
    lab = scored_lab(tmp_path / "lab", allowance=2.0)
    prepare = lab.read("nanochat/prepare.py")

    def dirty_the_tree(context):
        # A coding agent edits files in place; the loop takes only the proposal from it.
        (Path(context.lab_dir) / "scratch.txt").write_text("notes")
        (Path(context.lab_dir) / TRAIN).write_text("SCORE = 0.0\n")
        return score(0.9), "dirties the tree while proposing"

    agent = ScriptedAgent([
        ({TRAIN: lab.read(TRAIN), "nanochat/prepare.py": prepare + "\n# tweak\n"}, "edit the fixed code"),
        ({TRAIN: "SCORE = (\n"}, "does not compile"),
        (score(0.5, extra='print("val_bpb: 0.1")\n'), "forge the metric"),
        ({TRAIN: lab.read(TRAIN)}, "changes nothing"),
        dirty_the_tree,                                    # index 5: runs, kept
        (score(0.95), "worse"),                            # index 6: runs, discarded
        (score(0.95), "the same change again"),             # a duplicate of 6
        RuntimeError("the agent's own bug"),
        (score(0.7, extra='raise ValueError("shape mismatch in the new layer")\n'), "crashes at run time"),
        (score(0.7, extra="import time\ntime.sleep(600)\n"), "hangs"),
    ])
    _, reason = run_loop(lab, agent)
    assert "tried every change" in reason
    rows = assert_consistent(lab)[:-1]
    outcome = [(r["status"], r["kind"]) for r in rows]
    assert outcome == [("keep", None), ("rejected", "validation"), ("rejected", "validation"), ("rejected", "audit"),
                       ("rejected", "validation"), ("keep", None), ("discard", None), ("rejected", "duplicate"),
                       ("rejected", "agent"),
                       ("crash", "exception"), ("crash", "timeout")]
    assert "nanochat/prepare.py" in rows[1]["reason"]
    assert "does not compile" in rows[2]["reason"]
    assert "metric" in rows[3]["reason"]
    assert "experiment 6" in rows[7]["reason"]
    assert "RuntimeError: the agent's own bug" in rows[8]["reason"]
    assert rows[9]["reason"] == "ValueError: shape mismatch in the new layer"
    # rejected proposals cost no training run: no commit, no log
    for row in rows:
        ran = row["status"] != "rejected"
        assert bool(row["log"] and (lab.root / row["log"]).exists()) == ran, row
        assert bool(row["commit"]) == ran, row
    assert len(read_results_tsv(lab.results_path)) == 5
    assert lab.read("nanochat/prepare.py") == prepare and not (lab.root / "scratch.txt").exists()
    assert "SCORE = 0.9 " in lab.read(TRAIN)


def test_ten_rejections_in_a_row_end_the_run(tmp_path):
    lab = scored_lab(tmp_path / "lab")
    agent = ScriptedAgent([({TRAIN: "x = (\n"}, f"broken {i}") for i in range(12)])
    _, reason = run_loop(lab, agent)
    assert "10 proposals in a row were rejected" in reason
    assert len(lab.rows()) == 11


def test_max_experiments_bounds_the_rows_of_results_tsv(tmp_path):
    lab = scored_lab(tmp_path / "lab")
    agent = ScriptedAgent([({TRAIN: "x = (\n"}, "rejected: free")] + [(score(1.0 - i / 100), f"step {i}") for i in range(1, 9)])
    _, reason = run_loop(lab, agent, policy="noise", max_experiments=4, noise_runs=2)
    assert reason == "reached --max-experiments 4"
    rows = assert_consistent(lab)
    assert len(read_results_tsv(lab.results_path)) == 4
    assert [r["role"] for r in rows] == ["baseline", "noise", "noise", "experiment", "experiment"]
    assert rows[3]["status"] == "rejected"


def test_the_noise_policy_decides_in_steps(tmp_path):
    # Baseline and its two repeats: 1.000, 1.002, 0.998. Each candidate's value is chosen to fall
    # well inside one zone of the rule (see judge.py): z >= 2 keep, z < 1 discard, else one more run.
    second = BASE_SEED + SEED_STEP  # the k-th run of one code has seed BASE_SEED + k * SEED_STEP
    repeats = {second: 0.002, second + SEED_STEP: -0.002}
    lab = scored_lab(tmp_path / "lab", baseline=f"SCORE = 1.0\nJITTER = {repeats}\n")
    agent = ScriptedAgent([
        (score(0.950), "a clear win"),                                         # 3; 4 re-measures it
        (score(1.010), "a clear loss"),                                        # 5
        (score(0.9455, {second: -0.005}), "borderline, and its re-run agrees"),  # 6, 7
        (score(0.939, {second: 0.006}), "borderline, and its re-run says luck"),  # 8, 9
    ])
    _, reason = run_loop(lab, agent, policy="noise", noise_runs=2)
    rows = assert_consistent(lab)[:-1]
    got = [(r["role"], r["status"], r["val_bpb"]) for r in rows]
    assert got == [("baseline", "keep", 1.0), ("noise", "discard", 1.002), ("noise", "discard", 0.998),
                   ("experiment", "keep", 0.95), ("remeasure", "discard", 0.95),
                   ("experiment", "discard", 1.01),
                   ("experiment", "keep", 0.9455), ("confirm", "keep", 0.9405),
                   ("experiment", "discard", 0.939), ("confirm", "discard", 0.945)]
    assert rows[3]["judge"]["runs"] == 1 and rows[3]["judge"]["against"] == 3 and rows[3]["judge"]["z"] >= 2
    assert rows[6]["judge"] == rows[7]["judge"] and rows[6]["judge"]["runs"] == 2
    assert rows[7]["seed"] == second and rows[7]["commit"] == rows[6]["commit"]
    assert rows[8]["judge"]["decision"] == "discard" and rows[8]["judge"]["z"] < 1
    # the value to beat is the mean of the best code's runs, never one run
    assert agent.contexts[0].best == pytest.approx(1.0)            # the baseline's three runs
    assert agent.contexts[1].best == pytest.approx(0.95)           # the clear win and its re-measurement
    assert agent.contexts[3].best == pytest.approx(0.943)          # the confirmed borderline win
    assert rows[-1]["best"] == pytest.approx(0.943)
    assert "SCORE = 0.9455" in lab.read(TRAIN)


def test_steering_notes_reach_the_next_proposal(tmp_path):
    from conftest import cli

    lab = scored_lab(tmp_path / "lab")
    done = cli("steer", "--lab", str(lab.root), "try", "a", "deeper", "model")
    assert done.returncode == 0, done.stderr

    def steer_again(context):
        assert cli("steer", "--lab", str(lab.root), "now try wider").returncode == 0
        return score(0.9), "first"

    agent = ScriptedAgent([steer_again, (score(0.8), "second")])
    run_loop(lab, agent)
    first, second = agent.contexts[0].steering, agent.contexts[1].steering
    assert len(first) == 1 and first[0].endswith("try a deeper model")
    assert len(second) == 2 and second[-1].endswith("now try wider")
    assert agent.contexts[0].charter == lab.charter_path.read_text()


def test_the_persons_charter_edits_survive_the_loops_resets(tmp_path):
    # %%program writes program.md whenever the person runs the cell: while the agent thinks, or
    # while an experiment trains. Neither the reset after a proposal nor a discard may lose it.
    lab = scored_lab(tmp_path / "lab")

    def edit_while_proposing(context):
        lab.charter_path.write_text(context.charter + "\nFocus on the learning rate.\n")
        return score(0.9), "kept"

    def edit_while_training(event):
        if event.kind == "experiment_started" and event.data["index"] == 2:
            lab.charter_path.write_text(lab.charter_path.read_text() + "Avoid deeper models.\n")

    agent = ScriptedAgent([edit_while_proposing, (score(0.95), "discarded"), (score(0.8), "third")])
    loop = ResearchLoop(lab, agent, LoopOptions(budget=1.0, policy="greedy", profile="tiny", depth=0))
    loop.bus.subscribe(edit_while_training)
    loop.run()
    assert_consistent(lab)
    assert [r["status"] for r in lab.rows()[:4]] == ["keep", "keep", "discard", "keep"]
    committed = git(lab.root, "show", "HEAD:program.md")
    assert "Focus on the learning rate." in committed and "Avoid deeper models." in committed
    assert "Avoid deeper models." in agent.contexts[2].charter


def test_the_last_crash_is_in_the_next_context(tmp_path):
    lab = scored_lab(tmp_path / "lab")
    agent = ScriptedAgent([(score(0.9, extra='raise KeyError("wte")\n'), "crash"), (score(0.8), "next")])
    run_loop(lab, agent)
    assert "KeyError: 'wte'" in agent.contexts[1].last_failure


def test_a_confirmation_run_that_crashes_discards_the_change_and_the_run_goes_on(tmp_path):
    repeats = {BASE_SEED + SEED_STEP: 0.002, BASE_SEED + 2 * SEED_STEP: -0.002}
    lab = scored_lab(tmp_path / "lab", baseline=f"SCORE = 1.0\nJITTER = {repeats}\n")
    agent = ScriptedAgent([
        (score(0.9955, {BASE_SEED + SEED_STEP: "not a number"}), "borderline; its re-run crashes"),
        (score(0.95), "clear of the noise"),
    ])
    loop, reason = run_loop(lab, agent, policy="noise", noise_runs=2)
    assert "tried every change" in reason, reason
    rows = assert_consistent(lab)[:-1]
    assert [(r["role"], r["status"]) for r in rows[3:]] == [("experiment", "discard"), ("confirm", "crash"),
                                                            ("experiment", "keep"), ("remeasure", "discard")]
    assert rows[4]["kind"] == "exception" and "TypeError" in rows[4]["reason"]
    assert "SCORE = 0.95" in lab.read(TRAIN)


def test_an_experiment_stopped_by_the_person_can_be_tried_again_after_resume(tmp_path, monkeypatch):
    lab = scored_lab(tmp_path / "lab", allowance=30.0)
    slow = score(0.9, extra='import os\nimport time\ntime.sleep(float(os.environ.get("TEST_SLEEP", "0")))\n')
    monkeypatch.setenv("TEST_SLEEP", "60")
    first = ResearchLoop(lab, ScriptedAgent([(slow, "slow change")]),
                         LoopOptions(budget=1.0, policy="greedy", profile="tiny", depth=0))
    first.bus.subscribe(lambda e: first.stop(now=True) if e.kind == "experiment_started"
                        and e.data["role"] == "experiment" else None)
    first.run()
    assert [r["status"] for r in lab.rows()] == ["keep", "interrupted"]
    # It never produced a result, so it is not "already tried": the resumed run may run it.
    monkeypatch.setenv("TEST_SLEEP", "0")
    _, reason = run_loop(lab, ScriptedAgent([(dict(slow), "the same change, again")]))
    rows = assert_consistent(lab)
    assert rows[2]["status"] == "keep", rows[2].get("reason")


def test_runs_of_the_same_seed_pair_up_and_a_gain_smaller_than_the_seed_spread_is_kept(tmp_path):
    # Each seed moves every code by the same luck (up to 0.03), as a shared initialisation and data
    # order do; a change that is 0.01 better at every seed is invisible to the difference of the
    # means and plain to the paired differences.
    seeds = [BASE_SEED + k * SEED_STEP for k in range(3)]
    luck = {seeds[1]: 0.03, seeds[2]: -0.03}
    lab = scored_lab(tmp_path / "lab", baseline=f"SCORE = 1.0\nJITTER = {luck}\n")
    agent = ScriptedAgent([
        (score(0.9, luck), "a clear win"),                                             # 3; 4 re-measures it
        (score(0.89, luck), "0.01 better at every seed"),                               # 5, 6
        (score(0.89, {**luck, seeds[0]: 0.0004}), "a null edit that moves one seed a little"),  # 7
    ])
    _, reason = run_loop(lab, agent, policy="noise", noise_runs=2)
    rows = assert_consistent(lab)
    got = [(r["role"], r["status"], r["seed"]) for r in rows if r.get("val_bpb") is not None]
    assert got == [("baseline", "keep", seeds[0]), ("noise", "discard", seeds[1]), ("noise", "discard", seeds[2]),
                   ("experiment", "keep", seeds[0]), ("remeasure", "discard", seeds[1]),
                   ("experiment", "keep", seeds[0]), ("confirm", "keep", seeds[1]),
                   ("experiment", "discard", seeds[0])]
    kept = rows[5]["judge"]
    assert kept["paired"]["differences"] == [pytest.approx(0.01), pytest.approx(0.01)] and kept["z"] >= 2
    # the same two runs judged on their means alone: nowhere near clear
    before = [r for r in rows if r["index"] < 5]
    assert plan.verdict(before, 0, [0.89, 0.92]).decision == "discard"
    assert rows[7]["judge"]["paired"] is not None and rows[7]["judge"]["z"] < 1
    assert "SCORE = 0.89" in lab.read(TRAIN) and "0.0004" not in lab.read(TRAIN)
    change = facts.kept_changes(rows)[-1]
    assert change.gain == pytest.approx(0.01) and change.holds
