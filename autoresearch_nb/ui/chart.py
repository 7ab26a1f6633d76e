"""The progress chart in autoresearch's style, drawn with matplotlib's object API off any thread."""
from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..judge import facts
from ..judge.shown import shown_value
from ..lab.words import STATUS_COLOURS, count
from .png import DRAW_LOCK, figure_png

KEPT, DISCARDED, CRASHED, DISTURBED = (STATUS_COLOURS[s] for s in ("keep", "discard", "crash", "disturbed"))


def progress_points(rows: list[dict], metric: str = "val_bpb", direction: str = "lower"):
    """(index, value, status, description, role) for every run that produced the metric (disturbed ones
    too: shown, not judged), and the running best: the value to beat after each row (facts.py)."""
    points = []
    for position, row in enumerate(rows):
        if facts.segment_of(row) < 0:  # the transfer ladder's runs: another scale, their own table
            continue
        value = shown_value(row, metric)
        if value is None:
            continue
        points.append((row.get("index", position), value, row.get("status"), str(row.get("description", "")),
                       row.get("role", "experiment")))
    return points, facts.running_best_band(rows, metric)


def progress_chart_png(rows: list[dict], metric: str = "val_bpb", direction: str = "lower",
                       width: float = 9.0, height: float = 4.0, dpi: int = 90,
                       title: str | None = None) -> bytes:
    """PNG bytes of the chart (progress_figure)."""
    return figure_png(progress_figure(rows, metric, direction, width, height, dpi, title))


def progress_figure(rows: list[dict], metric: str = "val_bpb", direction: str = "lower",
                    width: float = 9.0, height: float = 4.0, dpi: int = 90, title: str | None = None) -> Figure:
    """The chart, laid out: discarded grey, kept green, disturbed hollow orange, the value to beat as a
    step line with its interval, kept changes labelled where they fit, crashes as red ticks, segments dashed."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    points, best_line = progress_points(rows, metric, direction)
    discarded = [(x, y) for x, y, s, _, _ in points if s == "discard"]
    disturbed = [(x, y) for x, y, s, _, _ in points if s == "disturbed"]
    kept = [(x, y, d if r == "experiment" else "") for x, y, s, d, r in points if s == "keep"]
    if discarded:
        ax.scatter(*zip(*discarded), s=18, color=DISCARDED, label="discarded", zorder=2)
    if disturbed:
        ax.scatter(*zip(*disturbed), s=22, facecolors="none", edgecolors=DISTURBED,
                   label="disturbed (run again)", zorder=2)
    if kept:
        ax.scatter([x for x, _, _ in kept], [y for _, y, _ in kept], s=30, color=KEPT,
                   label="kept", zorder=3)
    # the largest gains (facts.kept_changes: each against its parent, in its segment) are named first:
    # on a crowded night they get the words
    gains = {change.index: change.gain or 0.0 for change in facts.kept_changes(rows, metric, direction)}
    labelled = sorted(((x, y, d) for x, y, d in kept if d), key=lambda label: -gains.get(label[0], 0.0))
    if best_line:
        xs, ys, halves = zip(*best_line)
        ax.step(xs, ys, where="post", color=KEPT, linewidth=1.5, label="best (mean of its runs)", zorder=1)
        if any(h is not None for h in halves):  # from the first row whose noise is known
            nan = float("nan")
            ax.fill_between(xs, [nan if h is None else y - h for y, h in zip(ys, halves)],
                            [nan if h is None else y + h for y, h in zip(ys, halves)],
                            step="post", color=KEPT, alpha=0.12, linewidth=0, label="its 95% interval", zorder=0)
    for start in facts.segment_starts(rows)[1:]:
        ax.axvline(start["index"] - 0.5, color="#8250df", linestyle="--", linewidth=1)
        ax.annotate(f"segment {start['segment']}", (start["index"] - 0.5, 1.0), xycoords=("data", "axes fraction"),
                    fontsize=7, color="#8250df", xytext=(2, -10), textcoords="offset points")
    crashes = [row.get("index", i) for i, row in enumerate(rows)
               if row.get("status") in ("crash", "interrupted") and facts.segment_of(row) >= 0]
    if crashes:
        ax.plot(crashes, [0] * len(crashes), linestyle="none", marker="|", markersize=10,
                color=CRASHED, label="crashed", transform=ax.get_xaxis_transform(), clip_on=False)
    ax.set_xlabel("experiment")
    ax.set_ylabel(f"{metric} ({direction} is better)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    last = max([x for x, *_ in points] + crashes + [0])
    ax.set_xlim(-0.5, max(last, 5) + 0.5)  # a first point is not a range of -0.04 to 0.04
    changes = sum(1 for _, _, d in kept if d)
    runs = sum(1 for r in rows if facts.segment_of(r) >= 0)
    ax.set_title(title or f"{count(runs, 'experiment')}, {count(changes, 'change kept')}",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    if points:
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=ax.transAxes,
                color="#777777")
    with DRAW_LOCK:  # laying labels out measures text with matplotlib's shared fonts
        fig.tight_layout()
        shortened, left_out = place_labels(ax, labelled)
    notes = ([f"{count(shortened, 'change')} named by number only"] if shortened else []) + \
        ([f"{count(left_out, 'label')} left out where they would overlap"] if left_out else [])
    if notes:
        ax.annotate("; ".join(notes) + " (the table has them all)", (0.0, 0.0), xycoords="figure fraction",
                    xytext=(4, 3), textcoords="offset points", fontsize=7, color="#777777")
    return fig


# where a kept change's label may go, tried in order: beside its dot to the right, above then below, then
# to the left, then further out, then centred over or under it (level text: a rotated label's box is much
# larger than its words)
LABEL_SPOTS = [(4, 5, "left", "bottom"), (4, -5, "left", "top"), (-4, 5, "right", "bottom"),
               (-4, -5, "right", "top"), (4, 16, "left", "bottom"), (4, -16, "left", "top"),
               (-4, 16, "right", "bottom"), (-4, -16, "right", "top"), (0, 6, "center", "bottom"),
               (0, -6, "center", "top"), (0, 16, "center", "bottom"), (0, -16, "center", "top")]


def place_labels(ax, labelled: list[tuple[float, float, str]]) -> tuple[int, int]:
    """Label kept changes, in the order given (the most important first), where a label overlaps no other
    label or the legend and stays inside the axes: first each one's description where it fits, then the
    number (#N, as the table shows it) of each one still unlabelled. Returns (changes named by number
    only, labels left out). Call with the layout final."""
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.bbox  # not over the axis labels or the title
    legend = ax.get_legend()
    placed = [legend.get_window_extent(renderer)] if legend else []
    unnamed = [(x, y) for x, y, description in labelled
               if not _place(ax, renderer, inside, placed, x, y,
                             description if len(description) <= 32 else description[:31] + "…")]
    left_out = sum(1 for x, y in unnamed if not _place(ax, renderer, inside, placed, x, y, f"#{x}"))
    return len(unnamed) - left_out, left_out


def _place(ax, renderer, inside, placed: list, x: float, y: float, label: str) -> bool:
    """Put `label` at the first of LABEL_SPOTS where it fits (its box is then added to `placed`)."""
    for dx, dy, ha, va in LABEL_SPOTS:
        text = ax.annotate(label, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7,
                           color="#1d6b1d", ha=ha, va=va)
        box = text.get_window_extent(renderer)
        fits = box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0 and box.y1 <= inside.y1
        if fits and not any(box.overlaps(other) for other in placed):
            placed.append(box)
            return True
        text.remove()
    return False
