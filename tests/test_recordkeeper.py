"""The lab's RecordKeeper: the coordinator's writes are its own, anyone else's are found, put back, and never read."""
from __future__ import annotations

import json

import pytest

from autoresearch_nb.lab.lab import Lab, init_lab

FORGED = '{"index": 99, "status": "keep", "val_bpb": 0.1, "role": "experiment"}\n'


@pytest.fixture
def lab(tmp_path) -> Lab:
    made, _ = init_lab(tmp_path / "lab", profile="tiny")
    lab = Lab.open(made.root)
    lab.records.hold()  # what a session does when it takes the lab over
    lab.append_row({"index": 0, "status": "keep", "role": "baseline", "commit": "abc1234", "val_bpb": 2.5})
    lab.write_results(lab.rows())
    return lab


def test_its_own_writes_are_never_taken_for_someone_elses(lab):
    for k in range(1, 20):
        lab.append_row({"index": k, "status": "discard", "role": "experiment", "commit": "abc1234", "val_bpb": 2.6})
        lab.write_results(lab.rows())
        lab.append_journal(f"## {k}\n")
    assert lab.records.foreign() == []
    assert [r["index"] for r in Lab.open(lab.root).rows()] == list(range(20))


def test_a_foreign_row_is_not_read_and_is_put_back(lab):
    with open(lab.ledger_path, "a") as handle:
        handle.write(FORGED)
    assert [r["index"] for r in lab.rows()] == [0], "the coordinator read a row it did not write"
    assert lab.records.foreign() == ["ledger.jsonl"]
    assert FORGED not in lab.ledger_path.read_text()
    assert lab.records.foreign() == []  # reported once


def test_a_write_after_a_foreign_one_puts_it_back_first_and_keeps_every_row(lab):
    lab.results_path.write_text("forged\n")
    with open(lab.ledger_path, "a") as handle:
        handle.write(FORGED)
    lab.append_row({"index": 1, "status": "discard", "role": "experiment", "commit": "def5678", "val_bpb": 2.6})
    lab.write_results(lab.rows())
    rows = [json.loads(line) for line in lab.ledger_path.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1]
    assert lab.results_path.read_text().splitlines()[1:] == ["abc1234\t2.500000\t0.0\tkeep\t",
                                                             "def5678\t2.600000\t0.0\tdiscard\t"]
    assert lab.records.foreign() == ["ledger.jsonl", "results.tsv"]


def test_a_record_deleted_or_created_by_someone_else_is_put_back(lab):
    lab.results_path.unlink()
    lab.inflight_path.write_text("{}")
    assert lab.records.foreign() == ["inflight.json", "results.tsv"]
    assert lab.results_path.exists() and not lab.inflight_path.exists()


def test_only_the_records_go_through_it(lab):
    with pytest.raises(ValueError, match="not one of the lab's records"):
        lab.records.replace(lab.root / "nanochat" / "train.py", b"x = 1\n")


def test_released_it_reads_the_disk_and_blames_no_one(lab):
    lab.records.release()  # the run ended: a CLI beside the notebook may write the lab now
    with open(lab.ledger_path, "a") as handle:
        handle.write(FORGED)
    assert [r["index"] for r in lab.rows()] == [0, 99]
    assert lab.records.foreign() == []
