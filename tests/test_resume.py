"""Resume after kill -9 at every point of an experiment, and after Ctrl-C: no row lost or repeated,
the interrupted experiment recorded, the tree clean at the best commit, no orphaned training run.

The CLI is killed for real (AUTORESEARCH_CRASHPOINT makes the loop SIGKILL itself at a named point).
The lab is the scored target of test_loop.py with a train.py the heuristic agent can edit, so each
run is a fraction of a second and the tests spend their time on the kills and resumes.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from autoresearch_nb.lab import Lab
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


def run(lab: Lab, *args: str, crash: str | None = None, sleep: float = 0,
        unconfined: bool = False) -> subprocess.CompletedProcess:
    env = {"AUTORESEARCH_CRASHPOINT": crash or "", "TEST_SLEEP": str(sleep)}
    if unconfined:  # no sandbox: an experiment then outlives a killed loop (bwrap's would die with it)
        env["AUTORESEARCH_SANDBOX"] = "none"
    return cli("run", "--lab", str(lab.root), *args, env=env, timeout=300)


def killed(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stdout, done.stderr)


def indices(lab: Lab) -> list[int]:
    rows = lab.rows()
    found = [r["index"] for r in rows]
    assert found == list(range(len(rows))), found  # contiguous and unique, after every kill
    return found


def test_kill_9_at_every_point_then_resume(tmp_path):
    lab = scored_lab(tmp_path / "lab", baseline=TRAIN)
    start = ("--policy", "greedy", "--budget", "1", "--max-experiments", "11", "--tag", "night")
    # baseline (0) runs; the proposal of 1 is killed before anything touches the tree
    killed(run(lab, *start, crash="after_propose:1", unconfined=True))
    assert indices(lab) == [0] and lab.inflight_path.exists()
    steps = [("after_write", 2), ("after_commit", 3), ("during_experiment", 4), ("after_judge", 5),
             ("after_append", 6)]
    orphan = None
    for point, index in steps:
        done = run(lab, "--resume", crash=f"{point}:{index}", sleep=120 if point == "during_experiment" else 0,
                   unconfined=True)
        killed(done)
        rows = lab.rows()
        assert indices(lab)[-1] == (index if point == "after_append" else index - 1), (point, rows)
        assert rows[index - 1]["status"] == "interrupted", (point, rows[index - 1])
        if orphan is not None:
            assert wait_gone(orphan), "resume left the orphaned experiment running"
            orphan = None
        if point == "during_experiment":
            orphan = json.loads(lab.inflight_path.read_text())["pid"]
            assert not gone(orphan), "the experiment should outlive the killed loop (until resume ends it)"
    done = run(lab, "--resume", unconfined=True)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = assert_consistent(lab)
    assert len(rows) >= 11 and "reached --max-experiments 11" in done.stdout
    interrupted = [r["index"] for r in rows if r["status"] == "interrupted"]
    assert interrupted == [1, 2, 3, 4, 5]
    assert rows[6]["status"] in ("keep", "discard")  # appended before the kill: kept as it was, once
    assert [r["role"] for r in rows].count("baseline") == 1
    assert lab.branch() == "autoresearch/night"
    # the run's settings survived the kills
    assert '"policy": "greedy"' in lab.run_info_path.read_text()


def test_kill_9_during_the_noise_estimate_then_resume(tmp_path):
    lab = scored_lab(tmp_path / "lab", baseline=TRAIN)
    killed(run(lab, "--budget", "1", "--noise-runs", "2", "--max-experiments", "4", "--tag", "n",
               crash="during_noise:1"))
    assert indices(lab) == [0]
    done = run(lab, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = assert_consistent(lab)
    assert [(r["role"], r["status"]) for r in rows[:4]] == [("baseline", "keep"), ("noise", "interrupted"),
                                                            ("noise", "discard"), ("noise", "discard")]


def test_kill_9_during_the_baseline_then_resume(tmp_path):
    lab = scored_lab(tmp_path / "lab", baseline=TRAIN)
    killed(run(lab, "--policy", "greedy", "--budget", "1", "--max-experiments", "2", "--tag", "b",
               crash="during_baseline:0"))
    assert indices(lab) == []
    done = run(lab, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = assert_consistent(lab)
    assert [(r["role"], r["status"]) for r in rows[:2]] == [("baseline", "interrupted"), ("baseline", "keep")]


def test_ctrl_c_stops_cleanly_and_resume_continues(tmp_path):
    lab = scored_lab(tmp_path / "lab", baseline=TRAIN)
    env = {**os.environ, "TEST_SLEEP": "120", "AUTORESEARCH_CRASHPOINT": ""}
    process = subprocess.Popen([sys.executable, "-m", "autoresearch_nb", "run", "--lab", str(lab.root), "--policy",
                                "greedy", "--budget", "1", "--max-experiments", "4", "--tag", "c"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if re.match(r"^\s+1\s+running", line):
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
