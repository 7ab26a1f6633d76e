"""Resume after kill -9 at every point of an experiment, and after Ctrl-C: no row lost or repeated, each
run that was under way re-queued exactly once, no orphaned training run, no worktree left behind.

The CLI is killed for real (AUTORESEARCH_CRASHPOINT makes the coordinator SIGKILL itself at a named
point). The lab is the scored target of test_loop.py with a train.py the heuristic agent can edit,
so each run is a fraction of a second and the tests spend their time on the kills and resumes.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter

import pytest

from autoresearch_nb.run import proctime
from autoresearch_nb.lab.lab import Lab
from autoresearch_nb.lab.worktrees import Worktrees
from conftest import cli
from test_loop import assert_consistent, scored_lab
from test_runner import gone, wait_gone

pytestmark = pytest.mark.slow

TRAIN = '''"""A stand-in for nanochat's train.py: the heuristic edits these constants; score.py reports SCORE."""
import os
import time

MATRIX_LR = 0.02                     # Muon, for the matrices
EMBED_LR = 0.3                       # AdamW, embeddings
UNEMBED_LR = 0.004
WARMDOWN_FRAC = 0.4
FINAL_LR_FRAC = 0.0
ORIGINAL = (0.02, 0.3, 0.004, 0.4, 0.0)
if (MATRIX_LR, EMBED_LR, UNEMBED_LR, WARMDOWN_FRAC, FINAL_LR_FRAC) != ORIGINAL:
    time.sleep(float(os.environ.get("TEST_SLEEP", "0")))  # an experiment that takes a while, quietly
SCORE = 1.0 + abs(MATRIX_LR - 0.04) + abs(EMBED_LR - 0.6) / 10 + abs(WARMDOWN_FRAC - 0.6) / 5
'''


def run(lab: Lab, *args: str, crash: str | None = None, sleep: float = 0, unconfined: bool = False):
    env = {"AUTORESEARCH_CRASHPOINT": crash or "", "TEST_SLEEP": str(sleep)}
    if unconfined:  # the sandbox ends an experiment with its killed coordinator; here it must outlive it
        env["AUTORESEARCH_SANDBOX"] = "none"
    return cli("run", "--lab", str(lab.root), *args, env=env, timeout=300)


def killed(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stdout, done.stderr)


def each_run_once(lab: Lab, finished: bool = True) -> list[dict]:
    """The ledger: contiguous, every job recorded at most once; once a run has ended, no worktree left."""
    rows = lab.rows()
    assert [r["index"] for r in rows] == list(range(len(rows)))
    jobs = Counter(r["job"] for r in rows if r.get("job") is not None)
    assert all(count == 1 for count in jobs.values()), jobs
    if finished:
        assert Worktrees(lab).leftovers() == []
    return rows


def under_way(lab: Lab) -> list[dict]:
    """The jobs a kill left running, from inflight.json: {job, seed, commit} each."""
    tracks = json.loads(lab.inflight_path.read_text())["tracks"] if lab.inflight_path.exists() else []
    return [{"job": t["job"]["id"], "seed": t["job"]["seed"], "commit": t["commit"]} for t in tracks if t.get("job")]


def assert_requeued_once(rows: list[dict], killed_jobs: list[dict]) -> None:
    """Each run a kill cut short ran again exactly once: its code at its seed has one clean row, under
    a job id of its own (the killed job itself never reached the ledger)."""
    jobs = Counter(r["job"] for r in rows if r.get("job") is not None)
    assert all(n == 1 for n in jobs.values()), jobs
    for cut in killed_jobs:
        assert cut["job"] not in jobs, f"the killed job {cut['job']} was recorded"
        again = [r for r in rows if r.get("commit") and cut["commit"].startswith(r["commit"])
                 and r.get("seed") == cut["seed"] and r["status"] != "disturbed"]
        assert len(again) == 1, (cut, [(r["index"], r["job"], r["status"], r["role"]) for r in again])
        assert again[0]["job"] > cut["job"]


def test_kill_9_at_every_point_then_resume(tmp_path):
    lab = scored_lab(tmp_path / "lab", baseline=TRAIN)
    start = ("--policy", "greedy", "--budget", "1", "--max-experiments", "8", "--tag", "night", "--depth", "1")
    killed(run(lab, *start, crash="after_propose"))           # a draft made, not yet committed
    assert json.loads(lab.inflight_path.read_text())["drafts"]
    orphan = None
    cut_short = []
    for point in ("after_commit", "during_experiment", "after_judge", "after_append:2"):
        before = lab.rows()
        done = run(lab, "--resume", crash=point, sleep=120 if point == "during_experiment" else 0,
                   unconfined=point == "during_experiment")
        killed(done)
        rows = each_run_once(lab, finished=False)
        assert not any(r["status"] == "interrupted" for r in rows), "a killed run is re-queued, not given up"
        assert rows[:len(before)] == before, "a row recorded before the kill changed or went"
        cut_short += under_way(lab)
        if orphan is not None:
            assert wait_gone(orphan), "resume left the orphaned experiment running"
            orphan = None
        if point == "during_experiment":
            tracks = json.loads(lab.inflight_path.read_text())["tracks"]
            job = next(t["job"] for t in tracks if t.get("job") and t["job"].get("pid"))
            orphan = job["pid"]
            assert not gone(orphan), "the experiment should outlive the killed coordinator (until resume ends it)"
            assert job["pid_identity"] == proctime.identity(orphan), "a resume must know the orphan from a later process"
    done = run(lab, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = assert_consistent(lab)
    each_run_once(lab)
    assert cut_short, "no kill left a run under way: the re-queueing was not tested"
    assert_requeued_once(rows, cut_short)
    assert "reached --max-experiments 8" in done.stdout
    assert sum(1 for r in rows if r["status"] in ("keep", "discard", "crash")) == 8
    assert [r["role"] for r in rows].count("baseline") == 1
    assert lab.branch() == "autoresearch/night"
    assert '"policy": "greedy"' in lab.run_info_path.read_text()


def test_a_killed_run_is_re_queued_exactly_once(tmp_path):
    lab = scored_lab(tmp_path / "lab", baseline=TRAIN)
    killed(run(lab, "--policy", "greedy", "--budget", "1", "--max-experiments", "3", "--tag", "q",
               crash="during_experiment", sleep=2))
    running = under_way(lab)
    assert len(running) == 1
    commit = running[0]["commit"]
    done = run(lab, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = assert_consistent(lab)
    each_run_once(lab)
    assert_requeued_once(rows, running)
    ran = [r for r in rows if r.get("commit") and commit.startswith(r["commit"])]
    assert len(ran) == 1 and ran[0]["status"] in ("keep", "discard"), rows


def test_kill_9_during_the_noise_estimate_then_resume(tmp_path):
    lab = scored_lab(tmp_path / "lab", baseline=TRAIN)
    killed(run(lab, "--budget", "1", "--noise-runs", "2", "--max-experiments", "4", "--tag", "n",
               crash="during_noise"))
    assert [r["role"] for r in lab.rows()] == ["baseline"]
    done = run(lab, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = assert_consistent(lab)
    assert [(r["role"], r["status"]) for r in rows[:3]] == [("baseline", "keep"), ("noise", "discard"),
                                                            ("noise", "discard")]


def test_kill_9_during_the_baseline_then_resume(tmp_path):
    lab = scored_lab(tmp_path / "lab", baseline=TRAIN)
    killed(run(lab, "--policy", "greedy", "--budget", "1", "--max-experiments", "2", "--tag", "b",
               crash="during_baseline"))
    assert lab.rows() == []
    done = run(lab, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = assert_consistent(lab)
    assert [(r["role"], r["status"]) for r in rows[:1]] == [("baseline", "keep")]


def test_kill_9_with_two_workers_re_queues_both_runs_and_leaves_no_worktree(tmp_path):
    lab = scored_lab(tmp_path / "lab", baseline=TRAIN)
    killed(run(lab, "--policy", "greedy", "--budget", "1", "--max-experiments", "6", "--tag", "w",
               "--workers", "2", crash="during_experiment:2", sleep=3))
    running = [t for t in json.loads(lab.inflight_path.read_text())["tracks"] if t.get("job")]
    assert len(running) == 2 and len({t["job"]["worker"] for t in running}) == 2
    assert len(Worktrees(lab).leftovers()) == 2   # left by the kill; the resume removes them
    cut_short = under_way(lab)
    done = run(lab, "--resume", "--workers", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = assert_consistent(lab)
    each_run_once(lab)
    assert_requeued_once(rows, cut_short)
    assert {r["worker"] for r in rows if r.get("worker")} == {"w0", "w1"}


def test_ctrl_c_stops_cleanly_and_resume_continues(tmp_path):
    lab = scored_lab(tmp_path / "lab", baseline=TRAIN)
    env = {**os.environ, "TEST_SLEEP": "120", "AUTORESEARCH_CRASHPOINT": ""}
    process = subprocess.Popen([sys.executable, "-m", "autoresearch_nb", "run", "--lab", str(lab.root), "--policy",
                                "greedy", "--budget", "1", "--max-experiments", "4", "--tag", "c", "--depth", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if re.match(r"^\s+·\s+running\s+w0\s+(?!baseline)\S", line):
            break
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, "".join(seen) + out + err
    assert "interrupted" in out and "Traceback" not in err
    rows = assert_consistent(lab)
    assert [(r["index"], r["status"]) for r in rows] == [(0, "keep"), (1, "interrupted")]
    assert rows[1]["kind"] == "interrupted"
    assert lab.results_path.read_text().splitlines()[-1].endswith("[interrupted]")
    done = run(lab, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = assert_consistent(lab)
    assert len([r for r in rows if r["status"] != "rejected"]) == 4
    assert [r["index"] for r in rows] == list(range(len(rows)))
