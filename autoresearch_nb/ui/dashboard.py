"""The live dashboard: ipywidgets core widgets kept current by the run's events, at most once a second.

Events arrive on the loop thread. They are folded into a RunView under a lock and a timer
renders the widgets by setting trait values (comm sends are thread-safe); nothing here prints
or displays from a thread, and nothing here touches git: diffs and logs come from `details`.
"""
from __future__ import annotations

import html
import threading
import time
from typing import Callable

import ipywidgets as widgets

from .chart import progress_chart_png
from .diffview import diff_html
from .loss_curve import loss_against_best_png, loss_curve_png
from .rowtable import ExperimentTable
from .table import log_html
from ..judge import facts
from ..judge.shown import table_facts
from ..lab.words import STATUS_COLOURS, STATUS_WORDS, count, duration
from .text import header_lines, measured_text, outcome_lines, row_cells, summarize, table_line

ENDED_STATES = ("stopped", "finished", "error")
# Monospace rows make the Select read as a table; a style tag is the one way to reach a
# core widget's inner <select> without a custom widget (which Colab would not load).
TABLE_STYLE = ("<style>.arnb-table select{font-family:ui-monospace,Menlo,Consolas,monospace;"
               "font-size:12px;}</style>")
# The loss curve is the costliest redraw (~60 ms of CPU); every 2 s is live enough.
LOSS_EVERY_S = 2.0


class RunView:
    """What the dashboard knows of the run: a session snapshot, kept current by events."""

    def __init__(self, snapshot: dict | None = None):
        self.info: dict = {}
        self.rows: list[dict] = []
        self.current: dict | None = None
        self.lanes: dict[str, dict] = {}     # worker -> what it runs
        self.queue: dict = {}
        self.state = "idle"
        self.message = ""
        if snapshot:
            self.load(snapshot)

    def load(self, snapshot: dict) -> None:
        self.info = dict(snapshot.get("header") or {})
        self.rows = list(snapshot.get("rows") or [])
        self.lanes = {name: dict(lane, losses=list(lane.get("losses") or []), curve=list(lane.get("curve") or []))
                      for name, lane in (snapshot.get("lanes") or {}).items()}
        current = snapshot.get("current")
        self.current = next((lane for lane in self.lanes.values() if current and lane.get("job") == current.get("job")),
                            dict(current, losses=list(current.get("losses") or [])) if current else None)
        self.queue = dict(snapshot.get("queue") or {})
        self.state = snapshot.get("state") or "idle"
        self.message = snapshot.get("message") or ""

    def apply(self, event) -> set[str]:
        """Fold one event in; returns the parts of the dashboard it changed."""
        data, kind = event.data, event.kind
        if kind == "run_started":
            self.info.update(data)
            self.info.setdefault("started_at", event.time)
            return {"header"}
        if kind == "experiment_started":
            lane = {"index": data.get("index"), "job": data.get("job"), "worker": data.get("worker"),
                    "description": data.get("description", ""), "role": data.get("role"),
                    "budget": data.get("budget"), "progress": 0.0, "losses": [], "curve": [],
                    "started_at": event.time}
            self.lanes[str(data.get("worker"))] = lane
            self.current = lane
            return {"current"}
        if kind == "step":
            lane = self.lanes.get(str(data.get("worker")))
            if lane is None or lane.get("job") != data.get("job"):
                return set()
            if data.get("loss") is not None:
                lane["losses"].append((data.get("step", 0), data["loss"]))
                if data.get("progress") is not None:
                    lane.setdefault("curve", []).append((float(data["progress"]), data["loss"]))
            if data.get("progress") is not None:
                lane["progress"] = float(data["progress"])
            lane["elapsed"] = data.get("elapsed")
            return {"current"}
        if kind == "experiment_finished":
            row = data.get("row") or {}
            self.rows = [r for r in self.rows if r.get("index") != row.get("index")] + [row]
            self.lanes = {name: lane for name, lane in self.lanes.items()
                          if row.get("job") is None or lane.get("job") != row.get("job")}
            if self.current is not None and self.current.get("job") == row.get("job"):
                self.current = max(self.lanes.values(), key=lambda lane: lane["started_at"], default=None)
            return {"rows", "current", "header"}
        if kind == "queue":
            self.queue = dict(data)
            return {"current"}
        if kind == "state":
            self.state = data.get("state", self.state)
            self.message = data.get("message") or self.message
            return {"state"}
        if kind == "message":
            self.message = data.get("text", "")
            return {"state"}
        if kind == "run_finished":
            if self.state not in ENDED_STATES:
                self.state = "finished"
            self.message = data.get("reason") or self.message
            self.current = None
            self.lanes = {}
            return {"state", "current"}
        return set()


class Dashboard:
    """The widget tree for one run. `handle` is the event subscriber; `widget` is what to display."""

    def __init__(self, snapshot: dict | None = None, *, metric: str = "val_bpb",
                 direction: str = "lower", on_stop: Callable[[], None] | None = None,
                 on_pause: Callable[[], None] | None = None,
                 on_resume: Callable[[], None] | None = None,
                 details: Callable[[int], tuple[str, str]] | None = None,
                 min_interval: float = 1.0):
        self.metric, self.direction = metric, direction
        self.min_interval = min_interval
        self._on_stop, self._on_pause, self._on_resume = on_stop, on_pause, on_resume
        self._details = details
        self.view = RunView(snapshot)
        self._lock = threading.Lock()          # guards view, dirty, timer
        self._render_lock = threading.Lock()   # one render at a time (timer or main thread)
        self._dirty = {"header", "rows", "current", "state"}
        self._timer: threading.Timer | None = None
        self._last_render = 0.0
        self._loss_shown = None    # what the loss picture shows (the run, the best, its points)
        self._loss_drawn_at = 0.0
        self._syncing_thread: int | None = None
        self.renders = 0
        self.render_error = ""
        self._build()
        self.render()

    # -- widgets -----------------------------------------------------------------------------
    def _build(self) -> None:
        self.title = widgets.HTML()
        self.header = widgets.HTML()
        self.chart = widgets.Image(format="png", layout=widgets.Layout(width="640px", max_width="100%"))
        self.current_title = widgets.HTML()
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info",
                                              layout=widgets.Layout(width="320px"))
        self.progress_label = widgets.Label()
        self.loss = widgets.Image(format="png", layout=widgets.Layout(width="324px"))
        self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="danger",
                                          tooltip="Stop after the current experiment")
        self.pause_button = widgets.Button(description="Pause", icon="pause",
                                           tooltip="Hold before the next experiment")
        self.stop_button.on_click(self._stop_clicked)
        self.pause_button.on_click(self._pause_clicked)
        self.message = widgets.HTML()
        # every experiment, the older ones past the table's rows included, in a compact chooser under it
        self.table = widgets.Dropdown(options=[], value=None, description="details of",
                                      layout=widgets.Layout(width="min(98%, 900px)"))
        self.table.add_class("arnb-table")
        self.table.observe(self._row_chosen, names="value")
        self.table_header = widgets.HTML()
        self.grid = ExperimentTable(on_choose=self.choose)  # a click on a row's number shows its details
        self.detail = widgets.HTML(value=self._placeholder("Choose an experiment to see its "
                                                           "change, rationale and log."))
        self.ablation = widgets.HTML()
        self.lanes = widgets.HTML()
        current = widgets.VBox([self.current_title, self.progress, self.progress_label, self.loss],
                               layout=widgets.Layout(min_width="330px"))
        self.widget = widgets.VBox(
            # on a narrow screen (a phone over breakfast) the live run wraps under the chart
            [self.title, self.header, widgets.HBox([self.chart, current], layout=widgets.Layout(flex_flow="row wrap")),
             self.lanes,
             widgets.HBox([self.stop_button, self.pause_button, self.message]),
             widgets.HTML(TABLE_STYLE), self.table_header, self.grid.widget, self.table, self.ablation, self.detail])
        self.widget.add_class("arnb-dashboard")

    @staticmethod
    def _placeholder(text: str) -> str:
        return f'<div style="opacity:0.7;font-style:italic;">{html.escape(text)}</div>'

    # -- events (loop thread) ----------------------------------------------------------------
    def handle(self, event) -> None:
        """EventBus subscriber: fold the event in and schedule a render (<= 1 per interval)."""
        with self._lock:
            self._dirty |= self.view.apply(event)
            self._schedule_locked()

    def load(self, snapshot: dict) -> None:
        """Replace what the dashboard knows with a fresh session snapshot."""
        with self._lock:
            self.view.load(snapshot)
            self._dirty |= {"header", "rows", "current", "state"}
            self._schedule_locked()

    def _schedule_locked(self) -> None:
        if self._timer is not None:
            return
        delay = max(0.0, self._last_render + self.min_interval - time.monotonic())
        self._timer = threading.Timer(delay, self._timer_fired)
        self._timer.daemon = True
        self._timer.start()

    def _timer_fired(self) -> None:
        with self._lock:
            self._timer = None
        try:
            self.render()
        except Exception as error:  # never reaches the loop; kept for `status` to show
            self.render_error = f"{type(error).__name__}: {error}"

    # -- rendering ---------------------------------------------------------------------------
    def render(self) -> None:
        """Bring every dirty part up to date by setting trait values."""
        with self._render_lock:
            self._last_render = time.monotonic()
            with self._lock:
                dirty, self._dirty = self._dirty, set()
                rows = list(self.view.rows)
                info = dict(self.view.info)
                current = dict(self.view.current) if self.view.current else None
                if current:
                    current["losses"] = list(current.get("losses") or [])
                lanes = {name: dict(lane, curve=list(lane.get("curve") or [])) for name, lane in self.view.lanes.items()}
                queue = dict(self.view.queue)
                state, message = self.view.state, self.view.message
            self.renders += 1
            try:
                self._render_header(rows, info, state)
                if "rows" in dirty:
                    self._render_rows(rows)
                if "current" in dirty or "rows" in dirty:
                    self._render_current(current, state, lanes)
                    self._render_lanes(lanes, queue, info)
                if "state" in dirty or "header" in dirty:
                    self._render_state(state, message)
            except Exception:
                with self._lock:  # a failed draw leaves its parts dirty for the next event to redraw
                    self._dirty |= dirty
                raise

    def _render_header(self, rows: list[dict], info: dict, state: str) -> None:
        found = summarize(rows, info, self.metric, self.direction)
        lab = html.escape(str(info.get("lab") or ""))
        tag = html.escape(str(info.get("tag") or ""))
        title = "<b>autoresearch</b>" + (f" · {lab}" if lab else "") + (f" · {tag}" if tag else "")
        self.title.value = f'<div style="font-size:14px;">{title} · <i>{html.escape(state)}</i></div>'
        lines = [html.escape(line) for line in header_lines(found)]
        self.header.value = '<div style="font-size:13px;line-height:1.5;">' + "<br>".join(lines) + "</div>"

    def _render_rows(self, rows: list[dict]) -> None:
        self.chart.value = progress_chart_png(rows, metric=self.metric, direction=self.direction,
                                              width=7.0, height=3.2, dpi=80)
        figures = table_facts(rows, self.metric)  # once for the chooser and the table
        options = [(table_line(row, seen, width=110), row.get("index"))
                   for row, seen in zip(reversed(rows), reversed(figures))]
        chosen = self.table.value
        self._syncing_thread = threading.get_ident()
        try:
            # Changing options resets the selection; put the person's choice back.
            self.table.options = options
            values = [value for _, value in options]
            self.table.value = chosen if chosen in values else None
        finally:
            self._syncing_thread = None
        self.grid.update(rows, self.metric, chosen=self.table.value, figures=figures)
        table = measured_text(rows, self.metric, self.direction)
        self.ablation.value = (f'<pre style="font-size:12px;margin:4px 0;">{html.escape(table)}</pre>'
                               if table else "")
        kept = sum(1 for row in rows if row.get("status") == "keep" and row.get("role") == "experiment")
        self.table_header.value = (f'<div style="font-size:13px;margin-top:6px;"><b>Experiments</b>'
                                   f' ({count(len(rows), "run")}, {count(kept, "change kept")}) — latest first; click a number for its '
                                   f'diff, rationale and log</div>')

    def _render_current(self, current: dict | None, state: str, lanes: dict | None = None) -> None:
        if not current:
            self.current_title.value = self._placeholder(
                "no experiment running" if state in ENDED_STATES else "between experiments")
            self.progress.value = 0.0
            self.progress.layout.visibility = "hidden"  # no empty bar between runs
            self.progress_label.value = ""
            placeholder = "no run under way" if state in ENDED_STATES else "waiting for the first step"
            if self._loss_shown != placeholder:
                self.loss.value = loss_curve_png([], title="training loss", empty=placeholder)
                self._loss_shown = placeholder
            return
        description = current.get("description") or "the agent is proposing…"
        role = current.get("role")
        role_note = f" ({html.escape(role)})" if role and role != "experiment" else ""
        # the experiment's number is given when it is recorded; until then it is known by its job
        job = current.get("job") if current.get("job") is not None else current.get("index")
        self.current_title.value = (f'<div style="font-size:13px;"><b>now</b>{role_note} {html.escape(description)}'
                                    f' <span style="opacity:0.6;">(job {job})</span></div>')
        progress = min(1.0, max(0.0, float(current.get("progress") or 0.0)))
        self.progress.value = progress
        self.progress.layout.visibility = "visible"
        elapsed = current.get("elapsed")
        budget = current.get("budget") or self.view.info.get("budget")
        label = f"{progress:.0%} of the budget"
        if elapsed is not None:
            label += f" · {duration(elapsed, compact=True)}" + (f" / {duration(budget, compact=True)}" if budget else "")
        self.progress_label.value = label
        losses = current["losses"]
        # one curve per worker's run, each against the best at the same share of the budget
        runs = [(name, lane["curve"]) for name, lane in sorted((lanes or {}).items()) if lane.get("curve")]
        best = facts.best_row(self.view.rows) or {}
        # what the picture shows, not only how many points: a new run (or a new best) with as many
        # points as the last picture must still be drawn
        drawn = (current.get("job"), current.get("index"), best.get("index"), len(losses),
                 tuple((name, len(curve)) for name, curve in runs))
        now = time.monotonic()
        if drawn != self._loss_shown and now - self._loss_drawn_at >= LOSS_EVERY_S:
            if best.get("curve") and runs and best.get("index") != current.get("index"):
                # within a minute a person sees whether a change is going anywhere
                self.loss.value = loss_against_best_png(runs, best["curve"], best.get("index"))
            else:
                self.loss.value = loss_curve_png(losses)
            self._loss_shown, self._loss_drawn_at = drawn, now
        elif drawn != self._loss_shown:
            with self._lock:  # not drawn this time: keep it dirty so a later render draws it
                self._dirty.add("current")
                self._schedule_locked()

    def _render_lanes(self, lanes: dict, queue: dict, info: dict) -> None:
        """A lane per worker (what it runs, how far) and the queue, when more than one works."""
        if (info.get("workers") or 1) <= 1 and len(lanes) <= 1:
            self.lanes.value = ""
            return
        cells = []
        for name, lane in sorted(lanes.items()):
            progress = min(1.0, max(0.0, float(lane.get("progress") or 0.0)))
            role = f" ({html.escape(str(lane['role']))})" if lane.get("role") not in (None, "experiment") else ""
            cells.append(f'<div style="font-size:12px;"><b>{html.escape(name)}</b> '
                         f'<span style="display:inline-block;width:120px;height:8px;background:#eaeef2;">'
                         f'<span style="display:block;width:{progress * 100:.0f}%;height:8px;background:#54aeff;">'
                         f'</span></span> {progress:.0%} · {html.escape(str(lane.get("description", "")))}{role}</div>')
        if not lanes:
            cells.append('<div style="font-size:12px;opacity:0.7;">no worker busy</div>')
        waiting = list(queue.get("waiting") or [])
        parts = [f"{len(waiting)} waiting for a worker"] if waiting else []
        if queue.get("drafts"):
            parts.append(f"{queue['drafts']} drafted")
        if queue.get("parked"):
            parts.append(f"{queue['parked']} judged once the best is measured")
        if parts:
            cells.append(f'<div style="font-size:12px;opacity:0.7;">queue: {html.escape(", ".join(parts))}</div>')
        self.lanes.value = '<div style="margin:4px 0;">' + "".join(cells) + "</div>"

    def _render_state(self, state: str, message: str) -> None:
        ended = state in ENDED_STATES
        self.stop_button.disabled = ended or state == "stopping"
        self.stop_button.description = "Stopping…" if state == "stopping" else "Stop"
        self.pause_button.disabled = ended or state == "stopping"
        paused = state == "paused"
        self.pause_button.description = "Resume" if paused else "Pause"
        self.pause_button.icon = "play" if paused else "pause"
        shown = html.escape(message) if message else ""
        self.message.value = f'<span style="margin-left:8px;opacity:0.7;">{shown}</span>'

    # -- the person's actions (kernel main thread) -------------------------------------------
    def _stop_clicked(self, _button) -> None:
        if self._on_stop:
            self._on_stop()
        self.stop_button.description = "Stopping…"
        self.stop_button.disabled = True

    def _pause_clicked(self, _button) -> None:
        if self.view.state == "paused" or self.pause_button.description == "Resume":
            if self._on_resume:
                self._on_resume()
            self.pause_button.description, self.pause_button.icon = "Pause", "pause"
        else:
            if self._on_pause:
                self._on_pause()
            self.pause_button.description, self.pause_button.icon = "Resume", "play"

    def _row_chosen(self, change) -> None:
        if self._syncing_thread == threading.get_ident():
            return
        self.grid.mark(change["new"])
        self.show_detail(change["new"])

    def choose(self, index: int) -> None:
        """What a click on a row's number does: that experiment in the chooser and the detail pane."""
        if self.table.value == index or index not in [value for _, value in self.table.options]:
            self.grid.mark(index)
            self.show_detail(index)
        else:
            self.table.value = index

    def show_detail(self, index: int | None) -> None:
        """Fill the detail pane with one experiment: metrics, rationale, diff, log tail."""
        if index is None:
            return
        with self._lock:
            row = next((r for r in self.view.rows if r.get("index") == index), None)
        if row is None:
            return
        diff, log = "", ""
        if self._details:
            try:
                diff, log = self._details(index)
            except Exception as error:  # a missing commit or log is shown, not raised
                log = f"(could not read this experiment: {error})"
        self.detail.value = experiment_html(row, diff, log, self.metric)

    # -- main-thread helpers for magics --------------------------------------------------------
    def refresh(self, resend: bool = False) -> None:
        """Render now; with resend, push every widget's full state again (Colab, saved notebooks)."""
        with self._lock:
            self._dirty |= {"header", "rows", "current", "state"}
        self.render()
        if resend:
            for widget in self._all_widgets(self.widget):
                widget.send_state()

    def _all_widgets(self, widget):
        yield widget
        if getattr(widget, "layout", None) is not None:  # rows and the progress bar show or hide by layout
            yield widget.layout
        for child in getattr(widget, "children", ()):
            yield from self._all_widgets(child)

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


def experiment_html(row: dict, diff: str, log_tail: str, metric: str = "val_bpb") -> str:
    """One experiment as HTML: the same facts as the text view, with the diff highlighted."""
    number, status, value, description = row_cells(row, metric)
    colour = STATUS_COLOURS.get(row.get("status"), "#24292f")
    word = STATUS_WORDS.get(row.get("status"), status)
    parts = [f'<div style="font-size:13px;"><b>#{html.escape(number)}</b> '
             f'<span style="color:{colour};font-weight:bold;">{html.escape(word)}</span>'
             f' · {html.escape(metric)} {html.escape(value)} · {html.escape(description)}</div>']
    parts += [f'<div style="font-size:12px;opacity:0.7;">{html.escape(line)}</div>' for line in outcome_lines(row)]
    if row.get("rationale"):
        parts.append('<div style="font-size:12px;margin-top:4px;"><b>Rationale</b><br>'
                     + html.escape(str(row["rationale"])).replace("\n", "<br>") + "</div>")
    parts.append('<div style="font-size:12px;margin-top:4px;"><b>Change</b></div>' + diff_html(diff, "22em"))
    if log_tail:
        parts.append('<div style="font-size:12px;margin-top:4px;"><b>Log tail</b></div>' + log_html(log_tail))
    return "\n".join(parts)

