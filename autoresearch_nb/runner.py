"""Run one experiment: a subprocess in its own process group, a hard timeout, the log, the summary."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import sandbox as sandboxing
from .procstat import StepSampler

SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
SECRET_PREFIXES = ("ANTHROPIC_", "OPENAI_", "HF_", "HUGGING_FACE")
SUMMARY_LINE = re.compile(r"^([a-zA-Z_]+):\s+(-?[0-9.]+(?:e[-+]?\d+)?|nan|inf)\s*$")
SUMMARY_KEYS = ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M", "depth")
JUDGED_KEYS = ("val_bpb", "training_seconds")
STEP_LINE = re.compile(r"^step\s+(\d+)\s*\|")


@dataclass
class RunResult:
    ok: bool
    kind: str | None = None          # crash kind when not ok
    reason: str = ""
    summary: dict = field(default_factory=dict)
    returncode: int | None = None
    wall_seconds: float = 0.0
    tail: str = ""
    steps: list = field(default_factory=list)   # step lines as the runner saw them (procstat.StepSampler)


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


def parse_step(line: str) -> dict | None:
    """`step 120 | loss 3.412 | lr 0.0300 | tok/s 51234 | progress 0.41 | elapsed 24.6s` -> dict."""
    if not STEP_LINE.match(line):
        return None
    values = {}
    for part in line.split("|"):
        bits = part.strip().split()
        if len(bits) != 2:
            continue
        key, raw = bits[0].replace("/", "_"), bits[1].rstrip("s")
        try:
            values[key] = float(raw)
        except ValueError:
            continue
    if "step" in values:
        values["step"] = int(values["step"])
    return values


class SummaryReader:
    """Reads the summary block as the lines stream by, over the whole output (not a tail), so no
    line can be pushed out of sight. Trusted only as one block: a `---` line, then the summary
    fields once each, in their fixed order; a judged metric line anywhere else is a forgery."""

    def __init__(self):
        self.summary: dict = {}
        self.problems: list[str] = []
        self.blocks = 0
        self._expect: int | None = None  # position in SUMMARY_KEYS while inside a block

    def feed(self, line: str) -> None:
        text = line.strip()
        if text == "---":
            self.blocks += 1
            self._expect = 0
            return
        match = SUMMARY_LINE.match(text)
        key = match.group(1) if match else text.split(":", 1)[0].strip()
        if key not in SUMMARY_KEYS:
            self._expect = None
            return
        position = SUMMARY_KEYS.index(key)
        if self._expect is None or position < self._expect or not match:
            if key in JUDGED_KEYS:  # a harmless "depth: 6" printed by train.py is no forgery
                self.problems.append(f"a stray {key} line outside the summary block")
            self._expect = None
            return
        if key in self.summary:
            self.problems.append(f"{key} was printed more than once")
        self.summary[key] = float(match.group(2))
        self._expect = position + 1  # fields come in the fixed order; a target may print fewer

    def result(self) -> tuple[dict, list[str]]:
        problems = list(self.problems)
        if self.summary and self.blocks != 1:
            problems.append("the summary block was printed more than once")
        return self.summary, problems


def parse_summary(lines: list[str]) -> tuple[dict, list[str]]:
    """The summary block's values, and any problems (see SummaryReader)."""
    reader = SummaryReader()
    for line in lines:
        reader.feed(line)
    return reader.result()


def classify_failure(returncode: int, tail: list[str], timed_out: bool, stopped: bool,
                     refused: str | None = None) -> tuple[str, str]:
    """(crash kind, reason) for a run that did not end with a usable summary; `refused`: what the
    sandbox refused, read from the output by sandbox.refusal."""
    text = "\n".join(tail)
    fail_line = next((l for l in reversed(tail) if l.startswith("FAIL:")), "")
    if stopped:
        return "interrupted", "stopped by the person"
    if timed_out:
        return "timeout", "killed at the hard timeout (budget plus start-up allowance)"
    if "SyntaxError" in text or "IndentationError" in text:
        return "syntax", _last_error(tail)
    if refused:
        return "sandbox", refused
    if "out of memory" in text.lower() or "OutOfMemoryError" in text or "MemoryError" in text:
        return "oom", _last_error(tail)
    if fail_line and ("nan" in fail_line.lower() or "diverged" in fail_line.lower() or "inf" in fail_line.lower()):
        return "nan", fail_line[5:].strip()
    if fail_line:
        return "exception", fail_line[5:].strip()
    if returncode is not None and returncode < 0:
        return "killed", f"killed by signal {signal.Signals(-returncode).name}"
    if "Traceback" in text:
        return "exception", _last_error(tail)
    return "exception", f"exit code {returncode} without a summary block"


def _last_error(tail: list[str]) -> str:
    for line in reversed(tail):
        if line.strip() and not line.startswith(" "):
            return line.strip()[:300]
    return ""


def budget_limit(budget: float, summary: dict) -> float:
    """Training time that still counts as within the budget: the last step may finish after the
    budget ends, and on a busy machine one step can outlast a short budget. The step allowance
    is capped, so a giant step cannot buy real extra training."""
    steps = max(1.0, summary.get("num_steps") or 1.0)
    step_seconds = summary.get("training_seconds", 0.0) / steps
    return budget * 1.1 + 5.0 + min(step_seconds, 10.0)


class Runner:
    """Starts the experiment, streams its output, and can be stopped from another thread."""

    def __init__(self, command: list[str], cwd: Path, env: dict, log_path: Path, budget: float,
                 timeout: float, on_step: Callable[[dict], None] | None = None,
                 on_start: Callable[[int], None] | None = None, sandbox: sandboxing.Probe | None = None):
        """`sandbox`: the sandbox `command` was wrapped in (sandbox.wrap), for the log and crash reasons."""
        self.command = [sys.executable if part == "{python}" else part for part in command]
        self.cwd, self.env, self.log_path = cwd, env, log_path
        self.budget, self.timeout, self.on_step, self.on_start = budget, timeout, on_step, on_start
        self.sandbox = sandbox
        self.process: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._timed_out = False

    def stop(self) -> None:
        """Kill the whole process group now; the run is recorded as interrupted."""
        self._stop.set()
        self._kill()

    def _kill(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _watchdog(self, deadline: float) -> None:
        while self.process and self.process.poll() is None:
            if time.monotonic() >= deadline:
                self._timed_out = True
                self._kill()
                return
            if self._stop.wait(0.2):
                return

    def run(self) -> RunResult:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        tail: list[str] = []
        reader = SummaryReader()
        with open(self.log_path, "w", encoding="utf-8") as log:
            log.write(f"$ {' '.join(self.command)}\n")
            if self.sandbox:
                log.write(f"sandbox: {self.sandbox}\n")
            log.flush()
            try:
                self.process = subprocess.Popen(
                    self.command, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                    text=True, encoding="utf-8", errors="replace", bufsize=1)
            except OSError as error:
                return RunResult(False, "exception", f"could not start {self.command[0]}: {error}")
            if self.on_start:
                self.on_start(self.process.pid)
            if self._stop.is_set():
                self._kill()
            watchdog = threading.Thread(target=self._watchdog, args=(started + self.timeout,), daemon=True)
            watchdog.start()
            sampler = StepSampler(self.process.pid, started)
            for line in self.process.stdout:
                log.write(line)
                log.flush()
                line = line.rstrip("\n")
                tail.append(line)
                reader.feed(line)
                if len(tail) > 400:
                    del tail[:200]
                step = parse_step(line)
                if step:
                    step["wall"] = sampler.step(step, time.monotonic())
                    if self.on_step:
                        self.on_step(step)
            returncode = self.process.wait()
            confined = self.sandbox is not None and self.sandbox.active
            if confined:
                returncode = sandboxing.exit_status(returncode)
            watchdog.join(timeout=1)
            wall = time.monotonic() - started
            log.write(f"\n[autoresearch-nb] exit code {returncode}, wall {wall:.1f}s\n")
        result = self._outcome(returncode, reader, tail, wall)
        result.steps = sampler.samples
        return result

    def _outcome(self, returncode: int, reader: "SummaryReader", tail: list[str], wall: float) -> RunResult:
        tail_text = "\n".join(tail[-40:])
        stopped = self._stop.is_set() and not self._timed_out
        summary, problems = reader.result()
        if returncode == 0 and "val_bpb" in summary and not problems and not stopped:
            if summary.get("training_seconds", 0.0) > budget_limit(self.budget, summary):
                return RunResult(False, "budget", f"trained {summary['training_seconds']:.1f}s against a "
                                 f"{self.budget:.0f}s budget", summary, returncode, wall, tail_text)
            return RunResult(True, None, "", summary, returncode, wall, tail_text)
        if problems and not stopped:
            return RunResult(False, "exception", "; ".join(problems), summary, returncode, wall, tail_text)
        confined = self.sandbox is not None and self.sandbox.active
        refused = sandboxing.refusal(tail[-60:], env=self.env, cwd=self.cwd) if confined else None
        kind, reason = classify_failure(returncode, tail[-60:], self._timed_out, stopped, refused)
        return RunResult(False, kind, reason, summary, returncode, wall, tail_text)
