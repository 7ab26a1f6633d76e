"""A unified diff as highlighted HTML, with inline styles so Colab and exported notebooks agree."""
from __future__ import annotations

import html

# Inline styles, not classes: an HTML widget in Colab or an exported page has no stylesheet of ours.
STYLES = {
    "add": "background:#e6ffec;color:#1a7f37;",
    "remove": "background:#ffebe9;color:#cf222e;",
    "hunk": "background:#ddf4ff;color:#0550ae;",
    "file": "color:#57606a;font-weight:bold;",
    "context": "color:#24292f;",
}
BOX = ("font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;"
       "line-height:1.35;margin:0;padding:6px;border:1px solid #d0d7de;border-radius:4px;"
       "overflow:auto;max-height:{height};white-space:pre;background:#ffffff;")


def line_kind(line: str) -> str:
    if line.startswith(("+++", "---", "diff --git", "index ", "new file", "deleted file")):
        return "file"
    if line.startswith("@@"):
        return "hunk"
    if line.startswith("+"):
        return "add"
    if line.startswith("-"):
        return "remove"
    return "context"


def diff_html(diff: str, max_height: str = "28em") -> str:
    """Each line escaped and coloured by what it is: added, removed, hunk header, file header."""
    if not diff.strip():
        return '<div style="opacity:0.7;font-style:italic;">no changes</div>'
    spans = [f'<span style="{STYLES[line_kind(line)]}">{html.escape(line) or " "}</span>'
             for line in diff.rstrip("\n").split("\n")]
    return f'<pre class="arnb-diff" style="{BOX.format(height=max_height)}">' + "\n".join(spans) + "</pre>"


def diff_stats(diff: str) -> tuple[int, int]:
    """(lines added, lines removed), file headers not counted."""
    added = removed = 0
    for line in diff.split("\n"):
        kind = line_kind(line)
        added += kind == "add"
        removed += kind == "remove"
    return added, removed
