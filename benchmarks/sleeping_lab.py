"""A scored lab for the throughput benchmarks: each run sleeps BENCH_RUN_S seconds instead of training.

Every proposal is a null edit (a new constant), so nothing is kept, the best never moves and each
proposal costs exactly one run: what is measured is the harness, the workers and the agent.
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from autoresearch_nb.agents.base import Agent, Proposal
from autoresearch_nb.lab.lab import Lab, init_lab

TRAIN = "nanochat/train.py"
SCORER = '''"""Sleeps as long as a run would train, then prints the summary block."""
import os
import time

time.sleep(float(os.environ.get("BENCH_RUN_S", "1")))
print("---")
print("val_bpb:          1.000000")
print("training_seconds: %.1f" % float(os.environ.get("BENCH_RUN_S", "1")))
'''


def sleeping_lab() -> Lab:
    root = Path(tempfile.mkdtemp(prefix="arnb-bench-")) / "lab"
    lab, _ = init_lab(root, profile="tiny")
    (lab.root / TRAIN).write_text("SCORE = 1.0\n")
    (lab.root / "score.py").write_text(SCORER)
    for args in (["add", "score.py", TRAIN], ["commit", "-qm", "a sleeping target"]):
        subprocess.run(["git", "-C", str(lab.root), *args], check=True)
    lab.config.update(command=["{python}", "score.py"], ends_with=None, evaluate=None,
                      startup_allowance=120.0)
    lab.save_config()
    return Lab.open(root)


class NullAgent(Agent):
    """Proposes a new constant each time, instantly: a change that changes nothing measured."""

    name = "null"

    def __init__(self):
        self.count = 0

    def propose(self, context):
        self.count += 1
        source = context.files[TRAIN]
        return Proposal({TRAIN: f"NULL_{self.count} = {self.count}\n" + source}, f"null edit {self.count}")
