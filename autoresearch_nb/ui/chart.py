"""The progress chart in autoresearch's style, drawn with matplotlib's object API (thread-safe)."""
from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

KEPT = "#2ca02c"
DISCARDED = "#b0b0b0"
CRASHED = "#d62728"


def _better(a: float, b: float, direction: str) -> bool:
    return a < b if direction == "lower" else a > b


def progress_points(rows: list[dict], metric: str = "val_bpb", direction: str = "lower"):
    """(index, value, status, description) for every row that produced the metric, plus the
    running best as a list of (index, best)."""
    points, best_line, best = [], [], None
    for position, row in enumerate(rows):
        value = row.get(metric)
        status = row.get("status")
        if value is None or status not in ("keep", "discard") or float(value) <= 0:
            continue
        value = float(value)
        x = row.get("index", position)
        points.append((x, value, status, str(row.get("description", ""))))
        if status == "keep" and (best is None or _better(value, best, direction)):
            best = value
        if best is not None:
            best_line.append((x, best))
    return points, best_line


def progress_chart_png(rows: list[dict], metric: str = "val_bpb", direction: str = "lower",
                       width: float = 9.0, height: float = 4.0, dpi: int = 90,
                       title: str | None = None) -> bytes:
    """PNG bytes of the chart: discarded grey, kept green, the running best as a step line,
    kept changes labelled, crashes as red ticks on the x axis."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    points, best_line = progress_points(rows, metric, direction)
    discarded = [(x, y) for x, y, s, _ in points if s == "discard"]
    kept = [(x, y, d) for x, y, s, d in points if s == "keep"]
    if discarded:
        ax.scatter(*zip(*discarded), s=18, color=DISCARDED, label="discarded", zorder=2)
    if kept:
        ax.scatter([x for x, _, _ in kept], [y for _, y, _ in kept], s=30, color=KEPT,
                   label="kept", zorder=3)
        for x, y, description in kept:
            label = description if len(description) <= 32 else description[:31] + "…"
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 6),
                        fontsize=7, color="#1d6b1d", rotation=20)
    if best_line:
        xs, ys = zip(*best_line)
        ax.step(xs, ys, where="post", color=KEPT, linewidth=1.5, label="running best", zorder=1)
    crashes = [row.get("index", i) for i, row in enumerate(rows)
               if row.get("status") in ("crash", "interrupted")]
    if crashes:
        ax.plot(crashes, [0] * len(crashes), linestyle="none", marker="|", markersize=10,
                color=CRASHED, label="crashed", transform=ax.get_xaxis_transform(), clip_on=False)
    ax.set_xlabel("experiment")
    ax.set_ylabel(f"{metric} ({direction} is better)")
    ax.set_title(title or f"{len(rows)} experiments, {len(kept)} kept", fontsize=10)
    ax.grid(True, alpha=0.3)
    if points:
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=ax.transAxes,
                color="#777777")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
