"""Issue 3's null test: an agent that changes only the random seed (audit off for this run).

Nothing it does can really help, so every keep is a false keep. autoresearch's greedy rule keeps
any strict improvement; the noise policy should keep at most about 1 in 20.
    python benchmarks/false_keeps.py [--profile tiny] [--experiments 20]
"""
from __future__ import annotations

import argparse
import re

from autoresearch_nb.agents.base import Agent, Proposal
from autoresearch_nb.engine.session import RunOptions

from common import fresh_lab, run_session

SEED_LINE = "torch.manual_seed({seed})  # seed-only change\n"


class SeedOnlyAgent(Agent):
    name = "seed-only"
    label = "seed-only (null benchmark)"

    def propose(self, context):
        source = re.sub(r"^torch\.manual_seed\(\d+\)  # seed-only change\n", "", context.files["nanochat/train.py"], flags=re.M)
        seed = 137 + 7 * context.index
        marker = "vocab_size = load_tokenizer().vocab_size\n"
        source = source.replace(marker, SEED_LINE.format(seed=seed) + marker)
        return Proposal({"nanochat/train.py": source}, f"random seed -> {seed}", "null: seeds only")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--experiments", type=int, default=20)
    parser.add_argument("--budget", type=float, default=None)
    args = parser.parse_args()
    for policy in ("greedy", "noise"):
        lab = fresh_lab(args.profile, f"null-{policy}")
        extra = 1 + (2 if policy == "noise" else 0)  # the baseline and its repeats are not experiments
        options = RunOptions(lab=str(lab), policy=policy, budget=args.budget, max_experiments=args.experiments + extra)
        session, wall = run_session(options, agent=SeedOnlyAgent(), audit=False)
        rows = session.snapshot()["rows"]
        experiments = [r for r in rows if r.get("role") == "experiment" and r.get("status") in ("keep", "discard")]
        kept = [r for r in experiments if r["status"] == "keep"]
        confirms = sum(1 for r in rows if r.get("role") == "confirm")
        noise = next((r.get("judge", {}).get("noise") for r in reversed(rows) if r.get("judge", {}).get("noise")), None)
        print(f"{policy:>6}: kept {len(kept)} of {len(experiments)} seed-only experiments "
              f"({confirms} confirmation re-runs; noise estimate {noise}); wall {wall:.0f}s; lab {lab}")


if __name__ == "__main__":
    main()
