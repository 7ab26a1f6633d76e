"""A matplotlib Figure as PNG bytes, one draw at a time: every figure shares matplotlib's font cache."""
from __future__ import annotations

import io
import threading

from matplotlib.figure import Figure

# The dashboard draws from a timer thread while the notebook (or another dashboard) may draw too;
# matplotlib's cached FreeType fonts are not safe to lay out from two threads at once.
DRAW_LOCK = threading.RLock()  # re-entered: a chart lays its labels out, then renders


def figure_png(fig: Figure) -> bytes:
    """Render `fig` (laid out by its maker); the PNG's bytes."""
    with DRAW_LOCK:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
