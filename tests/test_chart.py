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
    """(text, box) of each kept change's label: its description, or its number where that did not fit."""
    axes = figure.axes[0]
    renderer = figure.canvas.get_renderer()
    return [(text.get_text(), text.get_window_extent(renderer)) for text in axes.texts
            if text.get_text().startswith(("change ", "#"))]


def test_kept_changes_are_labelled_and_no_two_labels_overlap_after_a_hundred_runs():
    rows = night(100, keep_every=3)
    figure = progress_figure(rows, width=7.0, height=3.2, dpi=80)
    placed = labels(figure)
    described = [text for text, _ in placed if text.startswith("change ")]
    numbered = [text for text, _ in placed if text.startswith("#")]
    assert len(described) >= 8, "a long night still names a good share of its kept changes in words"
    kept = {row["index"] for row in rows if row["status"] == "keep" and row["role"] == "experiment"}
    # the best's biggest step is named in words: on a crowded night the words go to the largest gains first
    values = [(row["index"], row["val_bpb"]) for row in rows if row["status"] == "keep"]
    biggest = max(zip(values, values[1:]), key=lambda pair: pair[0][1] - pair[1][1])[1][0]
    assert any(text.startswith(f"change {biggest}:") for text in described), (biggest, described)
    # every kept change is named in words or by its number, each once
    named = [int(text.split(":")[0].split()[1]) for text in described] + [int(text[1:]) for text in numbered]
    assert sorted(named) == sorted(set(named)) and set(named) <= kept
    for number, (text, box) in enumerate(placed):
        axes = figure.axes[0].bbox
        assert axes.contains(box.x0, box.y0) and axes.contains(box.x1, box.y1), text
        for other_text, other in placed[number + 1:]:
            assert not box.overlaps(other), (text, other_text)
    legend = figure.axes[0].get_legend().get_window_extent(figure.canvas.get_renderer())
    assert not any(box.overlaps(legend) for _, box in placed)
    # the note under the chart says how many are named by number only and how many are left out
    left_out = len(kept) - len(named)
    assert len(named) > len(described) and len(named) >= 0.7 * len(kept), (len(named), len(described), len(kept))
    notes = [text.get_text() for text in figure.axes[0].texts if "the table has them all" in text.get_text()]
    expected = [f"{len(numbered)} changes named by number only"] + (
        [f"{left_out} label{'s' if left_out > 1 else ''} left out where they would overlap"] if left_out else [])
    assert notes == ["; ".join(expected) + " (the table has them all)"], notes


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
