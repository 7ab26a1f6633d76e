"""The ledger (.autoresearch/ledger.jsonl, the source of truth) and results.tsv, rebuilt from it.

One JSON object per run (or rejected proposal), appended with fsync. Fields of a row:
  index, commit, parent, status (keep|discard|crash|rejected|interrupted|disturbed), kind (crash
  kind, disturbed, or rejected: validation|audit|duplicate|agent; else null), reason, role
  (baseline|noise|remeasure|experiment|confirm|ablation), segment (comparison segment),
  conditions (what it was measured under), disturbance (when the step log showed one),
  val_bpb and every other summary field (training_seconds, total_seconds, peak_vram_mb,
  mfu_percent, total_tokens_M, num_steps, num_params_M, depth; overflow_steps on float16 runs only:
  the steps loss scaling skipped), memory_gb,
  description, rationale, agent, model, seed, timings {propose_s, run_s, judge_s, total_s},
  usage {input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd},
  diff {files, added, removed}, log (path relative to the lab), best (best metric after this
  row: the mean of the best code's runs), judge (the verdict: policy, decision, gain, z,
  threshold, runs, against, noise), started_at, finished_at.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .words import RAN_STATUSES


def now_iso() -> str:
    """A row's timestamp: local time to the second, as every started_at and finished_at is written."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")

RESULTS_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription"


def read_rows(path: Path) -> list[dict]:
    """All complete rows; a torn last line (a kill mid-write) is ignored."""
    return parse_rows(path.read_bytes() if path.exists() else b"")


def parse_rows(data: bytes) -> list[dict]:
    """The rows of a ledger's bytes; a torn last line (a kill mid-write) is ignored."""
    rows = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def row_line(row: dict) -> bytes:
    """One row as the ledger holds it: a line of JSON."""
    return (json.dumps(row, sort_keys=True, default=str) + "\n").encode("utf-8")


def append_row(path: Path, row: dict) -> None:
    """Append one row durably to a ledger no session holds (fixtures, tools); a running lab appends
    through its RecordKeeper. A torn tail from an earlier kill is cut off first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _repair_tail(path)
    append_durably(path, row_line(row))


STATE_DIR = ".autoresearch"


def make_folder(path: Path) -> Path:
    """mkdir -p, but never the lab itself: below a lab whose drive went (the folder holding its
    `.autoresearch` gone) this fails rather than begin the lab again on the local disk."""
    path = Path(path)
    state = next((p for p in (path, *path.parents) if p.name == STATE_DIR), None)
    if state is not None and not state.parent.is_dir():
        raise FileNotFoundError(f"{state.parent} is gone: the lab cannot be read any more")
    path.mkdir(parents=True, exist_ok=True)
    return path


def append_durably(path: Path, data: bytes) -> None:
    """Append `data` and fsync before returning: what a kill -9 a moment later still finds. The folder
    must exist: a lab whose drive went fails here, rather than being begun again on the local disk."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _repair_tail(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    raw = path.read_bytes()
    if raw.endswith(b"\n"):
        return
    cut = raw.rfind(b"\n") + 1
    with open(path, "r+b") as handle:
        handle.truncate(cut)
        handle.flush()
        os.fsync(handle.fileno())


def results_line(row: dict) -> str | None:
    """A results.tsv line in autoresearch's format, or None for rows that never ran."""
    status = row.get("status")
    if status not in RAN_STATUSES:
        return None
    description = " ".join(str(row.get("description", "")).split())
    if status == "disturbed" and row.get("val_bpb") is not None:  # autoresearch knows three statuses
        return (f"{row.get('commit', '')}\t{float(row['val_bpb']):.6f}\t{float(row.get('memory_gb') or 0.0):.1f}"
                f"\tdiscard\t{description} [disturbed: run again]")
    if status in ("crash", "interrupted", "disturbed") or row.get("val_bpb") is None:
        kind = row.get("kind") or status
        return f"{row.get('commit', '')}\t0.000000\t0.0\tcrash\t{description} [{kind}]"
    val = row.get("val_bpb")
    memory = row.get("memory_gb") or 0.0
    return f"{row.get('commit', '')}\t{float(val):.6f}\t{float(memory):.1f}\t{status}\t{description}"


def results_text(rows: list[dict]) -> str:
    """results.tsv as the ledger's rows make it."""
    lines = [RESULTS_HEADER] + [line for row in rows if (line := results_line(row))]
    return "\n".join(lines) + "\n"


def write_results(path: Path, rows: list[dict]) -> None:
    """Rewrite results.tsv from the ledger, atomically (fixtures, tools; a running lab writes it
    through its RecordKeeper)."""
    atomic_write(path, results_text(rows))


def atomic_write(path: Path, text: str) -> None:
    replace_durably(path, text.encode("utf-8"))


def replace_durably(path: Path, data: bytes) -> None:
    """Write `path` whole: a temporary file, fsynced, renamed over it (never half-written). Its folder must
    exist (as append_durably's)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_results_tsv(path: Path) -> list[dict]:
    """Parse an autoresearch results.tsv (ours or theirs) into dicts."""
    rows = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines:
        return rows
    header = lines[0].split("\t")
    for index, line in enumerate(lines[1:]):
        if not line.strip():
            continue
        cells = line.split("\t")
        row = dict(zip(header, cells + [""] * (len(header) - len(cells))))
        row["index"] = index
        row["val_bpb"] = float(row.get("val_bpb") or 0.0)
        row["memory_gb"] = float(row.get("memory_gb") or 0.0)
        rows.append(row)
    return rows
