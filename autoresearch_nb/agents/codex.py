"""Codex (`codex exec`) as a named agent: the command agent with the flags chosen for the user and its
JSON events read for the description and the tokens."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from ..errors import LabError
from . import cli_output
from .cli_memory import Conversation
from .command import CommandAgent, find_program, no_usage
from .pricing import USAGE_KEYS, cost_usd, model_prices

INSTALL = "npm install -g @openai/codex"
PROVIDER = "autoresearch"  # the provider --base-url defines (an OpenAI-compatible Responses endpoint)


def login() -> str:
    """How Codex will pay: an API key (tokens billed to it), or the ChatGPT plan `codex login` keeps in
    $CODEX_HOME (a subscription). LabError if neither."""
    if os.environ.get("CODEX_API_KEY") or os.environ.get("OPENAI_API_KEY"):
        return "api-key"
    home = Path(os.environ.get("CODEX_HOME") or Path.home() / ".codex")
    if (home / "auth.json").exists():
        return "subscription"
    raise LabError("--agent codex needs a way to pay for the model: set OPENAI_API_KEY (or CODEX_API_KEY), or "
                   "log in once with `codex login` (on a machine without a browser: `codex login --device-auth`)")


class CodexAgent(CommandAgent):
    """`codex exec` in the scratch copy: its shell and patches confined to that copy by Codex's own
    sandbox (workspace-write, no network), no web search; it reports its events as JSON lines."""

    name = "codex"

    def __init__(self, model: str | None = None, timeout: float | None = None, binary: str | None = None,
                 base_url: str | None = None, memory: bool = False):
        program = find_program(binary or "codex", "--agent codex", INSTALL)
        self.billing = login()
        # `exec resume` takes no --sandbox: the sandbox is set through the config, the same for both
        words = ["--json", "--skip-git-repo-check", "-c", 'sandbox_mode="workspace-write"',
                 "-c", 'web_search="disabled"', "-c", "sandbox_workspace_write.network_access=false"]
        if base_url:
            key = "CODEX_API_KEY" if os.environ.get("CODEX_API_KEY") else "OPENAI_API_KEY"
            words += ["-c", f'model_providers.{PROVIDER}.name="{PROVIDER}"',
                      "-c", f'model_providers.{PROVIDER}.base_url="{base_url}"',
                      "-c", f'model_providers.{PROVIDER}.env_key="{key}"',
                      "-c", f'model_providers.{PROVIDER}.wire_api="responses"',
                      "-c", f'model_provider="{PROVIDER}"']
        if model:
            words += ["--model", model]
        super().__init__(shlex.join([program, "exec"]), 900 if timeout is None else timeout)
        self.program, self.flags = program, words
        self.memory = Conversation() if memory else None
        self.command = self.command_line(None)
        self._reported: dict[str, dict] = {}   # the session's last reported tokens (see _this_turn)
        self.model = model
        self.label = f"Codex ({model or 'its default model'})"

    def command_line(self, session: str | None) -> str:
        # Fresh per proposal, no session is filed under $CODEX_HOME; with memory, it is kept.
        if session:
            return shlex.join([self.program, "exec", "resume", *self.flags, session, "-"])
        ephemeral = [] if self.memory else ["--ephemeral"]
        return shlex.join([self.program, "exec", *ephemeral, *self.flags, "-"])

    def session_of(self, output: str) -> str | None:
        for line in cli_output.clean_lines(output):
            event = _event(line)
            if event and event.get("type") == "thread.started" and event.get("thread_id"):
                return str(event["thread_id"])
        return None

    def understand(self, output: str) -> tuple[str, dict]:
        """Its messages and errors as text (where its DESCRIPTION line is), and the tokens of its turns.
        Codex reports no price: a model with a known list price is priced at it, else the rows say
        "unpriced" rather than $0."""
        said, usage, seen = [], no_usage(), False
        for line in cli_output.clean_lines(output):
            event = _event(line)
            if event is None:
                said.append(line)
                continue
            seen = True
            item = event.get("item") or {}
            if event.get("type") == "item.completed" and item.get("type") == "agent_message":
                said.append(str(item.get("text") or ""))
            elif event.get("type") in ("error", "turn.failed") or item.get("type") == "error":
                said.append(str(event.get("message") or (event.get("error") or {}).get("message")
                                or item.get("message") or ""))
            if event.get("type") == "turn.completed":
                counted = event.get("usage") or {}
                cached = int(counted.get("cached_input_tokens") or 0)
                usage["input_tokens"] += int(counted.get("input_tokens") or 0) - cached
                usage["cache_read_tokens"] += cached
                usage["cache_write_tokens"] += int(counted.get("cache_write_input_tokens") or 0)
                usage["output_tokens"] += int(counted.get("output_tokens") or 0)
        usage = self._this_turn(self.session_of(output), usage)
        if seen:
            usage.update(_priced(self.model, usage, self.billing))
        return "\n".join(said), usage

    def _this_turn(self, thread: str | None, usage: dict) -> dict:
        """A resumed session reports the tokens of the whole session so far (measured: benchmarks/cli_memory.py):
        this proposal's are what it adds to the last report of the same session."""
        counted = {key: usage[key] for key in USAGE_KEYS}
        before = self._reported.get(thread) if thread else None
        if thread:
            self._reported = {thread: counted}
        if before is None:
            return usage
        return {**usage, **{key: max(0, counted[key] - before[key]) for key in USAGE_KEYS}}


def _priced(model: str | None, usage: dict, billing: str) -> dict:
    """Codex prints tokens, never dollars: OpenAI's list price for a model we know, else "unpriced"."""
    if model_prices(model) is None:
        return {"billing": "subscription" if billing == "subscription" else "unpriced"}
    cost = round(cost_usd(model, usage), 6)
    if billing == "subscription":
        return {"billing": "subscription", "list_cost_usd": cost}
    return {"cost_usd": cost, "cost_note": f"Codex reports no price: {model} at OpenAI's list price"}


def _event(line: str) -> dict | None:
    if not line.startswith("{"):
        return None
    try:
        found = json.loads(line)
    except ValueError:
        return None
    return found if isinstance(found, dict) and "type" in found else None
