"""The in-flight note (.autoresearch/inflight.json) and the repair a resume makes from it.

Before anything touches the tree the loop writes what is under way and which commit to return
to; the ledger row is appended (fsync) before the note is removed. So after `kill -9` at any
instant a resume can tell whether the row made it, record the experiment as interrupted if not,
end an orphaned training process, and put the tree back at the best commit.
"""
from __future__ import annotations

import json
import os
import signal
import time

from .lab import Lab
from .ledger import append_row, atomic_write, read_rows, write_results


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def crashpoint(name: str, index: int | None = None) -> None:
    """Tests name a point here (AUTORESEARCH_CRASHPOINT=name or name:index) to get a real kill -9
    exactly there."""
    if os.environ.get("AUTORESEARCH_CRASHPOINT") in (name, f"{name}:{index}"):
        os.kill(os.getpid(), signal.SIGKILL)


def write(lab: Lab, **data) -> None:
    atomic_write(lab.inflight_path, json.dumps(data))


def read(lab: Lab) -> dict:
    try:
        return json.loads(lab.inflight_path.read_text())
    except (OSError, ValueError):
        return {}


def clear(lab: Lab) -> None:
    try:
        os.unlink(lab.inflight_path)
    except FileNotFoundError:
        pass


def note_pid(lab: Lab, pid: int) -> None:
    """Remember the experiment's process group, so a resume can end an orphaned run."""
    note = read(lab)
    if not note:
        return
    write(lab, **{**note, "pid": pid})
    crashpoint(f"during_{note.get('role', 'experiment')}", note.get("index"))


def runs_in(pid: int, root) -> bool:
    """True when process `pid` still exists and works in `root` (not a reused pid)."""
    try:
        return os.path.realpath(os.readlink(f"/proc/{pid}/cwd")) == os.path.realpath(root)
    except OSError:
        return False


def recover(lab: Lab, agent_name: str) -> None:
    """Make the lab consistent after a crash, a kill -9 or a kernel restart."""
    if not lab.inflight_path.exists():
        return
    note = read(lab)
    pid = note.get("pid")
    if pid and runs_in(pid, lab.root):  # an orphaned experiment must not keep running
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass
    rows = read_rows(lab.ledger_path)
    index = note.get("index", len(rows))
    done = next((r for r in rows if r.get("index") == index), None)
    if done is not None:  # the row made it to the ledger; only the cleanup was cut short
        target = done["commit"] if done.get("status") == "keep" and done.get("commit") else note.get("parent")
    else:
        target = note.get("parent")
        kept = [r for r in rows if r.get("status") == "keep"]
        append_row(lab.ledger_path, {
            "index": index, "status": "interrupted", "kind": "interrupted", "role": note.get("role", "experiment"),
            "reason": f"the process stopped during {note.get('phase', 'the experiment')}",
            "commit": lab.short(note["commit"]) if note.get("commit") else "",
            "parent": lab.short(target) if target else "", "description": note.get("description", ""),
            "started_at": note.get("started_at"), "log": note.get("log"), "val_bpb": None, "score": None,
            "fingerprint": None, "finished_at": now_iso(), "agent": agent_name,
            "best": kept[-1].get("score") if kept else None})
    if target:
        lab.reset(target)
    write_results(lab.results_path, read_rows(lab.ledger_path))
    clear(lab)
