"""Keep or discard: autoresearch's greedy rule, or the default rule that does not keep noise.

The noise rule. Let s be the run-to-run spread of the metric for identical code (the standard
deviation, pooled over the baseline's repeats with other seeds and over every confirmation pair),
never taken below NOISE_FLOOR_MIN of the baseline. A change's gain g is its improvement over the
best so far. The difference of two single runs has spread s*sqrt(2), so:
  - g >= CLEAR * s*sqrt(2)                   keep: the gain stands clear of the noise;
  - BORDERLINE * s*sqrt(2) <= g < that       borderline: run the same code again with another
                                             seed; keep if the mean of the two runs gains at
                                             least CLEAR * s*sqrt(1/2 + 1) (the spread of a
                                             two-run mean against one run);
  - otherwise                                discard.
Until the repeats exist the baseline is not beaten by anything (the noise is not known yet).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

CLEAR = 2.0
BORDERLINE = 1.0
NOISE_FLOOR_MIN = 0.001   # relative: 0.1% of the baseline, so a lucky zero spread keeps nothing


@dataclass
class Verdict:
    decision: str           # keep | discard | confirm
    delta: float            # gain over the best (positive is better)
    threshold: float        # the gain needed to keep
    noise: float | None     # the single-run spread used
    policy: str

    def record(self) -> dict:
        return {"policy": self.policy, "decision": self.decision, "delta": round(self.delta, 6),
                "threshold": round(self.threshold, 6), "noise": None if self.noise is None else round(self.noise, 6)}


def gain(value: float, best: float, direction: str) -> float:
    return best - value if direction == "lower" else value - best


def noise_estimate(rows: list[dict], metric: str = "val_bpb") -> float | None:
    """Pooled standard deviation of identical code across seeds: groups of rows with the same
    fingerprint (baseline repeats, confirmation pairs) that produced the metric."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        value = row.get(metric)
        if row.get("status") in ("keep", "discard") and value is not None and row.get("fingerprint"):
            groups.setdefault(row["fingerprint"], []).append(float(value))
    squares, dof = 0.0, 0
    for values in groups.values():
        if len(values) >= 2:
            mean = statistics.fmean(values)
            squares += sum((v - mean) ** 2 for v in values)
            dof += len(values) - 1
    if dof == 0:
        return None
    baseline = next((float(r[metric]) for r in rows if r.get("role") == "baseline" and r.get(metric)), None)
    floor = NOISE_FLOOR_MIN * abs(baseline) if baseline else 0.0
    return max(math.sqrt(squares / dof), floor)


def judge(value: float, best: float, rows: list[dict], policy: str = "noise", direction: str = "lower",
          metric: str = "val_bpb", confirmation: float | None = None) -> Verdict:
    """The verdict on a finished run. `confirmation` is the re-run's value for a borderline case."""
    delta = gain(value, best, direction)
    if policy == "greedy":
        return Verdict("keep" if delta > 0 else "discard", delta, 0.0, None, policy)
    noise = noise_estimate(rows, metric)
    if noise is None:
        return Verdict("discard", delta, math.inf, None, policy)
    single = noise * math.sqrt(2)
    if confirmation is not None:
        mean_delta = gain((value + confirmation) / 2, best, direction)
        threshold = CLEAR * noise * math.sqrt(1.5)
        return Verdict("keep" if mean_delta >= threshold else "discard", mean_delta, threshold, noise, policy)
    if delta >= CLEAR * single:
        return Verdict("keep", delta, CLEAR * single, noise, policy)
    if delta >= BORDERLINE * single:
        return Verdict("confirm", delta, CLEAR * single, noise, policy)
    return Verdict("discard", delta, CLEAR * single, noise, policy)
