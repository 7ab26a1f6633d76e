"""Ledger rows made from what the loop knows: a run's result, a track, a rejected draft."""
from __future__ import annotations

from ..run.disturbance import others_load
from ..lab.ledger import now_iso
from ..run.runner import RunResult

SUMMARY_FIELDS = ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                  "total_tokens_M", "num_steps", "num_params_M", "depth")


def base_row(options, agent, **fields) -> dict:
    """What every row says about the run it belongs to (conditions, segment, policy, agent)."""
    row = {"role": "experiment", "commit": "", "parent": "", "description": "", "seed": None,
           "started_at": now_iso(), "kind": None, "reason": None, "rationale": "", "usage": {},
           "diff": {"files": 0, "added": 0, "removed": 0}, "log": None,
           "timings": {"propose_s": 0.0, "run_s": 0.0, "judge_s": 0.0}, "agent": agent.name,
           "model": agent.model, "segment": options.segment, "conditions": options.conditions,
           "policy": options.policy}
    if options.segment_reason:
        row["segment_reason"] = options.segment_reason
    row.update(fields)
    return row


def result_fields(result: RunResult, metric: str = "val_bpb") -> dict:
    """The summary's numbers (or the crash's kind and reason) and the harness's timings."""
    fields = {k: result.summary.get(k) for k in SUMMARY_FIELDS}
    if metric not in fields:
        fields[metric] = result.summary.get(metric)
    fields["memory_gb"] = round((result.summary.get("peak_vram_mb") or 0.0) / 1024, 1)
    if not result.ok:
        fields.update(kind=result.kind, reason=result.reason, tail=result.tail[-2000:], **{metric: None})
    if result.timings:
        fields["harness"] = dict(result.timings)  # startup, export, evaluation: the cost of the boundary
    if result.ok:
        fields["others_load"] = others_load(result.steps)  # runs are paired by seed only beside like load
    return {**fields, "run_wall_s": round(result.wall_seconds, 2)}


def settle(rows: list[dict], decision: str, verdict: dict | None) -> None:
    """A candidate's runs get their final status: the verdict's, or what became of each run."""
    for row in rows:
        if row.get("status") in (None, "keep", "discard"):
            row["status"] = decision
        if verdict is not None and row.get("status") in ("keep", "discard", "interrupted"):
            row["judge"] = verdict
