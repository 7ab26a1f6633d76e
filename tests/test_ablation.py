"""Ablation: each kept change's own contribution to the final best, measured with repeats, on a scored
target whose contributions are known in advance; then through the CLI, status and the export."""
from __future__ import annotations

import nbformat
import pytest

from autoresearch_nb.judge import facts
from autoresearch_nb.report.export import export_lab
from autoresearch_nb.engine.loop import BASE_SEED, LoopOptions, ResearchLoop
from conftest import cli
from test_export import outputs_text
from test_loop import TRAIN, ScriptedAgent, assert_consistent, scored_lab

pytestmark = pytest.mark.slow

# X helps only while Y is off; Y helps more; A's two steps edit one line; B helps on its own.
FORMULA = "SCORE = 1.0 - 0.02 * X * (1 - Y) - 0.05 * Y - 0.04 * min(A, 1) - 0.02 * max(A - 1, 0) - 0.03 * B\n"
JITTER = f"JITTER = {{{BASE_SEED + 1000}: 0.001, {BASE_SEED + 2000}: -0.001}}\n"


def train(x=0, y=0, a=0, b=0) -> dict:
    return {TRAIN: f"X = {x}\nY = {y}\nA = {a}\nB = {b}\n{FORMULA}{JITTER}"}


@pytest.fixture
def researched(tmp_path):
    """A run that kept five changes, in this order: X on, A to 1, Y on (X stops mattering), A to 2, B on."""
    lab = scored_lab(tmp_path / "lab", baseline=train()[TRAIN])
    agent = ScriptedAgent([(train(x=1), "X on"), (train(x=1, a=1), "A to 1"), (train(x=1, y=1, a=1), "Y on"),
                           (train(x=1, y=1, a=2), "A to 2"), (train(x=1, y=1, a=2, b=1), "B on")])
    ResearchLoop(lab, agent, LoopOptions(budget=1.0, policy="noise", profile="tiny", depth=0)).run()
    rows = assert_consistent(lab)
    assert [r["description"] for r in rows if r["status"] == "keep" and r["role"] == "experiment"] == \
        ["X on", "A to 1", "Y on", "A to 2", "B on"]
    return lab


def test_ablation_measures_each_kept_change_and_flags_the_one_that_no_longer_helps(researched):
    lab = researched
    done = cli("ablate", "--lab", str(lab.root), "--repeats", "2", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = assert_consistent(lab)
    table = {entry["description"]: entry for entry in facts.ablation_table(rows)}
    assert table["X on"]["contribution"] == pytest.approx(0.0, abs=1e-9)
    assert table["X on"]["verdict"].startswith("no longer helps")
    assert "does not revert cleanly" in table["A to 1"]["verdict"] and table["A to 1"]["contribution"] is None
    assert table["Y on"]["contribution"] == pytest.approx(0.03)          # Y's 0.05, less X's 0.02 come back
    assert table["A to 2"]["contribution"] == pytest.approx(0.02)
    assert table["B on"]["contribution"] == pytest.approx(0.03)
    assert all(table[name]["verdict"] == "still helps" for name in ("Y on", "A to 2", "B on"))
    assert table["B on"]["without"]["runs"] == 2 and table["B on"]["half_width"] > 0
    # the runs are ledger rows; the branch still holds the best, untouched
    ablations = [r for r in rows if r["role"] == "ablation"]
    assert len([r for r in ablations if r["status"] == "discard"]) == 8
    assert "B = 1" in lab.read(TRAIN) and "A = 2" in lab.read(TRAIN)
    assert "ablation: the best without each kept change" in done.stdout and "no longer helps" in done.stdout

    # a second ablate has nothing left to run; status and the export carry the table
    again = cli("ablate", "--lab", str(lab.root), "--repeats", "2", timeout=600)
    assert again.returncode == 0 and len(lab.rows()) == len(rows) + 0
    status = cli("status", "--lab", str(lab.root))
    assert "#3    X on" in status.stdout and "no longer helps clearly" in status.stdout
    notebook = nbformat.read(export_lab(lab.root, lab.root.parent / "results.ipynb"), as_version=4)
    assert "## Ablation" in "\n".join(cell.source for cell in notebook.cells)
    assert "does not revert cleanly" in outputs_text(notebook)


def test_ablating_a_run_without_kept_changes_says_so(tmp_path):
    lab = scored_lab(tmp_path / "lab")
    ResearchLoop(lab, ScriptedAgent([(train(), "nothing new")]), LoopOptions(budget=1.0, policy="greedy",
                                                                             profile="tiny")).run()
    done = cli("ablate", "--lab", str(lab.root))
    assert done.returncode == 2 and "nothing to ablate" in done.stderr and "Traceback" not in done.stderr


def test_the_ablate_magic_runs_in_the_background_and_status_shows_the_table(researched, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    from autoresearch_nb.front.magics import CURRENT

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "autoresearch_nb")
    try:
        shell.run_cell(f"%autoresearch ablate --lab {researched.root} --repeats 1", store_history=False)
        assert "Ablating the best of" in capsys.readouterr().out
        shell.run_cell("%autoresearch wait --timeout 300", store_history=False)
        shell.run_cell("%autoresearch status", store_history=False)
        out = capsys.readouterr().out
        assert "ablation done: 5 kept change(s)" in out
        assert "B on" in out and "still helps" in out and "does not revert cleanly" in out
    finally:
        if CURRENT.session is not None and CURRENT.session.alive:
            CURRENT.session.stop(now=True)
            CURRENT.session.wait(timeout=60)
        CURRENT.__init__()
