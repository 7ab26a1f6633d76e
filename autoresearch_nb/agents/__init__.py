"""The agents that propose experiments, by name. Each is imported only when chosen."""
from __future__ import annotations

from ..errors import LabError
from .base import Agent, Context, Proposal, ProposalError

AGENTS = {
    "heuristic": ("heuristic", "HeuristicAgent", "offline, no key: an honest baseline"),
    "claude": ("claude", "ClaudeAgent", "Claude through the anthropic SDK (ANTHROPIC_API_KEY)"),
    "openai": ("openai_agent", "OpenAIAgent", "any OpenAI-compatible endpoint (--base-url, --model)"),
    "claude-code": ("claude_code", "ClaudeCodeAgent", "Claude Code's CLI, claude -p (an API key or a subscription)"),
    "codex": ("codex", "CodexAgent", "OpenAI's Codex CLI, codex exec (an API key or a ChatGPT login)"),
    "command": ("command", "CommandAgent", "any coding-agent CLI (--command \"aider ...\")"),
}


def make_agent(name: str, **options) -> Agent:
    """Build the agent called `name`; options that are None are left to the agent's defaults."""
    if name not in AGENTS:
        raise LabError(f"unknown agent {name!r}: choose one of {', '.join(AGENTS)}")
    module_name, class_name, _ = AGENTS[name]
    from importlib import import_module

    module = import_module(f"{__name__}.{module_name}")
    cls = getattr(module, class_name)
    return cls(**{k: v for k, v in options.items() if v is not None})


__all__ = ["AGENTS", "Agent", "Context", "Proposal", "ProposalError", "make_agent"]
