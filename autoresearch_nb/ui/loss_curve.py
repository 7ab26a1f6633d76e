"""The running experiment's loss curve, drawn with matplotlib's object API off any thread."""
from __future__ import annotations

import itertools

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..lab.words import STATUS_COLOURS
from .png import figure_png

LINE = "#1f77b4"
BEST = STATUS_COLOURS["keep"]   # the best is drawn in the chart's kept green


def loss_curve_png(losses: list[tuple[int, float]], title: str = "", width: float = 4.5,
                   height: float = 2.4, dpi: int = 72, empty: str = "waiting for the first step") -> bytes:
    """PNG bytes of training loss against step; `empty`'s words until the first step arrives."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    points = [(int(step), float(loss)) for step, loss in losses if loss is not None]
    if points:
        steps, values = zip(*points)
        ax.plot(steps, values, color=LINE, linewidth=1.2)
        ax.set_title(title or f"step {steps[-1]}: loss {values[-1]:.4f}", fontsize=9)
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center",
                transform=ax.transAxes, color="#777777", fontsize=9)
        ax.set_title(title or "training loss", fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("loss", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    # Fixed margins: tight_layout would double the cost of a redraw that runs every few seconds.
    fig.subplots_adjust(left=0.15, right=0.97, top=0.88, bottom=0.2)
    return figure_png(fig)


RUN_COLOURS = (LINE, "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")


def loss_against_best_png(runs: list[tuple[str, list[tuple[float, float]]]], best: list[tuple[float, float]],
                          best_index=None, width: float = 4.5, height: float = 2.4, dpi: int = 72) -> bytes:
    """The runs under way (one per worker, each `(name, curve)`) against the best's run, all by share of
    the budget: ahead or behind at a glance."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs, ys = zip(*[(100.0 * p, loss) for p, loss in best])
    ax.plot(xs, ys, color=BEST, linewidth=1.2, label=f"the best (#{best_index})" if best_index is not None else "the best")
    for (name, curve), colour in zip(runs, itertools.cycle(RUN_COLOURS)):
        xs, ys = zip(*[(100.0 * p, float(loss)) for p, loss in curve])
        label = "this run" if len(runs) == 1 else f"{name}: {100 * curve[-1][0]:.0f}%, {float(curve[-1][1]):.3f}"
        ax.plot(xs, ys, color=colour, linewidth=1.4, label=label)
    if len(runs) == 1:
        curve = runs[0][1]
        here = curve[-1][0]
        then = [loss for p, loss in best if p <= here]
        title = f"{100 * here:.0f}%: loss {float(curve[-1][1]):.4f}"
        if then:
            title += f" (the best at this point {then[-1]:.4f})"
    else:
        title = f"{len(runs)} runs under way against the best"
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the budget", fontsize=8)
    ax.set_ylabel("loss", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(True, alpha=0.3)
    fig.subplots_adjust(left=0.15, right=0.97, top=0.88, bottom=0.2)
    return figure_png(fig)
