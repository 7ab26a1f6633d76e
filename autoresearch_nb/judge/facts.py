"""What the ledger's rows mean: baseline, best, value to beat, gains with intervals, counts, pace.

The one home of these facts: the loop, the session, the CLI, the dashboard, the chart, the
export and the analysis notebook all read them from here, so they never disagree.

Rows are grouped by comparison segment (a change of conditions starts a new one; numbers from
different segments are never compared) and, inside a segment, by code (the commit that ran).
A clean run is one that produced the metric and was judged: status keep or discard. A code's
value is the mean of its clean runs in the segment, with an interval (see judge.py). Runs of
two codes with the same seed are paired: a gain is the mean of their differences where the
paired spread is known (judge.Pairing), else the difference of the means.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import datetime

from .judge import Estimate, Noise, Pairing, estimate, estimate_noise, gain, gain_interval
from ..lab.words import CLEAN_STATUSES, RAN_STATUSES, STATUSES  # noqa: F401  (read here by the judge's callers too)

MEASUREMENT_ROLES = ("baseline", "noise", "confirm", "remeasure", "ablation", "transfer")
CANDIDATE_ROLES = ("experiment", "confirm")
LOAD_TOLERANCE = 0.5      # cores: a busy neighbour (one core) moves values by more than a paired spread
MIN_PACE_SECONDS = 60.0   # under a minute of history a rate is noise, not a pace


def value(row: dict, metric: str = "val_bpb") -> float | None:
    """The row's metric if it is a clean run (crash rows in results.tsv carry 0.000000)."""
    if row.get("status") not in CLEAN_STATUSES:
        return None
    raw = row.get(metric)
    try:
        number = float(raw)
    except (TypeError, ValueError):
        return None
    return number if number == number and number != 0.0 else None


def segment_of(row: dict) -> int:
    return int(row.get("segment") or 0)


def current_segment(rows: list[dict]) -> int:
    return max((segment_of(r) for r in rows), default=0)


def code_of(row: dict) -> str:
    """What identifies the code a row ran: its allowed files' id (lab.code_id; a charter commit does not
    change it), else its commit; a row with neither is code of its own."""
    return str(row.get("code") or row.get("commit") or f"row@{id(row)}")


def code_runs(rows: list[dict], segment: int, metric: str = "val_bpb") -> dict[str, list[float]]:
    """Clean values of each code in a segment, in order."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        number = value(row, metric)
        if number is not None and segment_of(row) == segment:
            groups.setdefault(code_of(row), []).append(number)
    return groups


def noise(rows: list[dict], segment: int | None = None, metric: str = "val_bpb",
          pending: list[float] | None = None) -> Noise:
    """The single-run spread of identical code in a segment (the current one by default);
    `pending`: the runs of a candidate still being judged, not yet in the ledger."""
    segment = current_segment(rows) if segment is None else segment
    groups = list(code_runs(rows, segment, metric).values()) + ([pending] if pending else [])
    scale = groups[0][0] if groups else None  # the floor is relative to the metric's size
    return estimate_noise(groups, scale)


def one_run_half_width(rows: list[dict], segment: int, metric: str = "val_bpb") -> float | None:
    """The 95% half-width of a single run's value in a segment: what one measurement is worth there
    (None while no code has run twice)."""
    found = estimate([0.0], noise(rows, segment, metric))
    return found.half_width if found else None


def seeded_runs(rows: list[dict], segment: int, metric: str = "val_bpb") -> dict[str, dict[int, list[tuple]]]:
    """Clean runs of each code in a segment by the seed each ran with: (value, the cores other
    processes used meanwhile, or None where that was not sampled)."""
    groups: dict[str, dict[int, list[tuple]]] = {}
    for row in rows:
        number = value(row, metric)
        if number is not None and segment_of(row) == segment and isinstance(row.get("seed"), int):
            groups.setdefault(code_of(row), {}).setdefault(row["seed"], []).append((number, row.get("others_load")))
    return groups


def differences(mine: dict[int, list[tuple]], theirs: dict[int, list[tuple]], direction: str = "lower") -> list[float]:
    """Gains of one code over another at each seed both ran beside about the same load from other
    processes (within LOAD_TOLERANCE cores), in seed order (positive: better)."""
    found = []
    for seed in sorted(mine):
        if seed not in theirs:
            continue
        loads = [load for _, load in mine[seed] + theirs[seed] if load is not None]
        if loads and max(loads) - min(loads) > LOAD_TOLERANCE:
            continue
        found.append(gain(statistics.fmean(v for v, _ in mine[seed]), statistics.fmean(v for v, _ in theirs[seed]),
                          direction))
    return found


def paired_noise(rows: list[dict], segment: int, metric: str = "val_bpb", runs: dict | None = None) -> Noise:
    """The spread of one paired difference in a segment: from every code proposed against a parent
    that ran two or more seeds the parent also ran (`runs`: seeded_runs of the rows, if at hand)."""
    runs = seeded_runs(rows, segment, metric) if runs is None else runs
    parents: dict[str, str] = {}
    for row in rows:
        if row.get("role") in CANDIDATE_ROLES and segment_of(row) == segment and row.get("parent_code"):
            parents.setdefault(code_of(row), str(row["parent_code"]))
    groups = [differences(runs.get(code, {}), runs.get(parent, {})) for code, parent in parents.items() if code != parent]
    scale = next((v for r in rows if segment_of(r) == segment and (v := value(r, metric)) is not None), None)
    return estimate_noise(groups, scale)


def pairing(rows: list[dict], segment: int, mine: dict[int, list[tuple]], against: str, metric: str = "val_bpb",
            direction: str = "lower", runs: dict | None = None) -> Pairing:
    """Runs by seed (`mine`: seed -> [(value, load)]) set against code `against`'s runs of the same seeds."""
    runs = seeded_runs(rows, segment, metric) if runs is None else runs
    # the candidate's own differences stay out of the spread they are checked against
    return Pairing(tuple(differences(mine, runs.get(against, {}), direction)), paired_noise(rows, segment, metric, runs))


def best_row(rows: list[dict]) -> dict | None:
    """The row that made the current best: the last kept baseline or change (the branch's head)."""
    return next((r for r in reversed(rows) if r.get("status") == "keep"
                 and r.get("role", "experiment") in ("baseline", "experiment")), None)


def code_value(rows: list[dict], code: str, segment: int | None = None, metric: str = "val_bpb",
               upto: int | None = None) -> Estimate | None:
    """A code's value in a segment: the mean of its clean runs (rows before `upto` only)."""
    segment = current_segment(rows) if segment is None else segment
    shown = rows if upto is None else [r for r in rows if (r.get("index") or 0) < upto]
    values = code_runs(shown, segment, metric).get(code, [])
    return estimate(values, noise(shown, segment, metric))


def value_to_beat(rows: list[dict], metric: str = "val_bpb") -> Estimate | None:
    """The current best code's value in the current segment (None until it has a clean run)."""
    best = best_row(rows)
    if best is None:
        return None
    return code_value(rows, code_of(best), None, metric)


def baseline(rows: list[dict], segment: int | None = None, metric: str = "val_bpb") -> Estimate | None:
    """The value of the code a segment started from (experiment 0's code for the first one)."""
    segment = current_segment(rows) if segment is None else segment
    first = next((r for r in rows if segment_of(r) == segment and value(r, metric) is not None
                  and r.get("role", "baseline") == "baseline"), None)
    if first is None:
        first = next((r for r in rows if segment_of(r) == segment and value(r, metric) is not None), None)
    return code_value(rows, code_of(first), segment, metric) if first else None


def segment_starts(rows: list[dict]) -> list[dict]:
    """Where each segment starts: {segment, index, conditions, reason}."""
    starts, seen = [], set()
    for row in rows:
        segment = segment_of(row)
        if segment not in seen and segment >= 0:  # below 0: the transfer ladder's scales (ladder.py)
            seen.add(segment)
            starts.append({"segment": segment, "index": row.get("index"),
                           "conditions": row.get("conditions") or {}, "reason": row.get("segment_reason", "")})
    return starts


@dataclass
class Change:
    """A kept change: its value and its parent's, both in the segment it was judged in."""

    index: int
    description: str
    rationale: str
    commit: str
    parent: str
    segment: int
    value: Estimate
    before: Estimate | None
    gain: float | None
    half_width: float | None
    verdict: dict

    @property
    def holds(self) -> bool | None:
        """Does the gain's interval stand clear of zero (None: unknown noise)?"""
        if self.gain is None or self.half_width is None:
            return None
        return self.gain - self.half_width > 0

    def record(self) -> dict:
        return {"index": self.index, "description": self.description, "rationale": self.rationale,
                "commit": self.commit, "parent": self.parent, "segment": self.segment,
                "value": self.value.record(), "before": self.before.record() if self.before else None,
                "gain": None if self.gain is None else round(self.gain, 6),
                "half_width": None if self.half_width is None else round(self.half_width, 6),
                "holds": self.holds, "judge": self.verdict}


def kept_changes(rows: list[dict], metric: str = "val_bpb", direction: str = "lower") -> list[Change]:
    """Each kept change in order, its gain over its parent's code: paired by seed where it can be,
    else the difference of the means."""
    changes = []
    first = next((r for r in rows if value(r, metric) is not None), None)
    for position, row in enumerate(rows):
        if row.get("status") != "keep" or value(row, metric) is None:
            continue
        if row.get("role", "baseline" if row is first else "experiment") != "experiment":
            continue  # the baseline and re-runs of judged code are measurements, not changes
        segment = segment_of(row)
        groups = code_runs(rows, segment, metric)
        mine = groups.get(code_of(row), [])
        parent = _parent_code(rows, position)
        theirs = groups.get(parent, []) if parent else []
        spread = noise(rows, segment, metric)
        gain = half = None
        if theirs:
            by_seed = seeded_runs(rows, segment, metric)
            paired = pairing(rows, segment, by_seed.get(code_of(row), {}), parent, metric, direction, runs=by_seed)
            gain, half = gain_interval(mine, theirs, spread, direction, paired)
        changes.append(Change(row.get("index", position), row.get("description", ""), row.get("rationale", ""),
                              code_of(row), parent or "", segment, estimate(mine, spread),
                              estimate(theirs, spread), gain, half, row.get("judge") or {}))
    return changes


def _parent_code(rows: list[dict], position: int) -> str | None:
    """The code a change was judged against: its recorded parent, else the best before it."""
    row = rows[position]
    if row.get("parent_code") or row.get("parent"):
        return str(row.get("parent_code") or row["parent"])
    before = best_row(rows[:position])
    return code_of(before) if before else None


def counts(rows: list[dict]) -> dict[str, int]:
    tally = {status: 0 for status in STATUSES}
    for row in rows:
        status = row.get("status", "rejected")
        tally[status] = tally.get(status, 0) + 1
    return tally


def ran(rows: list[dict]) -> int:
    """Rows that used training time."""
    return sum(1 for r in rows if r.get("status") in RAN_STATUSES)


def charged(row: dict) -> bool:
    """Does this row count against --max-experiments? Every run that used training time, except one
    disturbed from outside: that is run again (at most plan.MAX_DISTURBED_RERUNS times), and the
    limit would otherwise end a night on a run it promised to repeat. The transfer ladder's runs are a
    job of their own, at another scale (ladder.py), not the night's experiments."""
    return row.get("status") in RAN_STATUSES and row.get("status") != "disturbed" and row.get("role") != "transfer"


def counted(rows: list[dict]) -> int:
    """Rows --max-experiments counts (see charged)."""
    return sum(1 for r in rows if charged(r))


def timestamp(value) -> float | None:
    """Seconds since the epoch from an ISO string or a number; None if unreadable."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp()  # a naive time is the machine's local time, as the loop writes it


def active_seconds(rows: list[dict], bridge_s: float = 0.0) -> float:
    """Wall time the run was working: the union of its rows' [started, finished] spans, so
    stops between sessions do not count and runs that overlap are not counted twice; gaps between
    spans of at most `bridge_s` count too (idle time inside a session, not a stop)."""
    spans = []
    for row in rows:
        start, end = timestamp(row.get("started_at")), timestamp(row.get("finished_at"))
        if start is not None and end is not None and end >= start:
            spans.append((start, end))
    total, reach = 0.0, None
    for start, end in sorted(spans):
        if reach is not None and reach < start <= reach + bridge_s:
            total += start - reach
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


DUTY_PHASES = ("startup_s", "training_s", "export_s", "evaluate_s", "overlap_s")  # overlap_s: beside the last run's evaluation
NIGHT_GAP_S = 600.0  # a gap between runs longer than this is a stop between sessions, not idle time


def own_wall(row: dict) -> float:
    """A run's wall seconds less those it spent beside the last run's evaluation (`overlap_s`)."""
    return max(1e-9, float(row["run_wall_s"]) - float((row.get("harness") or {}).get("overlap_s") or 0.0))


def run_duty(row: dict) -> float | None:
    """One run's duty cycle: the harness's training seconds over its own wall time; None untimed."""
    training = (row.get("harness") or {}).get("training_s")
    return round(min(1.0, float(training) / own_wall(row)), 3) if training and row.get("run_wall_s") else None


def duty(rows: list[dict], workers: int = 1) -> dict | None:
    """The duty cycle: training seconds over wall seconds. `per_run` is the median over runs of the
    harness's training time over the run's own wall time (less what went on beside the last run's
    evaluation, its `overlap_s`); `night` is all training over the workers' wall
    time while the night was active (active_seconds with gaps up to NIGHT_GAP_S bridged, x workers), so
    time between runs (a worker waiting for a draft, judging, git) counts against it too. `phases` splits the night's worker-seconds: start-up
    (imports, data, model, compile), training, export, evaluation, between runs. On the cpu clock the
    harness times start-up and training in CPU seconds over the cores, so there the figure is an estimate;
    on a GPU (the wall clock) it is exact. None before a run has the harness's timings."""
    research = [r for r in rows if segment_of(r) >= 0]
    timed = [r for r in research if (r.get("harness") or {}).get("training_s") and r.get("run_wall_s")]
    if not timed:
        return None
    wall = active_seconds(research, NIGHT_GAP_S) * max(1, int(workers or 1))
    phases = {phase: sum(float(r["harness"].get(phase) or 0.0) for r in timed) for phase in DUTY_PHASES}
    phases["between_s"] = max(0.0, wall - sum(own_wall(r) for r in timed))
    per_run = statistics.median(run_duty(r) for r in timed)
    return {"per_run": per_run, "night": min(1.0, phases["training_s"] / wall) if wall else None,
            "phases": phases, "a_run": {name: seconds / len(timed) for name, seconds in phases.items()},
            "runs": len(timed), "wall_s": wall,
            "estimate": any((r.get("conditions") or {}).get("clock") == "cpu" for r in timed)}


def pace(rows: list[dict], max_experiments: int | None = None) -> tuple[float | None, float | None]:
    """(runs per hour, seconds left until --max-experiments) from the active time."""
    done, working = ran(rows), active_seconds(rows)
    if working < MIN_PACE_SECONDS or not done:
        return None, None
    per_hour = done * 3600.0 / working
    left = max_experiments - counted(rows) if max_experiments else 0
    eta = left * 3600.0 / per_hour if left > 0 else None
    return per_hour, eta


def running_best(rows: list[dict], metric: str = "val_bpb") -> list[tuple[int, float]]:
    """(index, value to beat) after each row that had one: the chart's running best."""
    return [(index, mean) for index, mean, _ in running_best_band(rows, metric)]


def running_best_band(rows: list[dict], metric: str = "val_bpb") -> list[tuple[int, float, float | None]]:
    """(index, value to beat, its 95% half-width or None) after each research row that ran; the
    transfer ladder's rows (segments below 0) ran at another scale and are not on this line."""
    points, seen = [], []
    for row in rows:
        seen.append(row)
        if row.get("status") not in RAN_STATUSES or segment_of(row) < 0:
            continue
        current = value_to_beat(seen, metric)
        if current is not None:
            points.append((row.get("index"), current.mean, current.half_width))
    return points


def summary(rows: list[dict], info: dict | None = None, metric: str = "val_bpb", direction: str = "lower") -> dict:
    """Every figure a header shows, computed once: counts, baseline, best, gain, pace, cost."""
    info = info or {}
    segment = current_segment(rows)
    start, best = baseline(rows, segment, metric), value_to_beat(rows, metric)
    gain = half = None
    val = summary_gain(rows, metric, direction) if start is not None and best is not None else None
    if val is not None:
        gain, half = val
    per_hour, eta = pace(rows, info.get("max_experiments"))
    cost, on_subscription, unpriced = spent(rows)
    spread = noise(rows, segment, metric)
    starts = segment_starts(rows)
    return {"metric": metric, "direction": direction, "counts": counts(rows), "done": ran(rows), "counted": counted(rows),
            "baseline": start, "best": best, "best_row": best_row(rows), "gain": gain, "gain_half_width": half,
            "gain_pct": 100.0 * gain / start.mean if gain is not None and start and start.mean else None,
            "noise": spread, "segment": segment, "segment_start": starts[-1]["index"] if starts else None,
            "segments": len(starts), "per_hour": per_hour, "eta_s": eta, "cost_usd": cost,
            "subscription_usd": on_subscription, "unpriced": unpriced,
            "max_experiments": info.get("max_experiments"), "max_cost": info.get("max_cost"),
            "changes": sum(1 for r in rows if r.get("status") == "keep" and r.get("role", "experiment") == "experiment"),
            "holdout": holdout(rows, metric, direction, val), "duty": duty(rows, info.get("workers") or 1),
            "now": time.time()}


HOLDOUT = "holdout_bpb"


def holdout(rows: list[dict], metric: str = "val_bpb", direction: str = "lower", val=False) -> dict | None:
    """The night's gain on the sealed holdout beside its gain on val, in the current segment: the
    baseline's and the best's holdout values (their runs' own; only the baseline, kept changes and
    measurements of kept code carry one, records.seal), the gain of the means with the interval of the
    spread between runs of one code on the holdout. `supported` is False when val's gain stands clear
    of zero and the holdout's does not: a night that may have selected on val's noise. None before the
    best differs from the baseline, or where the data has no holdout."""
    segment = current_segment(rows)
    first = next((r for r in rows if segment_of(r) == segment and value(r, metric) is not None
                  and r.get("role", "baseline") == "baseline"), None)
    best = best_row(rows)
    if first is None or best is None or code_of(first) == code_of(best):
        return None
    groups: dict[str, list[float]] = {}
    for row in rows:
        if segment_of(row) == segment and value(row, metric) is not None and row.get(HOLDOUT) is not None:
            groups.setdefault(code_of(row), []).append(float(row[HOLDOUT]))
    base, top = groups.get(code_of(first), []), groups.get(code_of(best), [])
    if not base or not top:
        return None
    spread = estimate_noise(groups.values(), base[0])
    found, half = gain_interval(top, base, spread, direction)
    val = summary_gain(rows, metric, direction) if val is False else val  # summary hands in its own
    val_clear = val is not None and val[1] is not None and val[0] - val[1] > 0
    supported = None if half is None else not (val_clear and found - half <= 0)
    return {"gain": round(found, 6), "half_width": None if half is None else round(half, 6),
            "baseline": estimate(base, spread), "best": estimate(top, spread),
            "val_gain": None if val is None else round(val[0], 6),
            "val_half_width": None if val is None or val[1] is None else round(val[1], 6), "supported": supported}


def summary_gain(rows: list[dict], metric: str = "val_bpb", direction: str = "lower") -> tuple[float, float | None] | None:
    """The night's gain on val in the current segment (best over baseline, as the header shows it)."""
    segment = current_segment(rows)
    groups = code_runs(rows, segment, metric)
    first = next((r for r in rows if segment_of(r) == segment and value(r, metric) is not None
                  and r.get("role", "baseline") == "baseline"), None)
    best = best_row(rows)
    if first is None or best is None or code_of(first) == code_of(best):
        return None  # nothing kept yet in this segment: no gain to claim, not a gain of zero
    base_values, best_values = groups.get(code_of(first), []), groups.get(code_of(best), [])
    if not base_values or not best_values:
        return None
    return gain_interval(best_values, base_values, noise(rows, segment, metric), direction)


def spent(rows: list[dict]) -> tuple[float, float, int]:
    """Dollars billed for the agent (API keys); the list price of what a subscription paid for (Claude
    Code reports it; nobody is billed it); and how many proposals came with no price at all (Codex)."""
    billed = on_subscription = 0.0
    unpriced = 0
    for row in rows:
        usage = row.get("usage") or {}
        billed += float(usage.get("cost_usd") or 0.0)
        if usage.get("billing") == "subscription":
            on_subscription += float(usage.get("list_cost_usd") or 0.0)
        unpriced += usage.get("billing") in ("unpriced", "subscription") and not usage.get("list_cost_usd")
    return billed, on_subscription, unpriced


def ablation_table(rows: list[dict], metric: str = "val_bpb", direction: str = "lower") -> list[dict]:
    """For each kept change with ablation runs in the current segment: the best without it, and
    its contribution now, mean(without) - mean(best) signed so positive means it still helps."""
    segment = current_segment(rows)
    groups = code_runs(rows, segment, metric)
    best = best_row(rows)
    best_values = groups.get(code_of(best), []) if best else []
    spread = noise(rows, segment, metric)
    table = []
    for change in rows:
        if change.get("status") != "keep" or change.get("role") != "experiment":
            continue
        runs = [r for r in rows if r.get("role") == "ablation" and r.get("ablates") == change.get("index")
                and segment_of(r) == segment]
        if not runs:
            continue
        entry = {"index": change.get("index"), "description": change.get("description", ""),
                 "without": None, "contribution": None, "half_width": None, "verdict": ""}
        refused = next((r for r in runs if r.get("kind") == "no_revert"), None)
        values = [v for r in runs if (v := value(r, metric)) is not None]
        if refused is not None:
            entry["verdict"] = refused.get("reason", "does not revert cleanly")
        elif values and best_values:
            by_seed = seeded_runs(rows, segment, metric)
            paired = pairing(rows, segment, by_seed.get(code_of(best), {}), code_of(runs[0]), metric, direction,
                             runs=by_seed)
            contribution, half = gain_interval(best_values, values, spread, direction, paired)
            entry.update(without=estimate(values, spread).record(), contribution=round(contribution, 6),
                         half_width=None if half is None else round(half, 6))
            if half is None:
                entry["verdict"] = "noise unknown"
            elif contribution - half > 0:
                entry["verdict"] = "still helps"
            elif contribution + half < 0:
                entry["verdict"] = "hurts now: the best is better without it"
            else:
                entry["verdict"] = "no longer helps clearly: its contribution is within the noise"
        else:
            entry["verdict"] = "no clean run yet"
        table.append(entry)
    return table
