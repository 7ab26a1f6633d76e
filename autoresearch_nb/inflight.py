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
    """Make the lab consistent after a crash, a kill -9 or a kernel restart.

    The note's `pending` rows are runs that finished but were not yet in the ledger. In the
    "record" phase they carry their verdict and are appended as they are; before it, the verdict
    was never made, so their clean runs are recorded as interrupted (their values kept) and the
    run that was going on when the process stopped gets an interrupted row of its own."""
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
    have = {r.get("index") for r in rows}
    final = note.get("phase") == "record"
    for row in note.get("pending") or []:
        if row.get("index") in have:
            continue
        if not final and row.get("status") in (None, "keep", "discard"):
            row = {**row, "status": "interrupted", "kind": "interrupted",
                   "reason": "the process stopped before the verdict on this change"}
        _append(lab, rows, row)
        have.add(row.get("index"))
    index = note.get("index", len(rows))
    if not final and index not in have:
        _append(lab, rows, {
            "index": index, "status": "interrupted", "kind": "interrupted", "role": note.get("role", "experiment"),
            "reason": f"the process stopped during {note.get('phase', 'the experiment')}",
            "commit": lab.short(note["commit"]) if note.get("commit") else "",
            "parent": lab.short(note["parent"]) if note.get("parent") else "",
            "description": note.get("description", ""), "started_at": note.get("started_at"),
            "log": note.get("log"), "val_bpb": None, "fingerprint": None, "finished_at": now_iso(),
            "agent": agent_name, "segment": note.get("segment", 0)})
    target = note.get("commit") if final and note.get("kept") else note.get("parent")
    if target:
        lab.reset(target)
    write_results(lab.results_path, read_rows(lab.ledger_path))
    clear(lab)


def _append(lab: Lab, rows: list[dict], row: dict) -> None:
    from .facts import value_to_beat

    best = value_to_beat(rows + [row])
    row["best"] = round(best.mean, 6) if best else None
    append_row(lab.ledger_path, row)
    rows.append(row)
