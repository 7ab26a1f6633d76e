"""The face results notebooks call (`from autoresearch_nb import analysis`): loading a record, its
figures, its tables and its progress chart, gathered from where each is made. Notebooks exported by
earlier versions call these names; they stay."""
from __future__ import annotations

from ..judge import facts
from ..judge.facts import timestamp  # noqa: F401
from ..lab.words import STATUSES as STATUS_ORDER, duration, profile_name  # noqa: F401
from .figures import (PHASES, baseline_row, crash_kind_from_text, crash_kinds, kept_changes,  # noqa: F401
                      metric_of, ranked_by_gain, row_seconds, status_counts, time_and_money, wall_time)
from .record import (RECORD_CLOSE, RECORD_FORMAT, RECORD_OPEN, empty_record, lab_record, load,  # noqa: F401
                     notebook_record, read_json, record_from_json, tsv_record)
from .tables import (ablation_display, crash_table, diff_display, experiments_table, kept_table,  # noqa: F401
                     number, progress_note, rich, summary_markdown, table_display, time_table,
                     transfer_display)


def value_of(row: dict, metric: str) -> float | None:
    """The row's metric if it is a clean run (facts.value)."""
    return facts.value(row, metric)


def best_row(rows: list[dict], *_earlier_arguments) -> dict | None:
    """The row that made the current best: the kept head of the branch (facts.best_row), whatever the
    metric. Notebooks exported before 0.2 pass the metric and direction too; they change nothing."""
    return facts.best_row(rows)


def progress_png(record: dict) -> bytes:
    """The dashboard's progress chart (the same function) for this record."""
    from ..ui.chart import progress_chart_png

    metric, direction = metric_of(record)
    return progress_chart_png(record.get("rows") or [], metric=metric, direction=direction)
