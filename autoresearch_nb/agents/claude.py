"""The Claude agent: proposes an experiment through the Messages API with Anthropic's text editor tool."""
from __future__ import annotations

import os

import anthropic

from ..errors import LabError
from . import pricing
from .base import Context, ProposalError
from .edit_tools import EDITOR_TOOL_NAME, EDITOR_TOOL_TYPE, SUBMIT_DESCRIPTION, SUBMIT_SCHEMA, SUBMIT_TOOL_NAME
from .prompting import files_block, situation_block, system_prompt
from .tool_loop import ToolCall, ToolLoopAgent

# The newest Claude 4.x Sonnet: text_editor_20250728 is the editor version documented for 4.x.
DEFAULT_MODEL = "claude-sonnet-4-6"
MAX_OUTPUT_TOKENS = 16_000       # room to rewrite a whole train.py; non-streaming stays allowed
EPHEMERAL = {"type": "ephemeral"}
NUDGE = ("Continue: make your change with the str_replace_based_edit_tool, then call "
         "submit_experiment. Reply with tool calls only.")
API_KEY_HELP = ("No Anthropic API key: set the ANTHROPIC_API_KEY environment variable (in Colab, "
                "add ANTHROPIC_API_KEY under Secrets, the key icon, and give this notebook access), "
                "or use --agent heuristic.")


def find_api_key(explicit: str | None = None) -> str:
    """The key from the argument, the environment or Colab's secrets; LabError if none."""
    if explicit:
        return explicit
    key = os.environ.get("ANTHROPIC_API_KEY")
    if key:
        return key
    try:
        from google.colab import userdata  # only importable inside Colab
        key = userdata.get("ANTHROPIC_API_KEY")
    except Exception:  # not in Colab, secret missing, or notebook not granted access
        key = None
    if key:
        return key
    raise LabError(API_KEY_HELP)


class ClaudeAgent(ToolLoopAgent):
    """Claude edits a scratch copy of the allowed files with tools and submits one experiment."""

    name = "claude"
    speaker = "Claude"
    service = "Anthropic API"
    api_error = anthropic.APIError
    connection_error = anthropic.APIConnectionError  # timeouts included
    status_error = anthropic.APIStatusError

    def __init__(self, model: str | None = None, max_turns: int = 12, api_key: str | None = None,
                 base_url: str | None = None, max_retries: int = 6, retry_backoff: float = 2.0,
                 timeout: float = 600.0, max_tokens: int = MAX_OUTPUT_TOKENS):
        self.model = model or DEFAULT_MODEL
        self.label = f"Claude ({self.model})"
        self.max_turns = max_turns
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.max_tokens = max_tokens
        # The loop's own retries (tool_loop) replace the SDK's: its waits top out at 8 s, too short to
        # ride out an overload storm overnight, and ours report the usage spent so far.
        self._client = anthropic.Anthropic(api_key=find_api_key(api_key), base_url=base_url,
                                           max_retries=0, timeout=timeout)

    def begin(self, context: Context) -> dict:
        # The files change only when an experiment is kept: a cache breakpoint after them lets
        # consecutive proposals share that prefix too.
        return {"system": [{"type": "text", "text": system_prompt(context), "cache_control": EPHEMERAL}],
                "tools": [{"type": EDITOR_TOOL_TYPE, "name": EDITOR_TOOL_NAME},
                          {"name": SUBMIT_TOOL_NAME, "description": SUBMIT_DESCRIPTION,
                           "input_schema": SUBMIT_SCHEMA, "cache_control": EPHEMERAL}],
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": files_block(context), "cache_control": EPHEMERAL},
                    {"type": "text", "text": situation_block(context)}]}]}

    def ask(self, conversation: dict):
        return self._client.messages.create(model=self.model, max_tokens=self.max_tokens,
                                            system=conversation["system"], tools=conversation["tools"],
                                            messages=_with_moving_breakpoint(conversation["messages"]))

    def count(self, tally: pricing.UsageTally, response) -> None:
        usage = response.usage
        tally.add(usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens,
                  usage.cache_creation_input_tokens)

    def take(self, response, conversation: dict, tally: pricing.UsageTally) -> list[ToolCall]:
        conversation["messages"].append({"role": "assistant",
                                         "content": [block.to_dict() for block in response.content]})
        if response.stop_reason == "refusal":
            raise ProposalError("Claude declined to propose an experiment", tally.as_dict())
        return [ToolCall(block.id, block.name, block.input) for block in response.content
                if block.type == "tool_use"]

    def nudge(self, conversation: dict) -> None:
        conversation["messages"].append({"role": "user", "content": NUDGE})

    def answer(self, conversation: dict, results, response) -> None:
        hint = " (Your reply hit the output limit: prefer small str_replace edits.)"
        conversation["messages"].append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "is_error": is_error,
             "content": text + (hint if is_error and response.stop_reason == "max_tokens" else "")}
            for call, text, is_error in results]})

    def describe(self, error: Exception | None) -> str:
        return _describe(error)


def _with_moving_breakpoint(messages: list[dict]) -> list[dict]:
    """The conversation with a cache breakpoint on its last block, so each turn reads the last.

    Only the newest message carries it: the API allows four breakpoints per request.
    """
    last = dict(messages[-1])
    content = last["content"]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    last["content"] = list(content[:-1]) + [dict(content[-1], cache_control=EPHEMERAL)]
    return messages[:-1] + [last]


def _describe(error: Exception | None) -> str:
    if isinstance(error, anthropic.AuthenticationError):
        return "Anthropic rejected the API key (401): check ANTHROPIC_API_KEY."
    if isinstance(error, anthropic.NotFoundError):
        return f"Anthropic API 404 (is the model name right?): {_message(error)}"
    if isinstance(error, anthropic.APIStatusError):
        return f"Anthropic API error {error.status_code}: {_message(error)}"
    if isinstance(error, anthropic.APITimeoutError):
        return "Anthropic API request timed out"
    if isinstance(error, anthropic.APIConnectionError):
        return f"cannot reach the Anthropic API: {error}"
    return str(error)


def _message(error: anthropic.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", ""))[:300]
    return str(error.message)[:300]
