"""The Claude agent: proposes an experiment through the Messages API with Anthropic's text editor tool."""
from __future__ import annotations

import os
import random
import time

import anthropic

from ..errors import LabError
from . import pricing
from .base import Agent, Context, Proposal, ProposalError
from .edit_tools import EDITOR_TOOL_NAME, EDITOR_TOOL_TYPE, SUBMIT_DESCRIPTION, SUBMIT_SCHEMA, SUBMIT_TOOL_NAME, ScratchCopy, ToolSession
from .prompting import files_block, situation_block, system_prompt, templated_lesson

# The newest Claude 4.x Sonnet: text_editor_20250728 is the editor version documented for 4.x.
DEFAULT_MODEL = "claude-sonnet-4-6"
MAX_OUTPUT_TOKENS = 16_000       # room to rewrite a whole train.py; non-streaming stays allowed
MAX_BACKOFF_S = 60.0
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


def is_retryable(error: Exception) -> bool:
    """Rate limits, overload, server errors and timeouts pass; other client errors do not."""
    if isinstance(error, anthropic.APIConnectionError):  # includes timeouts
        return True
    if isinstance(error, anthropic.APIStatusError):
        return error.status_code in (408, 409, 429) or error.status_code >= 500
    return False


class ClaudeAgent(Agent):
    """Claude edits a scratch copy of the allowed files with tools and submits one experiment."""

    name = "claude"

    def __init__(self, model: str | None = None, max_turns: int = 12, api_key: str | None = None,
                 base_url: str | None = None, max_retries: int = 6, retry_backoff: float = 2.0,
                 timeout: float = 600.0, max_tokens: int = MAX_OUTPUT_TOKENS):
        self.model = model or DEFAULT_MODEL
        self.label = f"Claude ({self.model})"
        self.max_turns = max_turns
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.max_tokens = max_tokens
        # Our own retry loop (below) replaces the SDK's: its waits top out at 8 s, too short to
        # ride out an overload storm overnight, and ours reports the usage spent so far.
        self._client = anthropic.Anthropic(api_key=find_api_key(api_key), base_url=base_url,
                                           max_retries=0, timeout=timeout)

    def propose(self, context: Context) -> Proposal:
        session = ToolSession(ScratchCopy(context.files, context.allowed, context.locked,
                                          context.lab_dir))
        tally = pricing.UsageTally(self.model)
        system = [{"type": "text", "text": system_prompt(context), "cache_control": EPHEMERAL}]
        tools = [
            {"type": EDITOR_TOOL_TYPE, "name": EDITOR_TOOL_NAME},
            {"name": SUBMIT_TOOL_NAME, "description": SUBMIT_DESCRIPTION,
             "input_schema": SUBMIT_SCHEMA, "cache_control": EPHEMERAL},
        ]
        # The files change only when an experiment is kept: a cache breakpoint after them lets
        # consecutive proposals share that prefix too.
        messages = [{"role": "user", "content": [
            {"type": "text", "text": files_block(context), "cache_control": EPHEMERAL},
            {"type": "text", "text": situation_block(context)},
        ]}]
        for _ in range(self.max_turns):
            response = self._create(tally, system=system, tools=tools,
                                    messages=_with_moving_breakpoint(messages))
            usage = response.usage
            tally.add(usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens,
                      usage.cache_creation_input_tokens)
            messages.append({"role": "assistant",
                             "content": [block.to_dict() for block in response.content]})
            if response.stop_reason == "refusal":
                raise ProposalError("Claude declined to propose an experiment", tally.as_dict())
            calls = [block for block in response.content if block.type == "tool_use"]
            if not calls:
                messages.append({"role": "user", "content": NUDGE})
                continue
            session.begin_turn()
            results = []
            for call in calls:
                text, is_error = session.call(call.name, call.input)
                if is_error and response.stop_reason == "max_tokens":
                    text += " (Your reply hit the output limit: prefer small str_replace edits.)"
                results.append({"type": "tool_result", "tool_use_id": call.id,
                                "content": text, "is_error": is_error})
            if session.submission:
                return self._finish(session, tally)
            messages.append({"role": "user", "content": results})
        raise ProposalError(f"Claude did not submit an experiment within {self.max_turns} turns",
                            tally.as_dict())

    def _finish(self, session: ToolSession, tally: pricing.UsageTally) -> Proposal:
        description, rationale = session.submission
        files = session.scratch.changed_files()
        if not files:
            raise ProposalError(f"Claude submitted '{description}' without changing any file",
                                tally.as_dict())
        return Proposal(files=files, description=description, rationale=rationale,
                        usage=tally.as_dict())

    def _create(self, tally: pricing.UsageTally, **request):
        """One Messages call with retries; ProposalError(fatal) once they are spent."""
        last_error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(backoff_delay(attempt - 1, self.retry_backoff, last_error))
            try:
                return self._client.messages.create(model=self.model, max_tokens=self.max_tokens,
                                                    **request)
            except anthropic.APIError as error:
                if not is_retryable(error):
                    raise ProposalError(_describe(error), tally.as_dict(), fatal=True) from error
                last_error = error
        raise ProposalError(f"Anthropic API still failing after {self.max_retries + 1} attempts: "
                            f"{_describe(last_error)}", tally.as_dict(), fatal=True)

    def reflect(self, context: Context, row: dict) -> str:
        return templated_lesson(context, row)

    def estimate_next_cost(self, history_usage: list[dict]) -> float:
        """A cautious guess at the next proposal's dollar cost, for --max-cost."""
        return pricing.estimate_next_cost(history_usage, self.model)

    def close(self) -> None:
        self._client.close()


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
