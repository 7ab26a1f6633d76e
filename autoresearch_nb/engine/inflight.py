"""The coordinator's state that must survive kill -9 (.autoresearch/inflight.json), and the repair a resume makes.

The state holds the tracks under way (tracks.py), their dispatched jobs and the drafts not yet
run. It is rewritten atomically after every change, before the change is acted on; ledger rows
are appended (fsync) before they leave the state. So after a kill at any instant a resume knows
which rows made it (each row names its job), ends the orphaned experiments, removes the
worktrees, finishes a verdict that was made, and re-queues each job that was running, once.
"""
from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field

from ..run import proctime
from ..lab.lab import Lab
from .tracks import Draft, Track

FORMAT = 2


_PASSES: dict[str, int] = {}


def crashpoint(name: str) -> None:
    """Tests name a point here to get a real kill -9 exactly there: AUTORESEARCH_CRASHPOINT=name
    (the first time), name:k (the k-th time this process passes it)."""
    wanted = os.environ.get("AUTORESEARCH_CRASHPOINT") or ""
    if not wanted.startswith(name):
        return
    _PASSES[name] = _PASSES.get(name, 0) + 1
    if wanted in (name, f"{name}:{_PASSES[name]}"):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class State:
    tracks: list = field(default_factory=list)     # Track
    drafts: list = field(default_factory=list)     # Draft
    next_id: int = 0                               # tracks, jobs and drafts share one counter

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def save(self, lab: Lab) -> None:
        if not self.tracks and not self.drafts:
            clear(lab)
            return
        lab.records.replace(lab.inflight_path, json.dumps({
            "format": FORMAT, "next_id": self.next_id, "tracks": [t.record() for t in self.tracks],
            "drafts": [d.record() for d in self.drafts]}, default=str).encode())

    @classmethod
    def load(cls, lab: Lab) -> "State":
        """The state left by the last session; ids go on from the highest the lab has used, so a job id
        (and its log, logs/run-NNNNN.log) names one run in the lab's whole life, not in one session."""
        data = read(lab)
        used = max([int(data.get("next_id") or 0)] + [int(r["job"]) for r in lab.rows()
                                                       if isinstance(r.get("job"), int)])
        if data.get("format") != FORMAT:
            return cls(next_id=used)
        return cls([Track.load(t) for t in data.get("tracks", [])], [Draft.load(d) for d in data.get("drafts", [])],
                   used)


def read(lab: Lab) -> dict:
    try:
        return json.loads(lab.records.read(lab.inflight_path) or b"{}")
    except ValueError:
        return {}


def clear(lab: Lab) -> None:
    lab.records.remove(lab.inflight_path)


def runs_in(pid: int, root) -> bool:
    """True when process `pid` still exists and works in `root` (not a reused pid)."""
    try:
        return os.path.realpath(os.readlink(f"/proc/{pid}/cwd")).startswith(os.path.realpath(root))
    except OSError:
        return False


def end_orphan(job: dict | None) -> None:
    """An experiment left running by a killed coordinator must not keep running. Only the process the
    job started: the same one (boot and start time, where recorded), in the job's tree, leading its
    own session as the runner starts it, and never this process or its own group or session."""
    pid = job.get("pid") if job else None
    if not pid or not runs_in(pid, job.get("cwd") or "/nonexistent"):
        return
    if job.get("pid_identity") and proctime.identity(pid) != job["pid_identity"]:
        return
    try:
        if os.getsid(pid) != pid or pid in (os.getpid(), os.getpgrp(), os.getsid(0)):
            return
    except OSError:
        return
    proctime.kill_tree(pid)


def append(lab: Lab, rows: list[dict], row: dict) -> dict:
    """Append a row with the next index and the value to beat after it."""
    from ..judge.facts import value_to_beat

    row["index"] = len(rows)
    best = value_to_beat(rows + [row])
    row["best"] = round(best.mean, 6) if best else None
    lab.append_row(row)
    rows.append(row)
    return row


def recover(lab: Lab) -> State:
    """Make the lab consistent after a crash, a kill -9 or a kernel restart; returns what to go on with."""
    state = State.load(lab)
    rows = lab.rows()
    recorded = {r.get("job") for r in rows if r.get("job") is not None}
    kept = []
    for track in state.tracks:
        end_orphan(track.job)
        if track.decision is not None:  # judged before the kill: finish what the verdict said
            if track.decision == "keep" and lab.head() == _full(lab, track.parent):
                lab.reset(track.commit)
            for row in track.rows:
                if row.get("job") not in recorded:
                    append(lab, rows, row)
            continue
        track.job = None                 # re-queued: it runs again, once, in the resumed run
        kept.append(track)
    state.tracks = kept
    from ..lab.worktrees import Worktrees

    Worktrees(lab).remove_all()
    lab.reset(lab.head())
    lab.write_results(rows)
    state.save(lab)
    return state


def _full(lab: Lab, commit: str) -> str:
    try:
        return lab.repo.git.rev_parse(commit)
    except Exception:
        return commit
