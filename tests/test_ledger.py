"""The ledger (append-only, fsync'd, torn-tail tolerant) and results.tsv in autoresearch's format."""
from __future__ import annotations

import json

from autoresearch_nb.lab.ledger import RESULTS_HEADER, append_row, read_results_tsv, read_rows, write_results

ROWS = [
    {"index": 0, "commit": "a1b2c3d", "status": "keep", "role": "baseline", "val_bpb": 1.2345678,
     "memory_gb": 44.04, "description": "baseline"},
    {"index": 1, "commit": "b2c3d4e", "status": "discard", "role": "experiment", "val_bpb": 1.25,
     "memory_gb": None, "description": "MATRIX_LR 0.02 -> 0.04"},
    {"index": 2, "commit": "", "status": "rejected", "kind": "audit", "reason": "prints val_bpb",
     "description": "forge the metric"},
    {"index": 3, "commit": "c3d4e5f", "status": "crash", "kind": "oom", "val_bpb": None, "memory_gb": 80.0,
     "description": "double the width\tand\nthe depth"},
    {"index": 4, "commit": "d4e5f6a", "status": "interrupted", "kind": "interrupted", "val_bpb": None,
     "description": "GELU"},
]


def test_rows_round_trip(tmp_path):
    path = tmp_path / ".autoresearch" / "ledger.jsonl"
    for row in ROWS:
        append_row(path, row)
    assert read_rows(path) == ROWS
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_a_missing_ledger_has_no_rows(tmp_path):
    assert read_rows(tmp_path / "ledger.jsonl") == []


def test_a_torn_last_line_is_ignored_and_repaired_on_the_next_append(tmp_path):
    path = tmp_path / "ledger.jsonl"
    append_row(path, ROWS[0])
    append_row(path, ROWS[1])
    with open(path, "ab") as handle:  # what a kill -9 halfway through a write leaves behind
        handle.write(b'{"index": 2, "status": "ke')
    assert read_rows(path) == ROWS[:2]
    append_row(path, ROWS[2])
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == ROWS[:3]
    assert path.read_bytes().endswith(b"\n")


def test_a_ledger_holding_only_a_torn_line_is_repaired(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b'{"index": 0, "sta')
    assert read_rows(path) == []
    append_row(path, ROWS[0])
    assert read_rows(path) == [ROWS[0]]
    assert len(path.read_text().splitlines()) == 1


def test_results_tsv_is_autoresearchs_format(tmp_path):
    path = tmp_path / "results.tsv"
    write_results(path, ROWS)
    lines = path.read_text().split("\n")
    assert lines[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription" == RESULTS_HEADER
    assert lines[1] == "a1b2c3d\t1.234568\t44.0\tkeep\tbaseline"
    assert lines[2] == "b2c3d4e\t1.250000\t0.0\tdiscard\tMATRIX_LR 0.02 -> 0.04"
    # crash rows: 0.000000 and 0.0, status crash; tabs and newlines never split a row
    assert lines[3] == "c3d4e5f\t0.000000\t0.0\tcrash\tdouble the width and the depth [oom]"
    assert lines[4] == "d4e5f6a\t0.000000\t0.0\tcrash\tGELU [interrupted]"
    assert lines[5:] == [""]  # rejected proposals never ran: no row
    assert all(len(line.split("\t")) == 5 for line in lines[:-1])


def test_results_tsv_is_rebuilt_from_the_ledger(tmp_path):
    ledger, results = tmp_path / "ledger.jsonl", tmp_path / "results.tsv"
    for row in ROWS:
        append_row(ledger, row)
    write_results(results, read_rows(ledger))
    first = results.read_text()
    results.unlink()
    write_results(results, read_rows(ledger))
    assert results.read_text() == first
    assert not (tmp_path / "results.tsv.tmp").exists()


def test_results_tsv_reads_back(tmp_path):
    path = tmp_path / "results.tsv"
    write_results(path, ROWS)
    parsed = read_results_tsv(path)
    assert [r["status"] for r in parsed] == ["keep", "discard", "crash", "crash"]
    assert parsed[0]["val_bpb"] == 1.234568 and parsed[0]["commit"] == "a1b2c3d"
    assert [r["index"] for r in parsed] == [0, 1, 2, 3]
