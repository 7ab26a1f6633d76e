"""`autoresearch-nb check`: a lab a night left at rest passes; each invariant broken by hand is named, exit 1."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from autoresearch_nb.lab.lab import Lab
from conftest import cli
from test_loop import ScriptedAgent, git, run_loop, score, scored_lab


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A lab after a short night: a baseline and a kept change on the branch."""
    lab = scored_lab(tmp_path_factory.mktemp("night") / "lab")
    run_loop(lab, ScriptedAgent([(score(0.9), "better"), (score(0.95), "worse")]))
    return lab.root


@pytest.fixture
def lab(night, tmp_path):
    copy = tmp_path / "lab"
    shutil.copytree(night, copy, symlinks=True)
    return copy


def check(lab) -> tuple[int, list[str]]:
    done = cli("check", "--lab", str(lab))
    assert done.stderr == "", done.stderr
    return done.returncode, done.stdout.strip().splitlines()


def test_a_lab_at_rest_passes_with_one_line(lab):
    code, lines = check(lab)
    assert code == 0 and len(lines) == 1 and lines[0].startswith("ok: "), lines
    assert "2 kept" in lines[0], lines


def rewrite_ledger(lab, edit) -> None:
    path = lab / ".autoresearch" / "ledger.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows = edit(rows)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def test_a_repeated_row_is_named(lab):
    rewrite_ledger(lab, lambda rows: rows + [rows[-1]])
    code, lines = check(lab)
    assert code == 1 and any("indexes are not 0.." in l and "repeated" in l for l in lines), lines


def test_a_job_recorded_twice_is_named(lab):
    def twice(rows):
        ran = [r for r in rows if r.get("job") is not None]
        ran[1]["job"] = ran[0]["job"]
        return rows
    rewrite_ledger(lab, twice)
    code, lines = check(lab)
    assert code == 1 and any("recorded more than once" in l for l in lines), lines


def test_a_results_line_unlike_its_ledger_row_is_named(lab):
    path = lab / "results.tsv"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace("keep", "discard")
    path.write_text("\n".join(lines) + "\n")
    code, said = check(lab)
    assert code == 1 and any("results.tsv line 2 does not match its ledger row" in l for l in said), said


def test_a_kept_commit_missing_or_off_the_branch_is_named(lab):
    def forget(rows):
        kept = [r for r in rows if r["status"] == "keep"]
        kept[-1]["commit"] = "0000000"
        return rows
    rewrite_ledger(lab, forget)
    code, lines = check(lab)
    assert code == 1 and any("its commit 0000000 is not in the repository" in l for l in lines), lines


def test_a_head_that_is_not_the_best_is_named(lab):
    baseline = Lab.open(lab).rows()[0]["commit"]
    git(lab, "reset", "-q", "--hard", baseline)
    code, lines = check(lab)
    assert code == 1 and any("does not hold the best's code" in l for l in lines), lines


def test_a_dirty_tree_is_named_but_a_charter_edit_is_not(lab):
    (lab / "program.md").write_text("# a charter edited in the notebook, not yet committed\n")
    assert check(lab)[0] == 0
    (lab / "nanochat" / "train.py").write_text("SCORE = 0.1\n")
    code, lines = check(lab)
    assert code == 1 and lines == ["the work tree is not clean: nanochat/train.py"], lines


def test_a_half_finished_run_and_its_worktree_are_named(lab):
    (lab / ".autoresearch" / "inflight.json").write_text('{"format": 2, "tracks": [], "drafts": []}')
    git(lab, "worktree", "add", "-q", "--detach", str(lab / ".autoresearch" / "worktrees" / "slot-0"))
    code, lines = check(lab)
    assert code == 1 and any("stopped half-way" in l for l in lines) and any("worktrees left behind" in l for l in lines)


def test_a_process_left_in_the_lab_is_named(lab):
    runs = lab / ".autoresearch" / "runs" / "run-00009"
    runs.mkdir(parents=True)
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=runs)
    try:
        code, lines = check(lab)
        assert code == 1 and any(f"process {orphan.pid} still works in the lab" in l for l in lines), lines
    finally:
        orphan.kill()
        orphan.wait()


def test_no_lab_is_a_usage_error(tmp_path):
    done = cli("check", "--lab", str(tmp_path / "nothing"))
    assert done.returncode == 2 and "no lab at" in done.stderr
