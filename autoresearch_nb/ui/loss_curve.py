"""The running experiment's loss curve, drawn with matplotlib's object API off any thread."""
from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .png import figure_png

LINE = "#1f77b4"


def loss_curve_png(losses: list[tuple[int, float]], title: str = "", width: float = 4.5,
                   height: float = 2.4, dpi: int = 72) -> bytes:
    """PNG bytes of training loss against step; a placeholder until the first step arrives."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    points = [(int(step), float(loss)) for step, loss in losses if loss is not None]
    if points:
        steps, values = zip(*points)
        ax.plot(steps, values, color=LINE, linewidth=1.2)
        ax.set_title(title or f"step {steps[-1]}: loss {values[-1]:.4f}", fontsize=9)
    else:
        ax.text(0.5, 0.5, "waiting for the first step", ha="center", va="center",
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
