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
  - Paired seeds (common random numbers). The k-th run of every code gets the same seed, so a
    candidate's run and the best's run of the same seed share their initialisation and data
    order, and most of the seed's luck cancels in their difference d = gain at that seed. When
    every run of a candidate has such a partner, the decision above uses d instead: gain =
    mean(d), se = sigma_d / sqrt(n). sigma_d, the spread of one paired difference, is estimated
    from the segment's codes that ran on two or more seeds against their parent (the same median
    formula, over groups of differences; the candidate's own stay out), inflated while thin the
    same way, and never above sqrt(2) * sigma (what uncorrelated runs give).
    The unpaired rule above decides instead until one such group exists, when a candidate's
    differences disagree beyond CONSISTENT_Z of sigma_d (one run of the best disturbed unseen
    shifts every difference at its seed), and when the unpaired standard error is the smaller
    (seeds that share little). A paired keep stands on two seeds: a clear win after one paired
    run gets a second run first. While the paired spread rests on fewer than PAIRED_LEARNING_DOF
    degrees of freedom, a candidate with one paired run runs a second seed unless its first was a
    clear loss (z < -KEEP_Z): a segment's first such proposal teaches the judge how much seeds share.
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
CONSISTENT_Z = 3.0
PAIRED_LEARNING_DOF = 1    # until the paired spread has this much evidence, candidates run twice


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
class Pairing:
    """A candidate's gains at the seeds the code it is judged against also ran (positive: better),
    and the spread of one such difference over the segment."""

    differences: tuple
    noise: Noise

    def spread(self, unpaired: Noise | None) -> float | None:
        """sigma_d as decisions use it, or None while it is unknown or the differences disagree."""
        cap = unpaired.usable if unpaired else None
        if self.noise.sigma is None or self.noise.dof == 0 or cap is None or not self.differences:
            return None
        sigma = min(self.noise.usable, math.sqrt(2) * cap)
        if max(self.differences) - min(self.differences) > CONSISTENT_Z * math.sqrt(2) * sigma:
            return None
        return sigma


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
                  direction: str = "lower", pairing: Pairing | None = None) -> tuple[float, float | None]:
    """(gain, Z95 half-width of it or None when the noise is unknown): of the paired differences
    where their spread is known, else of the means."""
    spread = pairing.spread(noise) if pairing else None
    if spread is not None:
        return statistics.fmean(pairing.differences), Z95 * spread / math.sqrt(len(pairing.differences))
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
    paired: dict | None = None   # the paired differences and spread it used (None: the means decided)

    def record(self) -> dict:
        return {"policy": self.policy, "decision": self.decision, "gain": round(self.gain, 6),
                "z": _round(self.z, 3), "threshold": self.threshold, "runs": self.runs,
                "against": self.against, "noise": self.noise.record() if self.noise else None,
                "paired": self.paired}


def decide(candidate: list[float], best: list[float], noise: Noise | None, policy: str = "noise",
           direction: str = "lower", max_runs: int | None = None, pairing: Pairing | None = None) -> Verdict:
    """The verdict on a candidate from its clean runs so far against the best code's clean runs;
    `pairing`: the candidate's differences from the best at shared seeds, when it has them."""
    if not candidate or not best:
        raise ValueError("a verdict needs at least one run of the candidate and of the best")
    delta = gain(statistics.fmean(candidate), statistics.fmean(best), direction)
    if policy == "greedy":
        return Verdict("keep" if delta > 0 else "discard", delta, None, None, None, policy,
                       len(candidate), len(best))
    sigma = noise.usable if noise else None
    if sigma is None:  # no identical-code pair yet: nothing can be shown to beat the best
        return Verdict("discard", delta, None, None, noise, policy, len(candidate), len(best))
    final = len(candidate) >= (max_runs or MAX_RUNS)
    learning = (pairing is not None and len(candidate) == 1 == len(pairing.differences)
                and pairing.noise.dof < PAIRED_LEARNING_DOF)
    # a paired keep stands on two seeds; a sequence cut short at one run is decided on the means
    paired = pairing is not None and len(pairing.differences) == len(candidate) and not (final and len(candidate) < 2)
    spread = pairing.spread(noise) if paired else None
    se = sigma * math.sqrt(1 / len(candidate) + 1 / len(best))
    if spread is not None and spread / math.sqrt(len(candidate)) < se:
        delta, se = statistics.fmean(pairing.differences), spread / math.sqrt(len(candidate))
    else:
        spread = None
    z = delta / se
    if final:
        decision, threshold = ("keep" if z >= FINAL_Z else "discard"), FINAL_Z
    elif z >= KEEP_Z:
        decision, threshold = ("more" if spread is not None and len(candidate) < 2 else "keep"), KEEP_Z
    elif z < DISCARD_Z and learning and z >= -KEEP_Z:
        decision, threshold = "more", KEEP_Z
    elif z < DISCARD_Z:
        decision, threshold = "discard", KEEP_Z
    else:
        decision, threshold = "more", KEEP_Z
    paired_record = None
    if spread is not None:
        paired_record = {"spread": _round(spread), "differences": [_round(d) for d in pairing.differences],
                         **pairing.noise.record()}
    return Verdict(decision, delta, z, threshold, noise, policy, len(candidate), len(best), paired_record)


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(value, digits)
