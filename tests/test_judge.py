"""The judge's rules as pure functions: the noise estimate, values with intervals, sequential decisions,
the disturbance detector, and what plan.py schedules before a proposal."""
from __future__ import annotations

import math

import pytest

from autoresearch_nb import facts, plan
from autoresearch_nb.disturbance import detect
from autoresearch_nb.judge import (DISCARD_Z, FINAL_Z, KEEP_Z, MAX_RUNS, NOISE_FLOOR, PAIR_MEDIAN, SMALL_SAMPLE,
                                   decide, estimate, estimate_noise, gain_interval)


def test_the_noise_estimate_is_the_median_pair_difference_of_identical_code():
    noise = estimate_noise([[1.000, 1.002, 0.998]])
    # pairs: 0.002, 0.002, 0.004 -> median 0.002
    assert noise.sigma == pytest.approx(0.002 / PAIR_MEDIAN)
    assert (noise.dof, noise.pairs) == (2, 3)
    assert noise.usable == pytest.approx(noise.sigma * (1 + SMALL_SAMPLE / 2))
    assert estimate_noise([[1.0], [2.0]]).sigma is None  # no identical-code pair yet


def test_one_disturbed_run_does_not_blind_the_estimate_once_pairs_accumulate():
    # The demo's night: a baseline run slowed by other work (2.518) beside quiet repeats, then
    # the best re-measured twice: a plain standard deviation is dominated by the one bad run.
    groups = [[2.518, 2.449, 2.431], [2.31, 2.317], [2.22, 2.214, 2.226]]
    robust = estimate_noise(groups).sigma
    pooled = math.sqrt(sum(sum((v - sum(g) / len(g)) ** 2 for v in g) for g in groups)
                       / sum(len(g) - 1 for g in groups))
    assert robust < 0.5 * pooled
    assert robust < 0.02


def test_the_estimate_never_drops_below_the_floor():
    noise = estimate_noise([[2.0, 2.0, 2.0]], scale=2.0)
    assert noise.sigma == pytest.approx(NOISE_FLOOR * 2.0)


def test_a_value_is_the_mean_of_its_runs_with_an_interval():
    noise = estimate_noise([[1.0, 1.02]])
    value = estimate([1.0, 1.01, 1.02, 1.03], noise)
    assert value.mean == pytest.approx(1.015) and value.runs == 4
    assert value.half_width == pytest.approx(1.96 * noise.usable / 2)
    assert "± " in value.text() and "(4 runs)" in value.text()
    gain, half = gain_interval([0.9], [1.0, 1.0], noise)
    assert gain == pytest.approx(0.1) and half == pytest.approx(1.96 * noise.usable * math.sqrt(1.5))


NOISE = estimate_noise([[1.0, 1.01], [1.0, 1.01], [1.0, 1.01], [1.0, 1.01]])   # sigma ~0.0105, dof 4


def se(candidate_runs: int, best_runs: int) -> float:
    return NOISE.usable * math.sqrt(1 / candidate_runs + 1 / best_runs)


def test_a_clear_win_is_kept_after_one_run():
    best = [1.0, 1.0, 1.0]
    verdict = decide([1.0 - (KEEP_Z + 0.1) * se(1, 3)], best, NOISE)
    assert verdict.decision == "keep" and verdict.runs == 1 and verdict.against == 3
    assert verdict.z == pytest.approx(KEEP_Z + 0.1)


def test_a_clear_loss_is_discarded_at_once():
    assert decide([1.0 - (DISCARD_Z - 0.1) * se(1, 3)], [1.0] * 3, NOISE).decision == "discard"
    assert decide([1.2], [1.0] * 3, NOISE).decision == "discard"


def test_a_borderline_result_asks_for_another_run_and_the_last_allowed_run_decides():
    between = 1.0 - (DISCARD_Z + KEEP_Z) / 2 * se(1, 3)
    assert decide([between], [1.0] * 3, NOISE).decision == "more"
    runs = [1.0 - (FINAL_Z + 0.05) * se(MAX_RUNS, 3)] * MAX_RUNS
    assert decide(runs, [1.0] * 3, NOISE).decision == "keep"
    runs = [1.0 - (FINAL_Z - 0.05) * se(MAX_RUNS, 3)] * MAX_RUNS
    assert decide(runs, [1.0] * 3, NOISE).decision == "discard"
    # the loop can cut a sequence short (no room left, a stop): then the runs so far decide
    assert decide([between], [1.0] * 3, NOISE, max_runs=1).decision in ("keep", "discard")


def test_without_an_identical_code_pair_nothing_is_kept():
    verdict = decide([0.5], [1.0], estimate_noise([[1.0]]))
    assert verdict.decision == "discard" and verdict.z is None


def test_greedy_keeps_any_strict_improvement_of_the_mean_and_follows_the_direction():
    assert decide([0.9999], [1.0], None, "greedy").decision == "keep"
    assert decide([1.0], [1.0], None, "greedy").decision == "discard"
    assert decide([0.81], [0.80], None, "greedy", direction="higher").decision == "keep"
    assert decide([1.0 - 3 * se(1, 3)], [1.0] * 3, NOISE, direction="higher").decision == "discard"


# -- the disturbance detector ----------------------------------------------------------------

def steps(paces: list[float], others: list[float] | None = None) -> list[dict]:
    """Step samples as the runner records them: wall clock, and other processes' CPU seconds."""
    wall = busy = 0.0
    out = []
    for n, pace in enumerate(paces, 1):
        wall += pace
        busy += (others[n - 1] if others else 0.0) * pace
        out.append({"step": n, "wall": wall, "others_cpu": busy})
    return out


def test_a_steady_run_is_not_disturbed():
    assert detect(steps([0.9, 0.92, 0.88, 0.91] * 8)) is None
    assert detect(steps([0.9] * 4)) is None  # too short to say


def test_a_stretch_of_slow_steps_while_others_were_busy_is_a_disturbance():
    # the demo: steps of 2.6-3.6 s for the first 12 s against 0.9 s later
    paces = [0.9, 0.9] + [3.0, 2.6, 3.6, 2.8] + [0.9] * 20
    others = [0.1, 0.1] + [1.5] * 4 + [0.1] * 20
    found = detect(steps(paces, others))
    assert found is not None and found.share > 0.2 and found.pace_s == pytest.approx(0.9)
    assert "disturbed from outside" in found.reason()


def test_a_run_that_slows_itself_is_not_disturbed():
    paces = [0.9, 0.9] + [3.0, 2.6, 3.6, 2.8] + [0.9] * 20
    assert detect(steps(paces, [0.05] * len(paces))) is None


def test_a_run_slowed_for_most_of_its_length_is_still_seen():
    paces = [0.9] * 4 + [2.5] * 14 + [0.9] * 8
    others = [0.0] * 4 + [1.0] * 14 + [0.0] * 8
    assert detect(steps(paces, others)) is not None


# -- what plan.py schedules ------------------------------------------------------------------

def row(index, role, status, value, commit, segment=0, **extra):
    return {"index": index, "role": role, "status": status, "val_bpb": value, "commit": commit,
            "segment": segment, **extra}


def test_the_baseline_then_its_repeats_come_first():
    assert plan.next_measurement([], 0).role == "baseline"
    rows = [row(0, "baseline", "keep", 1.0, "a")]
    assert plan.next_measurement(rows, 0).role == "noise"
    rows += [row(1, "noise", "discard", 1.01, "a"), row(2, "noise", "discard", 0.99, "a")]
    assert plan.next_measurement(rows, 0) is None
    assert plan.next_measurement(rows[:1], 0, policy="greedy") is None


def test_a_best_kept_on_one_run_is_measured_again_before_the_next_proposal():
    rows = [row(0, "baseline", "keep", 1.0, "a"), row(1, "noise", "discard", 1.01, "a"),
            row(2, "noise", "discard", 0.99, "a"), row(3, "experiment", "keep", 0.9, "b", parent="a")]
    due = plan.next_measurement(rows, 0)
    assert due.role == "remeasure" and "#3" in due.description
    rows.append(row(4, "remeasure", "discard", 0.91, "b"))
    assert plan.next_measurement(rows, 0) is None
    assert facts.value_to_beat(rows).mean == pytest.approx(0.905)


def test_the_best_is_measured_again_every_so_often():
    rows = [row(0, "baseline", "keep", 1.0, "a"), row(1, "noise", "discard", 1.01, "a")]
    rows += [row(i, "experiment", "discard", 1.02, f"c{i}", parent="a") for i in range(2, 2 + plan.REMEASURE_EVERY)]
    assert plan.next_measurement(rows, 0, noise_runs=1).role == "remeasure"


def test_a_new_segment_starts_by_measuring_the_best_again():
    rows = [row(0, "baseline", "keep", 1.0, "a"), row(1, "noise", "discard", 1.01, "a"),
            row(2, "experiment", "keep", 0.9, "b", parent="a"), row(3, "remeasure", "discard", 0.91, "b")]
    due = plan.next_measurement(rows, 1)
    assert due.role == "baseline" and "segment 1" in due.description
    rows.append(row(4, "baseline", "keep", 1.5, "b", segment=1))
    assert plan.next_measurement(rows, 1).role == "noise"   # the new conditions' noise is measured too
    assert facts.value_to_beat(rows).mean == pytest.approx(1.5)  # numbers of segment 0 are not mixed in


def test_verdicts_count_the_candidates_own_runs_as_identical_code_pairs():
    rows = [row(0, "baseline", "keep", 1.0, "a"), row(1, "noise", "discard", 1.0, "a"),
            row(2, "noise", "discard", 1.0, "a")]
    verdict = plan.verdict(rows, 0, [0.95, 0.96])
    assert verdict.noise.pairs == 4 and verdict.against == 3
