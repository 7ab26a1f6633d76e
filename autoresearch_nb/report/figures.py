"""Figures of a record's rows, computed the same for every table, chart and front end that shows them:
the metric's name, counts by status, the baseline, the kept changes with their gains, crashes by kind,
where the time and money went."""
from __future__ import annotations

import re
from collections import Counter

from ..judge import facts
from ..judge.facts import timestamp
from ..lab.words import FAILED_STATUSES, STATUSES

_TSV_KIND = re.compile(r"\[([a-z_]+)\]\s*$")  # our results.tsv puts the crash kind last: "[oom]"
_KIND_WORDS = (("oom", ("oom", "out of memory")), ("timeout", ("timeout", "timed out")),
               ("nan", ("nan", "diverge")), ("syntax", ("syntax",)))


def metric_of(record: dict) -> tuple[str, str]:
    """(metric name, "lower" or "higher") from the lab config, autoresearch's by default."""
    config = record.get("config") or {}
    return config.get("metric") or "val_bpb", config.get("direction") or "lower"


def status_counts(rows: list[dict]) -> dict[str, int]:
    counts = Counter(row.get("status", "?") for row in rows)
    ordered = {status: counts.pop(status, 0) for status in STATUSES}
    ordered.update(counts)
    return ordered


def baseline_row(rows: list[dict], metric: str = "val_bpb") -> dict | None:
    """Experiment 0's measurement: the row with role baseline, else the first kept one."""
    for row in rows:
        if row.get("role") == "baseline" and facts.value(row, metric) is not None:
            return row
    return next((row for row in rows if row.get("status") == "keep"
                 and facts.value(row, metric) is not None), None)


def kept_changes(rows: list[dict], metric: str = "val_bpb", direction: str = "lower") -> list[dict]:
    """Each kept change in order: the mean of its code's runs and of its parent's, the gain
    between them with its interval (facts.kept_changes), as plain dicts a notebook can show."""
    changes = []
    for change in facts.kept_changes(rows, metric, direction):
        record = change.record()
        sealed = [float(r[facts.HOLDOUT]) for r in rows if facts.code_of(r) == change.commit
                  and r.get(facts.HOLDOUT) is not None and facts.segment_of(r) == change.segment]
        record["holdout"] = sum(sealed) / len(sealed) if sealed else None  # the mean of its runs' holdout
        before = record["before"]["mean"] if record["before"] else None
        record.update(value=record["value"]["mean"], value_runs=record["value"]["runs"],
                      value_half_width=record["value"]["half_width"], before=before,
                      before_runs=record["before"]["runs"] if record["before"] else None,
                      gain_pct=None if not change.gain or not before else 100.0 * change.gain / before)
        changes.append(record)
    return changes


def ranked_by_gain(changes: list[dict]) -> list[dict]:
    """Kept changes, biggest gain first (changes with no measurable gain last)."""
    return sorted(changes, key=lambda change: -(change["gain"] if change["gain"] is not None
                                                else float("-inf")))


def crash_kind_from_text(description: str) -> str:
    """A crash's kind from a results.tsv description: ours ends with "[kind]"; autoresearch's
    are free text, so common words are recognised and the rest is "crash"."""
    found = _TSV_KIND.search(description or "")
    if found:
        return found.group(1)
    lowered = (description or "").lower()
    for kind, words in _KIND_WORDS:
        if any(re.search(rf"\b{re.escape(word)}\b", lowered) for word in words):
            return kind
    return "crash"


def crash_kinds(rows: list[dict]) -> list[dict]:
    """Crashes, rejections and interruptions grouped by kind, most frequent first."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        status = row.get("status")
        if status not in FAILED_STATUSES:
            continue
        kind = row.get("kind") or (status if status != "crash"
                                   else crash_kind_from_text(row.get("description", "")))
        groups.setdefault((status, kind), []).append(row)
    summary = [{"status": status, "kind": kind, "count": len(members),
                "indexes": [row.get("index") for row in members],
                "example": members[-1].get("reason") or members[-1].get("description", "")}
               for (status, kind), members in groups.items()]
    return sorted(summary, key=lambda item: (-item["count"], item["status"], item["kind"]))


PHASES = ("propose_s", "run_s", "judge_s")


def row_seconds(row: dict) -> float | None:
    """An experiment's wall time: its recorded total, else finished minus started, else the
    sum of its phases; None when the record has no timings (a bare results.tsv)."""
    timings = row.get("timings") or {}
    if timings.get("total_s") is not None:
        return float(timings["total_s"])
    start, end = timestamp(row.get("started_at")), timestamp(row.get("finished_at"))
    if start is not None and end is not None and end >= start:
        return end - start
    phases = [float(timings[phase]) for phase in PHASES if timings.get(phase) is not None]
    return sum(phases) if phases else None


def time_and_money(rows: list[dict]) -> dict:
    """Where the time and money went: seconds per phase and per status, tokens and dollars."""
    spent = {phase: 0.0 for phase in PHASES}
    total, by_status = 0.0, {}
    tokens = {"input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0,
              "cache_write_tokens": 0}
    timed = 0
    for row in rows:
        timings = row.get("timings") or {}
        for phase in PHASES:
            spent[phase] += float(timings.get(phase) or 0.0)
        seconds = row_seconds(row)
        if seconds is not None:
            timed += 1
            total += seconds
            status = row.get("status", "?")
            by_status[status] = by_status.get(status, 0.0) + seconds
        usage = row.get("usage") or {}
        for name in tokens:
            tokens[name] += int(usage.get(name) or 0)
    cost, on_subscription, unpriced = facts.spent(rows)
    return {"timed_rows": timed, **spent, "total_s": total, "by_status": by_status,
            "tokens": tokens, "cost_usd": cost, "subscription_usd": on_subscription, "unpriced": unpriced}


def wall_time(record: dict) -> float | None:
    """Seconds from the run's start to its last finished row (or to the export while running)."""
    rows = record.get("rows") or []
    start = timestamp((record.get("run") or {}).get("started_at"))
    if start is None and rows:
        start = timestamp(rows[0].get("started_at"))
    ends = [timestamp(row.get("finished_at")) for row in rows]
    ends = [end for end in ends if end is not None]
    if record.get("inflight"):
        ends.append(timestamp(record.get("exported_at")) or 0.0)
    if start is None or not ends:
        return None
    return max(0.0, max(ends) - start)
