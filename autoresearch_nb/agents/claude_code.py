"""Claude Code (`claude -p`) as a named agent: the command agent with the flags chosen for the user and
its JSON result read for the description, the tokens and the dollars."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from ..errors import LabError
from . import cli_output
from .cli_memory import Conversation
from .command import CommandAgent, find_program, no_usage

INSTALL = "npm install -g @anthropic-ai/claude-code"
# No shell (it would run the training, or anything), no web, no sub-agents or skills: it reads and
# edits files in the scratch copy, nothing else.
DISALLOWED = "Bash,WebFetch,WebSearch,Agent,Task,Skill,Workflow,ScheduleWakeup,NotebookEdit"
# An overnight run wants no update checks, telemetry or other calls beside the model's.
QUIET = {"DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1"}


def login() -> str:
    """How Claude Code will pay: an API key (billed per token), a subscription token or the login
    `claude` keeps in ~/.claude (a subscription, or an API key it stored). LabError if none."""
    if os.environ.get("ANTHROPIC_API_KEY"):
        return "api-key"
    if os.environ.get("CLAUDE_CODE_OAUTH_TOKEN"):
        return "subscription"
    config = Path(os.environ.get("CLAUDE_CONFIG_DIR") or Path.home() / ".claude")
    if (config / ".credentials.json").exists():
        return "login"
    raise LabError("--agent claude-code needs a way to pay for Claude: set ANTHROPIC_API_KEY, or on a machine "
                   "with a subscription run `claude setup-token` and set CLAUDE_CODE_OAUTH_TOKEN to what it prints "
                   "(in Colab: add it to the notebook's secrets), or log in once with `claude`")


class ClaudeCodeAgent(CommandAgent):
    """`claude -p` in the scratch copy: edits with its own tools, reports its result as JSON."""

    name = "claude-code"
    extra_env = QUIET

    def __init__(self, model: str | None = None, timeout: float | None = None, binary: str | None = None,
                 base_url: str | None = None, memory: bool = False):
        program = find_program(binary or "claude", "--agent claude-code", INSTALL)
        self.billing = login()
        words = [program, "-p", "--output-format", "json", "--permission-mode", "acceptEdits",
                 "--disallowedTools", DISALLOWED]
        if model:
            words += ["--model", model]
        super().__init__(shlex.join(words), 900 if timeout is None else timeout)
        self.memory = Conversation() if memory else None
        if base_url:  # an Anthropic-compatible endpoint of the person's choosing (a proxy, a gateway)
            self.extra_env = {**QUIET, "ANTHROPIC_BASE_URL": base_url}
        self.model = model
        self.label = f"Claude Code ({model or 'its default model'})"

    def command_line(self, session: str | None) -> str:
        # Fresh per proposal, nothing is filed under ~/.claude; with memory, the session is kept.
        if self.memory is None:
            return self.command + " --no-session-persistence"
        return self.command + (f" --resume {shlex.quote(session)}" if session else "")

    def session_of(self, output: str) -> str | None:
        result = _result_object(output)
        return str(result["session_id"]) if result and result.get("session_id") else None

    def understand(self, output: str) -> tuple[str, dict]:
        """The result's text (where its DESCRIPTION line is) and its usage; on a subscription the
        dollars are Claude Code's list-price estimate, kept apart, not billed."""
        result = _result_object(output)
        if result is None:  # it died before its result: its own words are all there is
            return output, no_usage()
        text = str(result.get("result") or "")
        if result.get("is_error"):
            status = result.get("api_error_status")
            text = f"API Error{f': {status}' if status else ''} {text}".strip()
        raw = result.get("usage") or {}
        usage = {**no_usage(), "input_tokens": int(raw.get("input_tokens") or 0),
                 "output_tokens": int(raw.get("output_tokens") or 0),
                 "cache_read_tokens": int(raw.get("cache_read_input_tokens") or 0),
                 "cache_write_tokens": int(raw.get("cache_creation_input_tokens") or 0)}
        cost = float(result.get("total_cost_usd") or 0.0)
        if self.billing == "api-key":
            usage["cost_usd"] = round(cost, 6)
        else:
            usage.update(billing="subscription", list_cost_usd=round(cost, 6))
        return text, usage


def _result_object(output: str) -> dict | None:
    """The last JSON object with "type": "result" in the CLI's output (stderr may come before it)."""
    for line in reversed(cli_output.clean_lines(output)):
        if line.startswith("{"):
            try:
                found = json.loads(line)
            except ValueError:
                continue
            if isinstance(found, dict) and found.get("type") == "result":
                return found
    return None
