"""What an agent is shown before proposing: the charter, the code, the history, the journal, the notes."""
from __future__ import annotations

from ..agents.base import Context
from ..lab.lab import Lab


def build_context(lab: Lab, index: int, rows: list[dict], best: dict | None, best_score: float | None,
                  budget: float, profile: dict, seed: int) -> Context:
    config = lab.config
    baseline = next((r for r in rows if r.get("role") == "baseline"), None)
    last_crash = next((r for r in reversed(rows) if r.get("status") == "crash"), None)
    baseline_files = {}
    if baseline and baseline.get("commit"):
        baseline_files = {p: lab.file_at_commit(baseline["commit"], p) for p in config["allowed"]}
    best_diff = ""
    if best and baseline and best.get("commit") and baseline.get("commit"):
        best_diff = lab.diff_commits(baseline["commit"], best["commit"])
    steering = []
    if lab.steering_path.exists():
        steering = [line.strip() for line in lab.steering_path.read_text().splitlines() if line.strip()]
    return Context(
        index=index, charter=lab.charter_path.read_text(encoding="utf-8"),
        files={p: lab.read(p) for p in config["allowed"]}, allowed=list(config["allowed"]),
        # the agent never sees a holdout value: nothing it proposes may be chosen on the holdout
        locked=list(config["locked"]), history=[{k: v for k, v in r.items() if k != "holdout_bpb"} for r in rows],
        best=best_score,
        baseline=baseline.get("val_bpb") if baseline else None, metric=config["metric"],
        direction=config["direction"], profile=dict(profile or {}), budget=budget, best_diff=best_diff,
        last_failure=(last_crash or {}).get("tail", "") or "",
        journal=lab.journal(),
        steering=steering, lab_dir=str(lab.root), seed=seed, baseline_files=baseline_files)
