"""The progress chart people recognise: every run a dot, the running best as a step line, kept changes
labelled where a person can read them, also after a hundred runs."""
from __future__ import annotations

import random

from autoresearch_nb.ui.chart import progress_chart_png, progress_figure

PNG = b"\x89PNG\r\n\x1a\n"


def night(runs: int, keep_every: int, seed: int = 0) -> list[dict]:
    """A night of `runs` experiments, one kept in `keep_every`, each a little better than the best."""
    rng = random.Random(seed)
    rows, best = [{"index": 0, "status": "keep", "role": "baseline", "val_bpb": 3.0, "description": "baseline"}], 3.0
    for index in range(1, runs):
        if index % keep_every == 0:
            best -= rng.uniform(0.002, 0.02)
            rows.append({"index": index, "status": "keep", "role": "experiment", "val_bpb": best,
                         "description": f"change {index}: raise MATRIX_LR by a little more than before"})
        else:
            rows.append({"index": index, "status": "discard", "role": "experiment",
                         "val_bpb": best + rng.uniform(0.001, 0.05), "description": f"try {index}"})
    return rows


def labels(figure) -> list:
    axes = figure.axes[0]
    renderer = figure.canvas.get_renderer()
    return [(text.get_text(), text.get_window_extent(renderer)) for text in axes.texts
            if text.get_text().startswith("change ")]


def test_kept_changes_are_labelled_and_no_two_labels_overlap_after_a_hundred_runs():
    figure = progress_figure(night(100, keep_every=3), width=7.0, height=3.2, dpi=80)
    placed = labels(figure)
    assert len(placed) >= 8, "a long night still names a good share of its kept changes"
    for number, (text, box) in enumerate(placed):
        axes = figure.axes[0].bbox
        assert axes.contains(box.x0, box.y0) and axes.contains(box.x1, box.y1), text
        for other_text, other in placed[number + 1:]:
            assert not box.overlaps(other), (text, other_text)
    legend = figure.axes[0].get_legend().get_window_extent(figure.canvas.get_renderer())
    assert not any(box.overlaps(legend) for _, box in placed)
    # those left out are said to be left out, with where to read them
    left_out = 33 - len(placed)
    notes = [text.get_text() for text in figure.axes[0].texts if "left out" in text.get_text()]
    assert left_out == 0 or notes == [f"{left_out} labels left out where they would overlap (the table has them)"
                                      if left_out > 1 else "1 label left out where they would overlap (the table has them)"]


def test_a_short_night_labels_every_kept_change():
    rows = night(8, keep_every=2)
    placed = labels(progress_figure(rows, width=7.0, height=3.2, dpi=80))
    assert sorted(text for text, _ in placed) == sorted(row["description"][:31] + "…" for row in rows
                                                        if row["status"] == "keep" and row["role"] == "experiment")


def test_one_run_has_integer_ticks_and_no_claimed_gain():
    rows = night(1, keep_every=2)
    figure = progress_figure(rows)
    axes = figure.axes[0]
    low, high = axes.get_xlim()
    assert low <= -0.5 and high >= 5.5, "a first point is not a range of -0.04 to 0.04"
    assert all(tick == int(tick) for tick in axes.get_xticks())
    assert axes.get_title() == "1 experiment, 0 changes kept"
    assert progress_chart_png(rows).startswith(PNG)
