"""The transfer ladder's runs: the baseline, the best and the best without each kept change, at a larger
scale (a budget multiple, another depth), `repeats` times each, the r-th run of every code on the r-th
seed so that they pair. The rows (role "transfer") go in the scale's own segment below zero
(judge/ladder.py says why and reads them); a second `transfer` at the same scale goes on where the
first stopped, and the branch ends where it began, at the best.
"""
from __future__ import annotations

from ..errors import LabError
from ..judge import facts, ladder
from .ablation import ablated_commit, targets
from .records import base_row


def run(loop, scale: dict, repeats: int) -> str:
    """Queue what is missing at `scale` and run it on every free worker; returns why it ended."""
    rows = loop.rows()
    changes = targets(rows)
    if not changes:
        raise LabError("nothing to transfer: the run has kept no change yet")
    start = next((r for r in rows if r.get("role") == "baseline" and r.get("commit")), None)
    if start is None:
        raise LabError("nothing to transfer: the run has no baseline row")
    best = loop.lab.head()
    mine = [r for r in rows if r.get("role") == ladder.ROLE and r.get("scale") == scale]
    codes = [("baseline", loop.lab.repo.git.rev_parse(start["commit"]), "the baseline", None),
             ("best", best, "the best", None)]
    for change in changes:
        if any(r.get("ablates") == change["index"] and r.get("kind") == "no_revert" for r in mine):
            continue
        commit, problem = ablated_commit(loop.lab, best, change)
        if commit is None:
            loop.record(base_row(loop.options, loop.agent, role=ladder.ROLE, ladder="without", scale=scale,
                                 parent=loop.lab.short(best), status="rejected", kind="no_revert",
                                 description=f"without #{change['index']}: {change.get('description', '')}"[:200],
                                 reason=f"does not revert cleanly: {problem}", ablates=change["index"], val_bpb=None))
            continue
        codes.append(("without", commit, f"without #{change['index']}: {change.get('description', '')}", change["index"]))
    said = ladder.scale_text(scale)
    for repeat in range(repeats):
        for kind, commit, description, ablates in codes:
            code = loop.lab.code_id(commit)
            seed = loop._run_seed(repeat)
            if any(facts.code_of(r) == code and r.get("seed") == seed and facts.value(r, loop.metric) is not None
                   for r in mine):
                continue  # measured before, at this scale and seed
            loop.add_measurement(ladder.ROLE, commit, f"{said}: {description}"[:200], ablates=ablates, seed=seed,
                                 shared={"ladder": kind, "scale": scale})
    if loop.drain() == "stopped":
        return "stopped"
    return f"transfer done at {said}: the baseline, the best and {len(codes) - 2} kept change(s), {repeats} run(s) each"

