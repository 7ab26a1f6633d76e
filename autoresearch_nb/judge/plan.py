"""What to run next and how a candidate's runs are judged, from the ledger's rows; pure functions.

The loop asks `next_measurement` before each proposal: the segment's baseline and its repeats
(the first identical-code pairs of the noise estimate), a re-measurement of the best when it
has a single clean run in the segment (a value to beat is never one lucky run), and one every
REMEASURE_EVERY experiments (drift, and more pairs for the noise estimate). `verdict` judges a
candidate from its runs so far against the best's runs. benchmarks/judge_power.py drives these
same functions.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import facts
from .judge import Verdict, decide

REMEASURE_EVERY = 20
MAX_DISTURBED_RERUNS = 2     # a run disturbed again after this many re-runs is judged as it is


@dataclass(frozen=True)
class Measurement:
    """A run of code already on the branch (the best), not of a new proposal."""

    role: str            # baseline | noise | remeasure
    description: str


def next_measurement(rows: list[dict], segment: int, policy: str = "noise", noise_runs: int = 2,
                     every: int = REMEASURE_EVERY, metric: str = "val_bpb", in_flight: int = 0) -> Measurement | None:
    """The measurement due before the next proposal in `segment`, or None. `in_flight`:
    measurements of the best already running (several workers can run the repeats at once)."""
    best = facts.best_row(rows)
    runs = facts.code_runs(rows, segment, metric).get(facts.code_of(best), []) if best else []
    if in_flight and (not runs or len(runs) + in_flight >= 1 + noise_runs or policy != "noise"):
        return None
    if not runs:
        if best is None:
            return Measurement("baseline", "baseline")
        return Measurement("baseline", f"baseline of segment {segment}: the best so far "
                                       f"(#{best.get('index')}) under the new conditions")
    if policy != "noise":
        return None
    in_segment = [r for r in rows if facts.segment_of(r) == segment]
    experiments = [r for r in in_segment if r.get("role") in facts.CANDIDATE_ROLES and r.get("status") in facts.RAN_STATUSES]
    if not experiments and len(runs) + in_flight < 1 + noise_runs:
        return Measurement("noise", f"baseline repeat {len(runs) + in_flight} of {noise_runs} (noise estimate)")
    if in_flight:
        return None
    if len(runs) < 2:
        return Measurement("remeasure", f"re-measure the best (#{best.get('index')}): one run is not a value")
    code = facts.code_of(best)
    last = max((i for i, r in enumerate(in_segment) if facts.code_of(r) == code and facts.value(r, metric) is not None),
               default=-1)
    since = sum(1 for r in in_segment[last + 1:] if r.get("role") == "experiment"
                and r.get("status") in facts.RAN_STATUSES)
    if since >= every:
        return Measurement("remeasure", f"re-measure the best (#{best.get('index')}) after {since} experiments")
    return None


def barrier(rows: list[dict], segment: int, policy: str = "noise", noise_runs: int = 2,
            metric: str = "val_bpb") -> bool:
    """True while no candidate may run: the segment's baseline (and, for the noise policy, its
    repeats) are not all in the ledger yet."""
    best = facts.best_row(rows)
    runs = facts.code_runs(rows, segment, metric).get(facts.code_of(best), []) if best else []
    if not runs:
        return True
    experiments = any(r.get("role") in facts.CANDIDATE_ROLES and facts.segment_of(r) == segment
                      and r.get("status") in facts.RAN_STATUSES for r in rows)
    return policy == "noise" and not experiments and len(runs) < 1 + noise_runs


def best_runs(rows: list[dict], segment: int, metric: str = "val_bpb") -> int:
    best = facts.best_row(rows)
    return len(facts.code_runs(rows, segment, metric).get(facts.code_of(best), [])) if best else 0


def verdict(rows: list[dict], segment: int, candidate: list[float], policy: str = "noise",
            direction: str = "lower", metric: str = "val_bpb", against: str | None = None,
            max_runs: int | None = None, seeds: list[int] | None = None, next_seed: int | None = None,
            loads: list[float | None] | None = None) -> Verdict:
    """Judge a candidate's clean runs so far (not yet in the ledger) against the runs of the code
    `against` (the best's by default: a result whose parent is no longer the best is judged
    against its own parent). `seeds` (and `loads`, the cores other processes used during each):
    the seed of each of the candidate's runs, to pair them with the runs of `against` of the same
    seeds; a paired sequence whose next seed `against` never ran is decided on the runs it has."""
    code = against or facts.code_of(facts.best_row(rows))
    values = facts.code_runs(rows, segment, metric).get(code, [])
    pairing, runs = None, {}
    if seeds is not None and len(seeds) == len(candidate):
        runs = facts.seeded_runs(rows, segment, metric)
        mine: dict[int, list[tuple]] = {}
        for seed, number, load in zip(seeds, candidate, loads or [None] * len(seeds)):
            mine.setdefault(seed, []).append((number, load))
        pairing = facts.pairing(rows, segment, mine, code, metric, direction, runs=runs)
    noise = facts.noise(rows, segment, metric, pending=candidate)
    result = decide(candidate, values, noise, policy, direction, max_runs=max_runs, pairing=pairing)
    if result.decision == "more" and result.paired is not None and next_seed is not None \
            and next_seed not in runs.get(code, {}):
        result = decide(candidate, values, noise, policy, direction, max_runs=len(candidate), pairing=pairing)
    return result
