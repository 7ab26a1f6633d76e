"""The event stream: the loop emits, front ends subscribe; nothing flows the other way."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

# Event kinds and their data:
#   run_started          {lab, tag, agent, agent_label, model, profile, device, budget,
#                         max_experiments, policy, max_cost}
#   experiment_started   {job, worker, description, role, budget, commit}  (index: the job, too)
#   step                 {job, worker, step, loss, lr, tok_s, progress, elapsed, wall}
#   queue                {waiting, drafts, parked}   what is not running yet
#   experiment_finished  {row}          a ledger row (see ledger.py)
#   state                {state, message}   state in idle|running|paused|stopping|stopped|finished|error
#   message              {text, level}  a line for the person (info|warning|error)
#   run_finished         {reason}


@dataclass
class Event:
    kind: str
    data: dict = field(default_factory=dict)
    time: float = field(default_factory=time.time)


class EventBus:
    """Thread-safe fan-out. A failing subscriber is dropped from that event, never the loop."""

    def __init__(self):
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[Event], None]] = []

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe():
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def emit(self, kind: str, **data) -> Event:
        event = Event(kind, data)
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(event)
            except Exception:  # a broken front end must not stop the research
                pass
        return event
