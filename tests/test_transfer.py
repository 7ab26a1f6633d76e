"""The transfer ladder: do the night's kept changes hold at a larger scale? On a scored target whose
contributions at each budget are known in advance, then on real training with a larger model."""
from __future__ import annotations

import json

import nbformat
import pytest

from autoresearch_nb.engine.loop import BASE_SEED, LoopOptions, ResearchLoop
from autoresearch_nb.engine.scheduling import SEED_STEP
from autoresearch_nb.engine.session import RunOptions, Session
from autoresearch_nb.judge import facts, ladder
from autoresearch_nb.lab.lab import Lab
from autoresearch_nb.report.export import export_lab
from conftest import cli, crippled_lab, lab_check
from test_export import outputs_text
from test_loop import SCORER, TRAIN, ScriptedAgent, assert_consistent, git, scored_lab

pytestmark = pytest.mark.slow

# At the screen (budget 1 s) X, B, C and D each help. At four times the budget X hurts, B helps as
# much, C helps a fifth as much and D does nothing.
FORMULA = ("SCORE = (1.0 - 0.03 * B - (-0.01 if AT_SCALE else 0.02) * X - (0.006 if AT_SCALE else 0.03) * C"
           " - (0.0 if AT_SCALE else 0.02) * D)\n")
JITTER = f"JITTER = {{{BASE_SEED + SEED_STEP}: 0.001, {BASE_SEED + 2 * SEED_STEP}: -0.001}}\n"


def train(x=0, b=0, c=0, d=0) -> dict:
    return {TRAIN: f"X = {x}\nB = {b}\nC = {c}\nD = {d}\n{FORMULA}{JITTER}"}


# The scorer (fixed, like prepare.py) tells the formula the scale: train.py may not read the harness's
# variables (the audit refuses it).
LADDER_SCORER = SCORER.replace('namespace = runpy.run_path("nanochat/train.py", run_name="__main__")',
                               'namespace = runpy.run_path("nanochat/train.py", run_name="__main__", init_globals='
                               '{"AT_SCALE": float(os.environ["AUTORESEARCH_BUDGET"]) > 2})')


def ladder_lab(root):
    lab = scored_lab(root, baseline=train()[TRAIN])
    (lab.root / "score.py").write_text(LADDER_SCORER)
    git(lab.root, "commit", "-qam", "the scorer tells the scale")
    return Lab.open(root)


@pytest.fixture
def researched(tmp_path):
    lab = ladder_lab(tmp_path / "lab")
    agent = ScriptedAgent([(train(x=1), "X on"), (train(x=1, b=1), "B on"), (train(x=1, b=1, c=1), "C on"),
                           (train(x=1, b=1, c=1, d=1), "D on")])
    session = Session(RunOptions(lab=str(lab.root), budget=1.0, depth=0, tag="test", resume=True), agent=agent)
    session.start()
    session.wait()
    assert session.error is None, session.error
    rows = assert_consistent(lab)
    assert [r["description"] for r in rows if r["status"] == "keep" and r["role"] == "experiment"] == \
        ["X on", "B on", "C on", "D on"]
    return lab


def test_the_ladder_labels_each_kept_change_against_its_screen_gain(researched):
    lab = researched
    before = lab.rows()
    summary_before = facts.summary(before)
    done = cli("transfer", "--lab", str(lab.root), "--budget-x", "4", "--repeats", "2", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = assert_consistent(lab)
    ran = [r for r in rows[len(before):] if r["role"] == "transfer"]
    assert len(ran) == 2 * 6 and all(r["conditions"]["budget"] == 4.0 for r in ran)
    assert all(facts.segment_of(r) < 0 for r in ran)
    # the runs pair by seed: every code ran the same two seeds
    seeds = {}
    for row in ran:
        seeds.setdefault(row["code"], set()).add(row["seed"])
    assert len(set(map(frozenset, seeds.values()))) == 1 and len(next(iter(seeds.values()))) == 2

    found = ladder.table(rows, ladder.scale_of(4.0))
    labels = {c["description"]: c for c in found["changes"]}
    assert labels["X on"]["label"] == "reverses" and labels["X on"]["contribution"] == pytest.approx(-0.01)
    assert labels["B on"]["label"] == "holds" and labels["B on"]["contribution"] == pytest.approx(0.03)
    assert labels["C on"]["label"] == "shrinks" and labels["C on"]["contribution"] == pytest.approx(0.006)
    assert labels["D on"]["label"] == "vanishes"
    assert labels["C on"]["screen"] == pytest.approx(0.03) and labels["C on"]["ratio"] == pytest.approx(0.2)
    # the night: 0.1 at the screen (its header's figure: means of the baseline's and the best's runs), 0.026 at scale
    assert found["gain"] == pytest.approx(0.026) and found["screen_gain"] == pytest.approx(0.1, abs=0.001)
    assert "transfer ladder at budget ×4" in done.stdout and "reverses" in done.stdout

    # the night's facts never read the ladder's runs: best, baseline, gain and noise are as they were
    summary = facts.summary(rows)
    for key in ("best", "baseline", "gain", "segment"):
        assert summary[key] == summary_before[key], key
    # shown where people look: status, the export
    status = cli("status", "--lab", str(lab.root))
    assert "transfer ladder at budget ×4" in status.stdout and "shrinks" in status.stdout
    notebook = nbformat.read(export_lab(lab.root, lab.root.parent / "results.ipynb"), as_version=4)
    assert "## Transfer ladder" in "\n".join(cell.source for cell in notebook.cells)
    assert "reverses" in outputs_text(notebook) and "holds" in outputs_text(notebook)

    # a second ladder at the same scale has nothing left to run; research resumes at the screen's scale
    again = cli("transfer", "--lab", str(lab.root), "--budget-x", "4", "--repeats", "2", timeout=600)
    assert again.returncode == 0 and len(lab.rows()) == len(rows), again.stdout + again.stderr
    lab_check(lab.root)


def test_a_run_without_kept_changes_has_nothing_to_transfer(tmp_path):
    lab = ladder_lab(tmp_path / "lab")
    ResearchLoop(lab, ScriptedAgent([(train(), "nothing new")]), LoopOptions(budget=1.0, policy="greedy",
                                                                             profile="tiny")).run()
    done = cli("transfer", "--lab", str(lab.root))
    assert done.returncode == 2 and "nothing to transfer" in done.stderr and "Traceback" not in done.stderr
    bad = cli("transfer", "--lab", str(lab.root), "--budget-x", "0")
    assert bad.returncode == 2 and "--budget-x" in bad.stderr


def test_on_real_training_the_larger_model_trains_at_the_larger_budget_and_the_night_resumes(tmp_path):
    lab_dir, good = crippled_lab(tmp_path)  # the night's one change repairs it: a sure keep
    lab = Lab.open(lab_dir)
    repair = "learning rates 0 -> the template's"
    agent = ScriptedAgent([({TRAIN: good}, repair)])
    session = Session(RunOptions(lab=str(lab_dir), budget=2.0, policy="greedy", depth=0, max_experiments=2,
                                 tag="test"), agent=agent)
    session.start()
    session.wait()
    assert session.error is None, session.error
    rows = assert_consistent(lab)
    assert [r["description"] for r in rows if r["status"] == "keep" and r["role"] == "experiment"] == [repair]
    screen_depth = int(rows[0]["depth"])

    done = cli("transfer", "--lab", str(lab_dir), "--budget-x", "1.5", "--depth", str(screen_depth + 1),
               "--repeats", "1", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    ran = [r for r in lab.rows() if r["role"] == "transfer" and r["status"] != "disturbed"]
    assert {r["ladder"] for r in ran} == {"baseline", "best", "without"}
    assert all(r["depth"] == screen_depth + 1 and r["conditions"]["budget"] == 3.0 for r in ran), \
        [(r["depth"], r["conditions"]["budget"]) for r in ran]
    assert all(r["status"] == "discard" and r["val_bpb"] for r in ran)
    assert "one run each" in done.stdout  # no interval from one run: the label says so

    # the night goes on at the screen's scale: same conditions, same segment, no re-baseline asked
    more = cli("run", "--lab", str(lab_dir), "--resume", "--budget", "2", "--max-experiments", "3",
               "--policy", "greedy", timeout=900)
    assert more.returncode == 0, more.stdout + more.stderr
    after = lab.rows()[len(lab.rows()) - 1]
    assert facts.segment_of(after) == 0 and after["conditions"]["budget"] == 2.0
    info = json.loads(lab.run_info_path.read_text())
    assert info["budget"] == 2.0
    lab_check(lab_dir)


def test_the_transfer_magic_runs_in_the_background_and_status_shows_the_ladder(researched, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    from autoresearch_nb.front.magics import CURRENT

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "autoresearch_nb")
    try:
        shell.run_cell(f"%autoresearch transfer --lab {researched.root} --budget-x 4 --repeats 1", store_history=False)
        assert "Transfer ladder for" in capsys.readouterr().out
        shell.run_cell("%autoresearch wait --timeout 300", store_history=False)
        shell.run_cell("%autoresearch status", store_history=False)
        out = capsys.readouterr().out
        assert "transfer done at budget ×4" in out and "transfer ladder at budget ×4" in out
        assert "one run each" in out and "C on" in out
    finally:
        if CURRENT.session is not None and CURRENT.session.alive:
            CURRENT.session.stop(now=True)
            CURRENT.session.wait(timeout=60)
        CURRENT.__init__()
