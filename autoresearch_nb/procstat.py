"""CPU time from /proc, read from outside a process: its process tree's own, and everyone else's.

Linux only; elsewhere each reader returns None and callers do without.
"""
from __future__ import annotations

import os

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)   # user nice system irq softirq steal, in /proc/stat's cpu line


def machine_busy_seconds() -> float | None:
    """CPU seconds all processors have spent busy since boot."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()[1:]
        return sum(int(fields[i]) for i in BUSY_FIELDS) / TICKS
    except (OSError, ValueError, IndexError):
        return None


def tree_cpu_seconds(root: int) -> float | None:
    """CPU seconds used by process `root` and every live descendant (a sandbox puts the training
    process in a session of its own, so the tree, not the session, is what belongs to a run),
    reaped children included."""
    if not os.path.isdir("/proc"):
        return None
    parents, seconds = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as handle:
                text = handle.read()
            fields = text[text.rfind(")") + 2:].split()  # the command name may hold spaces
            parents[int(name)] = int(fields[1])
            seconds[int(name)] = sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS  # utime stime cutime cstime
        except (OSError, ValueError, IndexError):
            continue
    if root not in parents:
        return None
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += seconds.get(pid, 0.0)
        stack += children.get(pid, [])
    return total


class StepSampler:
    """The runner's view of a run's step lines: its own wall clock, and at most every EVERY_S
    seconds how much CPU other processes took meanwhile (for disturbance.detect)."""

    EVERY_S = 0.25
    MAX_SAMPLES = 4000

    def __init__(self, root: int, started: float):
        self.root, self.started = root, started
        self.samples: list[dict] = []
        self._busy0 = machine_busy_seconds()
        self._own0 = tree_cpu_seconds(self.root)
        self._last = float("-inf")

    def step(self, step: dict, now: float) -> float:
        """Record a step line seen at monotonic time `now`; returns its wall offset."""
        wall = now - self.started
        if wall - self._last < self.EVERY_S or len(self.samples) >= self.MAX_SAMPLES:
            return wall
        self._last = wall
        sample = {"step": step.get("step"), "wall": round(wall, 3)}
        if "elapsed" in step:
            sample["elapsed"] = step["elapsed"]
        busy, own = machine_busy_seconds(), tree_cpu_seconds(self.root)
        if None not in (busy, own, self._busy0, self._own0):
            sample["others_cpu"] = round(max(0.0, (busy - self._busy0) - (own - self._own0)), 3)
        self.samples.append(sample)
        return wall
