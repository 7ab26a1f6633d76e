"""The command agent: a coding-agent CLI (aider, claude -p, codex exec) edits a scratch copy of the lab."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess

from pathlib import Path

from ..run import proctime
from ..errors import LabError
from . import cli_output
from .base import Agent, Context, Proposal, ProposalError
from .cli_memory import Conversation
from .prompting import situation_block, system_prompt, templated_lesson
from .scratch_lab import DESCRIPTION_FILE, Changes, ScratchLab

KILL_GRACE_S = 5.0
MAX_SIDE_FILES = 50
CLI_TASK = ("make one focused change to the files you may edit, then say what you changed as "
            "the rules above ask.")


class CommandAgent(Agent):
    """Runs a coding-agent CLI in a scratch git repo; what it changed in the allowed files is the
    proposal, what it wrote elsewhere is discarded and listed.
    For --max-cost it has no price list: the loop guesses the next proposal's cost from the last
    ones' recorded cost (nothing for a plain CLI, Claude Code's own figure for claude-code)."""

    name = "command"
    extra_env: dict = {}   # what a named CLI is always given (see claude_code.py)

    def __init__(self, command: str, timeout: float = 900):
        if not command or not command.strip():
            raise LabError('--agent command needs --command, e.g. --command "claude -p".')
        self.command = command
        self.timeout = float(timeout)
        self.model = None
        self.label = f"command: {cli_output.program_name(command)}"
        self.empty_in_a_row = 0
        self.memory: Conversation | None = None   # a CLI that resumes its session (cli_memory.py)

    def propose(self, context: Context) -> Proposal:
        memory = self.memory
        with ScratchLab(context, home=memory.home if memory else None) as scratch:
            resuming = bool(memory and memory.session)
            prompt = (memory.follow_up(context, *rules(scratch)) if resuming
                      else build_prompt(context, scratch))
            scratch.prompt_file.write_text(prompt, encoding="utf-8")
            command = (self.command_line(memory.session if resuming else None)
                       .replace("{prompt_file}", shlex.quote(str(scratch.prompt_file)))
                       .replace("{description_file}", shlex.quote(str(scratch.description_file))))
            env = dict(os.environ, **self.extra_env, AUTORESEARCH_PROMPT_FILE=str(scratch.prompt_file),
                       AUTORESEARCH_DESCRIPTION_FILE=str(scratch.description_file),
                       PYTHONUNBUFFERED="1")  # a CLI killed at the time limit keeps its last words
            # A CLI handed the prompt file gets no stdin: aider, for one, reads each stdin line
            # as a chat turn of its own.
            stdin = "" if "{prompt_file}" in self.command else prompt
            outcome = run_in_group(command, scratch.root, stdin, env, self.timeout)
            changes = scratch.changes()
            stated = scratch.stated_description()
        empty = (outcome.returncode == 0 and not outcome.timed_out
                 and not (changes.files or changes.locked or changes.deleted))
        self.empty_in_a_row = self.empty_in_a_row + 1 if empty else 0
        turn = None
        if memory:
            finished = outcome.returncode == 0 and not outcome.timed_out
            memory.told(context, self.session_of(outcome.output) if finished else None)
            turn = {"conversation": memory.session, "turn": memory.turns} if finished else None
        proposal = self._judge(outcome, changes, stated)
        if turn:
            proposal.meta["memory"] = turn
        return proposal

    def command_line(self, session: str | None) -> str:
        """The command to run: a new conversation, or (a CLI with memory) the one called `session`."""
        return self.command

    def session_of(self, output: str) -> str | None:
        """The session the CLI's output names, to resume next time (a CLI with memory overrides this)."""
        return None

    def close(self) -> None:
        if self.memory:
            self.memory.close()

    def understand(self, output: str) -> tuple[str, dict]:
        """What the CLI said, as text (for its description and its last words), and what it spent.
        A plain CLI prints text and reports no usage; a named one (claude_code.py) overrides this."""
        return output, no_usage()

    def _judge(self, outcome: "Outcome", changes: Changes, stated: str) -> Proposal:
        output, usage = self.understand(outcome.output)
        if changes.locked:
            raise ProposalError(f"REFUSED: the command agent changed the locked file "
                                f"{', '.join(changes.locked)}; nothing it did is kept", usage)
        outage = cli_output.looks_like_outage(output)
        if outcome.timed_out:
            reason = f"command agent ran past its {self.timeout:g} s limit: killed, its changes discarded"
            if outage:
                raise ProposalError(f"{reason}; its API looks down: {cli_output.tail(output)}",
                                    usage, fatal=True)
            raise ProposalError(f"{reason}; its output ends: {cli_output.tail(output)}", usage)
        if outcome.returncode != 0:
            raise ProposalError(f"command exited with status {outcome.returncode}: "
                                f"{cli_output.tail(output)}", usage,
                                fatal=outcome.returncode == 127 or outage)
        if changes.deleted:
            raise ProposalError(f"command agent deleted {', '.join(changes.deleted)} "
                                "(or replaced it with a link); nothing it did is kept", usage)
        if not changes.files:
            if outage:
                raise ProposalError("command agent changed nothing and its API looks down: "
                                    f"{cli_output.tail(output)}", usage, fatal=True)
            if self.empty_in_a_row >= 2:
                raise ProposalError(f"command agent changed none of the allowed files "
                                    f"({self.empty_in_a_row} times in a row); its output ends: "
                                    f"{cli_output.tail(output)}", usage)
            raise ProposalError("command agent changed none of the allowed files (its last line: "
                                f"{cli_output.last_line(output) or 'none'})", usage)
        description, rationale = cli_output.stated_description(stated, output)
        meta = {}
        if changes.side:
            side = changes.side[:MAX_SIDE_FILES]
            if len(changes.side) > MAX_SIDE_FILES:
                side.append(f"... and {len(changes.side) - MAX_SIDE_FILES} more")
            meta["side_files"] = side
        # An empty description is filled in by the loop from the diff (describe.py).
        return Proposal(files=changes.files, description=description, rationale=rationale,
                        usage=usage, meta=meta)

    def reflect(self, context: Context, row: dict) -> str:
        return templated_lesson(context, row)


def find_program(program: str, agent: str, install: str) -> str:
    """A named CLI's program, given as a path or found on the PATH; LabError saying how to install it."""
    found = shutil.which(program)
    if found:
        return found
    raise LabError(f"{agent} needs the `{Path(program).name}` program on the PATH: install it with `{install}` "
                   f"(in Colab: `!{install}`), or give --agent command --command for another CLI")


def build_prompt(context: Context, scratch: ScratchLab) -> str:
    """The charter, rules and history an LLM agent gets, with instructions a CLI can follow."""
    files_rule, finish = rules(scratch)
    return (system_prompt(context, finish=finish, files_rule=files_rule) + "\n"
            + situation_block(context, task=CLI_TASK) + "\n")


def rules(scratch: ScratchLab) -> tuple[str, str]:
    """Which files the CLI may edit, and how it finishes a proposal."""
    editable = ", ".join(scratch.editable) or "(none)"
    read_only = ", ".join(scratch.read_only) or "(none)"
    refused = (f" (a change to {', '.join(scratch.locked)} refuses the whole proposal)"
               if scratch.locked else "")
    files_rule = (f"You work in a scratch copy of the lab: the current directory, a git repository. "
                  f"Files you may edit: {editable}. Read-only files: {read_only}{refused}. "
                  "Anything else you write there (notes, caches, ignore files) is discarded.")
    finish = ("Edit the files you may edit in place. Do not commit and do not run the training: "
              "the harness trains your version when you finish. Then write one line saying what "
              "you changed (under 100 characters, e.g. 'halve the warmup: 10 -> 5 steps') "
              f"to the file {DESCRIPTION_FILE}, and on the lines after it why you expect it to "
              "help. If you cannot write that file, end your reply with a line that starts with "
              "DESCRIPTION: and then one that starts with RATIONALE: instead.")
    return files_rule, finish


class Outcome:
    """How the CLI ended: exit status (None when killed), stdout and stderr interleaved."""

    def __init__(self, returncode: int | None, output: str, timed_out: bool):
        self.returncode, self.output, self.timed_out = returncode, output, timed_out


def run_in_group(command: str, cwd, stdin: str, env: dict, timeout: float) -> Outcome:
    """Run `command` in a shell of its own process group; past `timeout` it and everything it started
    (in its group or not) get SIGTERM, and KILL_GRACE_S later SIGKILL."""
    process = subprocess.Popen(command, shell=True, cwd=cwd, env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace", start_new_session=True)
    try:
        output, _ = process.communicate(stdin, timeout=timeout)
        return Outcome(process.returncode, output, False)
    except subprocess.TimeoutExpired:
        # gathered before the shell ends: what it started would leave its tree with it
        started = proctime.signal_tree(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            output = None
        proctime.kill_tree(process.pid, reaped=process.returncode is not None, known=started)
        if output is None:
            try:
                output, _ = process.communicate(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:  # a daemon that escaped every kill holds the pipe
                output = ""
        return Outcome(None, output or "", True)
    except BaseException:
        proctime.kill_tree(process.pid, reaped=process.returncode is not None)
        process.wait()
        raise


def no_usage() -> dict:
    """No tokens and no dollars: what a plain CLI reports."""
    return {"input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0,
            "cache_write_tokens": 0, "cost_usd": 0.0}
