"""The invariants of a lab at rest, checked from its files, git and /proc: what `autoresearch-nb check` prints.

A lab at rest (no run under way) holds: ledger rows indexed 0..n-1, once each; no job recorded
twice; results.tsv exactly as the ledger makes it; every kept commit in the repository and on the
branch; the branch head holding the best's code; a clean work tree (a charter edited in the
notebook and not yet committed is the person's, not a fault); no worktree and no process of an
experiment left behind; no run stopped half-way (inflight.json).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import git

from .lab import Lab
from .ledger import results_text

KEPT_ROLES = ("baseline", "experiment", "confirm")


def broken(lab: Lab) -> list[str]:
    """Each invariant the lab breaks, a line each; an empty list when all hold."""
    problems: list[str] = []
    raw = lab.ledger_path.read_text(encoding="utf-8") if lab.ledger_path.exists() else ""
    rows = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            problems.append(f"ledger.jsonl line {number} is not a JSON row")
    problems += _indexes(rows)
    problems += _results(lab, rows)
    problems += _branch(lab, rows)
    problems += _leftovers(lab)
    return problems


def _indexes(rows: list[dict]) -> list[str]:
    problems = []
    indexes = [r.get("index") for r in rows]
    if indexes != list(range(len(rows))):
        repeated = sorted(i for i, n in Counter(indexes).items() if n > 1 and i is not None)
        missing = sorted(set(range(len(rows))) - set(indexes))
        problems.append(f"ledger indexes are not 0..{len(rows) - 1} once each, in order "
                        f"(repeated: {repeated or 'none'}; missing: {missing or 'none'})")
    jobs = Counter(r["job"] for r in rows if r.get("job") is not None)
    twice = sorted(job for job, n in jobs.items() if n > 1)
    if twice:
        problems.append(f"jobs recorded more than once in the ledger: {twice[:10]}")
    return problems


def _results(lab: Lab, rows: list[dict]) -> list[str]:
    if not lab.results_path.exists():
        return ["results.tsv is missing"] if rows else []
    have = lab.results_path.read_text(encoding="utf-8").splitlines()
    want = results_text(rows).splitlines()
    if have == want:
        return []
    for number, (a, b) in enumerate(zip(have, want)):
        if a != b:
            return [f"results.tsv line {number + 1} does not match its ledger row: {a[:80]!r} against {b[:80]!r}"]
    return [f"results.tsv has {len(have) - 1} rows, the ledger makes {len(want) - 1}"]


def _branch(lab: Lab, rows: list[dict]) -> list[str]:
    problems = []
    repo = lab.repo
    try:
        head = repo.git.rev_parse("HEAD")
    except git.GitCommandError:
        return ["the lab's git repository has no HEAD"]
    branch = lab.branch()
    kept = [r for r in rows if r.get("status") == "keep" and r.get("role", "experiment") in KEPT_ROLES]
    for row in kept:
        commit = row.get("commit") or ""
        try:
            full = repo.git.rev_parse("--verify", "-q", f"{commit}^{{commit}}")
        except git.GitCommandError:
            problems.append(f"experiment {row.get('index')} was kept but its commit {commit or '(none)'} "
                            "is not in the repository")
            continue
        if not _on_branch(lab, full, head):
            problems.append(f"experiment {row.get('index')} was kept but its commit {commit} is not on "
                            f"{branch or 'the branch'}")
    if kept:
        best = kept[-1]
        try:
            if lab.code_id(best["commit"]) != lab.code_id(head):
                problems.append(f"the branch head {head[:7]} does not hold the best's code "
                                f"(experiment {best.get('index')}, {best.get('commit')})")
        except git.GitCommandError:
            pass  # already said: its commit is missing
    dirty = [f for f in lab.dirty_files() if f != "program.md"]
    if dirty:
        problems.append(f"the work tree is not clean: {', '.join(dirty[:5])}")
    return problems


def _on_branch(lab: Lab, commit: str, head: str) -> bool:
    """On the branch itself, or its code is (a keep re-committed on top of a charter edit)."""
    try:
        lab.repo.git.merge_base("--is-ancestor", commit, head)
        return True
    except git.GitCommandError:
        pass
    code = lab.code_id(commit)
    return any(lab.code_id(sha) == code for sha in lab.repo.git.rev_list("--first-parent", head).split())


def _leftovers(lab: Lab) -> list[str]:
    problems = []
    if lab.inflight_path.exists():
        problems.append("a run is under way, or was stopped half-way (.autoresearch/inflight.json): let it "
                        "finish, or `autoresearch-nb run --resume` repairs it")
    out = lab.repo.git.worktree("list", "--porcelain")
    trees = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")]
    extra = [t for t in trees if Path(t).resolve() != lab.root]
    slots = sorted((lab.state_dir / "worktrees").glob("slot-*")) if (lab.state_dir / "worktrees").exists() else []
    if extra or slots:
        problems.append(f"worktrees left behind: {', '.join(sorted(set(extra) | {str(s) for s in slots}))}")
    for pid, cwd in _processes_in(lab.state_dir):
        problems.append(f"process {pid} still works in the lab ({cwd})")
    return problems


def _processes_in(root: Path) -> list[tuple[int, str]]:
    """Processes (not this one) whose working directory lies under `root`: an experiment left running."""
    found = []
    root = os.path.realpath(root)
    if not os.path.isdir("/proc"):
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.path.realpath(os.readlink(f"/proc/{entry.name}/cwd"))
        except OSError:
            continue
        if cwd == root or cwd.startswith(root + os.sep):
            found.append((int(entry.name), cwd))
    return found


def report(lab: Lab) -> tuple[bool, str]:
    """(all hold, the text to print): one line when they hold, else a line per broken invariant."""
    problems = broken(lab)
    if problems:
        return False, "\n".join(problems)
    rows = lab.rows()
    if not rows:
        return True, f"ok: no runs yet; {lab.branch() or 'HEAD'} at {lab.head()[:7]}, the tree clean"
    kept = sum(1 for r in rows if r.get("status") == "keep")
    return True, (f"ok: {len(rows)} rows, {kept} kept, {lab.branch() or 'HEAD'} at {lab.head()[:7]} holds the "
                  "best; results.tsv matches the ledger; no worktree or process left")
