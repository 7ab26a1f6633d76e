"""The agent's own thread: it drafts proposals (and writes journal lessons) while workers train.

The coordinator hands it a context whenever it wants another draft; the drafter calls the agent
(the only thread that ever does, so no agent needs to be thread-safe) and posts what came back
on the coordinator's event queue: ("draft", Draft), ("draft_failed", error, seconds) or nothing
while it waits out an outage. Lessons for the journal are written between proposals.
"""
from __future__ import annotations

import queue
import threading
import time

from ..agents.base import Agent, ProposalError
from ..lab.ledger import now_iso
from .tracks import Draft


class Drafter:
    def __init__(self, agent: Agent, events: queue.Queue, journal):
        self.agent, self.events, self.journal = agent, events, journal
        self.requests: queue.Queue = queue.Queue()
        self.pending = 0                     # requests whose answer the coordinator has not taken yet
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="autoresearch-drafter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait: float = 5.0) -> None:
        self._stop.set()
        self.requests.put(None)
        self._thread.join(timeout=wait)

    def ask(self, draft_id: int, base: str, context) -> None:
        """Draft a proposal on commit `base` from `context` (answered on the event queue)."""
        with self._lock:
            self.pending += 1
        self.requests.put(("draft", draft_id, base, context))

    def lesson(self, context, row: dict) -> None:
        """Write the journal's entry for a finished row (the agent may add a lesson to it)."""
        self.requests.put(("lesson", context, row))

    def _main(self) -> None:
        while not self._stop.is_set():
            item = self.requests.get()
            if item is None:
                continue
            if item[0] == "lesson":
                _, context, row = item
                try:
                    lesson = self.agent.reflect(context, row) or ""
                except Exception:  # a lesson is nice to have; the record is what matters
                    lesson = ""
                self.journal(row, lesson)
                continue
            _, draft_id, base, context = item
            started, t0 = now_iso(), time.monotonic()
            # each answer stays pending until the coordinator takes it off the queue (settled)
            try:
                proposal = self.agent.propose(context)
            except ProposalError as error:
                self.events.put(("draft_failed", draft_id, base, error, time.monotonic() - t0, started))
                continue
            except Exception as error:  # a broken agent is recorded, never fatal to the loop
                failure = ProposalError(f"{type(error).__name__}: {error}")
                self.events.put(("draft_failed", draft_id, base, failure, time.monotonic() - t0, started))
                continue
            self.events.put(("draft", Draft(draft_id, base, dict(proposal.files), proposal.description or "",
                                            proposal.rationale or "", dict(proposal.usage or {}),
                                            dict(proposal.meta or {}), round(time.monotonic() - t0, 3), started)))

    def settled(self) -> None:
        """The coordinator took an answer off its queue: one request fewer is pending."""
        with self._lock:
            self.pending -= 1
