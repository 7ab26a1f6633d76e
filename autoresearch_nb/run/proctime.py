"""An experiment's processes seen from outside through /proc (Linux): which they are, their CPU time,
and how to end all of them."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

PROC = Path("/proc")
STOP_WAIT_S = 0.5  # how long kill_tree waits for the stopped group before it gathers the tree
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def available() -> bool:
    return (PROC / "self" / "stat").exists()


def _stat(pid: str) -> tuple[int, int, int, float, int] | None:
    """(ppid, pgid, sid, CPU seconds of the process and of the children it has reaped, start time in
    ticks since boot), or None."""
    try:
        text = (PROC / pid / "stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and brackets
    ppid, pgid, sid = int(fields[1]), int(fields[2]), int(fields[3])
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return ppid, pgid, sid, (utime + stime + cutime + cstime) / TICKS, int(fields[19])


def _all_stats() -> dict[int, tuple]:
    stats = {}
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            stat = _stat(entry.name)
            if stat is not None:
                stats[int(entry.name)] = stat
    return stats


def _tree(root: int, stats: dict, reaped: bool = False) -> set[int]:
    """`root`, its group, its session, and their descendants. Once `root` has been reaped its number
    is ours only while something of its group or session lives (the kernel does not hand out a pid
    still in use as a group or session id): a process now holding that number is someone else's."""
    if reaped and root in stats:
        return set()
    members = {pid for pid, (_, pgid, sid, *_) in stats.items() if pid == root or pgid == root or sid == root}
    grew = True
    while grew:  # descendants that left the group or session (a sandbox's own session, say)
        more = {pid for pid, (ppid, *_) in stats.items() if ppid in members} - members
        members |= more
        grew = bool(more)
    return members


def tree_pids(root: int) -> set[int]:
    """`root` and every process descended from it or in its process group or session."""
    return _tree(root, _all_stats())


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system, all threads) of `root` and every process descended from it or in
    its process group or session, with the children each has reaped. A child reaped inside the tree
    moves into its parent's count, so the sum does not drop when it ends."""
    stats = _all_stats()
    return sum(stats[pid][3] for pid in _tree(root, stats))


def state(pid: int) -> str:
    """The one-letter state /proc gives `pid` (R, S, T, Z...), or "" once it is gone."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def identity(pid: int) -> str | None:
    """What tells this process from a later one given the same number: the boot and its start time."""
    stat = _stat(str(pid))
    try:
        boot = (PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return None
    return f"{boot}:{stat[4]}" if stat else None


def signal_tree(root: int, sig: int, reaped: bool = False, known: dict[int, int] | None = None) -> dict[int, int]:
    """Send `sig` to every process of `root`'s tree (see _tree), and to those of `known` (pid: start
    time, seen earlier) that still run; returns what it signalled, for a later call's `known`."""
    if not available():  # no /proc (macOS): the group alone, whose number its members keep reserved
        _signal_group(root, sig)
        return {}
    stats = _all_stats()
    targets = {pid: stats[pid][4] for pid in _tree(root, stats, reaped)}
    targets.update({pid: start for pid, start in (known or {}).items() if pid in stats and stats[pid][4] == start})
    for pid in targets:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    return targets


def kill_tree(root: int, reaped: bool = False, known: dict[int, int] | None = None) -> None:
    """SIGKILL `root`, its process group and every process descended from it, those in a session of
    their own included. While `root` is not reaped its group is stopped first, so nothing it starts
    meanwhile escapes: killing a sandbox's outer process alone leaves a just-started inside running
    if that had not yet asked to die with it."""
    if not reaped:
        _signal_group(root, signal.SIGSTOP)
        deadline = time.monotonic() + STOP_WAIT_S
        while state(root) not in ("T", "t", "Z", "X", "") and time.monotonic() < deadline:
            time.sleep(0.005)
    signal_tree(root, signal.SIGKILL, reaped, known)
    if not reaped:
        _signal_group(root, signal.SIGKILL)  # what joined the group since the scan


def _signal_group(root: int, sig: int) -> None:
    try:
        os.killpg(root, sig)
    except (ProcessLookupError, PermissionError):
        pass


BUSY_FIELDS = (0, 1, 2, 5, 6, 7)   # user nice system irq softirq steal, in /proc/stat's cpu line


def machine_busy_seconds() -> float | None:
    """CPU seconds all processors have spent busy since boot (None where /proc has no stat)."""
    try:
        with open(PROC / "stat", encoding="ascii") as handle:
            fields = handle.readline().split()[1:]
        return sum(int(fields[i]) for i in BUSY_FIELDS) / TICKS
    except (OSError, ValueError, IndexError):
        return None


class LoadSampler:
    """At most every EVERY_S seconds, how much CPU other processes took since the run started: what
    disturbance.detect reads beside the step log's wall times."""

    EVERY_S = 0.25

    def __init__(self, root: int):
        self.root = root
        self._busy0, self._own0 = machine_busy_seconds(), tree_cpu_seconds(root) if available() else None
        self._last = float("-inf")

    def others(self, now: float) -> float | None:
        if self._busy0 is None or self._own0 is None or now - self._last < self.EVERY_S:
            return None
        self._last = now
        busy = machine_busy_seconds()
        if busy is None:
            return None
        return round(max(0.0, (busy - self._busy0) - (tree_cpu_seconds(self.root) - self._own0)), 3)
