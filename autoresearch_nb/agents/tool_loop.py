"""The propose loop the LLM agents share: tools on a scratch copy, turns until the model submits,
retries that ride out an outage. Each backend (Claude, OpenAI-compatible) supplies only what differs.

The call order, for one proposal:
    conversation = begin(context)                  the first request's system, tools and messages
    per turn, at most max_turns:
        response = ask(conversation)               one API call, retried here on retryable errors
        count(tally, response)                     tokens into the usage tally
        calls = take(response, conversation)       the reply appended; its tool calls as ToolCalls
        no calls -> nudge(conversation), next turn
        each call runs on the scratch copy (ToolSession)
        submitted -> the Proposal (its changed files), or ProposalError if nothing changed
        answer(conversation, results, response)    the tool results appended
A backend raises ProposalError from take() for a reply it cannot use (a refusal, no choices).
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

from . import pricing
from .base import Agent, Context, Proposal, ProposalError
from .edit_tools import ScratchCopy, ToolSession
from .prompting import templated_lesson

MAX_BACKOFF_S = 60.0


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict
    error: str | None = None   # the call could not be read (say, arguments that are not JSON)


def backoff_delay(attempt: int, base: float, error: Exception | None) -> float:
    """Seconds to wait before retry `attempt`: the server's retry-after if given, else exponential."""
    response = getattr(error, "response", None)
    if response is not None:
        header = response.headers.get("retry-after")
        try:
            if header is not None and 0 <= float(header) <= MAX_BACKOFF_S:
                return float(header)
        except ValueError:
            pass
    return min(MAX_BACKOFF_S, base * (2 ** attempt)) * random.uniform(0.75, 1.0)


class ToolLoopAgent(Agent):
    """An LLM that edits a scratch copy with tools and submits one experiment per proposal."""

    speaker = "the model"        # who "did not submit", in messages
    service = "the endpoint"     # what "is still failing", in messages
    api_error: type = Exception  # the client library's error base class...
    connection_error: type = ()  # ...its cannot-connect and timeout errors (retried)...
    status_error: type = ()      # ...and its HTTP status errors (retried: 408, 409, 429, 5xx)
    max_turns = 12
    max_retries = 6
    retry_backoff = 2.0

    # -- what a backend supplies ---------------------------------------------------------------
    def begin(self, context: Context):
        raise NotImplementedError

    def ask(self, conversation):
        raise NotImplementedError

    def count(self, tally: pricing.UsageTally, response) -> None:
        raise NotImplementedError

    def take(self, response, conversation, tally: pricing.UsageTally) -> list[ToolCall]:
        raise NotImplementedError

    def nudge(self, conversation) -> None:
        raise NotImplementedError

    def answer(self, conversation, results: list[tuple[ToolCall, str, bool]], response) -> None:
        raise NotImplementedError

    def retryable(self, error: Exception) -> bool:
        """Rate limits, overload, server errors and timeouts pass; other client errors do not."""
        if isinstance(error, self.connection_error):
            return True
        if isinstance(error, self.status_error):
            return error.status_code in (408, 409, 429) or error.status_code >= 500
        return False

    def describe(self, error: Exception | None) -> str:
        return str(error)

    # -- the loop -------------------------------------------------------------------------------
    def propose(self, context: Context) -> Proposal:
        session = ToolSession(ScratchCopy(context.files, context.allowed, context.locked, context.lab_dir))
        tally = pricing.UsageTally(self.model)
        conversation = self.begin(context)
        for _ in range(self.max_turns):
            response = self._ask_with_retries(tally, conversation)
            self.count(tally, response)
            calls = self.take(response, conversation, tally)
            if not calls:
                self.nudge(conversation)
                continue
            session.begin_turn()
            results = [(call, *self._run(session, call)) for call in calls]
            if session.submission:
                return self._finish(session, tally)
            self.answer(conversation, results, response)
        raise ProposalError(f"{self.speaker} did not submit an experiment within {self.max_turns} turns",
                            tally.as_dict())

    def _run(self, session: ToolSession, call: ToolCall) -> tuple[str, bool]:
        if call.error is not None:
            session.errors += 1
            session.turn_errors += 1
            return call.error, True
        return session.call(call.name, call.arguments)

    def _finish(self, session: ToolSession, tally: pricing.UsageTally) -> Proposal:
        description, rationale = session.submission
        files = session.scratch.changed_files()
        if not files:
            raise ProposalError(f"{self.speaker} submitted '{description}' without changing any file",
                                tally.as_dict())
        return Proposal(files=files, description=description, rationale=rationale, usage=tally.as_dict())

    def _ask_with_retries(self, tally: pricing.UsageTally, conversation):
        """One API call with retries; ProposalError(fatal) once they are spent or the error is final."""
        last_error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(backoff_delay(attempt - 1, self.retry_backoff, last_error))
            try:
                return self.ask(conversation)
            except self.api_error as error:
                if not self.retryable(error):
                    raise ProposalError(self.describe(error), tally.as_dict(), fatal=True) from error
                last_error = error
        raise ProposalError(f"{self.service} still failing after {self.max_retries + 1} attempts: "
                            f"{self.describe(last_error)}", tally.as_dict(), fatal=True)

    def reflect(self, context: Context, row: dict) -> str:
        return templated_lesson(context, row)

    def estimate_next_cost(self, history_usage: list[dict]) -> float:
        """A cautious guess at the next proposal's dollar cost, for --max-cost."""
        return pricing.estimate_next_cost(history_usage, self.model)

    def close(self) -> None:
        self._client.close()
