"""Several experiments at once on real training (the tiny profile, the evaluator running): no row lost or
repeated, nothing refused for the harness's own writes, an experiment that writes the records caught,
a kill -9 mid-night resumed; every test ends with the lab check (`autoresearch-nb check`)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from autoresearch_nb.agents.base import Proposal
from autoresearch_nb.agents.heuristic import HeuristicAgent
from autoresearch_nb.lab.lab import Lab
from autoresearch_nb.lab.labcheck import broken
from autoresearch_nb.front.progress import STATUS_MARK
from autoresearch_nb.engine.session import RunOptions, Session
from conftest import cli, lab_check

pytestmark = pytest.mark.slow

TRAIN = "nanochat/train.py"
PRINTED = re.compile(r"^\s*(\d+)\s+(" + "|".join(re.escape(m.strip()) for m in STATUS_MARK.values()) + r")\s")
STATUS_OF = {mark.strip(): status for status, mark in STATUS_MARK.items()}
STARTED = re.compile(r"^\s+·\s+running\s+(w\d|r\d)\s")
# train.py lines a hostile agent puts at the top: the lab's records lie above the worktree it runs in
# (.autoresearch/worktrees/slot-N): a forged kept row appended to the ledger, results.tsv rewritten.
WRITES_THE_LEDGER = ('import pathlib as _p\n'
                     '_ledger = _p.Path.cwd().parents[1] / "ledger.jsonl"\n'
                     '_ledger.open("a").write(\'{"index": 99, "status": "keep", "val_bpb": 0.1, "role": "experiment"}\\n\')\n'
                     '(_p.Path.cwd().parents[2] / "results.tsv").write_text("commit\\tval_bpb\\nabc1234\\t0.1\\n")\n')


def printed_rows(stdout: str) -> list[tuple[int, str]]:
    return [(int(m.group(1)), STATUS_OF[m.group(2)]) for line in stdout.splitlines() if (m := PRINTED.match(line))]


def test_two_workers_on_real_training_keep_every_row(tiny_lab):
    done = cli("run", "--lab", str(tiny_lab), "--workers", "2", "--budget", "2", "--max-experiments", "20",
               timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = Lab.open(tiny_lab).rows()
    printed = printed_rows(done.stdout)
    # every row the night printed is in the ledger, once, as printed; every run started has its row
    assert sorted(printed) == [(r["index"], r["status"]) for r in rows], done.stdout
    started = sum(1 for line in done.stdout.splitlines() if STARTED.match(line))
    assert started == sum(1 for r in rows if r.get("job") is not None), done.stdout
    assert not [r for r in rows if r.get("kind") == "refused"], [(r["index"], r["reason"]) for r in rows]
    assert not [r for r in rows if r["status"] == "crash"], [(r["index"], r["reason"]) for r in rows]
    # past the noise estimate: candidates judged, on both workers, side by side
    judged = [r for r in rows if r["role"] in ("experiment", "confirm") and r.get("judge")]
    assert len(judged) >= 5, done.stdout
    assert {r["worker"] for r in rows if r.get("worker")} == {"w0", "w1"}
    assert overlapping(rows), "no two runs trained at the same time"
    lab_check(tiny_lab)


def overlapping(rows: list[dict]) -> bool:
    from autoresearch_nb.judge.facts import timestamp

    spans = [(timestamp(r["started_at"]), timestamp(r["finished_at"]), r["worker"]) for r in rows if r.get("job")]
    return any(a0 < b1 and b0 < a1 for a0, a1, wa in spans for b0, b1, wb in spans if wa < wb)


def test_drafts_rejected_while_the_baseline_trains_are_all_on_record(tiny_lab, tmp_path):
    calls = tmp_path / "calls"
    # a CLI that changes nothing: each of its drafts is rejected, written while the baseline trains
    command = f"sh -c 'sleep 1; echo call >> {calls}'"
    done = cli("run", "--lab", str(tiny_lab), "--agent", "command", "--command", command, "--budget", "6",
               "--max-experiments", "3", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = Lab.open(tiny_lab).rows()
    baseline = [r for r in rows if r["role"] == "baseline" and r["status"] != "disturbed"]  # slowed from outside: again
    assert [r["status"] for r in baseline] == ["keep"], [(r["status"], r.get("reason")) for r in baseline]
    rejected = [r for r in rows if r["status"] == "rejected"]
    answered = len(calls.read_text().splitlines())
    assert answered >= 3 and len(rejected) == answered, (answered, [(r["index"], r["reason"]) for r in rows])
    assert printed_rows(done.stdout) and sorted(printed_rows(done.stdout)) == [(r["index"], r["status"]) for r in rows]
    lab_check(tiny_lab)


class BreaksOne(HeuristicAgent):
    """The heuristic agent, but its second draft does not compile (rejected while a run trains)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def propose(self, context):
        self.calls += 1
        if self.calls == 2:
            return Proposal({TRAIN: context.files[TRAIN] + "\ndef broken(:\n"}, "a draft that does not compile")
        return super().propose(context)


def test_pipelined_drafts_and_a_rejected_draft_mid_run(tiny_lab):
    session = Session(RunOptions(lab=str(tiny_lab), budget=2, max_experiments=6, policy="greedy", depth=1),
                      agent=BreaksOne())
    started = []
    session.subscribe(lambda e: started.append(e.data["job"]) if e.kind == "experiment_started" else None)
    session.start()
    assert session.wait(900) and session.error is None, session.error
    rows = Lab.open(tiny_lab).rows()
    assert sorted(started) == sorted(r["job"] for r in rows if r.get("job") is not None)
    broken_rows = [r for r in rows if r["description"] == "a draft that does not compile"]
    assert [(r["status"], r["kind"]) for r in broken_rows] == [("rejected", "validation")]
    candidates = [r for r in rows if r["role"] == "experiment" and r.get("job") is not None]
    assert len(candidates) >= 3 and not [r for r in rows if r["status"] == "crash"]
    # drafted while the run before it trained: its draft began before that run ended
    from autoresearch_nb.judge.facts import timestamp

    ran = [r for r in rows if r.get("job") is not None]
    ahead = [r for r in candidates if any(timestamp(r["started_at"]) < timestamp(o["finished_at"])
                                          for o in ran if o["index"] < r["index"] and o["job"] != r["job"])]
    assert ahead, [(r["index"], r["started_at"], r["finished_at"]) for r in ran]
    assert broken(Lab.open(tiny_lab)) == []


def test_an_unsandboxed_experiment_that_writes_the_ledger_is_refused_and_no_row_is_lost(tiny_lab, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_SANDBOX", "none")

    seen = []

    class Hostile(HeuristicAgent):
        def propose(self, context):
            seen.extend(context.history)
            if context.history and not seen_forger:
                seen_forger.append(True)
                return Proposal({TRAIN: WRITES_THE_LEDGER + context.files[TRAIN]}, "forges a row")
            return super().propose(context)

    seen_forger = []

    # depth 1: the agent drafts while the hostile run trains, from the rows the coordinator reads then
    session = Session(RunOptions(lab=str(tiny_lab), budget=2, max_experiments=4, policy="greedy", depth=1),
                      agent=Hostile(), audit=False)  # the run-time defence, not the audit's cheap filter
    finished = []
    session.subscribe(lambda e: finished.append(dict(e.data["row"])) if e.kind == "experiment_finished" else None)
    session.start()
    assert session.wait(900) and session.error is None, session.error
    lab = Lab.open(tiny_lab)
    rows = lab.rows()
    assert not [r for r in rows if r.get("index") == 99], "the forged row is still in the ledger"
    forged = [r for r in rows if r.get("description") == "forges a row"]
    assert [(r["status"], r["kind"]) for r in forged] == [("crash", "refused")], forged
    assert "the experiment wrote to ledger.jsonl, results.tsv" in forged[0]["reason"], forged[0]["reason"]
    # the forged line is gone, every row the coordinator recorded is there as it was recorded
    assert '"val_bpb": 0.1' not in lab.ledger_path.read_text()
    # nothing the coordinator did rested on the forged row before it was put back
    assert seen and not [r for r in seen if r.get("index") == 99], "the agent was shown the forged row"
    assert not [r for r in rows if "#99" in r["description"]]
    assert [json.dumps(r, sort_keys=True) for r in rows] == [json.dumps(r, sort_keys=True, default=str)
                                                             for r in finished]
    assert broken(lab) == []


def test_inside_the_sandbox_an_experiment_cannot_reach_the_records(tiny_lab):
    """The lab is mounted read-only there, or (under /tmp, as here) not at all: the write lands in the
    sandbox's private tmpfs or fails, never in the lab; the run is judged on its own value."""
    from autoresearch_nb.run import sandbox

    if not sandbox.probe().active:
        pytest.fail(f"this test needs the sandbox: {sandbox.probe()}")

    class Hostile(HeuristicAgent):
        def propose(self, context):
            return Proposal({TRAIN: WRITES_THE_LEDGER + context.files[TRAIN]}, "forges a row")

    session = Session(RunOptions(lab=str(tiny_lab), budget=2, max_experiments=2, policy="greedy", depth=0),
                      agent=Hostile(), audit=False)  # the run-time defence, not the audit's cheap filter
    messages = []
    session.subscribe(lambda e: messages.append(e.data.get("text", "")) if e.kind == "message" else None)
    session.start()
    assert session.wait(900) and session.error is None, session.error
    lab = Lab.open(tiny_lab)
    # (a run slowed by other work on the machine is run again; only a row of that kind may stand aside)
    tried = [r for r in lab.rows() if r["description"] == "forges a row"]
    assert all(r["kind"] == "disturbed" for r in tried if r["status"] == "disturbed"), tried
    forged = [r for r in tried if r["status"] != "disturbed"]
    assert len(forged) == 1 and forged[0].get("kind") != "refused", forged
    assert forged[0]["status"] in ("keep", "discard") or "read-only file system" in forged[0]["reason"], forged[0]
    assert '"val_bpb": 0.1' not in lab.ledger_path.read_text()
    assert not [m for m in messages if "harness" in m], messages  # nothing seen written from outside
    assert broken(lab) == []


def test_kill_9_of_a_two_worker_night_then_resume(tiny_lab):
    lab = Lab.open(tiny_lab)
    start = ("--workers", "2", "--budget", "2", "--max-experiments", "8", "--tag", "k")
    done = cli("run", "--lab", str(tiny_lab), *start, env={"AUTORESEARCH_CRASHPOINT": "during_experiment:2"},
               timeout=900)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    before = lab.rows()
    note = json.loads(lab.inflight_path.read_text())
    running = [t for t in note["tracks"] if t.get("job")]
    assert running, note
    assert cli("check", "--lab", str(tiny_lab)).returncode == 1  # not at rest until the resume repairs it
    done = cli("run", "--lab", str(tiny_lab), "--resume", "--workers", "2", env={"AUTORESEARCH_CRASHPOINT": ""},
               timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = lab.rows()
    assert rows[:len(before)] == before, "a row recorded before the kill changed or went"
    # each run under way at the kill ran again exactly once: one first run of its track
    for track in running:
        again = [r for r in rows if r.get("commit") and track["commit"].startswith(r["commit"])
                 and r["role"] == track["role"] and r["description"] == track["description"]
                 and r["status"] != "disturbed"]  # a run slowed from outside is run again: not a repeat
        assert len(again) == 1, (track["description"], [(r["index"], r["status"]) for r in again])
    jobs = Counter(r["job"] for r in rows if r.get("job") is not None)
    assert all(n == 1 for n in jobs.values()), jobs
    assert not [r for r in rows if r.get("kind") == "refused"]
    lab_check(tiny_lab)


@contextlib.contextmanager
def ray_cluster(token: dict):
    """A Ray cluster started as a person starts one (`ray start --head`, 4 CPUs, 2 GPUs declared) with its
    own token; yields its address. ~/.ray/auth_token is whatever an earlier Ray left there, so the token
    is handed over explicitly (CI once saw the CLI refused with InvalidAuthToken)."""
    pytest.importorskip("ray", reason="Ray is the [ray] extra; scripts/test.sh installs it")
    ray_cli = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, **token}
    up = subprocess.run([ray_cli, "start", "--head", "--num-cpus", "4", "--num-gpus", "2", "--disable-usage-stats",
                         "--include-dashboard=false"], capture_output=True, text=True, timeout=300, env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield re.search(r"--address='([^']+)'", up.stdout).group(1)
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120, env=env)


def a_token() -> dict:
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def test_kill_9_of_a_two_worker_ray_night_then_resume(tiny_lab, tmp_path):
    token = a_token()
    lab = Lab.open(tiny_lab)
    with ray_cluster(token) as address:
        # right after the 6th run went to a Ray worker: past the baseline's measurements, a run surely under way
        start = ("--ray", address, "--workers", "2", "--budget", "2", "--max-experiments", "10", "--tag", "r")
        done = cli("run", "--lab", str(tiny_lab), *start, env={**token, "AUTORESEARCH_CRASHPOINT": "after_start:6"},
                   timeout=900)
        assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
        before = lab.rows()
        running = [t for t in json.loads(lab.inflight_path.read_text())["tracks"] if t.get("job")]
        assert running
        done = cli("run", "--lab", str(tiny_lab), "--resume", *start[:4], env={**token, "AUTORESEARCH_CRASHPOINT": ""},
                   timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
    rows = lab.rows()
    assert rows[:len(before)] == before
    for track in running:
        again = [r for r in rows if r.get("commit") and track["commit"].startswith(r["commit"])
                 and r["role"] == track["role"] and r["description"] == track["description"]
                 and r["status"] != "disturbed"]  # a run slowed from outside is run again: not a repeat
        assert len(again) == 1, (track["description"], [(r["index"], r["status"]) for r in again])
    ran = [r for r in rows if r.get("job") is not None]
    assert {r["worker"].split(" ")[0] for r in ran} == {"r0", "r1"}
    assert all(r["status"] in ("keep", "discard", "disturbed") for r in ran), [(r["index"], r.get("reason")) for r in ran]
    lab_check(tiny_lab)


def test_joining_a_ray_cluster_without_its_token_says_what_to_do(tiny_lab):
    with ray_cluster(a_token()) as address:
        done = cli("run", "--lab", str(tiny_lab), "--ray", address, "--workers", "2", "--budget", "2",
                   "--max-experiments", "1", env=a_token(), timeout=600)
    assert done.returncode != 0
    assert f"could not join the Ray cluster at {address}" in done.stderr and "RAY_AUTH_TOKEN" in done.stderr, done.stderr
    assert Lab.open(tiny_lab).rows() == []
