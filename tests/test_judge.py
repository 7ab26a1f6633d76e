"""The keep/discard rule: autoresearch's greedy rule, and the noise rule that does not keep noise."""
from __future__ import annotations

import math

import pytest

from autoresearch_nb.judge import CLEAR, NOISE_FLOOR_MIN, judge, noise_estimate


def baseline_rows(*values: float, fingerprint: str = "base") -> list[dict]:
    """A baseline and its repeats with other seeds: identical code, so the same fingerprint."""
    rows = [{"index": 0, "role": "baseline", "status": "keep", "val_bpb": values[0], "fingerprint": fingerprint}]
    rows += [{"index": i, "role": "noise", "status": "discard", "val_bpb": v, "fingerprint": fingerprint}
             for i, v in enumerate(values[1:], 1)]
    return rows


ROWS = baseline_rows(1.000, 1.002, 0.998)   # spread s = 0.002
S = 0.002
SINGLE = S * math.sqrt(2)


def test_greedy_keeps_any_strict_improvement():
    assert judge(0.9999, 1.0, [], "greedy").decision == "keep"
    assert judge(1.0, 1.0, [], "greedy").decision == "discard"
    assert judge(1.1, 1.0, [], "greedy").decision == "discard"


def test_greedy_follows_the_metrics_direction():
    assert judge(0.81, 0.80, [], "greedy", direction="higher").decision == "keep"
    assert judge(0.79, 0.80, [], "greedy", direction="higher").decision == "discard"


def test_noise_estimate_is_the_pooled_spread_of_identical_code():
    assert noise_estimate(ROWS) == pytest.approx(S)
    pairs = ROWS + [{"role": "experiment", "status": "keep", "val_bpb": 0.990, "fingerprint": "x"},
                    {"role": "confirm", "status": "keep", "val_bpb": 0.994, "fingerprint": "x"}]
    # pooled: (0.002^2*2 + 2*0.002^2) / (2 + 1) dof
    expected = math.sqrt((2 * S ** 2 + 2 * 0.002 ** 2) / 3)
    assert noise_estimate(pairs) == pytest.approx(expected)


def test_rows_that_did_not_produce_the_metric_do_not_count():
    rows = baseline_rows(1.0) + [{"role": "noise", "status": "crash", "val_bpb": None, "fingerprint": "base"},
                                 {"role": "noise", "status": "rejected", "fingerprint": "base"}]
    assert noise_estimate(rows) is None


def test_without_a_noise_estimate_nothing_beats_the_baseline():
    verdict = judge(0.5, 1.0, baseline_rows(1.0), "noise")
    assert verdict.decision == "discard"
    assert verdict.threshold == math.inf and verdict.noise is None


def test_a_gain_clear_of_the_noise_is_kept():
    verdict = judge(1.0 - CLEAR * SINGLE - 1e-6, 1.0, ROWS, "noise")
    assert verdict.decision == "keep"
    assert verdict.noise == pytest.approx(S)
    assert verdict.threshold == pytest.approx(CLEAR * SINGLE)


def test_a_borderline_gain_is_confirmed_before_keeping():
    verdict = judge(1.0 - 1.5 * SINGLE, 1.0, ROWS, "noise")
    assert verdict.decision == "confirm"


def test_a_gain_inside_the_noise_is_discarded():
    assert judge(1.0 - 0.5 * SINGLE, 1.0, ROWS, "noise").decision == "discard"
    assert judge(1.01, 1.0, ROWS, "noise").decision == "discard"


def test_confirmation_keeps_only_when_the_mean_of_two_runs_stands_clear():
    value = 1.0 - 1.5 * SINGLE
    threshold = CLEAR * S * math.sqrt(1.5)
    good = judge(value, 1.0, ROWS, "noise", confirmation=1.0 - 2 * threshold)
    assert good.decision == "keep" and good.threshold == pytest.approx(threshold)
    assert good.delta == pytest.approx(1.0 - (value + 1.0 - 2 * threshold) / 2)
    lucky_once = judge(value, 1.0, ROWS, "noise", confirmation=1.0)
    assert lucky_once.decision == "discard"


def test_the_noise_floor_keeps_a_lucky_zero_spread_from_keeping_everything():
    identical = baseline_rows(2.0, 2.0, 2.0)
    floor = NOISE_FLOOR_MIN * 2.0
    assert noise_estimate(identical) == pytest.approx(floor)
    assert judge(2.0 - floor, 2.0, identical, "noise").decision != "keep"
    assert judge(2.0 - 3 * floor, 2.0, identical, "noise").decision == "keep"


def test_the_verdict_goes_to_the_ledger_with_its_figures():
    record = judge(0.99, 1.0, ROWS, "noise").record()
    assert set(record) == {"policy", "decision", "delta", "threshold", "noise"}
    assert record["policy"] == "noise" and record["delta"] == pytest.approx(0.01)
