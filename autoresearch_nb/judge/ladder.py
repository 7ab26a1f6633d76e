"""The transfer ladder's facts: do the night's kept changes still help at a larger scale?

A scale is a budget multiple and, optionally, another depth. Its runs are rows of role "transfer" in a
segment of their own below zero (one per scale; research segments count up from 0), so no fact about
the night (best, noise, conditions, the judge) ever reads them, and they are compared only with each
other: the baseline, the best and the best without each kept change, R runs each, the r-th run of
every code on the same seed.

A change's contribution at scale is mean(best without it) - mean(best), signed so positive helps, with
the paired interval of judge.gain_interval (noise from the repeats at that scale). Its label sets that
against what it was worth at the screen (its ablation there if one was run, else its gain when kept):
  reverses  the interval lies below zero: the best is better without it at scale;
  vanishes  the interval holds zero: no effect that stands out of the noise at scale;
  shrinks   it still helps, by less than half of its screen value;
  holds     it still helps, by half its screen value or more (ratio shown: above 1 it grew).
With one run per code there is no interval: the label is "unknown" and the sign is shown.
"""
from __future__ import annotations

from .facts import (ablation_table, code_of, estimate, gain_interval, kept_changes, noise, pairing, seeded_runs,
                    segment_of, summary_gain, value)

ROLE = "transfer"


def scale_of(budget_x: float, depth: int | None = None) -> dict:
    return {"budget_x": float(budget_x), "depth": depth}


def scale_text(scale: dict) -> str:
    said = f"budget ×{scale['budget_x']:g}"
    return said + (f", depth {scale['depth']}" if scale.get("depth") else "")


def segment_for(rows: list[dict], scale: dict) -> int:
    """The segment that holds this scale's runs: the one used before (a second transfer goes on where
    the first stopped), else a new one below every other."""
    for row in rows:
        if row.get("role") == ROLE and row.get("scale") == scale:
            return segment_of(row)
    return min([0] + [segment_of(r) for r in rows]) - 1


def scales(rows: list[dict]) -> list[dict]:
    """Every scale a ladder ran at, in the order first run."""
    found = []
    for row in rows:
        if row.get("role") == ROLE and row.get("scale") and row["scale"] not in found:
            found.append(row["scale"])
    return found


def label(contribution: float | None, half: float | None, screen: float | None) -> str:
    if contribution is None:
        return "no clean run yet"
    if half is None:
        return f"unknown (one run each: {'+' if contribution >= 0 else '-'}; --repeats 2 or more for an interval)"
    if contribution + half < 0:
        return "reverses"
    if contribution - half <= 0:
        return "vanishes"
    if screen is not None and screen > 0 and contribution < screen / 2:
        return "shrinks"
    return "holds"


def table(rows: list[dict], scale: dict, metric: str = "val_bpb", direction: str = "lower") -> dict | None:
    """The ladder at `scale`: baseline and best there, the night's gain there against at the screen, and
    each kept change's contribution there with its label. None when nothing ran at that scale."""
    mine = [r for r in rows if r.get("role") == ROLE and r.get("scale") == scale]
    if not mine:
        return None
    segment = segment_of(mine[0])
    groups = {}
    for row in mine:
        if (number := value(row, metric)) is not None:
            groups.setdefault(code_of(row), []).append(number)
    spread = noise(rows, segment, metric)
    by_seed = seeded_runs(rows, segment, metric)
    best_code = next((code_of(r) for r in mine if r.get("ladder") == "best"), None)
    base_code = next((code_of(r) for r in mine if r.get("ladder") == "baseline"), None)
    best_values, base_values = groups.get(best_code, []), groups.get(base_code, [])

    def versus(code: str, values: list[float]) -> tuple[float | None, float | None]:
        if not values or not best_values:
            return None, None
        paired = pairing(rows, segment, by_seed.get(best_code, {}), code, metric, direction, runs=by_seed)
        return gain_interval(best_values, values, spread, direction, paired)

    night, night_half = versus(base_code, base_values)
    screen = _screen_values(rows, metric, direction)
    changes = []
    for index, (description, screen_value, screen_source) in screen.items():
        runs = [r for r in mine if r.get("ladder") == "without" and r.get("ablates") == index]
        refused = next((r for r in runs if r.get("kind") == "no_revert"), None)
        values = [v for r in runs if (v := value(r, metric)) is not None]
        contribution, half = versus(code_of(runs[0]), values) if values else (None, None)
        entry = {"index": index, "description": description, "screen": screen_value, "screen_source": screen_source,
                 "contribution": None if contribution is None else round(contribution, 6),
                 "half_width": None if half is None else round(half, 6), "runs": len(values),
                 "label": refused.get("reason", "does not revert cleanly") if refused else label(contribution, half, screen_value),
                 "ratio": round(contribution / screen_value, 2) if contribution is not None and screen_value else None}
        changes.append(entry)
    return {"scale": scale, "segment": segment,
            "baseline": estimate(base_values, spread).record() if base_values else None,
            "best": estimate(best_values, spread).record() if best_values else None,
            "gain": None if night is None else round(night, 6),
            "half_width": None if night_half is None else round(night_half, 6),
            "screen_gain": _screen_gain(rows, metric, direction), "changes": changes}


def _screen_values(rows: list[dict], metric: str, direction: str) -> dict[int, tuple[str, float | None, str]]:
    """index -> (description, what the change was worth at the screen, where that figure comes from)."""
    ablated = {e["index"]: e["contribution"] for e in ablation_table(rows, metric, direction) if e["contribution"] is not None}
    found = {}
    for change in kept_changes([r for r in rows if segment_of(r) >= 0], metric, direction):
        if change.index in ablated:
            found[change.index] = (change.description, ablated[change.index], "ablation")
        else:
            found[change.index] = (change.description, change.gain, "kept")
    return found


def _screen_gain(rows: list[dict], metric: str, direction: str) -> float | None:
    """The night's gain at the screen, as its header says it (best over baseline, current segment)."""
    found = summary_gain(rows, metric, direction)
    return None if found is None else round(found[0], 6)
