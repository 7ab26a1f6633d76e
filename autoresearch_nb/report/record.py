"""A lab's record read back from a lab, a ledger, a results.tsv or an exported notebook: the one shape
the export embeds and every table reads."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from ..errors import LabError
from ..lab.ledger import read_results_tsv, read_rows
from .figures import crash_kind_from_text

RECORD_FORMAT = 1
# how an exported notebook's data cell wraps the record
RECORD_OPEN, RECORD_CLOSE = 'RECORD = analysis.record_from_json(r"""', '""")'


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
