"""The OpenAI-compatible agent: the same editor and submit tools as function calls on chat completions."""
from __future__ import annotations

import json
import os

import openai

from ..errors import LabError
from . import pricing
from .base import Context, ProposalError
from .edit_tools import EDITOR_FUNCTION_DESCRIPTION, EDITOR_SCHEMA, EDITOR_TOOL_NAME, SUBMIT_DESCRIPTION, SUBMIT_SCHEMA, SUBMIT_TOOL_NAME
from .prompting import files_block, situation_block, system_prompt
from .tool_loop import ToolCall, ToolLoopAgent

TOOLS = [
    {"type": "function", "function": {"name": EDITOR_TOOL_NAME,
                                      "description": EDITOR_FUNCTION_DESCRIPTION,
                                      "parameters": EDITOR_SCHEMA}},
    {"type": "function", "function": {"name": SUBMIT_TOOL_NAME, "description": SUBMIT_DESCRIPTION,
                                      "parameters": SUBMIT_SCHEMA}},
]
NUDGE = (f"Continue: make your change with the {EDITOR_TOOL_NAME} function, then call "
         f"{SUBMIT_TOOL_NAME}. Reply with function calls only.")


class OpenAIAgent(ToolLoopAgent):
    """A model behind any chat-completions endpoint (OpenAI, vLLM, Ollama) proposes experiments."""

    name = "openai"
    api_error = openai.APIError
    connection_error = openai.APIConnectionError  # timeouts included
    status_error = openai.APIStatusError

    def __init__(self, base_url: str | None = None, model: str | None = None,
                 api_key: str | None = None, max_turns: int = 12, max_retries: int = 6,
                 retry_backoff: float = 2.0, timeout: float = 600.0):
        if not model:
            raise LabError("--agent openai needs --model: the model name the endpoint serves.")
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if not base_url:
                raise LabError("No OpenAI API key: set OPENAI_API_KEY, or give --base-url for a "
                               "local OpenAI-compatible server.")
            key = "none"  # local servers (Ollama, vLLM) accept any key
        self.model = model
        self.speaker = model
        self.label = f"{model} via {base_url or 'api.openai.com'}"
        self.max_turns = max_turns
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self._client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=0,
                                     timeout=timeout)

    def begin(self, context: Context) -> list[dict]:
        return [{"role": "system", "content": system_prompt(context)},
                {"role": "user", "content": files_block(context) + "\n\n" + situation_block(context)}]

    def ask(self, conversation: list[dict]):
        return self._client.chat.completions.create(model=self.model, messages=conversation, tools=TOOLS)

    def count(self, tally: pricing.UsageTally, response) -> None:
        _count(tally, response.usage)

    def take(self, response, conversation: list[dict], tally: pricing.UsageTally) -> list[ToolCall]:
        if not response.choices:
            raise ProposalError("the endpoint returned no choices", tally.as_dict())
        choice = response.choices[0]
        calls = choice.message.tool_calls or []
        reply = {"role": "assistant", "content": choice.message.content or ""}
        if calls:
            reply["tool_calls"] = [call.to_dict() for call in calls]
        conversation.append(reply)
        return [_read_call(call, choice.finish_reason) for call in calls]

    def nudge(self, conversation: list[dict]) -> None:
        conversation.append({"role": "user", "content": NUDGE})

    def answer(self, conversation: list[dict], results, response) -> None:
        conversation.extend({"role": "tool", "tool_call_id": call.id, "content": text} for call, text, _ in results)

    def describe(self, error: Exception | None) -> str:
        return _describe(error)


def _read_call(call, finish_reason: str | None) -> ToolCall:
    """A function call's name and arguments, or the error the model is told when they cannot be read."""
    function = getattr(call, "function", None)
    if function is None:
        return ToolCall(call.id, "", {}, "Error: only function calls are supported.")
    try:
        return ToolCall(call.id, function.name, json.loads(function.arguments or "{}"))
    except json.JSONDecodeError as error:
        hint = " (the reply hit the length limit)" if finish_reason == "length" else ""
        return ToolCall(call.id, function.name, {}, f"Error: the arguments are not valid JSON{hint}: {error}")


def _count(tally: pricing.UsageTally, usage) -> None:
    """Our usage keys from chat-completions usage; cached prompt tokens are not counted twice."""
    if usage is None:  # some local servers send none
        tally.add()
        return
    details = usage.prompt_tokens_details
    cached = (details.cached_tokens or 0) if details else 0
    written = (getattr(details, "cache_write_tokens", None) or 0) if details else 0
    tally.add(max(0, usage.prompt_tokens - cached - written), usage.completion_tokens, cached,
              written)


def _describe(error: Exception | None) -> str:
    if isinstance(error, openai.AuthenticationError):
        return "the endpoint rejected the API key (401): check OPENAI_API_KEY."
    if isinstance(error, openai.APIStatusError):
        return f"endpoint error {error.status_code}: {str(error.message)[:300]}"
    if isinstance(error, openai.APITimeoutError):
        return "the endpoint timed out"
    if isinstance(error, openai.APIConnectionError):
        return f"cannot reach the endpoint: {error}"
    return str(error)
