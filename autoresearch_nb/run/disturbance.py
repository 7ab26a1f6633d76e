"""Was a run disturbed from outside? Read from its step log as the runner timed it; a pure function.

A run's steps go at its own pace. When other work on the machine takes the processor for a
while, a stretch of steps goes far slower than that pace: the run trains less in a wall-clock
budget (or runs colder caches under a CPU-time budget), so its number says little about its
code. Such a run is run again rather than judged.

The rule: per-step wall time between step lines; the run's own pace is the PACE_QUANTILE of it
over the run (its quicker steps: a median would itself move if half the run were slowed; the
first WARMUP_LINES intervals are left out, allocation and warm-up are slow for everyone); the
time lost is what intervals slower than SLOW_FACTOR times that pace took beyond it. The run is disturbed when the lost time
is at least LOST_SHARE of its training wall time. Where the runner also sampled how much CPU
other processes used (`others_cpu`, cumulative seconds), a slow stretch counts only if other
processes were busy during it (at least OTHERS_BUSY cores on average): a run that stalls itself
(sleeps, waits) is slow by its own doing, and that is its result, not a disturbance.
"""
from __future__ import annotations

from dataclasses import dataclass

WARMUP_LINES = 2
MIN_LINES = 6
SLOW_FACTOR = 1.5
PACE_QUANTILE = 0.1
LOST_SHARE = 0.10
OTHERS_BUSY = 0.5


@dataclass(frozen=True)
class Disturbance:
    lost_s: float        # wall seconds lost to slow stretches
    share: float         # of the training wall time
    worst_s: float       # the longest single gap between step lines
    pace_s: float        # the run's own median seconds per step

    def reason(self) -> str:
        return (f"disturbed from outside: {self.lost_s:.1f} s of {self.lost_s / self.share:.0f} s "
                f"training lost to slow steps ({100 * self.share:.0f}%; longest gap {self.worst_s:.1f} s "
                f"against {self.pace_s:.2f} s per step)")

    def record(self) -> dict:
        return {"lost_s": round(self.lost_s, 2), "share": round(self.share, 3),
                "worst_s": round(self.worst_s, 2), "pace_s": round(self.pace_s, 4)}


def detect(steps: list[dict]) -> Disturbance | None:
    """The disturbance in a run's step samples ({wall, step[, others_cpu]}), or None."""
    samples = [s for s in steps if isinstance(s.get("wall"), (int, float)) and isinstance(s.get("step"), (int, float))]
    if any("others_cpu" in s for s in samples):  # the runner sampled the load on some lines: judge on those
        samples = [s for s in samples if "others_cpu" in s]
    if len(samples) < MIN_LINES:
        return None
    intervals = []
    for before, after in zip(samples, samples[1:]):
        steps_between = after["step"] - before["step"]
        seconds = after["wall"] - before["wall"]
        if steps_between <= 0 or seconds < 0:
            continue
        others = None
        if "others_cpu" in before and "others_cpu" in after:
            others = after["others_cpu"] - before["others_cpu"]
        intervals.append((seconds, steps_between, others))
    intervals = intervals[WARMUP_LINES:]
    if len(intervals) < MIN_LINES - 1 - WARMUP_LINES:
        return None
    paces = sorted(seconds / count for seconds, count, _ in intervals)
    pace = paces[int(PACE_QUANTILE * (len(paces) - 1))]
    span = sum(seconds for seconds, _, _ in intervals)
    if pace <= 0 or span <= 0:
        return None
    lost = worst = 0.0
    for seconds, count, others in intervals:
        if seconds <= SLOW_FACTOR * pace * count:
            continue
        if others is not None and others < OTHERS_BUSY * seconds:
            continue  # nobody else was busy: the run slowed itself
        lost += seconds - pace * count
        worst = max(worst, seconds)
    share = lost / span
    if share < LOST_SHARE:
        return None
    return Disturbance(lost, share, worst, pace)


def others_load(steps: list[dict]) -> float | None:
    """How many cores other processes used on average while the run trained (None: not sampled).
    Two runs compared seed by seed should have trained beside about the same load: a busy
    neighbour moves every value a little even under the CPU clock."""
    sampled = [s for s in steps if s.get("others_cpu") is not None and s.get("wall") is not None]
    if len(sampled) < 2 or sampled[-1]["wall"] <= sampled[0]["wall"]:
        return None
    return round((sampled[-1]["others_cpu"] - sampled[0]["others_cpu"]) / (sampled[-1]["wall"] - sampled[0]["wall"]), 3)
