"""What the coordinator has under way: tracks (code being measured or judged), their jobs, and drafts.

A track is one piece of code the loop wants numbers for: a measurement of code already on the
branch (the baseline, its repeats, the best again, the best without a kept change) needs one
clean run; a candidate (a proposal committed on top of the best it was judged against) runs
until the judge decides. A job is one run of a track's code on a worker. A draft is a proposal
the agent made on some commit, not yet committed. All three are plain data that survive a kill
-9 in .autoresearch/inflight.json (inflight.py), so a resume re-queues what was running.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


class Record:
    """Plain data that goes to inflight.json and comes back (unknown keys from newer files are dropped)."""

    def record(self) -> dict:
        return asdict(self)

    @classmethod
    def load(cls, data: dict):
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Job(Record):
    """One run of a track's code: {job id, parent commit, code commit, seed, budget} in, a result out."""

    id: int
    track: int
    commit: str
    seed: int
    worker: str = ""             # the slot or actor that runs it
    pid: int | None = None       # the experiment's process, for a resume to end it
    cwd: str = ""                # where it runs (a worktree), to tell a reused pid from ours
    started_at: str = ""
    log: str = ""                # path relative to the lab


@dataclass
class Track(Record):
    id: int
    role: str                    # baseline | noise | remeasure | ablation | experiment
    commit: str                  # the code (full sha)
    parent: str                  # the best it is judged against (a measurement: its own commit)
    description: str
    seed: int                    # the first run's seed
    segment: int = 0
    values: list = field(default_factory=list)     # clean values so far (a candidate's)
    rows: list = field(default_factory=list)       # finished runs not yet in the ledger, in order
    job: dict | None = None      # the run under way (Job.record()), None when waiting for a worker
    first: dict = field(default_factory=dict)      # proposal facts for the first row (usage, rationale)
    shared: dict = field(default_factory=dict)     # facts for every row (fingerprint, diff, rebased...)
    disturbed_streak: int = 0
    runs: int = 0                # runs started (for seeds)
    decision: str | None = None  # set once judged: keep | discard | interrupted
    verdict: dict | None = None
    ablates: int | None = None
    parked: bool = False         # judged later: the value to beat was being measured

    @property
    def candidate(self) -> bool:
        return self.role == "experiment"

    @property
    def clean_rows(self) -> list[dict]:
        """The row of each clean value (its rows, less the disturbed ones)."""
        return [r for r in self.rows if r.get("status") != "disturbed"][:len(self.values)]

    @property
    def seeds(self) -> list[int]:
        """The seed of each clean value: to pair them with the best's runs of the same seeds."""
        return [r.get("seed") for r in self.clean_rows]

    @property
    def loads(self) -> list[float | None]:
        """The cores other processes used during each clean value's run."""
        return [r.get("others_load") for r in self.clean_rows]


@dataclass
class Draft(Record):
    """A proposal the agent made on commit `base`, waiting to be committed and run."""

    id: int
    base: str
    files: dict
    description: str
    rationale: str = ""
    usage: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    propose_s: float = 0.0
    started_at: str = ""
