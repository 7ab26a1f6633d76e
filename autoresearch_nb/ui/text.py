"""Plain-text views of a run (terminal IPython, `status`) and the header facts the dashboard shares."""
from __future__ import annotations

from ..judge import facts, ladder
from ..judge.shown import Shown, shown_value, table_facts
from ..lab.words import STATUS_WORDS, STATUSES, cost_text, count, duration, overflow_text, overlap_text, profile_name


def summarize(rows: list[dict], info: dict, metric: str = "val_bpb", direction: str = "lower") -> dict:
    """The header's figures (facts.summary, computed once for every front end) and who runs on what."""
    found = facts.summary(rows, info, metric, direction)
    found.update(agent=info.get("agent_label") or info.get("agent") or "", model=info.get("model"),
                 profile=info.get("profile"), device=info.get("device"), sandbox=info.get("sandbox"))
    return found


def header_lines(found: dict) -> list[str]:
    """Short lines: who runs on what, the tally, the values with their intervals, the pace."""
    who = found["agent"] or "agent"
    if found.get("model"):
        who += f" ({found['model']})"
    profile, device = profile_name(found.get("profile")), str(found.get("device") or "")
    where = f"profile {profile}" if profile else ""
    if device and device != profile:
        where = f"{where} on {device}" if where else device
    if found.get("sandbox"):
        where += f" · sandbox: {found['sandbox']}"
    counts = found["counts"]
    tally = ", ".join(f"{counts[s]} {STATUS_WORDS[s]}" for s in STATUSES
                      if counts.get(s) or s in ("keep", "discard", "crash"))
    ran = f"{found['done']}"
    if found.get("max_experiments"):  # disturbed runs are run again and not charged to the limit
        ran = (f"{found['done']}/{found['max_experiments']}" if found["counted"] == found["done"]
               else f"{found['done']} ({found['counted']}/{found['max_experiments']} counted)")
    lines = [f"{who}" + (f" · {where}" if where else ""),
             f"{ran} run{'' if found['done'] == 1 else 's'}, {count(found['changes'], 'change')} kept: {tally}"]
    metric, best, base = found["metric"], found["best"], found["baseline"]
    if best is None:
        lines.append(f"best {metric}: -")
    else:
        line = f"best {metric} {best.text()}"
        if found["gain"] is not None and base is not None:
            spread = f" ± {found['gain_half_width']:.4f}" if found.get("gain_half_width") is not None else ""
            pct = f", {found['gain_pct']:+.2f}%" if found["gain_pct"] is not None else ""
            line += f" · gain {found['gain']:+.4f}{spread}{pct} over baseline {base.text()}"
        elif not found["changes"]:
            line += " (the baseline: no change kept yet)"
        lines.append(line)
    sealed = found.get("holdout")
    if sealed:
        spread = f" ± {sealed['half_width']:.4f}" if sealed["half_width"] is not None else ""
        line = (f"holdout (sealed, never selected on): gain {sealed['gain']:+.4f}{spread}, best "
                f"{sealed['best'].text()} against baseline {sealed['baseline'].text()}")
        if sealed["supported"] is False:
            line += " · ⚠ the holdout does not support the val gain: the night may have selected on noise"
        lines.append(line)
    busy = found.get("duty")
    if busy and busy["night"] is not None:
        each = busy["a_run"]
        overlapped = overlap_text(each["overlap_s"])
        lines.append(f"duty cycle{' (cpu clock: an estimate)' if busy['estimate'] else ''}: training {busy['per_run']:.0%} of a run's wall time, {busy['night']:.0%} of the "
                     f"night's · a run: start-up {each['startup_s']:.1f}s{overlapped}, training {each['training_s']:.1f}s, "
                     f"export {each['export_s']:.1f}s, evaluation {each['evaluate_s']:.1f}s, "
                     f"then {each['between_s']:.1f}s between runs")
    pace = []
    noise = found.get("noise")
    if noise is not None and noise.usable is not None:
        pace.append(f"noise σ {noise.usable:.4f} ({noise.pairs} pairs)")
    if found["per_hour"] is not None:
        pace.append(f"{found['per_hour']:.1f} runs/h")
    pace.append(f"cost {cost_text(found['cost_usd'], found.get('subscription_usd') or 0.0, found.get('unpriced') or 0)}")
    if found["eta_s"] is not None:
        pace.append(f"ETA {duration(found['eta_s'], compact=True)}")
    if found.get("segments", 1) > 1:
        pace.append(f"segment {found['segment']} since #{found['segment_start']} (earlier numbers not compared)")
    lines.append(" · ".join(pace))
    return lines


def row_cells(row: dict, metric: str = "val_bpb") -> tuple[str, str, str, str]:
    """(number, status, metric, description) as one experiment's view shows them; a disturbed run
    shows its number, which was not judged."""
    return (str(row.get("index", "?")), status_cell(row), value_text(row, shown_value(row, metric)),
            " ".join(str(row.get("description", "")).split()))


def status_cell(row: dict) -> str:
    status = row.get("status", "?")
    if status in ("crash", "rejected") and row.get("kind"):
        return f"{status}:{row['kind']}"
    if row.get("role") not in (None, "experiment") and status in ("keep", "discard"):
        return f"{status}:{row['role']}"
    return status


def value_text(row: dict, value: float | None, half_width: float | None = None) -> str:
    """A row's value (± what one run is worth, where known), with its holdout where it has one (the
    baseline, kept code: records.seal)."""
    if value is None:
        return "-"
    text = f"{value:.6f}" + ("" if half_width is None else f" ±{half_width:.4f}")
    return text if row.get("holdout_bpb") is None else f"{text} (holdout {float(row['holdout_bpb']):.4f})"


def table_line(row: dict, seen: Shown, width: int = 100) -> str:
    """One row of the table: number, status, change against the best before it, value ± what one run
    is worth (judge/shown.py), description. The value column goes last but one: a holdout lengthens it."""
    delta = "" if seen.delta is None else f"{seen.delta:+.4f}"
    line = (f"{row.get('index', '?'):>4}  {status_cell(row):<18} {delta:>8}  "
            f"{value_text(row, seen.value, seen.half_width):<16}  "
            f"{' '.join(str(row.get('description', '')).split())}")
    return line if len(line) <= width else line[: width - 1] + "…"


def table_lines(rows: list[dict], metric: str = "val_bpb", limit: int | None = 20) -> list[str]:
    """The experiments, latest first."""
    latest = list(zip(reversed(rows), reversed(table_facts(rows, metric))))
    shown = latest if limit is None else latest[:limit]
    lines = [f"{'#':>4}  {'status':<18} {'vs best':>8}  {metric + ' ± 95%':<16}  description"]
    starts = {start["index"]: start for start in facts.segment_starts(rows) if start["segment"]}
    for row, seen in shown:
        lines.append(table_line(row, seen))
        if row.get("index") in starts:  # latest first: a segment's start line goes below its first row
            start = starts[row["index"]]
            lines.append(f"  ── segment {start['segment']} starts (conditions changed: "
                         f"{start['reason'] or 'see the rows'}); earlier numbers are not compared ──")
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
    worker = str(current.get("worker") or "").split(" ")[0]
    return f"now: {worker + ' ' if worker else ''}{description} — {progress:.0%}{loss}"


def lane_lines(snapshot: dict) -> list[str]:
    """What each worker runs now, and what waits: one line each (the current one alone for one worker)."""
    lanes = snapshot.get("lanes") or {}
    lines = [current_line(lane) for _, lane in sorted(lanes.items())] if len(lanes) > 1 else \
        [current_line(snapshot.get("current"))]
    queue = snapshot.get("queue") or {}
    waiting = [f"{len(queue['waiting'])} waiting for a worker"] if queue.get("waiting") else []
    if queue.get("drafts"):
        waiting.append(f"{queue['drafts']} drafted")
    if queue.get("parked"):
        waiting.append(f"{queue['parked']} judged once the best is measured")
    if waiting:
        lines.append("queue: " + ", ".join(waiting))
    return lines


def status_text(snapshot: dict, metric: str = "val_bpb", direction: str = "lower",
                limit: int = 20) -> str:
    """The whole run as text: header, state, current experiment, table."""
    header = snapshot.get("header") or {}
    rows = snapshot.get("rows") or []
    lines = header_lines(summarize(rows, header, metric, direction))
    if header.get("lab"):
        tag = f" · run {header['tag']}" if header.get("tag") else ""
        lines.insert(0, f"lab {header['lab']}{tag}")
    state = snapshot.get("state") or "idle"
    message = snapshot.get("message") or ""
    lines.append(f"state: {state}" + (f" — {message}" if message and message != state else ""))
    if state in ("running", "paused", "stopping"):
        lines += lane_lines(snapshot)
    lines.append("")
    lines += table_lines(rows, metric, limit)
    return "\n".join(lines)


def experiment_text(row: dict, diff: str = "", log_tail: str = "", metric: str = "val_bpb") -> str:
    """One experiment in full: metrics, rationale, its diff, its log tail."""
    number, status, value, description = row_cells(row, metric)
    lines = [f"experiment {number}: {description}",
             f"status {status} · {metric} {value} · role {row.get('role', '-')}"
             f" · commit {str(row.get('commit') or '-')[:10]}"]
    lines += outcome_lines(row)
    measured = [f"{key} {row[key]}" for key in ("training_seconds", "num_steps", "memory_gb",
                                                "num_params_M") if row.get(key) is not None]
    overflow = overflow_text(row.get("overflow_steps"), row.get("num_steps"))  # "" but for float16 runs
    measured += [overflow] if overflow else []
    if measured:
        lines.append(" · ".join(measured))
    if row.get("rationale"):
        lines += ["", "rationale:", str(row["rationale"]).strip()]
    if diff:
        lines += ["", "diff:", diff.rstrip()]
    if log_tail:
        lines += ["", "log tail:", log_tail.rstrip()]
    return "\n".join(lines)


def outcome_lines(row: dict) -> list[str]:
    """Why an experiment ended as it did: the reason given, and the judge's verdict."""
    lines = [f"reason: {row['reason']}"] if row.get("reason") else []
    verdict = verdict_text(row.get("judge"))
    return lines + ([verdict] if verdict else [])


def verdict_text(judge: dict | None) -> str:
    """A verdict as one line: decision, the gain of the means, how clear it was, on what runs."""
    judge = judge or {}
    if not judge.get("decision"):
        return ""
    parts = [f"judge ({judge.get('policy', '?')}): {judge['decision']}"]
    if isinstance(judge.get("gain"), (int, float)):
        parts.append(f"gain {judge['gain']:+.6f}")
    if isinstance(judge.get("z"), (int, float)):
        parts.append(f"{judge['z']:.1f} standard errors (keep at {judge.get('threshold')})")
    paired = judge.get("paired") if isinstance(judge.get("paired"), dict) else None
    if judge.get("runs"):
        against = "the best's runs of the same seeds" if paired else f"{judge.get('against')} of the best"
        parts.append(f"{judge['runs']} run(s) against {against}")
    noise = judge.get("noise") or {}
    if paired and isinstance(paired.get("spread"), (int, float)):
        parts.append(f"paired noise σ_d {paired['spread']:.6f}")
    elif isinstance(noise, dict) and isinstance(noise.get("usable"), (int, float)):
        parts.append(f"noise σ {noise['usable']:.6f}")
    return ", ".join(parts)


def transfer_text(rows: list[dict], metric: str = "val_bpb", direction: str = "lower") -> str:
    """Each transfer ladder (judge/ladder.py) as text; "" when none ran."""
    parts = []
    for scale in ladder.scales(rows):
        found = ladder.table(rows, scale, metric, direction)
        if not found:
            continue
        lines = [f"transfer ladder at {ladder.scale_text(scale)} (its own runs, never compared with the night's)"]
        base, best = found["baseline"], found["best"]
        if base and best:
            gain = "" if found["gain"] is None else f"gain {found['gain']:+.4f}"
            spread = f" ± {found['half_width']:.4f}" if found["half_width"] is not None else ""
            screen = f" (at the screen {found['screen_gain']:+.4f})" if found["screen_gain"] is not None else ""
            lines.append(f"  baseline {base['mean']:.4f} ({base['runs']} runs), best {best['mean']:.4f} "
                         f"({best['runs']} runs): {gain}{spread}{screen}")
        for entry in found["changes"]:
            head = f"  #{entry['index']:<4} {entry['description'][:44]:<44}"
            if entry["contribution"] is None:
                lines.append(f"{head}  {entry['label']}")
                continue
            spread = f" ± {entry['half_width']:.4f}" if entry["half_width"] is not None else ""
            screen = "" if entry["screen"] is None else f", screen {entry['screen']:+.4f} ({entry['screen_source']})"
            lines.append(f"{head}  {entry['contribution']:+.4f}{spread}{screen}  {entry['label']}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def measured_text(rows: list[dict], metric: str = "val_bpb", direction: str = "lower") -> str:
    """What was measured after the night: the ablation and the transfer ladders ("" for neither)."""
    return "\n\n".join(t for t in (ablation_text(rows, metric, direction), transfer_text(rows, metric, direction)) if t)


def ablation_text(rows: list[dict], metric: str = "val_bpb", direction: str = "lower") -> str:
    """The ablation table (facts.ablation_table) as text; "" when there is none."""
    table = facts.ablation_table(rows, metric, direction)
    if not table:
        return ""
    lines = [f"ablation: the best without each kept change (contribution = {metric} without it - "
             "with it, signed so positive means it helps)"]
    for entry in table:
        head = f"  #{entry['index']:<4} {entry['description'][:48]:<48}"
        if entry["contribution"] is None:
            lines.append(f"{head}  {entry['verdict']}")
            continue
        spread = f" ± {entry['half_width']:.4f}" if entry["half_width"] is not None else ""
        lines.append(f"{head}  {entry['contribution']:+.4f}{spread} ({entry['without']['runs']} runs)  {entry['verdict']}")
    return "\n".join(lines)
