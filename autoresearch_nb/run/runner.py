"""Run one experiment: training in a subprocess of its own process group, timed from outside; then the
fixed evaluator in a process of its own. A hard timeout, the log, the summary."""
from __future__ import annotations

import codecs
import json
import math
import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..lab.ledger import make_folder
from . import proctime
from . import sandbox as sandboxing
from .boundary import ProtectedFiles
from .summary import SummaryReader, budget_limit, classify_failure, format_summary, parse_step, parse_summary  # parse_summary: callers read it here too

SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
SECRET_PREFIXES = ("ANTHROPIC_", "OPENAI_", "HF_", "HUGGING_FACE")
HANDOVER_KEYS = ("peak_vram_mb", "mfu_percent", "total_tokens_M", "num_steps", "num_params_M", "depth", "overflow_steps")
CLOCK_MARKER = "training clock started"  # printed by the fixed TrainingClock.start()
LINGER_SECONDS = 3.0  # after the training process ends, its leftover children get this long
CPU_POLL_S = 0.05     # how often the cpu clock reads a sandboxed experiment's CPU time from outside
NEWLINES = re.compile(r"\r\n|\r|\n")
MAX_LINE = 1 << 20   # characters: a longer line is cut


@dataclass
class RunResult:
    ok: bool
    kind: str | None = None          # crash kind when not ok
    reason: str = ""
    summary: dict = field(default_factory=dict)
    returncode: int | None = None
    wall_seconds: float = 0.0
    tail: str = ""
    # One dict per step line: wall (the runner's seconds since the start), step, elapsed (the inside clock), loss...
    steps: list = field(default_factory=list)
    # startup_s (before the clock marker), training_s (judged), export_s, evaluate_s (from "go" to the
    # evaluator's exit), eval_compute_s (its arithmetic alone), evaluator_cpu_s (all it used, start-up too)
    timings: dict = field(default_factory=dict)
    # When (epoch seconds) its training process was spawned, its clock started, training ended and the
    # run ended: the record that no run's timed training overlapped another run on its worker.
    span: dict = field(default_factory=dict)


def clean_environment(extra: dict | None = None) -> dict:
    """The parent's environment without secrets; the experiment never sees an API key."""
    env = {}
    for name, value in os.environ.items():
        upper = name.upper()
        if any(marker in upper for marker in SECRET_MARKERS) or upper.startswith(SECRET_PREFIXES):
            continue
        env[name] = value
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in (extra or {}).items() if v is not None})
    return env


HOLDOUT_LINE = re.compile(r"^holdout_bpb:\s+([0-9.]+)\s*$")


class _Process:
    """A subprocess in a process group of its own, reaped with its CPU time; its output read line by
    line; it and everything it started killable from any thread."""

    def __init__(self, command: list[str], cwd: Path, env: dict, stdin=subprocess.DEVNULL):
        self.popen = subprocess.Popen(command, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.popen.pid
        self.exited = threading.Event()
        self.drained = threading.Event()    # its output has ended, or was given up on
        self._abandoned = threading.Event()
        self.cut_short = False              # reading stopped before the output ended
        self.exit_time = 0.0
        self.cpu_seconds = 0.0  # its own and its reaped descendants', from wait4
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self) -> None:
        # wait4, not Popen.wait: it also reports the CPU time of the process and all it reaped.
        try:
            _, status, usage = os.wait4(self.pid, 0)
            self.cpu_seconds = usage.ru_utime + usage.ru_stime
            self.popen.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # reaped elsewhere (a Popen.poll()): the exit code is known, the CPU time not
            self.popen.wait()
        self.exit_time = time.monotonic()
        self.exited.set()

    def lines(self):
        """Its output, line by line, until the pipe closes; once `abandon` is called, what the pipe
        already holds (at most MAX_LINE more) and no more."""
        fd = self.popen.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending, drained_after = "", 0
        try:
            while True:
                if self._abandoned.is_set():
                    if drained_after > MAX_LINE or not poller.poll(0):
                        self.cut_short = True
                        break
                elif not poller.poll(200):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                if self._abandoned.is_set():
                    drained_after += len(chunk)
                pending += decoder.decode(chunk)
                held = "\r" if pending.endswith("\r") else ""  # a "\r\n" split between two reads
                *complete, pending = NEWLINES.split(pending[:len(pending) - len(held)])
                pending += held
                if len(pending) > MAX_LINE:  # a line without end: cut it, rather than re-split it forever
                    complete.append(pending)
                    pending = ""
                yield from complete
            rest = (pending + decoder.decode(b"", final=True)).rstrip("\r")
            if rest:
                yield rest
        finally:
            self.popen.stdout.close()
            self.drained.set()

    def abandon(self) -> None:
        """Stop reading: what still holds the output open escaped every kill (a daemon of its own)."""
        self._abandoned.set()

    def kill(self) -> None:
        """SIGKILL the process, its group and every descendant (the sandbox's inside included)."""
        if not (self.exited.is_set() and self.drained.is_set()):  # once both, end_all() sweeps what is left
            self.end_all()

    def end_all(self) -> None:
        """Kill it if it still runs, and whatever of its group or session is left once it has ended."""
        proctime.kill_tree(self.pid, reaped=self.exited.is_set())


class Runner:
    """Starts the experiment, streams its output, evaluates what it handed over; stoppable from another thread.

    With `evaluate` (a command; `{python}` and `{run_dir}` are filled in) the training process's output
    decides nothing: it must print the clock marker and hand a model over in `run_dir`; the evaluator,
    started beside it and told "go" on its standard input once training has ended, gives val_bpb; the
    runner's own timing from the marker to the end of the process gives training_seconds (CPU time of
    the process tree over `cores` on the cpu clock, wall time otherwise). Without `evaluate` (targets
    whose command prints its own summary) the summary is read from the command's output.
    `wrap` turns the training command into a sandboxed one; `protected` files must be unchanged after.
    `after`: runs on the same worker still being evaluated. This run starts up beside them (imports,
    data, model, compile: never another run's timed training, which ended before it was started), but
    its training clock waits at prepare.py's gate until each has ended. `on_trained` is called once
    the training process has ended well and only the evaluation is left: the worker may start the next.
    """

    def __init__(self, command: list[str], cwd: Path, env: dict, log_path: Path, budget: float,
                 timeout: float, on_step: Callable[[dict], None] | None = None,
                 on_start: Callable[[int], None] | None = None, *, run_dir: Path | None = None,
                 evaluate: list[str] | None = None, clock: str = "wall", cores: int = 1,
                 startup_limit: float | None = None, protected=(),
                 wrap: Callable[[list[str]], list[str]] | None = None,
                 sandbox: "sandboxing.Probe | None" = None, after: list[threading.Event] | None = None,
                 on_trained: Callable[[], None] | None = None, training_env: dict | None = None):
        self.run_dir = Path(run_dir) if run_dir else None
        self.command = self._fill(command)
        if wrap:  # a sandbox around the training command (never around the evaluator, which needs the data)
            self.command = wrap(self.command)
        self.evaluate = self._fill(evaluate) if evaluate else None
        self.cwd, self.env, self.log_path = cwd, dict(env), log_path
        self.training_env = {k: str(v) for k, v in (training_env or {}).items()}  # not the evaluator's
        self.budget, self.timeout, self.on_step, self.on_start = budget, timeout, on_step, on_start
        self.clock, self.cores, self.startup_limit = clock, max(1, int(cores)), startup_limit
        self.protected = list(protected)
        self.sandbox = sandbox          # the sandbox `wrap` put around training, for the log and crash reasons
        self.after, self.on_trained = after, on_trained
        self._gate_opened: float | None = None  # when the runs before it on this worker had all ended
        if after is not None:
            self.env["AUTORESEARCH_CLOCK_GATE"] = "stdin"
        self._load: proctime.LoadSampler | None = None
        self._cpu_seen = 0.0
        if self.run_dir:
            self.env["AUTORESEARCH_RUN_DIR"] = str(self.run_dir)
        if clock == "cpu":
            self.env["AUTORESEARCH_CPU_COUNT"] = str(self.cores)
            # Spinning OpenMP threads burn CPU time the clock counts, and far more beside a busy neighbour.
            self.env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.process: subprocess.Popen | None = None
        self._training: _Process | None = None
        self._evaluator: _Process | None = None
        self._stop = threading.Event()
        self._timed_out = False
        self._marked: tuple[float, float] | None = None  # (wall, CPU seconds of the tree) at the clock marker
        self._started = 0.0
        self._facts: dict = {}
        self.timings: dict = {}

    def _fill(self, command: list[str]) -> list[str]:
        return [sys.executable if part == "{python}" else part.replace("{run_dir}", str(self.run_dir or ""))
                for part in command]

    def stop(self) -> None:
        """Kill the experiment (and its evaluator) now; the run is recorded as interrupted."""
        self._stop.set()
        for process in (self._training, self._evaluator):
            if process:
                process.kill()

    def _count_cpu(self, process: _Process) -> None:
        """The process tree's CPU time, read every CPU_POLL_S while it runs. wait4 reports it exactly when
        training is our child, but not through a sandbox's pid namespace, whose init reaps it: there
        the last reading counts (at most CPU_POLL_S of work after it goes uncounted)."""
        while not process.exited.is_set():
            seen = proctime.tree_cpu_seconds(process.pid)
            if not process.exited.is_set():
                self._cpu_seen = max(self._cpu_seen, seen)
            process.exited.wait(CPU_POLL_S)

    def _watch(self, process: _Process, deadline: Callable[[], float]) -> None:
        """Kill `process` at the deadline, on stop, or shortly after it ended if children keep its output
        open; kill again while anything of it is left, and stop reading what escaped every kill."""
        killed_at = None
        while not (process.drained.is_set() and process.exited.is_set()):
            now = time.monotonic()
            if killed_at is None:
                if now >= deadline():
                    self._timed_out = True
                elif not (self._stop.is_set() or (process.exited.is_set() and now >= process.exit_time + LINGER_SECONDS)):
                    self._stop.wait(0.2)
                    continue
                killed_at = now
            elif now >= killed_at + LINGER_SECONDS:
                process.abandon()
            process.kill()
            (process.exited if process.drained.is_set() else process.drained).wait(0.25)

    def _stream(self, process: _Process, log, tail: list[str], started: float, feed: Callable[[str], None],
                sealed: Callable[[str], bool] = lambda line: False) -> None:
        for line in process.lines():
            if sealed(line):  # the holdout's number: to the harness only, never to a log an agent may read
                feed(line)
                continue
            log.write(line + "\n")
            log.flush()
            tail.append(line)
            if len(tail) > 400:
                del tail[:200]
            feed(line)
        if process.cut_short:
            log.write("[autoresearch-nb] stopped reading the output: a process that left the experiment's "
                      "tree (a daemon of its own) still held it open after every kill\n")
        process.exited.wait()

    def _on_line(self, line: str, started: float, reader: SummaryReader, steps: list) -> None:
        reader.feed(line)
        if line == CLOCK_MARKER and self._marked is None:  # the first marker counts: an early one only costs
            cpu = proctime.tree_cpu_seconds(self._training.pid) if self._cpu_clock else 0.0
            self._marked = (time.monotonic(), cpu)
        step = parse_step(line)
        if step:
            now = time.monotonic()
            step = {"wall": round(now - started, 3), **step}
            others = self._load.others(now) if self._load else None
            if others is not None:
                step["others_cpu"] = others
            steps.append(step)
            if self.on_step:
                self.on_step(dict(step))  # a copy: the callback cannot change the record

    @property
    def _confined(self) -> bool:
        return self.sandbox is not None and self.sandbox.active

    def _refused(self, tail: list[str]) -> str | None:
        return sandboxing.refusal(tail[-60:], env=self.env, cwd=self.cwd) if self._confined else None

    @property
    def _cpu_clock(self) -> bool:
        return self.clock == "cpu" and proctime.available()

    def _open_gate(self) -> None:
        """Say "go" to the training clock once the runs before this one on its worker have all ended."""
        while not all(done.wait(0.2) for done in self.after):
            if self._stop.is_set() or self._training.exited.is_set():
                return
        self._gate_opened = time.monotonic()
        try:
            self._training.popen.stdin.write(b"go\n")
            self._training.popen.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # it ended (or stopped reading) first: its output says why

    @property
    def _overlap(self) -> float:
        """Seconds of this run that went on beside the evaluation of the run before it."""
        if self.after is None:
            return 0.0
        opened = self._gate_opened if self._gate_opened is not None else time.monotonic()
        return max(0.0, opened - self._started)

    def _training_deadline(self) -> float:
        return self._started + self.timeout + self._overlap  # waiting at the gate is not this run's time

    def run(self) -> RunResult:
        try:
            return self._run()
        except BaseException:  # the harness itself failed: nothing of the experiment runs on
            if self._training:
                self._training.end_all()
            raise
        finally:  # training was swept when its output ended; the evaluator may still wait for "go"
            if self._evaluator:
                self._evaluator.end_all()

    def _run(self) -> RunResult:
        make_folder(self.log_path.parent)
        guard = ProtectedFiles(self.protected)
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            make_folder(self.run_dir)
        started = self._started = time.monotonic()
        tail: list[str] = []
        steps: list[dict] = []
        reader = SummaryReader()
        with open(self.log_path, "w", encoding="utf-8") as log:
            log.write(f"$ {' '.join(self.command)}\n")
            if self.sandbox is not None:
                log.write(f"sandbox: {self.sandbox}\n")
            log.flush()
            try:
                self._training = _Process(self.command, self.cwd, {**self.env, **self.training_env},
                                          stdin=subprocess.DEVNULL if self.after is None else subprocess.PIPE)
                if self.evaluate:  # its start-up (imports, data) overlaps training; it waits for "go"
                    self._evaluator = _Process(self.evaluate, self.cwd, self.env, stdin=subprocess.PIPE)
            except OSError as error:
                self.stop()
                return RunResult(False, "exception", f"could not start {self.command[0]}: {error}")
            self.process = self._training.popen
            self._load = proctime.LoadSampler(self._training.pid)
            if self._cpu_clock:
                threading.Thread(target=self._count_cpu, args=(self._training,), daemon=True).start()
            if self.on_start:
                self.on_start(self._training.pid)
            if self._stop.is_set():
                self.stop()
            if self.after is not None:
                threading.Thread(target=self._open_gate, daemon=True).start()
            watchdog = threading.Thread(target=self._watch, args=(self._training, self._training_deadline), daemon=True)
            watchdog.start()
            self._stream(self._training, log, tail, started,
                         lambda line: self._on_line(line, started, reader, steps))
            watchdog.join(timeout=1)
            self._training.end_all()  # what it left behind must not run beside the evaluation or the next run
            returncode = self.process.returncode
            if self._confined:
                returncode = sandboxing.exit_status(returncode)
            wall = time.monotonic() - started
            log.write(f"\n[autoresearch-nb] exit code {returncode}, wall {wall:.1f}s\n")
            log.flush()
            stopped = self._stop.is_set() and not self._timed_out
            if self.evaluate is None:
                return self._own_summary(reader, returncode, wall, tail, steps, stopped)
            result = self._judge_training(returncode, wall, tail, steps, stopped, guard)
            if result is None:
                if self.on_trained:
                    self.on_trained()
                result = self._evaluate(log, started, tail, steps, guard)
        for name in ("model.pt2", "checked.pt2"):  # the GPU model is hundreds of MB
            if self.run_dir:
                (self.run_dir / name).unlink(missing_ok=True)
        result.span = self._span()
        return result

    def _span(self) -> dict:
        offset = time.time() - time.monotonic()
        moments = {"spawned": self._started, "clock": self._marked[0] if self._marked else None,
                   "trained": self._training.exit_time if self._training and self._training.exited.is_set() else None,
                   "ended": time.monotonic()}
        return {name: round(moment + offset, 3) for name, moment in moments.items() if moment}

    def _own_summary(self, reader, returncode, wall, tail, steps, stopped) -> RunResult:
        """A target that prints its own summary (no evaluator): read it from the output."""
        tail_text = "\n".join(tail[-40:])
        summary, problems = reader.result()
        if returncode == 0 and "val_bpb" in summary and not problems and not stopped:
            if summary.get("training_seconds", 0.0) > budget_limit(self.budget, summary):
                return RunResult(False, "budget", f"trained {summary['training_seconds']:.1f}s against a "
                                 f"{self.budget:.0f}s budget", summary, returncode, wall, tail_text, steps)
            return RunResult(True, None, "", summary, returncode, wall, tail_text, steps)
        if problems and not stopped:
            return RunResult(False, "exception", "; ".join(problems), summary, returncode, wall, tail_text, steps)
        kind, reason = classify_failure(returncode, tail[-60:], self._timed_out, stopped, self._refused(tail))
        return RunResult(False, kind, reason, summary, returncode, wall, tail_text, steps)

    def _judge_training(self, returncode, wall, tail, steps, stopped, guard) -> RunResult | None:
        """The training process's part: ended cleanly, touched nothing it may not, started its clock in
        time, stayed within the budget by the runner's own count, handed a model over. None: all good."""
        tail_text = "\n".join(tail[-40:])
        training = self._training
        changed = guard.restore_changed()
        if changed and not stopped:
            return RunResult(False, "refused", f"the experiment wrote to {', '.join(changed)} (restored): locked "
                             "files are fixed; experiments write only their run directory", {}, returncode, wall,
                             tail_text, steps)
        if returncode != 0 or stopped or self._timed_out:
            kind, reason = classify_failure(returncode, tail[-60:], self._timed_out, stopped, self._refused(tail))
            return RunResult(False, kind, reason, {}, returncode, wall, tail_text, steps)
        facts = self._handover_facts()
        if self._marked is None:
            return RunResult(False, "budget", "the training clock never started: prepare.TrainingClock.start() "
                             "prints the line the harness times training from", facts, returncode, wall, tail_text, steps)
        marked_wall, marked_cpu = self._marked
        if self._cpu_clock:
            startup = marked_cpu / self.cores
            training_seconds = (max(training.cpu_seconds, self._cpu_seen, marked_cpu) - marked_cpu) / self.cores
        else:  # start-up beside the last run's evaluation is not held against it
            startup = marked_wall - self._started - self._overlap
            training_seconds = training.exit_time - marked_wall
        self.timings = {"startup_s": round(startup, 3), "training_s": round(training_seconds, 3),
                        "export_s": round(facts.pop("export_seconds", 0.0), 3)}
        if self.after is not None:
            self.timings["overlap_s"] = round(self._overlap, 3)
        facts["training_seconds"] = round(training_seconds, 1)
        facts["total_seconds"] = round(wall, 1)
        if self.startup_limit is not None and startup > self.startup_limit:
            compiling = " (compiling on the CPU needs more: set \"startup_allowance\" in .autoresearch/config.json)" \
                if self._cpu_clock else ""
            return RunResult(False, "budget", f"worked {startup:.1f}s before the training clock started (the "
                             f"limit is {self.startup_limit:.0f}s): start the clock before training{compiling}",
                             facts, returncode, wall, tail_text, steps, self.timings)
        if training_seconds > budget_limit(self.budget, facts):
            return RunResult(False, "budget", f"trained {training_seconds:.1f}s against a {self.budget:.0f}s "
                             f"budget ({self.clock} clock, measured by the harness)", facts, returncode, wall,
                             tail_text, steps, self.timings)
        if not (self.run_dir / "model.pt2").is_file():
            return RunResult(False, "exception", "no model was handed over: train.py ends with finish(model, ...), "
                             "which exports it", facts, returncode, wall, tail_text, steps, self.timings)
        self._facts = facts
        return None

    def _handover_facts(self) -> dict:
        """The unjudged facts train.py's finish() wrote; only known keys, only finite numbers."""
        try:
            raw = json.loads((self.run_dir / "handover.json").read_text())
        except (OSError, ValueError, TypeError):
            return {}
        return {k: float(raw[k]) for k in HANDOVER_KEYS + ("export_seconds",)
                if isinstance(raw.get(k), (int, float)) and math.isfinite(raw[k])}

    def _evaluate(self, log, started, tail, steps, guard) -> RunResult:
        """Tell the waiting evaluator to go, stream its output into the log, compose the summary."""
        evaluator, facts = self._evaluator, self._facts
        log.write(f"[autoresearch-nb] evaluating in a separate process: {' '.join(self.evaluate)}\n")
        log.flush()
        go = time.monotonic()
        try:
            evaluator.popen.stdin.write(b"go\n")
            evaluator.popen.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # it ended early; its output says why
        watchdog = threading.Thread(target=self._watch, args=(evaluator, lambda: go + self.timeout), daemon=True)
        watchdog.start()
        lines: list[str] = []
        reader = SummaryReader()
        holdout: list[float] = []

        def feed(line: str) -> None:
            found = HOLDOUT_LINE.match(line)
            if found:
                holdout.append(float(found.group(1)))
                return
            lines.append(line)
            reader.feed(line)

        self._stream(evaluator, log, tail, started, feed, sealed=lambda line: bool(HOLDOUT_LINE.match(line)))
        watchdog.join(timeout=1)
        wall = time.monotonic() - started
        self.timings["evaluate_s"] = round(time.monotonic() - go, 3)
        self.timings["evaluator_cpu_s"] = round(evaluator.cpu_seconds, 3)  # start-up included, beside training
        found = re.search(r"evaluated \d+ rows in ([0-9.]+)s", "\n".join(lines))
        if found:
            self.timings["eval_compute_s"] = float(found.group(1))
        returncode = evaluator.popen.returncode
        tail_text = "\n".join(tail[-40:])
        summary, problems = reader.result()
        changed = guard.restore_changed()
        if changed:
            return RunResult(False, "refused", f"{', '.join(changed)} changed during the evaluation (restored)",
                             facts, returncode, wall, tail_text, steps, self.timings)
        stopped = self._stop.is_set() and not self._timed_out
        if stopped or self._timed_out or returncode != 0 or "val_bpb" not in summary or problems:
            kind, reason = classify_failure(returncode, lines[-60:], self._timed_out, stopped)
            if kind in ("exception", "killed", "syntax", "export"):
                kind = "refused"  # the evaluator is fixed code: what fails there is the model it was given
                reason = reason if reason else "the evaluator could not run the model"
            if problems:
                reason = "; ".join(problems)
            if self._timed_out:
                reason = "the evaluation ran past the hard timeout"
            return RunResult(False, kind, reason, facts, returncode, wall, tail_text, steps, self.timings)
        facts["total_seconds"] = round(wall, 1)
        composed = {"val_bpb": summary["val_bpb"], **facts}
        if len(holdout) == 1:
            composed["holdout_bpb"] = holdout[0]  # sealed: kept in a row only where nothing selects on it (records.settle)
        log.write("[autoresearch-nb] the run's summary: val_bpb from the evaluator, training_seconds "
                  "timed by the harness, the rest as train.py handed it over\n" + format_summary(composed))
        return RunResult(True, None, "", composed, returncode, wall, tail_text, steps, self.timings)
