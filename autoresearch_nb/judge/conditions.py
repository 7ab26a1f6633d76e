"""The conditions a number is measured under, and whether a new session's still compare.

Two runs of the same code compare only under the same conditions: the training budget and the
clock that counts it, the profile and its sizes, the data and the tokenizer, the device and the
torch version. Every ledger row records them. A session that would run under other conditions
than the rows it continues is refused, unless it asks to re-baseline: then the current best is
measured again under the new conditions and a new comparison segment starts (facts.py never
compares numbers across segments). A new machine alone (MACHINE) starts the new segment unasked.
"""
from __future__ import annotations

COMPARED = ("budget", "clock", "profile", "seq_len", "vocab_size", "eval_tokens", "depth", "n_embd",
            "device_batch", "total_batch", "dtype", "data", "data_key", "tokenizer", "byte_level",
            "device_name", "torch", "cpu_count")


# What the machine decides, not the person: a Colab runtime reset may hand out another GPU (whose
# profile sizes and precision follow from the card), another torch or another core count. A change of
# these alone starts a new segment by itself; a changed setting is the person's, and is refused.
MACHINE = ("device_name", "torch", "cpu_count", "seq_len", "eval_tokens", "depth", "n_embd", "device_batch",
           "total_batch", "dtype")


def of(probe: dict, budget: float, config: dict) -> dict:
    """This session's conditions from the target's probe (prepare.py), the settled budget and the
    lab's config. Keys a target does not report are left out, not guessed."""
    found = {"budget": float(budget), "profile": probe.get("profile") or probe.get("name"),
             "data": config.get("data", "builtin"), "byte_level": bool(config.get("byte_level"))}
    for key in COMPARED:
        if key not in found and probe.get(key) is not None:
            found[key] = probe[key]
    return found


def last_recorded(rows: list[dict]) -> dict:
    """The conditions of the newest research row that recorded them ({} for a lab without any); the
    transfer ladder's rows (segments below 0, ladder.py) ran at another scale on purpose."""
    return next((r["conditions"] for r in reversed(rows) if r.get("conditions") and int(r.get("segment") or 0) >= 0), {})


def differences(before: dict, now: dict) -> list[str]:
    """What changed, as "budget 30 -> 8", over the keys both sides know."""
    changed = []
    for key in COMPARED:
        if key in before and key in now and _normal(before[key]) != _normal(now[key]):
            changed.append(f"{key} {before[key]} -> {now[key]}")
    return changed


def machine_only(changed: list[str]) -> bool:
    """Whether every difference (as differences() words them) is one the machine decides."""
    return bool(changed) and all(change.split(" ", 1)[0] in MACHINE for change in changed)


def refusal(changed: list[str]) -> str:
    return (f"this run's numbers were measured under other conditions ({'; '.join(changed)}): "
            "continue with the same settings, or add --rebaseline to measure the best again under "
            "the new ones and start a new comparison segment (numbers from different segments are "
            "never compared)")


def _normal(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return round(float(value), 6)
    return value
