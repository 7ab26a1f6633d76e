"""Reading a finished (or running) lab's record, and the figures the results notebooks show."""
from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from . import facts
from .facts import timestamp  # noqa: F401  (notebooks call analysis.timestamp)
from .errors import LabError
from .ledger import read_results_tsv, read_rows

RECORD_FORMAT = 1
STATUS_ORDER = facts.STATUSES
_TSV_KIND = re.compile(r"\[([a-z_]+)\]\s*$")  # our results.tsv puts the crash kind last: "[oom]"
# how an exported notebook's data cell wraps the record
RECORD_OPEN, RECORD_CLOSE = 'RECORD = analysis.record_from_json(r"""', '""")'
_KIND_WORDS = (("oom", ("oom", "out of memory")), ("timeout", ("timeout", "timed out")),
               ("nan", ("nan", "diverge")), ("syntax", ("syntax",)))


# ---- loading -------------------------------------------------------------------------------

def record_from_json(text: str) -> dict:
    """The record embedded in an exported notebook (a JSON string)."""
    record = json.loads(text)
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise ValueError("this is not an autoresearch-nb results record (format 1)")
    return record


def load(source: str | Path) -> dict:
    """A record from a lab directory, a ledger.jsonl, a bare autoresearch results.tsv or an
    exported results notebook; the same shape the export embeds (see `empty_record`)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise LabError(f"{path} does not exist: give a lab directory, a results.tsv, a "
                       "ledger.jsonl or an exported results notebook")
    if path.is_dir():
        if (path / ".autoresearch").is_dir():
            return lab_record(path)
        if (path / "results.tsv").exists():
            return tsv_record(path / "results.tsv")
        raise LabError(f"{path} has neither .autoresearch/ledger.jsonl nor results.tsv: "
                       "is it a lab? (`autoresearch-nb init` makes one)")
    if path.suffix == ".ipynb":
        return notebook_record(path)
    if path.suffix == ".jsonl":
        record = empty_record(path.stem, "ledger")
        record["rows"] = read_rows(path)
        return record
    return tsv_record(path)


def empty_record(name: str, source: str) -> dict:
    """An empty record: what every loader returns and the export fills in."""
    return {"format": RECORD_FORMAT, "lab": name, "source": source,
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": {}, "run": {}, "charter": "", "rows": [], "inflight": None,
            "diffs": {}, "files": {}, "best_index": None}


def tsv_record(path: Path) -> dict:
    """A bare autoresearch results.tsv: metric val_bpb, lower is better, no timings or costs."""
    record = empty_record(Path(path).parent.name or Path(path).stem, "results.tsv")
    rows = read_results_tsv(Path(path))
    for row in rows:
        if row.get("status") == "crash":
            row["kind"] = crash_kind_from_text(row.get("description", ""))
    record["rows"] = rows
    return record


def lab_record(root: Path) -> dict:
    """What a lab directory says about its run, read defensively (a run may be going on)."""
    root = Path(root)
    state = root / ".autoresearch"
    record = empty_record(root.name, "lab")
    record["rows"] = read_rows(state / "ledger.jsonl")
    record["config"] = read_json(state / "config.json")
    record["run"] = read_json(state / "run.json")
    record["inflight"] = read_json(state / "inflight.json") or None
    charter = root / "program.md"
    record["charter"] = charter.read_text(encoding="utf-8") if charter.exists() else ""
    return record


def notebook_record(path: Path) -> dict:
    """The record embedded in an exported results notebook's data cell."""
    notebook = json.loads(Path(path).read_text(encoding="utf-8"))
    for cell in notebook.get("cells", []):
        source = "".join(cell.get("source", ""))
        if cell.get("cell_type") == "code" and RECORD_OPEN in source:
            start = source.index(RECORD_OPEN) + len(RECORD_OPEN)
            return record_from_json(source[start:source.index(RECORD_CLOSE, start)])
    raise LabError(f"{path} is not an exported results notebook (no embedded record)")


def read_json(path: Path) -> dict:
    """A JSON object from a file, or {} when it is missing, torn or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# ---- figures -------------------------------------------------------------------------------

def metric_of(record: dict) -> tuple[str, str]:
    """(metric name, "lower" or "higher") from the lab config, autoresearch's by default."""
    config = record.get("config") or {}
    return config.get("metric") or "val_bpb", config.get("direction") or "lower"


def value_of(row: dict, metric: str) -> float | None:
    """The row's metric if it is a clean run (crash rows in results.tsv carry 0.000000)."""
    return facts.value(row, metric)


def status_counts(rows: list[dict]) -> dict[str, int]:
    counts = Counter(row.get("status", "?") for row in rows)
    ordered = {status: counts.pop(status, 0) for status in STATUS_ORDER}
    ordered.update(counts)
    return ordered


def baseline_row(rows: list[dict], metric: str = "val_bpb") -> dict | None:
    """Experiment 0's measurement: the row with role baseline, else the first kept one."""
    for row in rows:
        if row.get("role") == "baseline" and value_of(row, metric) is not None:
            return row
    return next((row for row in rows if row.get("status") == "keep"
                 and value_of(row, metric) is not None), None)


def best_row(rows: list[dict], metric: str = "val_bpb", direction: str = "lower") -> dict | None:
    """The row that made the current best (the commit the branch holds); see facts.best_row."""
    return facts.best_row(rows)


def kept_changes(rows: list[dict], metric: str = "val_bpb", direction: str = "lower") -> list[dict]:
    """Each kept change in order: the mean of its code's runs and of its parent's, the gain
    between them with its interval (facts.kept_changes), as plain dicts a notebook can show."""
    changes = []
    for change in facts.kept_changes(rows, metric, direction):
        record = change.record()
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
        if status not in ("crash", "rejected", "interrupted"):
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
    cost, timed = 0.0, 0
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
        cost += float(usage.get("cost_usd") or 0.0)
    return {"timed_rows": timed, **spent, "total_s": total, "by_status": by_status,
            "tokens": tokens, "cost_usd": cost}


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


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def profile_name(profile) -> str:
    """The profile's name whether the record holds the name or the profile's facts."""
    if isinstance(profile, dict):
        return str(profile.get("name") or profile.get("profile") or "")
    return str(profile or "")


def progress_png(record: dict) -> bytes:
    """The dashboard's progress chart (the same function) for this record."""
    from .ui.chart import progress_chart_png

    metric, direction = metric_of(record)
    return progress_chart_png(record.get("rows") or [], metric=metric, direction=direction)


# ---- rendering: report.py, re-exported so notebooks keep calling analysis.<name> ----------------

from .report import (ablation_display, diff_display, experiments_table, kept_table, crash_table,  # noqa: E402,F401
                     number, progress_note, rich, summary_markdown, table_display, time_table)
