"""Keep or discard, decided in steps from the runs of each piece of code; a pure function.

The statistics (policy "noise", the default):
  - Noise. sigma is the spread of one run of identical code. It is estimated from every group
    of runs of one code in the current comparison segment (the baseline and its repeats, the
    best re-measured through the night, a candidate's repeated runs): for each pair of runs in
    a group, |a - b| is |N(0, 2 sigma^2)|, whose median is 0.6745 * sqrt(2) * sigma; so
    sigma = median(|a - b|) / (0.6745 * sqrt(2)). A median resists a minority of outliers, and
    disturbances are one-sided (a run slowed by other work scores worse), so a few of them do
    not blind the estimate the way a standard deviation of three runs did. It keeps learning:
    every new identical-code pair joins. With few degrees of freedom (d = runs minus groups)
    the estimate is itself noisy, so it is inflated by (1 + SMALL_SAMPLE / d), and never taken
    below NOISE_FLOOR of the metric (a lucky zero spread must not make every change "clear").
  - Values. A code's value is the mean of its n clean runs; its interval is mean +- Z95 *
    sigma / sqrt(n). A gain is mean(best) - mean(candidate) (sign flipped when higher is
    better), its standard error se = sigma * sqrt(1/n_candidate + 1/n_best), z = gain / se.
  - Sequential decision, one run at a time, at most MAX_RUNS runs of a candidate:
      z >= KEEP_Z                   keep (a clear win is kept after one run);
      z <  DISCARD_Z                discard (a clear loss goes at once);
      otherwise                     "more": run the candidate again with another seed;
    at the last allowed run: keep when z >= FINAL_Z, else discard.
    `benchmarks/judge_power.py` simulates this rule (with the re-measuring schedule of
    plan.py) against Gaussian noise plus one-sided disturbances and prints its power, its false
    keeps and its cost in runs per proposal.
Policy "greedy" is autoresearch's rule: keep any strict improvement of the mean, after one run.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable

KEEP_Z = 2.0
DISCARD_Z = 1.0
FINAL_Z = 1.6
MAX_RUNS = 3
SMALL_SAMPLE = 0.5
NOISE_FLOOR = 0.001      # relative to the metric's size: 0.1%
Z95 = 1.96
PAIR_MEDIAN = 0.6745 * math.sqrt(2)
POLICIES = ("noise", "greedy")


@dataclass(frozen=True)
class Noise:
    """The single-run spread of identical code and how much evidence stands behind it."""

    sigma: float | None      # the robust estimate, before any inflation
    dof: int = 0             # runs minus groups, over groups of two or more runs
    pairs: int = 0

    @property
    def usable(self) -> float | None:
        """The spread decisions use: inflated while the evidence is thin."""
        if self.sigma is None or self.dof == 0:
            return None
        return self.sigma * (1.0 + SMALL_SAMPLE / self.dof)

    def record(self) -> dict:
        return {"sigma": _round(self.sigma), "usable": _round(self.usable), "dof": self.dof,
                "pairs": self.pairs}


def estimate_noise(groups: Iterable[list[float]], scale: float | None = None) -> Noise:
    """Noise from groups of runs of identical code; `scale` (the metric's size) sets the floor."""
    differences, dof = [], 0
    for values in groups:
        if len(values) < 2:
            continue
        dof += len(values) - 1
        differences += [abs(a - b) for i, a in enumerate(values) for b in values[i + 1:]]
    if not differences:
        return Noise(None)
    sigma = statistics.median(differences) / PAIR_MEDIAN
    if scale:
        sigma = max(sigma, NOISE_FLOOR * abs(scale))
    return Noise(sigma, dof, len(differences))


@dataclass(frozen=True)
class Estimate:
    """The value of one piece of code: the mean of its runs, with an interval."""

    mean: float
    runs: int
    half_width: float | None   # Z95 * sigma / sqrt(runs); None while the noise is unknown

    def record(self) -> dict:
        return {"mean": round(self.mean, 6), "runs": self.runs, "half_width": _round(self.half_width)}

    def text(self, digits: int = 4) -> str:
        spread = f" ± {self.half_width:.{digits}f}" if self.half_width is not None else ""
        return f"{self.mean:.{digits + 2}f}{spread} ({self.runs} run{'s' if self.runs != 1 else ''})"


def estimate(values: list[float], noise: Noise | None) -> Estimate | None:
    if not values:
        return None
    sigma = noise.usable if noise else None
    half = Z95 * sigma / math.sqrt(len(values)) if sigma is not None else None
    return Estimate(statistics.fmean(values), len(values), half)


def gain(candidate: float, best: float, direction: str = "lower") -> float:
    """How much better `candidate` is than `best` (positive: better)."""
    return best - candidate if direction == "lower" else candidate - best


def gain_interval(candidate: list[float], best: list[float], noise: Noise | None,
                  direction: str = "lower") -> tuple[float, float | None]:
    """(gain of the means, Z95 half-width of it or None when the noise is unknown)."""
    value = gain(statistics.fmean(candidate), statistics.fmean(best), direction)
    sigma = noise.usable if noise else None
    if sigma is None:
        return value, None
    return value, Z95 * sigma * math.sqrt(1 / len(candidate) + 1 / len(best))


@dataclass
class Verdict:
    decision: str              # keep | discard | more
    gain: float                # mean(best) - mean(candidate), signed so positive is better
    z: float | None            # gain in standard errors (None: greedy, or noise unknown)
    threshold: float | None    # the z the decision needed (KEEP_Z or FINAL_Z)
    noise: Noise | None
    policy: str
    runs: int                  # candidate runs behind the verdict
    against: int               # runs of the best behind the value to beat

    def record(self) -> dict:
        return {"policy": self.policy, "decision": self.decision, "gain": round(self.gain, 6),
                "z": _round(self.z, 3), "threshold": self.threshold, "runs": self.runs,
                "against": self.against, "noise": self.noise.record() if self.noise else None}


def decide(candidate: list[float], best: list[float], noise: Noise | None, policy: str = "noise",
           direction: str = "lower", max_runs: int | None = None) -> Verdict:
    """The verdict on a candidate from its clean runs so far against the best code's clean runs."""
    if not candidate or not best:
        raise ValueError("a verdict needs at least one run of the candidate and of the best")
    delta = gain(statistics.fmean(candidate), statistics.fmean(best), direction)
    if policy == "greedy":
        return Verdict("keep" if delta > 0 else "discard", delta, None, None, None, policy,
                       len(candidate), len(best))
    sigma = noise.usable if noise else None
    if sigma is None:  # no identical-code pair yet: nothing can be shown to beat the best
        return Verdict("discard", delta, None, None, noise, policy, len(candidate), len(best))
    se = sigma * math.sqrt(1 / len(candidate) + 1 / len(best))
    z = delta / se
    if len(candidate) >= (max_runs or MAX_RUNS):
        decision, threshold = ("keep" if z >= FINAL_Z else "discard"), FINAL_Z
    elif z >= KEEP_Z:
        decision, threshold = "keep", KEEP_Z
    elif z < DISCARD_Z:
        decision, threshold = "discard", KEEP_Z
    else:
        decision, threshold = "more", KEEP_Z
    return Verdict(decision, delta, z, threshold, noise, policy, len(candidate), len(best))


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)
