"""Re-applying a change made on one version of a file onto another: a 3-way merge, line by line.

A change is the set of line ranges it rewrites in its base. Two changes merge when those ranges do
not overlap; unlike a merge with context lines (git's), a change to the line next to another's
is no conflict, which matters for train.py's block of constants, where most changes are one line.
Used to re-apply a draft or a result onto a best that moved (the loop) and to take one kept
change out of the best (ablation).
"""
from __future__ import annotations

from difflib import SequenceMatcher


def _changes(base: list[str], other: list[str]) -> list[tuple[int, int, list[str]]]:
    """(start, end, new lines) for each range of `base` that `other` rewrites."""
    matcher = SequenceMatcher(None, base, other, autojunk=False)
    return [(i1, i2, other[j1:j2]) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]


def _collide(a: tuple[int, int, list[str]], b: tuple[int, int, list[str]]) -> bool:
    (a1, a2, _), (b1, b2, _) = a, b
    if a == b:
        return False  # the same change made twice
    if a1 == a2 and b1 == b2:
        return a1 == b1  # two insertions at one place: their order is unknown
    if a1 == a2:
        return b1 < a1 < b2
    if b1 == b2:
        return a1 < b1 < a2
    return max(a1, b1) < min(a2, b2)


def merge_text(ours: str, base: str, theirs: str) -> str | None:
    """`theirs`' change from `base` applied onto `ours`; None when the two changes collide."""
    if base == ours or ours == theirs:
        return theirs
    if base == theirs:
        return ours
    lines = base.splitlines(keepends=True)
    mine, their = _changes(lines, ours.splitlines(keepends=True)), _changes(lines, theirs.splitlines(keepends=True))
    if any(_collide(a, b) for a in mine for b in their):
        return None
    merged = sorted({(start, end, tuple(new)) for start, end, new in mine + their})
    out, position = [], 0
    for start, end, new in merged:
        out += lines[position:start] + list(new)
        position = end
    return "".join(out + lines[position:])


def reapply(lab, base: str, changed: dict[str, str], onto: str) -> dict[str, str] | None:
    """The files `changed` (new contents, made on commit `base`) as they read once the same change
    is applied onto commit `onto`; None when it does not apply cleanly."""
    merged = {}
    for path, text in changed.items():
        result = merge_text(lab.file_at_commit(onto, path), lab.file_at_commit(base, path), text)
        if result is None:
            return None
        merged[path] = result
    return merged
