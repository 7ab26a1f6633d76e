"""Memory across proposals for a coding-agent CLI: one conversation, resumed proposal after proposal in
the same scratch directory, told only what happened since its last turn.

Fresh per proposal is the default (docs/agents.md has the measured cost of each). A resumed turn that
fails (the CLI exits with an error or is killed) ends the conversation: the next proposal starts a new
one with the whole prompt, so a lost session costs one proposal, never the night.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from .base import Context
from .prompting import results_table

MAX_DIFF_CHARS = 6000


class Conversation:
    """The CLI's session id, the directory it runs in, and how much of the night it has been told."""

    def __init__(self):
        self.home = Path(tempfile.mkdtemp(prefix="autoresearch-cli-memory-"))
        self.session: str | None = None
        self.turns = 0            # proposals made in this conversation
        self._rows_told = 0       # ledger rows the conversation has seen
        self._notes_told = 0      # steering notes it has seen
        self._best_diff = ""

    def follow_up(self, context: Context, files_rule: str, finish: str) -> str:
        """The next turn's prompt: the results since the last turn, the files reset, the task."""
        news = dataclasses.replace(context, history=context.history[self._rows_told:])
        parts = [f"# Results since your last change ({context.metric}, {context.direction} is better)\n",
                 results_table(news)]
        if context.best is not None:
            parts.append(f"Best {context.metric} so far: {context.best:.6f}"
                         + (f" (baseline {context.baseline:.6f})." if context.baseline is not None else "."))
        if context.best_diff.strip() and context.best_diff != self._best_diff:
            parts.append("# The best code now, against the baseline\n\n```diff\n"
                         + context.best_diff[-MAX_DIFF_CHARS:] + "\n```")
        failed = [row for row in news.history if row.get("status") in ("crash", "rejected")]
        if failed and context.last_failure.strip():
            parts.append("# Log tail of the most recent failed run\n\n```\n" + context.last_failure[-3000:] + "\n```")
        notes = context.steering[self._notes_told:]
        if notes:
            parts.append("# New notes from the person steering this run (follow them)\n\n"
                         + "\n".join(f"- {note}" for note in notes))
        if context.in_flight:
            parts.append("# Experiments running now (results not in yet; propose something else)\n\n"
                         + "\n".join(f"- {what}" for what in context.in_flight))
        parts.append("# Your task\n\n"
                     f"The files here were reset to the lab's best code: kept changes are in, the rest reverted. "
                     f"Read a file again before you edit it. {files_rule}\n\n"
                     f"Propose experiment #{context.index}: make one focused change that you have not tried. "
                     f"{finish}")
        return "\n\n".join(parts) + "\n"

    def told(self, context: Context, session: str | None) -> None:
        """After a turn: the session to resume next time (None ends the conversation)."""
        if session is None:
            self.forget()
            return
        self.session = session
        self.turns += 1
        self._rows_told = len(context.history)
        self._notes_told = len(context.steering)
        self._best_diff = context.best_diff

    def forget(self) -> None:
        self.session, self.turns = None, 0
        self._rows_told = self._notes_told = 0
        self._best_diff = ""

    def close(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)
