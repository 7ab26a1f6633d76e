"""Token counts to US dollars for Claude and OpenAI models, and the usage tally an agent keeps per proposal."""
from __future__ import annotations

import re

# USD per million tokens: (input, output, 5-minute cache write, cache read), from Anthropic's
# pricing page. Matched by longest prefix, so dated ids ("claude-sonnet-4-5-20250929") and
# "[1m]" variants price like their family.
PRICES_PER_MTOK: dict[str, tuple[float, float, float, float]] = {
    "claude-fable-5-1": (10.0, 50.0, 12.50, 0.25),
    "claude-mythos-5-1": (10.0, 50.0, 12.50, 0.25),
    "claude-fable-5": (10.0, 50.0, 12.50, 1.00),
    "claude-mythos-5": (10.0, 50.0, 12.50, 1.00),
    "claude-opus-5-5": (4.0, 20.0, 5.00, 0.20),
    "claude-opus-5": (5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-8": (5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-7": (5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-6": (5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-5": (5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-1": (15.0, 75.0, 18.75, 1.50),
    "claude-opus-4": (15.0, 75.0, 18.75, 1.50),
    "claude-sonnet-5-5": (2.0, 10.0, 2.50, 0.10),
    "claude-sonnet-5": (2.0, 10.0, 2.50, 0.20),
    "claude-sonnet-4": (3.0, 15.0, 3.75, 0.30),
    "claude-3-7-sonnet": (3.0, 15.0, 3.75, 0.30),
    "claude-haiku-5-5": (0.10, 0.50, 0.125, 0.01),   # prompts up to 100k tokens
    "claude-haiku-4-5": (1.0, 5.0, 1.25, 0.10),
    "claude-3-5-haiku": (0.8, 4.0, 1.00, 0.08),
    # OpenAI's list prices (what Codex runs; Codex reports tokens, no price). Matched exactly or with a
    # date ("gpt-5-2025-08-07"): "gpt-5-pro" or "gpt-5.2" are other prices, unknown here. OpenAI
    # bills no cache write: that column repeats the input price and is never used for them.
    "gpt-5.1-codex": (1.25, 10.0, 1.25, 0.125),
    "gpt-5.1": (1.25, 10.0, 1.25, 0.125),
    "gpt-5-codex": (1.25, 10.0, 1.25, 0.125),
    "gpt-5-mini": (0.25, 2.0, 0.25, 0.025),
    "gpt-5-nano": (0.05, 0.40, 0.05, 0.005),
    "gpt-5": (1.25, 10.0, 1.25, 0.125),
    "o4-mini": (1.10, 4.40, 1.10, 0.275),
    "gpt-4.1": (2.0, 8.0, 2.0, 0.50),
}

USAGE_KEYS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def model_prices(model: str | None) -> tuple[float, float, float, float] | None:
    """The price row for `model`, or None when we do not know it."""
    if not model:
        return None
    best = None
    for prefix in PRICES_PER_MTOK:
        if not model.startswith(prefix):
            continue
        if not prefix.startswith("claude") and not re.fullmatch(r"(-\d{4}-\d{2}-\d{2})?", model[len(prefix):]):
            continue
        if best is None or len(prefix) > len(best):
            best = prefix
    return PRICES_PER_MTOK[best] if best else None


def cost_usd(model: str | None, usage: dict) -> float:
    """Dollar cost of `usage` (our key names) on `model`; 0.0 for a model we cannot price."""
    prices = model_prices(model)
    if prices is None:
        return 0.0
    input_price, output_price, write_price, read_price = prices
    return (
        usage.get("input_tokens", 0) * input_price
        + usage.get("output_tokens", 0) * output_price
        + usage.get("cache_write_tokens", 0) * write_price
        + usage.get("cache_read_tokens", 0) * read_price
    ) / 1_000_000


class UsageTally:
    """Tokens summed over the turns of one proposal, with their cost."""

    def __init__(self, model: str | None):
        self.model = model
        self.counts = {key: 0 for key in USAGE_KEYS}
        self.turns = 0

    def add(self, input_tokens=0, output_tokens=0, cache_read_tokens=0, cache_write_tokens=0):
        self.turns += 1
        self.counts["input_tokens"] += int(input_tokens or 0)
        self.counts["output_tokens"] += int(output_tokens or 0)
        self.counts["cache_read_tokens"] += int(cache_read_tokens or 0)
        self.counts["cache_write_tokens"] += int(cache_write_tokens or 0)

    def as_dict(self) -> dict:
        usage = dict(self.counts)
        usage["cost_usd"] = round(cost_usd(self.model, self.counts), 6)
        if model_prices(self.model) is None:
            usage["cost_note"] = f"no price known for model {self.model!r}; cost counted as 0"
        return usage


def estimate_next_cost(history_usage: list[dict], model: str | None) -> float:
    """A cautious guess at the next proposal's cost: the dearest of the last five, else a prior.

    The prior (40k fresh input tokens, 4k output) stands in before any proposal has been paid for.
    """
    recent = [float(u.get("cost_usd") or 0.0) for u in history_usage[-5:] if u]
    if any(recent):
        return max(recent)
    return cost_usd(model, {"input_tokens": 40_000, "output_tokens": 4_000})
