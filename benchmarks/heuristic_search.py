"""Issue 3's figure: the heuristic agent on a profile, baseline vs best after N experiments.
    python benchmarks/heuristic_search.py [--profile cpu] [--experiments 20] [--budget S] [--policy noise]
"""
from __future__ import annotations

import argparse

from autoresearch_nb.judge.facts import summary
from autoresearch_nb.front.progress import TerminalProgress
from autoresearch_nb.engine.session import RunOptions

from common import fresh_lab, run_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--experiments", type=int, default=20)
    parser.add_argument("--budget", type=float, default=None)
    parser.add_argument("--policy", default="noise")
    args = parser.parse_args()
    lab = fresh_lab(args.profile)
    progress = TerminalProgress()
    options = RunOptions(lab=str(lab), budget=args.budget, max_experiments=args.experiments, policy=args.policy)
    session, wall = run_session(options, on_event=progress.handle)
    found = summary(session.snapshot()["rows"])
    print(f"baseline {found['baseline'].text()} -> best {found['best'].text()} (gain {found['gain']:+.4f}"
          f" ± {found['gain_half_width'] or 0:.4f}) after {found['done']} runs, kept {found['changes']} changes, "
          f"wall {wall / 60:.1f} min; lab {lab}")


if __name__ == "__main__":
    main()
