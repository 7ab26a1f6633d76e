"""The dashboard's experiments table and log tail as HTML that reads in light and dark themes alike
(JupyterLab, classic Notebook, VS Code, Colab): colours only on badges, text in the page's own colour."""
from __future__ import annotations

import html

from ..judge.shown import table_facts
from ..lab.words import STATUS_COLOURS, STATUS_WORDS, duration

LINE = "border-bottom:1px solid rgba(128,128,128,0.25);padding:2px 8px;text-align:left;"
HARNESS_PREFIXES = ("$ ", "[autoresearch-nb]", "sandbox: ")


def badge(status: str, role: str | None = None) -> str:
    colour = STATUS_COLOURS.get(status, "#6e7781")
    word = STATUS_WORDS.get(status, status)
    if role and role not in ("experiment",) and status in ("keep", "discard"):
        word = f"{word} · {role}"
    return (f'<span style="background:{colour};color:#fff;border-radius:8px;padding:0 7px;'
            f'font-size:11px;white-space:nowrap;">{html.escape(word)}</span>')


# fixed widths, so each row (its own widget, to be clickable) lines up with the header and the others
COLUMNS = (("status", 124), (None, 116), ("vs best", 72), ("description", 376), ("worker", 68), ("time", 56))
CELL = LINE + "overflow:hidden;text-overflow:ellipsis;white-space:nowrap;"


def table_cells(rows: list[dict], metric: str = "val_bpb", limit: int = 12,
                figures: list | None = None) -> list[tuple[int, list[str]]]:
    """The newest `limit` experiments, newest first, as (number, cells): status, value ± what one run is
    worth in its segment (once known), the change against the best before it, description, worker, time
    (judge/shown.py decides the figures; pass them if already computed for these rows)."""
    figures = table_facts(rows, metric) if figures is None else figures
    shown = []
    for row, seen in list(zip(reversed(rows), reversed(figures)))[:limit]:
        value = "" if seen.value is None else f"{seen.value:.4f}"
        if seen.half_width is not None:
            value += f" ± {seen.half_width:.4f}"
        seconds = (row.get("timings") or {}).get("total_s")
        shown.append((row.get("index"), [
            badge(row.get("status", ""), row.get("role")), value,
            "" if seen.delta is None else f"{seen.delta:+.4f}",
            html.escape(" ".join(str(row.get("description", "")).split())[:120]),
            html.escape(str(row.get("worker") or "").split(" ")[0]),
            "" if not seconds else duration(float(seconds), compact=True)]))
    return shown


def row_html(cells: list[str], tag: str = "td") -> str:
    """One line of the table, its columns at their fixed widths."""
    columns = "".join(f'<col style="width:{width}px">' for _, width in COLUMNS)
    line = "".join(f'<{tag} style="{CELL}">{cell}</{tag}>' for cell in cells)
    return (f'<table style="table-layout:fixed;border-collapse:collapse;font-size:12px;margin:0;color:inherit;'
            f'width:{sum(width for _, width in COLUMNS)}px;"><colgroup>{columns}</colgroup><tr>{line}</tr></table>')


def header_html(metric: str = "val_bpb") -> str:
    return row_html([html.escape(name or f"{metric} ± 95%") for name, _ in COLUMNS], tag="th")


def log_html(log_tail: str) -> str:
    """A run's log tail with the harness's own lines (the sandbox command, its notes) folded away."""
    lines = log_tail.splitlines()
    harness = [line for line in lines if line.startswith(HARNESS_PREFIXES)]
    own = [line for line in lines if not line.startswith(HARNESS_PREFIXES)]
    style = "font-size:11px;max-height:14em;overflow:auto;background:rgba(128,128,128,0.1);padding:6px;margin:0;"
    folded = ""
    if harness:
        folded = (f'<details style="font-size:11px;"><summary>the harness\'s lines ({len(harness)}: sandbox, '
                  f'timing, evaluation)</summary><pre style="{style}">{html.escape(chr(10).join(harness))}</pre></details>')
    return f'<pre style="{style}">{html.escape(chr(10).join(own))}</pre>{folded}'
