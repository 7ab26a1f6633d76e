"""Conditions pinned per run: a resume under other conditions is refused with one line, or starts a new
comparison segment that re-measures the best (--rebaseline); numbers across segments are never compared."""
from __future__ import annotations

import json

import nbformat
import pytest

from autoresearch_nb.judge import conditions, facts
from autoresearch_nb.report.export import export_lab
from conftest import cli, lab_check
from test_export import outputs_text
from test_loop import assert_consistent, scored_lab
from test_resume import TRAIN

pytestmark = pytest.mark.slow


def run(lab, *args: str):
    return cli("run", "--lab", str(lab.root), *args, timeout=300)


def test_conditions_name_what_changed():
    before = {"budget": 30.0, "profile": "cpu", "vocab_size": 2048, "device_name": "cpu", "torch": "2.13.0"}
    now = dict(before, budget=8.0, device_name="NVIDIA T4")
    assert conditions.differences(before, now) == ["budget 30.0 -> 8.0", "device_name cpu -> NVIDIA T4"]
    assert conditions.differences(before, dict(before, budget=30)) == []
    assert conditions.differences({}, now) == [], "a lab without recorded conditions is not refused"
    assert "--rebaseline" in conditions.refusal(["budget 30.0 -> 8.0"])


def test_a_resume_under_another_budget_is_refused_then_rebaselined_into_a_new_segment(tmp_path):
    lab = scored_lab(tmp_path / "lab", baseline=TRAIN)
    first = run(lab, "--budget", "1", "--max-experiments", "5", "--tag", "seg", "--noise-runs", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    rows = lab.rows()
    assert {r["conditions"]["budget"] for r in rows if r.get("conditions")} == {1.0}
    assert all(r["segment"] == 0 for r in rows)

    refused = run(lab, "--resume", "--budget", "2", "--max-experiments", "12")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert "budget 1.0 -> 2.0" in line and "--rebaseline" in line and "Traceback" not in refused.stderr
    assert len(lab.rows()) == len(rows), "a refused resume runs nothing"

    again = run(lab, "--resume", "--budget", "2", "--max-experiments", "12", "--rebaseline")
    assert again.returncode == 0, again.stdout + again.stderr
    rows = assert_consistent(lab)
    new = [r for r in rows if r["segment"] == 1]
    best_before = facts.best_row([r for r in rows if r["segment"] == 0])
    # the new segment starts by measuring the best again (and its noise) under the new budget
    assert [r["role"] for r in new[:3]] == ["baseline", "noise", "noise"]
    assert new[0]["commit"] == best_before["commit"] and new[0]["conditions"]["budget"] == 2.0
    assert "budget 1.0 -> 2.0" in json.loads(lab.run_info_path.read_text())["segment_reason"]
    # every value from here on compares only with segment 1's runs
    summary = facts.summary(rows)
    assert summary["segment"] == 1 and summary["segments"] == 2
    assert summary["baseline"].runs == 3 and summary["segment_start"] == new[0]["index"]

    status = cli("status", "--lab", str(lab.root))
    assert status.returncode == 0 and "segment 1 starts (conditions changed: budget 1.0 -> 2.0)" in status.stdout
    assert f"segment 1 since #{new[0]['index']}" in status.stdout

    notebook = nbformat.read(export_lab(lab.root, tmp_path / "results.ipynb"), as_version=4)
    assert "conditions changed at #" in outputs_text(notebook)


def test_a_resume_on_another_machine_starts_a_new_segment_unasked(tmp_path):
    """After a Colab reset the runtime may be another GPU: the person changed nothing, so the resume goes on
    in a new segment (the best measured again) instead of being refused; a changed setting still is."""
    assert conditions.machine_only(["device_name NVIDIA A100 -> Tesla T4", "dtype bfloat16 -> float16"])
    assert not conditions.machine_only(["device_name NVIDIA A100 -> Tesla T4", "budget 300.0 -> 60.0"])
    assert not conditions.machine_only([])
    lab = scored_lab(tmp_path / "lab", baseline=TRAIN)
    first = run(lab, "--budget", "1", "--max-experiments", "4", "--tag", "colab")
    assert first.returncode == 0, first.stdout + first.stderr
    before = lab.rows()
    cores = before[-1]["conditions"]["cpu_count"]
    other = {"AUTORESEARCH_CPU_COUNT": str(cores + 1)}  # what prepare.py sees on a machine with another core count

    refused = cli("run", "--lab", str(lab.root), "--resume", "--budget", "2", "--max-experiments", "9", env=other)
    assert refused.returncode == 2 and "--rebaseline" in refused.stderr, refused.stdout + refused.stderr
    assert len(lab.rows()) == len(before)

    resumed = cli("run", "--lab", str(lab.root), "--resume", "--budget", "1", "--max-experiments", "9", env=other,
                  timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"another machine: cpu_count {cores} -> {cores + 1}" in resumed.stdout
    rows = assert_consistent(lab)
    assert rows[:len(before)] == before
    new = [r for r in rows if r["segment"] == 1]
    assert new and new[0]["role"] == "baseline" and new[0]["conditions"]["cpu_count"] == cores + 1
    lab_check(lab.root)


def test_the_cli_and_the_notebook_print_the_same_figures_for_a_lab(tmp_path, capsys):
    from IPython.core.interactiveshell import InteractiveShell

    from autoresearch_nb.front.magics import CURRENT

    lab = scored_lab(tmp_path / "lab", baseline=TRAIN)
    done = run(lab, "--budget", "1", "--max-experiments", "6", "--tag", "same")
    assert done.returncode == 0, done.stdout + done.stderr
    status = cli("status", "--lab", str(lab.root))
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "autoresearch_nb")
    try:
        capsys.readouterr()
        shell.run_cell(f"%autoresearch init {lab.root}\n%autoresearch status", store_history=False)
        notebook = capsys.readouterr().out
    finally:
        CURRENT.__init__()
    header = [line for line in status.stdout.splitlines()[:6] if line.startswith(("best ", "noise ", "heuristic"))]
    assert header and all(line in notebook for line in header), (status.stdout, notebook)
