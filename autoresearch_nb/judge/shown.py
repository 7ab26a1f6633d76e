"""What every table shows of a run, decided once for the terminal, the dashboard, the chart and the export.

A run's shown value is its metric when it was judged (keep or discard), and also when it was
disturbed from outside: that number is shown (marked disturbed) but never judged, so it gets no
change against the best. Beside a value, what one run is worth in its segment (the 95% half-width
of a single run, facts.one_run_half_width) and its change against the best before it in the same
segment. The transfer ladder's runs (segments below 0) ran at another scale: they get no change
against the night's best.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import facts


@dataclass(frozen=True)
class Shown:
    """One row's figures as every table shows them."""

    value: float | None       # None: the run gave no number (crash, rejected, interrupted)
    half_width: float | None  # None until some code in its segment has run twice
    delta: float | None       # value minus the best before it in its segment; None where there is none


def shown_value(row: dict, metric: str = "val_bpb") -> float | None:
    """The number a table shows for a row: a judged run's metric, or a disturbed run's own."""
    value = facts.value(row, metric)
    if value is None and row.get("status") == "disturbed" and isinstance(row.get(metric), (int, float)):
        value = float(row[metric])
    return value


def table_facts(rows: list[dict], metric: str = "val_bpb") -> list[Shown]:
    """Each row's Shown, in the rows' order (by position: a record handed in may lack or repeat numbers)."""
    best_after = dict(facts.running_best(rows, metric))
    best_in: dict[int, float] = {}
    half_widths: dict[int, float | None] = {}
    found = []
    for row in rows:
        segment = facts.segment_of(row)
        if segment not in half_widths:
            half_widths[segment] = facts.one_run_half_width(rows, segment, metric)
        value = shown_value(row, metric)
        best = best_in.get(segment) if segment >= 0 and row.get("status") != "disturbed" else None
        found.append(Shown(value, half_widths[segment] if value is not None else None,
                           None if value is None or best is None else value - best))
        if segment >= 0 and row.get("index") is not None and row["index"] in best_after:
            best_in[segment] = best_after[row["index"]]
    return found
