"""Ablation of the final best: each kept change reverted on its own, measured with repeats.

For every kept change on the branch, the best code with just that change taken out (a `git
revert` of its commit on top of the best, where it reverts cleanly; kept under
refs/ablations/ so every repeat runs the same commit) runs `repeats` times, and the best runs
again as often, interleaved, so both see the same machine. A change's contribution is
mean(best without it) - mean(best) with an interval (facts.ablation_table); one that no longer
stands clear of zero is flagged. The runs are ledger rows (role "ablation", and "remeasure"
for the best), so they survive kill -9 like any other, and a second `ablate` goes on where the
first stopped.
"""
from __future__ import annotations

import time

import git

from . import facts, inflight
from .errors import LabError
from .inflight import now_iso
from .plan import Measurement

DEFAULT_REPEATS = 2


def targets(rows: list[dict]) -> list[dict]:
    """The kept changes the best is made of, oldest first."""
    return [r for r in rows if r.get("status") == "keep" and r.get("role") == "experiment" and r.get("commit")]


def run(loop, repeats: int = DEFAULT_REPEATS) -> str:
    """Measure each kept change's contribution; returns the reason the ablation ended."""
    best = loop.lab.head()
    changes = targets(loop.rows())
    if not changes:
        raise LabError("nothing to ablate: the run has kept no change yet")
    for change in changes:
        while not loop.stop_requested.is_set():
            done = [r for r in loop.rows() if r.get("role") == "ablation" and r.get("ablates") == change["index"]
                    and facts.segment_of(r) == loop.options.segment]
            clean = [r for r in done if facts.value(r, loop.metric) is not None]
            if len(clean) >= repeats or any(r.get("kind") == "no_revert" for r in done):
                break
            loop.measure(Measurement("remeasure", f"the best again, beside the ablation of #{change['index']}"),
                         loop.rows())
            without(loop, best, change)
        if loop.stop_requested.is_set():
            return "stopped"
    return f"ablation done: {len(changes)} kept change(s), {repeats} clean run(s) of each without it"


def without(loop, best: str, change: dict) -> list[dict]:
    """One run of the best without `change` (or a row saying it does not revert cleanly)."""
    lab = loop.lab
    index = len(loop.rows())
    description = f"without #{change['index']}: {change.get('description', '')}"[:200]
    loop._note(index=index, phase="commit", role="ablation", parent=best, started_at=now_iso(),
               description=description)
    commit, problem = ablated_commit(lab, best, change)
    if commit is None:
        row = loop.base_row(index, "ablation", "", best, description, None, now_iso())
        row.update(status="rejected", kind="no_revert", reason=f"does not revert cleanly: {problem}",
                   ablates=change["index"], val_bpb=None, log=None)
        loop.record(row)
        inflight.clear(lab)
        return [row]
    lab.reset(commit)
    pending = loop.runs(index, "ablation", commit, best, description, loop.seed_for(index),
                        step_started=time.monotonic())
    for row in pending:
        row["ablates"] = change["index"]
        if row.get("status") is None:
            row["status"] = "discard"
    lab.reset(best)
    return loop.record_all(pending, False, commit, best)


def ablated_commit(lab, best: str, change: dict) -> tuple[str | None, str]:
    """The best without `change` as a commit whose parent is the best: the one made before for
    this best, else a fresh `git revert`. (None, why) when it does not revert cleanly."""
    ref = f"refs/ablations/{change['index']:04d}"
    try:
        earlier = lab.repo.git.rev_parse("--verify", "-q", ref)
        if lab.repo.git.rev_parse(f"{earlier}^") == best:
            return earlier, ""
    except git.GitCommandError:
        pass
    try:
        lab.repo.git.revert("--no-edit", "--no-commit", change["commit"])
    except git.GitCommandError as error:
        try:
            lab.repo.git.revert("--abort")
        except git.GitCommandError:
            pass
        lab.reset(best)
        lines = [line.strip() for line in str(error.stderr or error).splitlines() if "CONFLICT" in line]
        return None, lines[0] if lines else "later changes are built on it"
    commit = lab.commit(lab.config["allowed"], f"ablation: #{change['index']} reverted ({change.get('description', '')})")
    lab.repo.git.update_ref(ref, commit)
    lab.reset(best)
    return commit, ""
