"""The sealed holdout: a split only the evaluator reads. Its values reach the ledger for the baseline and
kept changes only, never the agent; status and the export set the holdout's gain beside val's."""
from __future__ import annotations

import nbformat
import pytest

from autoresearch_nb.engine.session import RunOptions, Session
from autoresearch_nb.judge import facts
from autoresearch_nb.lab.lab import Lab
from autoresearch_nb.report.export import export_lab
from conftest import cli, crippled_lab, lab_check
from test_export import outputs_text
from test_loop import TRAIN, ScriptedAgent


def test_a_night_records_the_holdout_for_the_baseline_and_kept_changes_only(tmp_path):
    # a crippled baseline the first change repairs (a sure keep); the second cripples it again (a sure discard)
    lab_dir, good = crippled_lab(tmp_path)
    agent = ScriptedAgent([({TRAIN: good}, "learning rates 0 -> the template's"),
                           ({TRAIN: good.replace("EMBED_LR = 0.3 ", "EMBED_LR = 0.0 ", 1)
                                     .replace("MATRIX_LR = 0.02 ", "MATRIX_LR = 0.0  ", 1)}, "both off")])
    session = Session(RunOptions(lab=str(lab_dir), budget=2.0, policy="greedy", depth=0, max_experiments=3,
                                 tag="test"), agent=agent)
    session.start()
    session.wait()
    assert session.error is None, session.error
    rows = Lab.open(lab_dir).rows()
    by_role = {(r["role"], r["status"]): r for r in rows}
    kept, dropped = by_role[("experiment", "keep")], by_role[("experiment", "discard")]
    assert 0 < by_role[("baseline", "keep")]["holdout_bpb"] and 0 < kept["holdout_bpb"]
    assert "holdout_bpb" not in dropped  # thrown away unread: nothing selects on the holdout
    assert kept["holdout_bpb"] < by_role[("baseline", "keep")]["holdout_bpb"]  # the repair shows there too
    # never shown to the agent, never written to a log
    assert all("holdout_bpb" not in row for context in agent.contexts for row in context.history)
    assert all("holdout" not in (lab_dir / r["log"]).read_text() for r in rows if r.get("log"))

    status = cli("status", "--lab", str(lab_dir))
    assert "holdout (sealed, never selected on): gain +" in status.stdout, status.stdout
    notebook = nbformat.read(export_lab(lab_dir, tmp_path / "results.ipynb"), as_version=4)
    assert "**Holdout**" in outputs_text(notebook)
    lab_check(lab_dir)


def row(index, code, role, val, holdout=None, status="keep", seed=42):
    found = {"index": index, "code": code, "role": role, "status": status, "val_bpb": val, "seed": seed,
             "segment": 0}
    if holdout is not None:
        found["holdout_bpb"] = holdout
    return found


def test_a_val_gain_the_holdout_does_not_show_is_flagged():
    night = [row(0, "base", "baseline", 2.50, 2.60), row(1, "base", "noise", 2.51, 2.61, "discard", 43),
             row(2, "base", "noise", 2.49, 2.59, "discard", 44),
             row(3, "best", "experiment", 2.40, 2.595), row(4, "best", "remeasure", 2.41, 2.605, "discard", 43)]
    found = facts.holdout(night)
    assert found["val_gain"] > found["val_half_width"]  # clear on val
    assert found["gain"] == pytest.approx(0.0, abs=1e-9) and found["supported"] is False
    honest = [dict(r, holdout_bpb=r["holdout_bpb"] - (0.1 if r["code"] == "best" else 0.0)) for r in night]
    assert facts.holdout(honest)["supported"] is True and facts.holdout(honest)["gain"] == pytest.approx(0.1)
    assert facts.holdout(night[:3]) is None  # nothing kept yet: nothing to compare


def test_the_duty_cycle_splits_a_nights_wall_time_by_phase():
    def run(index, start, end, startup, training, export, evaluate):
        return {"index": index, "status": "discard", "role": "experiment", "val_bpb": 2.0, "segment": 0,
                "started_at": start, "finished_at": end, "run_wall_s": end - start,
                "harness": {"startup_s": startup, "training_s": training, "export_s": export, "evaluate_s": evaluate},
                "conditions": {"clock": "wall"}}
    # two runs of 20 s wall with 15 s of training each, 10 s apart: 30 of 50 s trained
    rows = [run(0, 0.0, 20.0, 3.0, 15.0, 1.0, 1.0), run(1, 30.0, 50.0, 3.0, 15.0, 1.0, 1.0)]
    found = facts.duty(rows)
    assert found["per_run"] == pytest.approx(0.75) and found["night"] == pytest.approx(30 / 50)
    assert found["phases"]["between_s"] == pytest.approx(10.0) and found["estimate"] is False
    # a transfer ladder's run (another scale) is not part of the night's figure
    assert facts.duty(rows + [dict(run(2, 60.0, 140.0, 3.0, 75.0, 1.0, 1.0), segment=-1)]) == found
