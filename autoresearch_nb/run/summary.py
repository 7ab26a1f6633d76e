"""What an experiment prints, read: step lines, the summary block (trusted only as one block), crash kinds."""
from __future__ import annotations

import re
import signal

SUMMARY_LINE = re.compile(r"^([a-zA-Z_]+):\s+(-?[0-9.]+(?:e[-+]?\d+)?|nan|inf)\s*$")
SUMMARY_KEYS = ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M", "depth", "overflow_steps")  # the last: float16 runs only
JUDGED_KEYS = ("val_bpb", "training_seconds")
STEP_LINE = re.compile(r"^step\s+(\d+)\s*\|")


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


SUMMARY_FORMATS = {"val_bpb": ".6f", "mfu_percent": ".2f", "num_steps": ".0f", "depth": ".0f",
                   "overflow_steps": ".0f"}  # others: .1f


def format_summary(summary: dict) -> str:
    """The summary block as the fixed code prints it (for the log of a run the harness composed)."""
    return "---\n" + "".join(f"{key + ':':<18}{summary[key]:{SUMMARY_FORMATS.get(key, '.1f')}}\n"
                              for key in SUMMARY_KEYS if key in summary)


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
    if fail_line.startswith("FAIL: export:"):
        return "export", fail_line[len("FAIL: export:"):].strip()
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
