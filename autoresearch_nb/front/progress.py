"""Terminal front end: a bar through the running experiment's budget, a line per result, the final line."""
from __future__ import annotations

import sys

from tqdm import tqdm

from ..engine.events import Event
from ..judge.facts import summary
from ..lab.words import STATUS_MARK, count



def result_line(row: dict, best_before: float | None) -> str:
    """index, status, val_bpb, change against the best before it, description."""
    value = row.get("val_bpb")
    shown = f"{value:.6f}" if value is not None else "   -    "
    delta = ""
    if value is not None and best_before is not None and row.get("role") != "transfer":  # another scale
        delta = f"{value - best_before:+.6f}"
    text = row.get("description", "")
    if row.get("role") not in (None, "experiment"):
        text = f"[{row['role']}] {text}"
    if row.get("status") in ("crash", "rejected", "interrupted", "disturbed") and row.get("reason"):
        text += f"  [{row.get('kind') or ''}: {_clip(str(row['reason']), 90)}]"
    return f"{row.get('index', 0):>4}  {STATUS_MARK.get(row.get('status'), row.get('status', '')):<7}  {shown}  {delta:>10}  {text}"


def _clip(text: str, limit: int) -> str:
    """At most `limit` characters, keeping both ends: a reason's end often says the most (the
    last words of a CLI, the last line of a traceback)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    half = (limit - 3) // 2
    return text[:half] + " … " + text[-(limit - 3 - half):]


class TerminalProgress:
    """Subscribes to the event stream; writes from the loop thread to the terminal only."""

    def __init__(self, stream=sys.stdout):
        self.stream = stream
        self.bar: tqdm | None = None
        self.bar_job = None
        self.best: float | None = None
        self.lines_only = False   # several workers: a line each, no bar

    def handle(self, event: Event) -> None:
        data = event.data
        if event.kind == "run_started":
            self._print(f"run {data.get('tag')} on {data.get('branch')}: agent {data.get('agent_label')}"
                        f"{' / ' + data['model'] if data.get('model') else ''}, profile {data.get('profile')} "
                        f"({data.get('device')}), budget {data.get('budget'):g}s, policy {data.get('policy')}")
            if data.get("transfer"):
                self._print(f"{data['transfer']}: {data.get('run_budget'):g}s a run, its own segment")
            if data.get("sandbox"):
                self._print(f"sandbox: {data['sandbox']}")
            workers = data.get("workers") or 1
            self.lines_only = workers > 1
            if workers > 1:
                self._print(f"{workers} workers: a line per run")
            self._print(f"{'exp':>4}  {'status':<7}  {'val_bpb':<8}  {'vs best':>10}  description")
        elif event.kind == "experiment_started":
            self._close_bar()
            worker = str(data.get("worker") or "").split(" ")[0]
            if self.lines_only or not getattr(self.stream, "isatty", lambda: False)():
                self._print(f"{'·':>4}  running  {worker:<3} {str(data.get('description', ''))[:70]}")
                return
            label = f"{'·':>4} {worker} {str(data.get('description', ''))[:40]}"
            self.bar_job = data.get("job")
            self.bar = tqdm(total=100, desc=label, unit="%", leave=False, file=self.stream,
                            bar_format="{desc} |{bar}| {n:.0f}% {postfix}", dynamic_ncols=True)
        elif event.kind == "step" and self.bar is not None and data.get("job") == self.bar_job:
            self.bar.n = min(100.0, 100.0 * float(data.get("progress", 0.0)))
            if "loss" in data:
                self.bar.set_postfix_str(f"loss {data['loss']:.3f}", refresh=False)
            self.bar.refresh()
        elif event.kind == "experiment_finished":
            self._close_bar()
            row = data["row"]
            self._print(result_line(row, self.best))
            if row.get("best") is not None:
                self.best = row["best"]
        elif event.kind in ("message", "state") and (data.get("text") or data.get("message")):
            if event.kind == "state" and data.get("state") in ("running",):
                return
            self._print(f"      {data.get('text') or data.get('message')}")

    def _print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self._close_bar()

    def final_line(self, snapshot: dict) -> str:
        rows = snapshot.get("rows", [])
        found = summary(rows, snapshot.get("header") or {})
        counts = found["counts"]
        best, base = found["best"], found["baseline"]
        gain = ""
        if best is not None and base is not None and found["gain"] is not None:
            spread = f" ± {found['gain_half_width']:.4f}" if found["gain_half_width"] is not None else ""
            gain = f", best {best.text()} (baseline {base.text()}, gain {found['gain']:+.4f}{spread})"
        disturbed = f", {counts['disturbed']} disturbed and run again" if counts.get("disturbed") else ""
        kept = count(found["changes"], "change kept")
        return (f"done: {count(found['done'], 'run')} — {kept}, {counts.get('discard', 0)} discarded, "
                f"{counts.get('crash', 0)} crashed, {counts.get('rejected', 0)} rejected{disturbed}{gain}. "
                f"{snapshot.get('message', '')}")
