"""Terminal front end: a bar through the running experiment's budget, a line per result, the status table."""
from __future__ import annotations

import sys

from tqdm import tqdm

from .events import Event

STATUS_MARK = {"keep": "keep   ", "discard": "discard", "crash": "crash  ", "rejected": "reject ",
               "interrupted": "interr."}


def result_line(row: dict, best_before: float | None) -> str:
    """index, status, val_bpb, change against the best before it, description."""
    value = row.get("val_bpb")
    shown = f"{value:.6f}" if value is not None else "   -    "
    delta = ""
    if value is not None and best_before is not None:
        delta = f"{value - best_before:+.6f}"
    text = row.get("description", "")
    if row.get("status") in ("crash", "rejected", "interrupted") and row.get("reason"):
        text += f"  [{row.get('kind') or ''}: {str(row['reason'])[:90]}]"
    return f"{row.get('index', 0):>4}  {STATUS_MARK.get(row.get('status'), row.get('status', '')):<7}  {shown}  {delta:>10}  {text}"


class TerminalProgress:
    """Subscribes to the event stream; writes from the loop thread to the terminal only."""

    def __init__(self, stream=sys.stdout):
        self.stream = stream
        self.bar: tqdm | None = None
        self.best: float | None = None

    def handle(self, event: Event) -> None:
        data = event.data
        if event.kind == "run_started":
            self._print(f"run {data.get('tag')} on {data.get('branch')}: agent {data.get('agent_label')}"
                        f"{' / ' + data['model'] if data.get('model') else ''}, profile {data.get('profile')} "
                        f"({data.get('device')}), budget {data.get('budget'):g}s, policy {data.get('policy')}")
            if data.get("sandbox"):
                self._print(f"sandbox: {data['sandbox']}")
            self._print(f"{'exp':>4}  {'status':<7}  {'val_bpb':<8}  {'vs best':>10}  description")
        elif event.kind == "experiment_started":
            self._close_bar()
            if not getattr(self.stream, "isatty", lambda: False)():
                self._print(f"{data.get('index'):>4}  running  {str(data.get('description', ''))[:70]}")
                return
            label = f"{data.get('index'):>4} {str(data.get('description', ''))[:40]}"
            self.bar = tqdm(total=100, desc=label, unit="%", leave=False, file=self.stream,
                            bar_format="{desc} |{bar}| {n:.0f}% {postfix}", dynamic_ncols=True)
        elif event.kind == "step" and self.bar is not None:
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
        header = snapshot["header"]
        counts = header.get("counts", {})
        best, base = header.get("best"), header.get("baseline")
        gain = f", best {best:.6f} (baseline {base:.6f}, {best - base:+.6f})" if best is not None and base is not None else ""
        changes = sum(1 for r in snapshot.get("rows", []) if r.get("role") == "experiment" and r.get("status") == "keep")
        return (f"done: {header.get('done', 0)} runs — {changes} changes kept, {counts.get('discard', 0)} discarded, "
                f"{counts.get('crash', 0)} crashed, {counts.get('rejected', 0)} rejected{gain}. {snapshot.get('message', '')}")


def status_text(header: dict, rows: list[dict]) -> str:
    """The status table for `autoresearch-nb status`."""
    lines = []
    if header.get("tag"):
        lines.append(f"run {header['tag']} (agent {header.get('agent_label', header.get('agent'))}, "
                     f"profile {header.get('profile')}, budget {header.get('budget')}s, policy {header.get('policy')})")
    lines.append(f"{'exp':>4}  {'status':<7}  {'val_bpb':<8}  {'vs best':>10}  description")
    best = None
    for row in rows:
        lines.append(result_line(row, best))
        if row.get("best") is not None:
            best = row["best"]
    counts = header.get("counts", {})
    lines.append("")
    lines.append("counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if header.get("best") is not None:
        base = header.get("baseline")
        lines.append(f"best val_bpb {header['best']:.6f}" + (f" (baseline {base:.6f}, gain {base - header['best']:.6f})" if base else ""))
    if header.get("cost_usd"):
        lines.append(f"agent cost ${header['cost_usd']:.4f}")
    if header.get("inflight"):
        lines.append("an experiment is in flight (or was, when the run stopped): `run --resume` records it")
    return "\n".join(lines)
