"""The judge's rules as pure functions: the noise estimate, values with intervals, sequential decisions,
the disturbance detector, and what plan.py schedules before a proposal."""
from __future__ import annotations

import math

import pytest

from autoresearch_nb.judge import facts, plan
from autoresearch_nb.run.disturbance import detect
from autoresearch_nb.judge.judge import DISCARD_Z, FINAL_Z, KEEP_Z, MAX_RUNS, NOISE_FLOOR, PAIR_MEDIAN, SMALL_SAMPLE, Pairing, decide, estimate, estimate_noise, gain_interval


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


# -- paired seeds ----------------------------------------------------------------------------
# The k-th run of every code gets the k-th seed. Here a seed's luck moves every code by up to
# 0.03 (so identical code spreads ~0.03), while a change shifts its code by the same amount at
# every seed: paired differences see it, the difference of the means cannot.
LUCK = {0: 0.0, 1: 0.03, 2: -0.03}


def seeded(index, role, status, base, commit, seed, parent_code=None, **extra):
    return row(index, role, status, round(base + LUCK[seed], 6), commit, seed=seed,
               code=commit, parent_code=parent_code or commit, **extra)


def lucky_rows():
    """Baseline a (three seeds); b, a clear win kept after one run and re-measured, so one code ran
    two seeds against its parent: the first paired group."""
    return [seeded(0, "baseline", "keep", 1.0, "a", 0), seeded(1, "noise", "discard", 1.0, "a", 1),
            seeded(2, "noise", "discard", 1.0, "a", 2),
            seeded(3, "experiment", "keep", 0.9, "b", 0, parent_code="a"),
            seeded(4, "remeasure", "discard", 0.9, "b", 1, parent_code="b")]


def test_paired_seeds_see_a_gain_that_the_spread_of_seeds_hides():
    rows = lucky_rows()
    candidate, seeds = [0.89 + LUCK[0], 0.89 + LUCK[1]], [0, 1]   # 0.01 better than b at each seed
    unpaired = plan.verdict(rows, 0, candidate)
    assert unpaired.decision == "discard" and unpaired.paired is None
    first = plan.verdict(rows, 0, candidate[:1], seeds=seeds[:1], next_seed=1)
    assert first.decision == "more" and first.z >= KEEP_Z   # a paired keep stands on two seeds
    paired = plan.verdict(rows, 0, candidate, seeds=seeds, next_seed=2)
    assert paired.decision == "keep" and paired.gain == pytest.approx(0.01)
    assert paired.paired["differences"] == [pytest.approx(0.01), pytest.approx(0.01)]
    assert paired.record()["paired"]["spread"] > 0


def test_a_null_edit_is_not_kept_on_paired_seeds():
    rows = lucky_rows()
    null = [0.9 + LUCK[0] + 0.0005, 0.9 + LUCK[1] - 0.0005]
    verdict = plan.verdict(rows, 0, null, seeds=[0, 1], next_seed=2)
    assert verdict.paired is not None and verdict.decision == "discard"


def test_the_first_paired_candidate_of_a_segment_runs_a_second_seed_to_teach_the_judge():
    rows = lucky_rows()[:4]   # b kept on one seed and not re-measured yet: no paired spread
    unclear = [0.92 + LUCK[0]]   # worse on the means, but not clearly
    assert plan.verdict(rows, 0, unclear, seeds=[0], next_seed=1, against="b").decision == "more"
    assert plan.verdict(rows, 0, unclear, against="b").decision == "discard"   # seeds unknown: the means
    assert plan.verdict(rows, 0, [1.5], seeds=[0], next_seed=1, against="b").decision == "discard"  # a clear loss goes
    taught = lucky_rows()        # b's second seed gave the first paired group
    assert plan.verdict(taught, 0, unclear, seeds=[0], next_seed=1).decision == "discard"


def test_without_a_paired_group_the_means_decide():
    rows = lucky_rows()[:4]   # b ran one seed only: no spread of paired differences yet
    values = [0.89 + LUCK[0], 0.89 + LUCK[1]]  # 0.01 better than b at seed 0, 0.02 worse at seed 1
    verdict = plan.verdict(rows, 0, values, seeds=[0, 1], against="b")
    means = plan.verdict(rows, 0, values, against="b")
    assert verdict.paired is None
    # the means decide: a mean 0.005 worse than b's one run is discarded, exactly as without seeds
    assert (verdict.decision, verdict.gain, verdict.z) == ("discard", pytest.approx(-0.005), pytest.approx(means.z))
    assert means.decision == "discard"


def test_differences_that_disagree_fall_back_to_the_means():
    # One run of the best slowed unseen shifts every candidate's difference at that seed: a
    # candidate that gains 0.05 at one seed and nothing at the other is not trusted as paired.
    rows = lucky_rows()
    candidate = [0.85 + LUCK[0], 0.9 + LUCK[1]]
    assert plan.verdict(rows, 0, candidate[:1], seeds=[0], next_seed=1).paired is not None
    verdict = plan.verdict(rows, 0, candidate, seeds=[0, 1], next_seed=2)
    assert verdict.paired is None


def test_the_paired_spread_is_never_above_what_uncorrelated_runs_give():
    noise = estimate_noise([[1.0, 1.01]])
    wide = Pairing((0.0,), estimate_noise([[0.0, 1.0]]))
    assert wide.spread(noise) == pytest.approx(math.sqrt(2) * noise.usable)
    thin = Pairing((0.0,), estimate_noise([[0.0, 0.004]]))
    assert thin.spread(noise) == pytest.approx(0.004 / PAIR_MEDIAN * (1 + SMALL_SAMPLE))


def test_a_paired_sequence_ends_where_the_best_has_no_run_of_the_next_seed():
    rows = lucky_rows()
    candidate = [0.8985 + LUCK[0], 0.8987 + LUCK[1]]   # borderline after two seeds; b never ran seed 2
    assert plan.verdict(rows, 0, candidate, seeds=[0, 1]).decision == "more"
    assert plan.verdict(rows, 0, candidate, seeds=[0, 1], next_seed=2).decision in ("keep", "discard")


def test_a_kept_change_reports_its_paired_gain():
    rows = lucky_rows() + [seeded(5, "experiment", "keep", 0.89, "c", 0, parent_code="b"),
                           seeded(6, "confirm", "keep", 0.89, "c", 1, parent_code="b")]
    change = facts.kept_changes(rows)[-1]
    assert change.gain == pytest.approx(0.01) and change.holds


def test_runs_beside_unlike_load_are_not_paired():
    # A busy neighbour moves every value a little even under the CPU clock: a candidate that ran
    # beside one while the best ran on a quiet machine is judged on the means, not on differences.
    rows = [dict(r, others_load=0.05) for r in lucky_rows()]
    candidate, seeds = [0.89 + LUCK[0], 0.89 + LUCK[1]], [0, 1]
    quiet = plan.verdict(rows, 0, candidate, seeds=seeds, next_seed=2, loads=[0.1, 0.2])
    assert quiet.paired is not None and quiet.decision == "keep"
    busy = plan.verdict(rows, 0, candidate, seeds=seeds, next_seed=2, loads=[1.05, 0.1])
    assert busy.paired is None and busy.decision == "discard"


def test_the_load_beside_a_run_is_read_from_its_step_log():
    from autoresearch_nb.run.disturbance import others_load
    assert others_load([{"wall": 1.0, "others_cpu": 0.0}, {"wall": 11.0, "others_cpu": 9.5}]) == pytest.approx(0.95)
    assert others_load([{"wall": 1.0}, {"wall": 2.0}]) is None
