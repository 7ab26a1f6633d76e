"""The %autoresearch and %%program magics: parse the line, call Session / Lab / export, render."""
from __future__ import annotations

import atexit
import difflib
import json
import sys
import time
from pathlib import Path

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.display import HTML, Markdown, display

from ..errors import LabError
from .magic_args import help_text, parse
from .options import run_options
from ..ui.diffview import diff_html
from ..ui.text import experiment_text, header_lines, measured_text, status_text, summarize
from .keep_report import KeepReport

DEFAULT_LAB = "autoresearch-lab"
SHUTDOWN_WAIT_S = 3.0   # jupyter_client kills a kernel that has not exited 5 s after shutdown


class KernelRun:
    """The one run this kernel may hold, and the lab the magics work on."""

    def __init__(self):
        self.lab_dir = Path(DEFAULT_LAB)
        self.session = None
        self.dashboard = None
        self.unsubscribe = None

    @property
    def alive(self) -> bool:
        return self.session is not None and self.session.alive


CURRENT = KernelRun()


def stop_for_shutdown() -> None:
    """Kernel shutdown or restart: kill the running experiment (recorded as interrupted)."""
    session = CURRENT.session
    if session is not None and session.alive:
        try:
            session.stop(now=True)
            session.wait(timeout=SHUTDOWN_WAIT_S)
        except Exception:  # the process is going away; never block or raise here
            pass


def frontend_of(shell) -> str:
    """colab | notebook | terminal: where output goes decides widgets or text."""
    if "google.colab" in sys.modules:
        return "colab"
    if shell.__class__.__name__ == "TerminalInteractiveShell" or getattr(shell, "kernel", None) is None:
        return "terminal"
    return "notebook"


@magics_class
class AutoresearchMagics(Magics):
    """%autoresearch and %%program."""

    @line_magic
    def autoresearch(self, line: str = ""):
        args, text = parse(line)
        handler = getattr(self, f"_do_{args.subcommand}")
        try:
            return handler(args, text) if args.subcommand == "steer" else handler(args)
        except LabError as error:
            raise UsageError(str(error)) from None

    autoresearch.__doc__ = help_text()

    @line_cell_magic
    def program(self, line: str = "", cell: str | None = None):
        """%%program: the cell's Markdown becomes the lab's charter. %program: show it."""
        try:
            lab = self._lab(create=cell is not None)
            if cell is None:
                charter = lab.charter_path.read_text(encoding="utf-8")
                self._show(Markdown(charter), charter)
                return None
            self._write_charter(lab, cell)
        except LabError as error:
            raise UsageError(str(error)) from None
        return None

    # -- helpers -------------------------------------------------------------------------------
    @property
    def frontend(self) -> str:
        return frontend_of(self.shell)

    def _show(self, rich, plain: str) -> None:
        if self.frontend == "terminal":
            print(plain)
        else:
            display(rich)

    def _lab(self, path=None, create: bool = False):
        from ..lab.lab import Lab, init_lab

        lab_dir = Path(path).expanduser() if path else CURRENT.lab_dir
        if create and not lab_dir.exists():
            lab, _ = init_lab(lab_dir)
            print(f"Created a lab in {lab.root}")
        else:
            lab = Lab.open(lab_dir)
        CURRENT.lab_dir = Path(lab.root)
        return lab

    def _write_charter(self, lab, text: str) -> None:
        path = lab.charter_path
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        new = text if text.endswith("\n") else text + "\n"
        if old == new:
            print(f"{path} is unchanged.")
            return
        # Safe while a run goes on: the loop commits program.md between experiments.
        path.write_text(new, encoding="utf-8")
        diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                            "program.md (before)", "program.md"))
        note = " The running agent reads it before its next proposal." if CURRENT.alive else ""
        print(f"Wrote the charter to {path}.{note}")
        self._show(HTML(diff_html(diff)), diff)

    def _session(self):
        if CURRENT.session is None:
            raise UsageError("no run in this kernel; start one with %autoresearch start")
        return CURRENT.session

    def _metric(self, lab) -> tuple[str, str]:
        config = getattr(lab, "config", None) or {}
        return config.get("metric", "val_bpb"), config.get("direction", "lower")

    # -- subcommands ---------------------------------------------------------------------------
    def _do_init(self, args):
        from ..lab.lab import init_lab

        lab, created = init_lab(Path(args.dir or CURRENT.lab_dir).expanduser(), profile=args.profile, data=args.data)
        CURRENT.lab_dir = Path(lab.root)
        state = "Created a lab" if created else "Using the existing lab"
        print(f"{state} in {lab.root}. Write the charter with %%program, then %autoresearch start.")

    def _do_start(self, args):
        from ..engine.session import Session

        if CURRENT.alive:
            raise UsageError(f"a run is already going in this kernel (lab {CURRENT.lab_dir}): "
                             "%autoresearch status shows it, %autoresearch stop ends it "
                             "(--now kills the current experiment)")
        lab = self._lab(args.lab, create=not args.resume)
        options = run_options(args, str(lab.root))
        session = Session(options)
        session.subscribe(KeepReport(lab.root).handle)  # the morning's report survives a runtime reset
        self._launch(session, lab, f"Started a run in {lab.root} ({args.agent} agent); its results notebook "
                                   f"is kept up to date beside it after every kept change.")

    def _do_ablate(self, args):
        self._measure(args, "ablate", lambda root: f"Ablating the best of {root} ({args.repeats} runs per change); "
                                                   "%autoresearch status shows the table when it is done.")

    def _do_transfer(self, args):
        self._measure(args, "run the transfer ladder",
                      lambda root: f"Transfer ladder for {root} at ×{args.budget_x:g} the budget "
                                   f"({args.repeats} runs per code); %autoresearch status shows the table.")

    def _measure(self, args, doing: str, started) -> None:
        """Start an after-the-night measurement (ablate, transfer) in the background."""
        from ..engine.session import Session

        if CURRENT.alive:
            raise UsageError(f"a run is going in this kernel: %autoresearch stop it, wait for it to end, then {doing}")
        lab = self._lab(args.lab)
        self._launch(Session(run_options(args, str(lab.root))), lab, started(lab.root))

    def _launch(self, session, lab, started: str) -> None:
        """Start a session in the background and show its dashboard (text in a terminal)."""
        dashboard = unsubscribe = None
        if self.frontend != "terminal":
            dashboard = self._dashboard(session, lab)
            # Subscribed before start, so no event falls between the snapshot and the stream.
            unsubscribe = session.subscribe(dashboard.handle)
        try:
            session.start()
        except BaseException:
            if unsubscribe is not None:
                unsubscribe()
                dashboard.close()
            raise
        if CURRENT.unsubscribe is not None:
            CURRENT.unsubscribe()
            CURRENT.dashboard.close()
        CURRENT.session, CURRENT.dashboard, CURRENT.unsubscribe = session, dashboard, unsubscribe
        if dashboard is not None:
            display(dashboard.widget)
        else:
            print(f"{started} %autoresearch status to look, %autoresearch stop to end it after the "
                  "current experiment.")

    def _dashboard(self, session, lab):
        from ..ui.dashboard import Dashboard

        metric, direction = self._metric(lab)
        return Dashboard(session.snapshot(), metric=metric, direction=direction,
                         on_stop=session.stop, on_pause=session.pause, on_resume=session.resume,
                         details=lambda n: (lab.diff(n), lab.log_tail(n)))

    def _do_stop(self, args):
        session = self._session()
        if not session.alive:
            print(f"The run has already ended ({session.state}).")
            return
        session.stop(now=args.now)
        if args.now:
            print("Stopping now: the current experiment is killed and recorded as interrupted.")
        else:
            print("Stopping after the current experiment (%autoresearch stop --now to kill it).")

    def _do_pause(self, args):
        session = self._session()
        if not session.alive:
            raise UsageError(f"the run has already ended ({session.state})")
        session.pause()
        print("Pausing before the next experiment; %autoresearch resume goes on.")

    def _do_resume(self, args):
        session = self._session()
        if not session.alive:
            raise UsageError(f"the run has ended ({session.state}); "
                             "%autoresearch start --resume continues it in a new run")
        session.resume()
        print("Resumed.")

    def _do_status(self, args):
        if CURRENT.session is None:
            lab = self._lab()
            metric, direction = self._metric(lab)
            try:  # what the lab's last run said about itself: agent, profile, device, limits
                header = json.loads(lab.run_info_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                header = {}
            header["lab"] = str(lab.root)
            snapshot = {"header": header, "rows": lab.rows(), "state": "idle",
                        "message": "no run in this kernel"}
            self._print_status(snapshot, lab)
            return
        self._render_run(redisplay=True)

    def _render_run(self, redisplay: bool) -> None:
        """Dashboard (re-sent so this cell carries its latest state) or text."""
        dashboard = CURRENT.dashboard
        if self.frontend == "terminal" or dashboard is None:
            self._print_status(CURRENT.session.snapshot(), self._lab())
            return
        dashboard.load(CURRENT.session.snapshot())
        dashboard.refresh(resend=True)
        if dashboard.render_error:
            print(f"The dashboard failed to draw an update in the background: {dashboard.render_error}")
        if redisplay:
            display(dashboard.widget)

    def _print_status(self, snapshot: dict, lab) -> None:
        metric, direction = self._metric(lab)
        print(status_text(snapshot, metric, direction))
        table = measured_text(snapshot.get("rows") or [], metric, direction)
        if table:
            print("\n" + table)

    def _do_wait(self, args):
        session = self._session()
        try:
            ended = session.wait(timeout=args.timeout)
        except KeyboardInterrupt:
            ended = False
            print("Stopped waiting; the run goes on.")
        # Colab does not always draw background updates: show the dashboard again there.
        self._render_run(redisplay=self.frontend == "colab")
        snapshot = session.snapshot()
        lab = self._lab()
        metric, direction = self._metric(lab)
        facts = summarize(snapshot.get("rows") or [], snapshot.get("header") or {}, metric, direction)
        state = "ended" if ended else "still running"
        message = snapshot.get("message") or ""
        print(f"Run {state} ({snapshot.get('state')}{': ' + message if message else ''}).")
        print("\n".join(header_lines(facts)))

    def _do_show(self, args):
        from ..ui.dashboard import experiment_html

        lab = self._lab()
        metric, _ = self._metric(lab)
        row = lab.row(args.n)
        diff, log = lab.diff(args.n), lab.log_tail(args.n)
        self._show(HTML(experiment_html(row, diff, log, metric)),
                   experiment_text(row, diff, log, metric))

    def _do_diff(self, args):
        lab = self._lab()
        diff = lab.diff(args.n, args.m)
        self._show(HTML(diff_html(diff)), diff or "no changes")

    def _do_apply(self, args):
        lab = self._lab()
        relpath = args.file or (lab.config.get("allowed") or ["nanochat/train.py"])[0]
        row = lab.row(args.n)
        content = lab.file_at(args.n, relpath)
        if args.write:
            if CURRENT.alive:
                raise UsageError("the run owns the lab's working tree: %autoresearch stop, "
                                 "wait for it to end, then apply --write")
            target = Path(lab.root) / relpath
            target.write_text(content, encoding="utf-8")
            print(f"Wrote experiment {args.n}'s {relpath} to {target}.")
            return
        value = row.get(self._metric(lab)[0])
        header = (f"# %autoresearch apply {args.n}: {relpath} at commit "
                  f"{str(row.get('commit') or '')[:10]} ({row.get('status')}, "
                  f"{self._metric(lab)[0]} {value}) — {row.get('description', '')}\n")
        self.shell.set_next_input(header + content, replace=False)
        print(f"Experiment {args.n}'s {relpath} is in the next cell.")

    def _do_steer(self, args, text: str):
        if CURRENT.alive:
            CURRENT.session.steer(text)
            print("Noted: the agent reads it before its next proposal.")
            return
        lab = self._lab()
        # The same note `autoresearch-nb steer` leaves: the next run's agent reads the file.
        lab.state_dir.mkdir(exist_ok=True)
        with open(lab.steering_path, "a", encoding="utf-8") as handle:
            handle.write(f"[{time.strftime('%Y-%m-%dT%H:%M:%S')}] {' '.join(text.split())}\n")
        print(f"Noted in {lab.steering_path}: the next run's agent reads it.")

    def _do_check(self, args):
        from ..lab.labcheck import report

        if CURRENT.alive:
            raise UsageError("a run is under way: the lab is checked at rest (%autoresearch wait, then check)")
        holds, text = report(self._lab(args.lab))
        print(text if holds else f"The lab breaks {len(text.splitlines())} invariant(s):\n{text}")

    def _do_export(self, args):
        from ..report.export import export_lab

        lab = self._lab()
        path = export_lab(lab.root, out_path=args.path, html=args.html)
        print(f"Wrote {path}" + (f" and {Path(path).with_suffix('.html')}" if args.html else ""))


def _on_exit_now(change) -> None:
    if change.get("new"):
        stop_for_shutdown()


_ATEXIT_REGISTERED = False


def register(ipython) -> None:
    """Load the magics and make kernel shutdown stop the run cleanly."""
    global _ATEXIT_REGISTERED
    ipython.register_magics(AutoresearchMagics)
    # ipykernel sets exit_now in do_shutdown, before it kills child processes and before
    # Python joins threads: the earliest moment to stop the run and record the experiment.
    ipython.observe(_on_exit_now, names="exit_now")
    if not _ATEXIT_REGISTERED:
        atexit.register(stop_for_shutdown)
        _ATEXIT_REGISTERED = True


def unregister(ipython) -> None:
    """Unload the magics; a running run goes on (reload the extension to get them back)."""
    try:
        ipython.unobserve(_on_exit_now, names="exit_now")
    except ValueError:
        pass
    magics = ipython.magics_manager.magics
    magics["line"].pop("autoresearch", None)
    magics["line"].pop("program", None)
    magics["cell"].pop("program", None)
