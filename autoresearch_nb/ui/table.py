"""The dashboard's experiments table and log tail as HTML that reads in light and dark themes alike
(JupyterLab, classic Notebook, VS Code, Colab): colours only on badges, text in the page's own colour."""
from __future__ import annotations

import html

from ..judge import facts
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


def table_html(rows: list[dict], metric: str = "val_bpb", limit: int = 12) -> str:
    """The newest `limit` experiments as a table: number, status, value (± its code's interval where the
    code ran more than once), the change against the best before it, description, worker, time."""
    research = [r for r in rows if facts.segment_of(r) >= 0]
    best_after = dict(facts.running_best(research, metric))
    before: dict = {}
    best = None
    for row in research:
        before[row.get("index")] = best
        best = best_after.get(row.get("index"), best)
    shown = list(reversed(rows))[:limit]
    head = "".join(f'<th style="{LINE}">{name}</th>' for name in
                   ("#", "status", html.escape(metric), "vs best", "description", "worker", "time"))
    body = []
    for row in shown:
        value = facts.value(row, metric)
        if value is None and row.get("status") == "disturbed" and isinstance(row.get(metric), (int, float)):
            value = float(row[metric])
        reference = before.get(row.get("index"))
        delta = "" if value is None or reference is None or facts.segment_of(row) < 0 else f"{value - reference:+.4f}"
        seconds = (row.get("timings") or {}).get("total_s")
        cells = [str(row.get("index", "")), badge(row.get("status", ""), row.get("role")),
                 "" if value is None else f"{value:.4f}", delta,
                 html.escape(" ".join(str(row.get("description", "")).split())[:90]),
                 html.escape(str(row.get("worker") or "").split(" ")[0]),
                 "" if not seconds else duration(float(seconds), compact=True)]
        body.append("<tr>" + "".join(f'<td style="{LINE}">{cell}</td>' for cell in cells) + "</tr>")
    more = f'<div style="font-size:11px;opacity:0.7;">… {len(rows) - limit} earlier</div>' if len(rows) > limit else ""
    return (f'<table style="border-collapse:collapse;font-size:12px;margin:4px 0;color:inherit;">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}")


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
