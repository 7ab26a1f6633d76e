"""Plain-text views of a run (terminal IPython, `status`) and the header facts the dashboard shares."""
from __future__ import annotations

import time

from ..analysis import timestamp
from ..ledger import RAN_STATUSES

STATUSES = ("keep", "discard", "crash", "rejected", "interrupted")
STATUS_WORDS = {"keep": "kept", "discard": "discarded", "crash": "crashed",
                "rejected": "rejected", "interrupted": "interrupted"}


def metric_of(row: dict, metric: str = "val_bpb") -> float | None:
    """The row's metric, or None when the experiment produced none (crash, rejected, 0.0)."""
    value = row.get(metric)
    if value is None or row.get("status") not in ("keep", "discard"):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def summarize(rows: list[dict], info: dict, metric: str = "val_bpb", direction: str = "lower",
              now: float | None = None) -> dict:
    """Header facts from the ledger rows and the run_started data: counts, best, gain, pace."""
    now = time.time() if now is None else now
    counts = {status: 0 for status in STATUSES}
    for row in rows:
        if row.get("status") in counts:
            counts[row["status"]] += 1
    baseline = None
    for row in rows:
        if row.get("role") == "baseline" and metric_of(row, metric) is not None:
            baseline = metric_of(row, metric)
            break
    # The loop's own rule: the latest kept row is the best (its score averages any confirm run).
    kept = [row for row in rows if row.get("status") == "keep" and metric_of(row, metric) is not None]
    best_row = kept[-1] if kept else None
    best = float(best_row.get("score") or metric_of(best_row, metric)) if best_row else None
    gain = gain_pct = None
    if best is not None and baseline is not None:
        gain = (baseline - best) if direction == "lower" else (best - baseline)
        gain_pct = 100.0 * gain / baseline if baseline else None
    cost = sum(float((row.get("usage") or {}).get("cost_usd") or 0.0) for row in rows)
    # --max-experiments counts experiments that ran; rejected proposals cost no training time.
    done = sum(1 for row in rows if row.get("status") in RAN_STATUSES)
    working = sum(float((row.get("timings") or {}).get("total_s") or 0.0) for row in rows)
    if not working:
        started_at = timestamp(info.get("started_at"))
        working = (now - started_at) if started_at else 0.0
    # Under a minute of history the rate is noise, not a pace.
    per_hour = done * 3600.0 / working if working >= 60 and done else None
    eta_s = None
    limit = info.get("max_experiments")
    if limit and per_hour and done < int(limit):
        eta_s = (int(limit) - done) * 3600.0 / per_hour
    return {"agent": info.get("agent_label") or info.get("agent") or "",
            "model": info.get("model"), "profile": info.get("profile"),
            "device": info.get("device"), "done": done, "counts": counts,
            "baseline": baseline, "best": best, "best_row": best_row, "gain": gain,
            "gain_pct": gain_pct, "cost_usd": cost, "per_hour": per_hour, "eta_s": eta_s,
            "metric": metric, "direction": direction, "max_experiments": limit,
            "max_cost": info.get("max_cost")}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def _profile_name(profile) -> str:
    if isinstance(profile, dict):
        return str(profile.get("name") or profile.get("profile") or "")
    return str(profile or "")


def header_lines(facts: dict) -> list[str]:
    """Three short lines: who runs on what, the tally, the best result and the pace."""
    who = facts["agent"] or "agent"
    if facts.get("model"):
        who += f" ({facts['model']})"
    profile, device = _profile_name(facts.get("profile")), str(facts.get("device") or "")
    where = f"profile {profile}" if profile else ""
    if device and device != profile:
        where = f"{where} on {device}" if where else device
    counts = facts["counts"]
    tally = ", ".join(f"{counts[s]} {STATUS_WORDS[s]}" for s in STATUSES
                      if counts[s] or s in ("keep", "discard", "crash"))
    of_limit = f"/{facts['max_experiments']}" if facts.get("max_experiments") else ""
    metric = facts["metric"]
    if facts["best"] is None:
        best = f"best {metric}: -"
    else:
        best = f"best {metric} {facts['best']:.6f}"
        if facts["gain"] is not None and facts["baseline"] is not None:
            pct = f", {facts['gain_pct']:+.2f}%" if facts["gain_pct"] is not None else ""
            best += f" (gain {facts['gain']:+.6f}{pct} over baseline {facts['baseline']:.6f})"
    pace = []
    if facts["per_hour"] is not None:
        pace.append(f"{facts['per_hour']:.1f} experiments/h")
    pace.append(f"cost ${facts['cost_usd']:.2f}")
    if facts["eta_s"] is not None:
        pace.append(f"ETA {duration(facts['eta_s'])}")
    return [f"{who}" + (f" · {where}" if where else ""),
            f"{facts['done']}{of_limit} experiments: {tally}",
            f"{best} · " + " · ".join(pace)]


def row_cells(row: dict, metric: str = "val_bpb") -> tuple[str, str, str, str]:
    """(number, status, metric, description) as the table shows them."""
    value = metric_of(row, metric)
    status = row.get("status", "?")
    if status in ("crash", "rejected") and row.get("kind"):
        status = f"{status}:{row['kind']}"
    shown = f"{value:.6f}" if value is not None else "-"
    description = " ".join(str(row.get("description", "")).split())
    return str(row.get("index", "?")), status, shown, description


def table_line(row: dict, metric: str = "val_bpb", width: int = 100) -> str:
    number, status, value, description = row_cells(row, metric)
    line = f"{number:>4}  {status:<18} {value:>10}  {description}"
    return line if len(line) <= width else line[: width - 1] + "…"


def table_lines(rows: list[dict], metric: str = "val_bpb", limit: int | None = 20) -> list[str]:
    """The experiments, latest first."""
    latest = list(reversed(rows))
    shown = latest if limit is None else latest[:limit]
    lines = [f"{'#':>4}  {'status':<18} {metric:>10}  description"]
    lines += [table_line(row, metric) for row in shown]
    if limit is not None and len(latest) > limit:
        lines.append(f"  … {len(latest) - limit} earlier experiments")
    return lines


def current_line(current: dict | None) -> str:
    if not current:
        return "between experiments"
    progress = float(current.get("progress") or 0.0)
    losses = current.get("losses") or []
    loss = f", loss {losses[-1][1]:.4f}" if losses else ""
    description = current.get("description") or "(proposing)"
    return f"now: #{current.get('index', '?')} {description} — {progress:.0%}{loss}"


def status_text(snapshot: dict, metric: str = "val_bpb", direction: str = "lower",
                limit: int = 20) -> str:
    """The whole run as text: header, state, current experiment, table."""
    header = snapshot.get("header") or {}
    rows = snapshot.get("rows") or []
    facts = summarize(rows, header, metric, direction)
    lines = header_lines(facts)
    if header.get("lab"):
        tag = f" · run {header['tag']}" if header.get("tag") else ""
        lines.insert(0, f"lab {header['lab']}{tag}")
    state = snapshot.get("state") or "idle"
    message = snapshot.get("message") or ""
    lines.append(f"state: {state}" + (f" — {message}" if message and message != state else ""))
    if state in ("running", "paused", "stopping"):
        lines.append(current_line(snapshot.get("current")))
    lines.append("")
    lines += table_lines(rows, metric, limit)
    return "\n".join(lines)


def experiment_text(row: dict, diff: str = "", log_tail: str = "", metric: str = "val_bpb") -> str:
    """One experiment in full: metrics, rationale, its diff, its log tail."""
    number, status, value, description = row_cells(row, metric)
    lines = [f"experiment {number}: {description}",
             f"status {status} · {metric} {value} · role {row.get('role', '-')}"
             f" · commit {str(row.get('commit') or '-')[:10]}"]
    if row.get("reason"):
        lines.append(f"reason: {row['reason']}")
    judge = row.get("judge") or {}
    if judge.get("decision"):
        lines.append(f"judge ({judge.get('policy', '?')}): {judge['decision']}"
                     + (f", delta {judge['delta']:+.6f}" if isinstance(judge.get("delta"), (int, float)) else "")
                     + (f", noise {judge['noise']:.6f}" if isinstance(judge.get("noise"), (int, float)) else ""))
    facts = [f"{key} {row[key]}" for key in ("training_seconds", "num_steps", "memory_gb",
                                             "num_params_M") if row.get(key) is not None]
    if facts:
        lines.append(" · ".join(facts))
    if row.get("rationale"):
        lines += ["", "rationale:", str(row["rationale"]).strip()]
    if diff:
        lines += ["", "diff:", diff.rstrip()]
    if log_tail:
        lines += ["", "log tail:", log_tail.rstrip()]
    return "\n".join(lines)
