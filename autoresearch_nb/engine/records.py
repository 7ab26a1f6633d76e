"""Ledger rows, built here and only here from what the loop knows: a run's result on its track, a
rejected draft, a candidate's final status. (inflight.append gives a row its index; ledger.py writes it.)"""
from __future__ import annotations

from ..run import sandbox
from ..run.disturbance import others_load
from ..judge.facts import CANDIDATE_ROLES, run_duty
from ..lab.ledger import now_iso
from ..run.runner import RunResult

CURVE_POINTS = 60
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


def run_row(track, job: dict, result: RunResult, options, agent, lab, pool, metric: str = "val_bpb") -> dict:
    """The row of one run of a track: who ran it where, the result's numbers, and, on a candidate's first
    run, what its draft cost (the agent's usage and time)."""
    first = not track.rows and not track.values and track.runs <= 1 + track.disturbed_streak and bool(track.first)
    confirming = track.role == "experiment" and track.values
    row = base_row(options, agent, role="confirm" if confirming else track.role, commit=lab.short(track.commit),
                   parent=lab.short(track.parent), seed=job["seed"],
                   description=f"confirm: {track.description}" if confirming else track.description,
                   started_at=job.get("started_at") or now_iso(), finished_at=now_iso(), log=job.get("log"),
                   job=job["id"], worker=job.get("worker"), host=pool.host_of(job["slot"]),
                   device=pool.device(job["slot"]), **track.shared)
    if track.ablates is not None:
        row["ablates"] = track.ablates
    row["sandbox"] = sandbox.probe().name
    row.update(result_fields(result, metric))
    if first:
        row.update({k: v for k, v in track.first.items() if k not in ("timings", "started_at")})
        row["timings"].update(track.first.get("timings", {}))
        row["started_at"] = track.first.get("started_at") or row["started_at"]
        # what the draft cost goes on one row only: a first run slowed from outside is run again as a
        # row of its own, and the sums (cost, tokens, --max-cost) must count the proposal once; that
        # re-run started when it was handed out, not when the draft was begun
        track.first = {k: v for k, v in track.first.items() if k not in ("usage", "timings", "started_at")}
    row["timings"]["run_s"] = round(result.wall_seconds, 3)
    row["timings"]["total_s"] = round(result.wall_seconds + (row["timings"].get("propose_s") or 0.0), 3)
    return row


def rejected_row(options, agent, kind: str, reason: str, description: str = "", parent: str = "", usage=None,
                 propose_s: float = 0.0, rationale: str = "", meta=None, fingerprint=None, started: str = "",
                 fatal: bool = False, exhausted: bool = False) -> dict:
    """The row of a proposal that did not run: refused, a conflict, an agent failure, a draft not run."""
    row = base_row(options, agent, description=description or "(no proposal)",
                   status="rejected" if kind != "interrupted" else "interrupted", kind=kind, reason=reason,
                   usage=usage or {}, rationale=rationale, fingerprint=fingerprint, val_bpb=None,
                   parent=parent, started_at=started or now_iso(), **(meta or {}))
    row["timings"]["propose_s"] = round(propose_s, 3)
    row["timings"]["total_s"] = round(propose_s, 3)
    if fatal:
        row["fatal"] = True
    if exhausted:
        row["exhausted"] = True
    return row


def result_fields(result: RunResult, metric: str = "val_bpb") -> dict:
    """The summary's numbers (or the crash's kind and reason) and the harness's timings."""
    fields = {k: result.summary.get(k) for k in SUMMARY_FIELDS}
    if metric not in fields:
        fields[metric] = result.summary.get(metric)
    fields["memory_gb"] = round((result.summary.get("peak_vram_mb") or 0.0) / 1024, 1)
    if result.summary.get("overflow_steps") is not None:  # float16 runs only: steps loss scaling skipped
        fields["overflow_steps"] = int(result.summary["overflow_steps"])
    curve = [(round(float(s["progress"]), 3), round(float(s["loss"]), 4)) for s in result.steps
             if s.get("progress") is not None and s.get("loss") is not None]
    if curve:  # the loss by share of the budget, for the dashboard to draw a later run against
        fields["curve"] = curve[::max(1, len(curve) // CURVE_POINTS)][:CURVE_POINTS] + curve[-1:]
    if result.ok and result.summary.get("holdout_bpb") is not None:
        fields["holdout_bpb"] = result.summary["holdout_bpb"]
    if not result.ok:
        fields.update(kind=result.kind, reason=result.reason, tail=result.tail[-2000:], **{metric: None})
    if result.timings:
        fields["harness"] = dict(result.timings)  # startup, export, evaluation: the cost of the boundary
    if result.span:
        fields["span"] = dict(result.span)
    if result.ok:
        fields["others_load"] = others_load(result.steps)  # runs are paired by seed only beside like load
    fields["run_wall_s"] = round(result.wall_seconds, 2)
    if run_duty(fields) is not None:
        fields["duty"] = run_duty(fields)
    return fields


def seal(row: dict) -> dict:
    """A row as the ledger keeps it: a candidate's holdout value only if the change was kept. The night
    never selects on the holdout; the values of changes it threw away are dropped unread, so a
    holdout figure always belongs to the baseline, a kept change or a measurement of kept code."""
    if row.get("role") in CANDIDATE_ROLES and row.get("status") != "keep":
        row.pop("holdout_bpb", None)
    return row


def settle(rows: list[dict], decision: str, verdict: dict | None) -> None:
    """A candidate's runs get their final status: the verdict's, or what became of each run."""
    for row in rows:
        if row.get("status") in (None, "keep", "discard"):
            row["status"] = decision
        if verdict is not None and row.get("status") in ("keep", "discard", "interrupted"):
            row["judge"] = verdict
