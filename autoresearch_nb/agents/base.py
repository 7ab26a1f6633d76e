"""The agent interface: what an agent is given (Context) and what it returns (Proposal)."""
from __future__ import annotations

from dataclasses import dataclass, field


class ProposalError(Exception):
    """An agent could not produce a usable proposal; the loop records it as rejected.

    `usage` carries the tokens and cost spent before the failure so the ledger stays honest.
    `fatal` asks the loop to stop the run (e.g. retries exhausted on an API outage).
    """

    def __init__(self, reason: str, usage: dict | None = None, fatal: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.usage = usage or {}
        self.fatal = fatal


@dataclass
class Context:
    """Everything an agent may read before proposing experiment `index`."""

    index: int
    charter: str                      # program.md
    files: dict[str, str]             # allowed files (relative path -> current best contents)
    allowed: list[str]                # paths the agent may change
    locked: list[str]                 # paths it must never touch
    history: list[dict]               # ledger rows so far (see ledger.py for the fields)
    best: float | None                # best metric so far
    baseline: float | None            # metric of experiment 0
    metric: str = "val_bpb"
    direction: str = "lower"          # "lower" or "higher" is better
    profile: dict = field(default_factory=dict)   # the lab's hardware profile facts
    budget: float = 60.0              # seconds of training per experiment
    best_diff: str = ""               # unified diff of the best train.py against the baseline
    last_failure: str = ""            # log tail of the most recent crash, "" if none
    journal: str = ""                 # .autoresearch/journal.md
    steering: list[str] = field(default_factory=list)  # the person's notes, newest last
    lab_dir: str = ""                 # the lab's root (read only: agents edit copies)
    seed: int = 0
    baseline_files: dict[str, str] = field(default_factory=dict)  # allowed files at experiment 0
    in_flight: list[str] = field(default_factory=list)  # experiments running (or drafted) right now


@dataclass
class Proposal:
    """New contents for some allowed files, and why."""

    files: dict[str, str]             # relative path -> full new contents (only changed ones)
    description: str                  # one line, goes into results.tsv
    rationale: str = ""               # the hypothesis and what would confirm it
    usage: dict = field(default_factory=dict)  # input_tokens, output_tokens, cache_read_tokens,
                                               # cache_write_tokens, cost_usd
    journal: str = ""                 # optional note the agent adds to the journal
    meta: dict = field(default_factory=dict)   # agent-specific fields kept in the ledger row


class Agent:
    """Base class. Subclasses set `name` and implement `propose`."""

    name = "agent"
    model: str | None = None
    label = ""                        # how front ends show it, e.g. "heuristic baseline"

    def propose(self, context: Context) -> Proposal:
        raise NotImplementedError

    def reflect(self, context: Context, row: dict) -> str:
        """After a result: a short lesson for the journal ("" for none)."""
        return ""

    def close(self) -> None:
        """Release clients, servers, scratch dirs."""
