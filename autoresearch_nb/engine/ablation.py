"""Ablation of the final best: each kept change reverted on its own, measured with repeats.

For every kept change on the branch, the best code with just that change taken out (its lines
put back on top of the best, where they revert cleanly; kept under refs/ablations/ so every
repeat runs the same commit) runs `repeats` times, and the best runs
again as often, interleaved, so both see the same machine. A change's contribution is
mean(best without it) - mean(best) with an interval (facts.ablation_table); one that no longer
stands clear of zero is flagged. The runs are ledger rows (role "ablation", and "remeasure"
for the best), so they survive kill -9 like any other, and a second `ablate` goes on where the
first stopped.
"""
from __future__ import annotations

import git

from ..judge import facts
from ..errors import LabError
from ..lab.reapply import reapply
from .records import base_row

DEFAULT_REPEATS = 2


def targets(rows: list[dict]) -> list[dict]:
    """The kept changes the best is made of, oldest first."""
    return [r for r in rows if r.get("status") == "keep" and r.get("role") == "experiment" and r.get("commit")]


def run(loop, repeats: int = DEFAULT_REPEATS) -> str:
    """Measure each kept change's contribution on every free worker; returns why the ablation ended."""
    best = loop.lab.head()
    changes = targets(loop.rows())
    if not changes:
        raise LabError("nothing to ablate: the run has kept no change yet")
    for change in changes:
        done = [r for r in loop.rows() if r.get("role") == "ablation" and r.get("ablates") == change["index"]
                and facts.segment_of(r) == loop.options.segment]
        if any(r.get("kind") == "no_revert" for r in done):
            continue
        commit, problem = ablated_commit(loop.lab, best, change)
        if commit is None:
            refuse(loop, best, change, problem)
            continue
        clean = sum(1 for r in done if facts.value(r, loop.metric) is not None)
        for _ in range(max(0, repeats - clean)):  # the best again beside each run without the change
            loop.add_measurement("remeasure", best, f"the best again, beside the ablation of #{change['index']}")
            loop.add_measurement("ablation", commit, f"without #{change['index']}: {change.get('description', '')}"[:200],
                                 ablates=change["index"])
    if loop.drain() == "stopped":
        return "stopped"
    return f"ablation done: {len(changes)} kept change(s), {repeats} clean run(s) of each without it"


def refuse(loop, best: str, change: dict, problem: str) -> None:
    """Record once that a change cannot be taken out of the best on its own."""
    row = base_row(loop.options, loop.agent, role="ablation", parent=loop.lab.short(best),
                   description=f"without #{change['index']}: {change.get('description', '')}"[:200],
                   status="rejected", kind="no_revert", reason=f"does not revert cleanly: {problem}",
                   ablates=change["index"], val_bpb=None)
    loop.record(row)


def ablated_commit(lab, best: str, change: dict) -> tuple[str | None, str]:
    """The best without `change` as a commit whose parent is the best: the one made before for
    this best, else the change's own lines put back (reapply.py: a later change to a
    neighbouring line does not stand in the way; one to the same line does). (None, why) when it
    does not revert cleanly. The branch is back at the best either way."""
    ref = f"refs/ablations/{change['index']:04d}"
    try:
        earlier = lab.repo.git.rev_parse("--verify", "-q", ref)
        if lab.repo.git.rev_parse(f"{earlier}^") == best:
            return earlier, ""
    except git.GitCommandError:
        pass
    without = reapply(lab, change["commit"], {p: lab.file_at_commit(change["parent"], p) for p in lab.config["allowed"]},
                      best)
    if without is None:
        return None, "later changes rewrote the same lines"
    lab.write_files(without)
    commit = lab.commit(lab.config["allowed"], f"ablation: #{change['index']} reverted ({change.get('description', '')})")
    lab.repo.git.update_ref(ref, commit)
    lab.reset(best)
    return commit, ""
