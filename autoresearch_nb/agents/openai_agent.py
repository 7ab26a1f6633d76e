"""The OpenAI-compatible agent: the same editor and submit tools as function calls on chat completions."""
from __future__ import annotations

import json
import os
import time

import openai

from ..errors import LabError
from . import pricing
from .base import Agent, Context, Proposal, ProposalError
from .claude import backoff_delay
from .edit_tools import EDITOR_FUNCTION_DESCRIPTION, EDITOR_SCHEMA, EDITOR_TOOL_NAME, SUBMIT_DESCRIPTION, SUBMIT_SCHEMA, SUBMIT_TOOL_NAME, ScratchCopy, ToolSession
from .prompting import files_block, situation_block, system_prompt, templated_lesson

TOOLS = [
    {"type": "function", "function": {"name": EDITOR_TOOL_NAME,
                                      "description": EDITOR_FUNCTION_DESCRIPTION,
                                      "parameters": EDITOR_SCHEMA}},
    {"type": "function", "function": {"name": SUBMIT_TOOL_NAME, "description": SUBMIT_DESCRIPTION,
                                      "parameters": SUBMIT_SCHEMA}},
]
NUDGE = (f"Continue: make your change with the {EDITOR_TOOL_NAME} function, then call "
         f"{SUBMIT_TOOL_NAME}. Reply with function calls only.")


def is_retryable(error: Exception) -> bool:
    """Rate limits, server errors and timeouts pass; other client errors do not."""
    if isinstance(error, openai.APIConnectionError):  # includes timeouts
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code in (408, 409, 429) or error.status_code >= 500
    return False


class OpenAIAgent(Agent):
    """A model behind any chat-completions endpoint (OpenAI, vLLM, Ollama) proposes experiments."""

    name = "openai"

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
        self.label = f"{model} via {base_url or 'api.openai.com'}"
        self.max_turns = max_turns
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self._client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=0,
                                     timeout=timeout)

    def propose(self, context: Context) -> Proposal:
        session = ToolSession(ScratchCopy(context.files, context.allowed, context.locked,
                                          context.lab_dir))
        tally = pricing.UsageTally(self.model)
        messages: list[dict] = [
            {"role": "system", "content": system_prompt(context)},
            {"role": "user", "content": files_block(context) + "\n\n" + situation_block(context)},
        ]
        for _ in range(self.max_turns):
            response = self._create(tally, messages)
            _count(tally, response.usage)
            if not response.choices:
                raise ProposalError("the endpoint returned no choices", tally.as_dict())
            choice = response.choices[0]
            calls = choice.message.tool_calls or []
            reply = {"role": "assistant", "content": choice.message.content or ""}
            if calls:
                reply["tool_calls"] = [call.to_dict() for call in calls]
            messages.append(reply)
            if not calls:
                messages.append({"role": "user", "content": NUDGE})
                continue
            session.begin_turn()
            results = []
            for call in calls:
                text, _ = self._run_call(session, call, choice.finish_reason)
                results.append({"role": "tool", "tool_call_id": call.id, "content": text})
            if session.submission:
                return self._finish(session, tally)
            messages.extend(results)
        raise ProposalError(f"{self.model} did not submit an experiment within {self.max_turns} "
                            "turns", tally.as_dict())

    def _run_call(self, session: ToolSession, call, finish_reason: str | None):
        function = getattr(call, "function", None)
        if function is None:
            return "Error: only function calls are supported.", True
        try:
            arguments = json.loads(function.arguments or "{}")
        except json.JSONDecodeError as error:
            session.errors += 1
            session.turn_errors += 1
            hint = " (the reply hit the length limit)" if finish_reason == "length" else ""
            return f"Error: the arguments are not valid JSON{hint}: {error}", True
        return session.call(function.name, arguments)

    def _finish(self, session: ToolSession, tally: pricing.UsageTally) -> Proposal:
        description, rationale = session.submission
        files = session.scratch.changed_files()
        if not files:
            raise ProposalError(f"{self.model} submitted '{description}' without changing any file",
                                tally.as_dict())
        return Proposal(files=files, description=description, rationale=rationale,
                        usage=tally.as_dict())

    def _create(self, tally: pricing.UsageTally, messages: list[dict]):
        """One chat-completions call with retries; ProposalError(fatal) once they are spent."""
        last_error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(backoff_delay(attempt - 1, self.retry_backoff, last_error))
            try:
                return self._client.chat.completions.create(model=self.model, messages=messages,
                                                            tools=TOOLS)
            except openai.APIError as error:
                if not is_retryable(error):
                    raise ProposalError(_describe(error), tally.as_dict(), fatal=True) from error
                last_error = error
        raise ProposalError(f"the endpoint still failing after {self.max_retries + 1} attempts: "
                            f"{_describe(last_error)}", tally.as_dict(), fatal=True)

    def reflect(self, context: Context, row: dict) -> str:
        return templated_lesson(context, row)

    def estimate_next_cost(self, history_usage: list[dict]) -> float:
        return pricing.estimate_next_cost(history_usage, self.model)

    def close(self) -> None:
        self._client.close()


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
