"""Issue 9's judge benchmark: how often each keep/discard rule keeps real gains and null edits.

A fast simulation (no training, no subprocess) of the scored target: every run of a piece of code
scores its true value plus Gaussian noise sigma, and a share of runs is disturbed from outside,
scoring 3-6 sigma worse. A disturbed run's step log shows a slow stretch while other processes
were busy, as the runner records it. Each simulated night is a baseline and then PROPOSALS
proposals, a share of them real gains of 4 sigma, the rest null edits. The default policy is
driven through the product's own functions (plan.next_measurement, plan.verdict,
disturbance.detect); greedy through the same with policy "greedy"; "before issue 9" is the rule
that shipped before (pooled standard deviation of three baseline runs, one confirmation run,
no disturbance detection), written out here for the comparison.

Targets for the default policy: >= 90% of real 4-sigma gains kept, <= 5% of null edits kept,
<= 1.5 runs per proposal (every run after the first baseline phase: confirmations,
re-measurements of the best and re-runs of disturbed runs included).
    python benchmarks/judge_power.py [--nights 300] [--real 0.1] [--blind]
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import time

from autoresearch_nb.judge import facts, plan
from autoresearch_nb.run.disturbance import detect

SIGMA = 0.01
BASE = 1.0
GAIN_SIGMAS = 4.0
PROPOSALS = 40
STEP_LINES = 60


class Night:
    """One simulated run of the loop: rows as the ledger would hold them."""

    def __init__(self, rng: random.Random, disturbed: float, real: float, blind: bool, rho: float = 0.0,
                 sealed_seed: int = 0):
        self.rng, self.disturbed, self.real, self.blind, self.rho = rng, disturbed, real, blind, rho
        self.rows: list[dict] = []
        self.runs = 0
        self.truth = {"c0": BASE}
        self.luck: dict[int, float] = {}   # the part of a seed's noise every code run with it shares
        self.paired = False                # the judge sees each run's seed
        self.split_share = 0.5             # of a run's own noise, the share that is which tokens val holds
        self.holdout: dict[float, float] = {}  # a run's val value -> its value on the sealed holdout
        self.sealed_rng = random.Random(sealed_seed)  # the holdout's draws, apart from the night's own

    def seed_of(self, code: str, pending: int = 0) -> int:
        """As the loop seeds runs: the k-th clean run of any code gets the k-th seed."""
        return pending + sum(1 for r in self.rows if r["commit"] == code and r["status"] != "disturbed")

    def sample(self, code: str, seed: int = 0) -> tuple[float, list[dict], bool]:
        """One run: (value, step log with the runner's timings, was it really disturbed)."""
        self.runs += 1
        shared = self.luck.setdefault(seed, self.rng.gauss(0.0, SIGMA * math.sqrt(self.rho)))
        own = SIGMA * math.sqrt(1.0 - self.rho)
        private = self.rng.gauss(0.0, own)
        value = self.truth[code] + shared + private
        # The run's own noise is its model's luck (the holdout sees it too) plus val's tokens' luck (it
        # does not), split_share of the variance. The model's part given the val draw, and the holdout's
        # own tokens, come from a second generator so that the figures above draw what they always drew.
        s = self.split_share
        model = (1.0 - s) * private + self.sealed_rng.gauss(0.0, own * math.sqrt(s * (1.0 - s)))
        sealed = self.truth[code] + shared + model + self.sealed_rng.gauss(0.0, own * math.sqrt(s))
        hit = self.rng.random() < self.disturbed
        if hit:
            slower = self.rng.uniform(3.0, 6.0) * SIGMA
            value, sealed = value + slower, sealed + slower
        self.holdout[value] = sealed
        start, length = self.rng.randrange(STEP_LINES // 2), self.rng.randint(STEP_LINES // 6, STEP_LINES // 2)
        slow = self.rng.uniform(2.5, 4.0)
        wall = others = 0.0
        steps = []
        for step in range(1, STEP_LINES + 1):
            seconds = 0.5 * (1 + self.rng.gauss(0.0, 0.03))
            busy = 0.05 * seconds
            if hit and not self.blind and start <= step < start + length:
                seconds *= slow
                busy = seconds
            wall += seconds
            others += busy
            steps.append({"step": step, "wall": wall, "others_cpu": others})
        return value, steps, hit

    def measure(self, code: str, role: str, seed: int) -> float:
        """Run until a run is not disturbed (or the re-run cap is reached), as the loop does."""
        for attempt in range(plan.MAX_DISTURBED_RERUNS + 1):
            value, steps, _ = self.sample(code, seed)
            if detect(steps) is None or attempt == plan.MAX_DISTURBED_RERUNS:
                return value
            self.add(role, code, "disturbed", value, seed=seed)
        return value

    def add(self, role: str, code: str, status: str, value: float | None, parent: str = "", seed: int = 0) -> None:
        self.rows.append({"index": len(self.rows), "role": role, "commit": code, "status": status,
                          "val_bpb": value, "parent": parent, "parent_code": parent or code, "segment": 0,
                          "seed": seed})

    def best_code(self) -> str:
        return next(r["commit"] for r in reversed(self.rows) if r["status"] == "keep"
                    and r["role"] in ("baseline", "experiment"))


def night_new(night: Night, policy: str) -> tuple[list[tuple[bool, bool]], int]:
    """The product's rule. Returns ([(real, kept)] per proposal, runs after the baseline phase)."""
    baseline_runs = None
    outcomes = []
    for number in range(PROPOSALS):
        while (due := plan.next_measurement(night.rows, 0, policy)) is not None:
            code = "c0" if not night.rows else night.best_code()
            seed = night.seed_of(code)
            value = night.measure(code, due.role, seed)
            night.add(due.role, code, "keep" if due.role == "baseline" else "discard", value, seed=seed)
        if baseline_runs is None:
            baseline_runs = night.runs
        best = night.best_code()
        real = night.rng.random() < night.real
        code = f"c{number + 1}"
        night.truth[code] = night.truth[best] - (GAIN_SIGMAS * SIGMA if real else 0.0)
        values, seeds = [], []
        while True:
            seeds.append(len(values))
            value = night.measure(code, "experiment" if not values else "confirm", seeds[-1])
            values.append(value)
            verdict = plan.verdict(night.rows, 0, values, policy, seeds=seeds if night.paired else None,
                                   next_seed=len(values))
            if verdict.decision != "more":
                break
        status = verdict.decision
        for i, value in enumerate(values):
            night.add("experiment" if i == 0 else "confirm", code, status, value, parent=best, seed=seeds[i])
        outcomes.append((real, status == "keep"))
    return outcomes, night.runs - baseline_runs


def night_before(night: Night) -> tuple[list[tuple[bool, bool]], int]:
    """The rule before issue 9: sigma the pooled SD of identical code (3 baseline runs, then
    confirmation pairs), keep at 2*sigma*sqrt(2), confirm from sigma*sqrt(2) with one more run."""
    groups = {"c0": [night.sample("c0", k)[0] for k in range(3)]}
    best_code, best_value = "c0", statistics.fmean(groups["c0"])
    baseline_runs = night.runs
    outcomes = []
    for number in range(PROPOSALS):
        real = night.rng.random() < night.real
        code = f"c{number + 1}"
        night.truth[code] = night.truth[best_code] - (GAIN_SIGMAS * SIGMA if real else 0.0)
        value = night.sample(code, 0)[0]
        squares = sum((v - statistics.fmean(g)) ** 2 for g in groups.values() if len(g) > 1 for v in g)
        dof = sum(len(g) - 1 for g in groups.values() if len(g) > 1)
        sigma = max(math.sqrt(squares / dof), 0.001 * BASE)
        gain = best_value - value
        kept, score = False, value
        if gain >= 2 * sigma * math.sqrt(2):
            kept = True
        elif gain >= sigma * math.sqrt(2):
            again = night.sample(code, 1)[0]
            groups[code] = [value, again]
            score = (value + again) / 2
            kept = best_value - score >= 2 * sigma * math.sqrt(1.5)
        if kept:
            best_code, best_value = code, score
        outcomes.append((real, kept))
    return outcomes, night.runs - baseline_runs


RULES = {"noise": "noise (default)", "unpaired": "noise, unpaired", "greedy": "greedy",
         "before issue 9": "before issue 9"}


def simulate(rule: str, nights: int, disturbed: float, real: float, blind: bool, rho: float, seed: int = 1) -> dict:
    rng = random.Random(seed)
    real_kept = real_total = null_kept = null_total = runs = proposals = 0
    for _ in range(nights):
        night = Night(rng, disturbed, real, blind, rho)
        night.paired = rule == "noise"
        if rule == "before issue 9":
            outcomes, spent = night_before(night)
        else:
            outcomes, spent = night_new(night, "greedy" if rule == "greedy" else "noise")
        for is_real, kept in outcomes:
            real_total += is_real
            real_kept += is_real and kept
            null_total += not is_real
            null_kept += (not is_real) and kept
        runs += spent
        proposals += len(outcomes)
    return {"real": real_kept / max(1, real_total), "null": null_kept / max(1, null_total),
            "runs": runs / max(1, proposals)}


def selection(rule: str, nights: int, proposals: int, seed: int = 7) -> dict:
    """Nights with no real gain at all (every proposal a null edit), the product's rule or greedy: how far
    the best's val value has drifted from its holdout value after `proposals` proposals, and how often
    facts.holdout (the product's flag) says the holdout does not support the val gain. Holdout values
    are kept as records.seal keeps them: for the baseline, measurements and kept changes only."""
    global PROPOSALS
    saved, PROPOSALS = PROPOSALS, proposals
    rng = random.Random(seed)
    val_gains, holdout_gains, flagged, unknown, kept_any = [], [], 0, 0, 0
    try:
        for number in range(nights):
            night = Night(rng, 0.0, 0.0, False, 0.0, sealed_seed=number)
            night.paired = rule == "noise"
            night_new(night, "greedy" if rule == "greedy" else "noise")
            for row in night.rows:
                if row["role"] not in ("experiment", "confirm") or row["status"] == "keep":
                    row["holdout_bpb"] = night.holdout.get(row["val_bpb"])
            found = facts.holdout(night.rows)
            if found is None:  # nothing kept: the best is the baseline
                continue
            kept_any += 1
            val_gains.append(found["val_gain"])
            holdout_gains.append(found["gain"])
            flagged += found["supported"] is False
            unknown += found["supported"] is None
    finally:
        PROPOSALS = saved
    mean = statistics.fmean
    return {"kept_any": kept_any / nights, "val_gain": mean(val_gains) if val_gains else 0.0,
            "holdout_gain": mean(holdout_gains) if holdout_gains else 0.0,
            "drift": mean(v - h for v, h in zip(val_gains, holdout_gains)) if val_gains else 0.0,
            "flagged": flagged / max(1, kept_any), "unknown": unknown / max(1, kept_any)}


def main() -> None:
    global GAIN_SIGMAS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=300, help=f"simulated nights of {PROPOSALS} proposals each")
    parser.add_argument("--real", type=float, default=0.1, help="share of proposals that are real 4-sigma gains")
    parser.add_argument("--gain", type=float, default=4.0, help="size of a real gain, in sigma")
    parser.add_argument("--blind", action="store_true",
                        help="disturbed runs leave no trace in the step log (the detector cannot see them)")
    parser.add_argument("--rho", default="0,0.9",
                        help="share of a run's noise that its seed fixes, for every code run with it (comma list)")
    parser.add_argument("--rules", default=",".join(RULES), help="which rules to print (comma list)")
    parser.add_argument("--selection-nights", type=int, default=200,
                        help="nights of 100 null proposals for the selection figure (0: skip it)")
    args = parser.parse_args()
    GAIN_SIGMAS = args.gain
    started = time.monotonic()
    print(f"{args.nights} nights x {PROPOSALS} proposals, {100 * args.real:.0f}% of them real gains of "
          f"{GAIN_SIGMAS:g} sigma; disturbances of 3-6 sigma"
          + (" that the step log does not show" if args.blind else " visible in the step log"))
    print(f"{'rule':<16} {'seed share':>10} {'disturbed':>9}  {'real gains kept':>15}  {'null edits kept':>15}  "
          f"{'runs/proposal':>13}")
    verdicts = []
    for rho in (float(x) for x in args.rho.split(",")):
        for rule in args.rules.split(","):
            for disturbed in (0.10, 0.15, 0.20):
                result = simulate(rule, args.nights, disturbed, args.real, args.blind, rho)
                print(f"{RULES[rule]:<16} {rho:>10.2f} {100 * disturbed:>8.0f}%  {100 * result['real']:>14.1f}%  "
                      f"{100 * result['null']:>14.1f}%  {result['runs']:>13.2f}")
                if rule == "noise":
                    verdicts.append(result["real"] >= 0.9 and result["null"] <= 0.05 and result["runs"] <= 1.5)
    print(f"default policy meets the targets (>=90% real, <=5% null, <=1.5 runs) at every disturbance "
          f"rate and seed share: {'yes' if all(verdicts) else 'no'}  ({time.monotonic() - started:.0f} s)")
    if args.selection_nights:
        print(f"\nselection on noise: {args.selection_nights} nights of 100 proposals, none a real gain; half of a run's "
              f"own noise is val's tokens (the holdout does not share it), half its model (the holdout does). "
              f"Gains in sigma = {SIGMA}")
        print(f"{'rule':<16} {'nights keeping':>14} {'val gain':>9} {'holdout gain':>12} {'drift':>7} {'flagged':>8}"
              f" {'no interval':>11}")
        for rule in ("noise", "greedy"):
            found = selection(rule, args.selection_nights, 100)
            print(f"{RULES[rule]:<16} {100 * found['kept_any']:>13.0f}% {found['val_gain'] / SIGMA:>8.2f}σ "
                  f"{found['holdout_gain'] / SIGMA:>11.2f}σ {found['drift'] / SIGMA:>6.2f}σ "
                  f"{100 * found['flagged']:>7.0f}% {100 * found['unknown']:>10.0f}%")


if __name__ == "__main__":
    main()
