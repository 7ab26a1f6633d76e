"""Checks on a proposal before it may run: allowed files, locked files, compiles, audit, not tried before."""
from __future__ import annotations

import ast

from ..run.audit import audit_source, fingerprint, only_seeds_changed
from ..lab.lab import Lab


def fixed_exports(lab: Lab) -> set[str]:
    """Functions and classes the locked files define: the agent may not redefine them."""
    names = set()
    for locked in lab.config.get("locked", []):
        try:
            tree = ast.parse(lab.read(locked))
        except (OSError, SyntaxError):
            continue
        names |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return names


def validate(lab: Lab, files: dict[str, str], rows: list[dict], exports: set[str],
             audit: bool = True) -> tuple[str, str]:
    """(problem, kind) for a proposal that may not run, ("", "") when it may. `files` is narrowed
    to the files that really change."""
    allowed = lab.config["allowed"]
    outside = [p for p in files if p not in allowed]
    if outside:
        return f"changes files the agent may not edit: {', '.join(outside)} (allowed: {', '.join(allowed)})", "validation"
    changed = {p: t for p, t in files.items() if t != lab.read(p)}
    if not changed:
        return "the proposal changes nothing", "validation"
    files.clear()
    files.update(changed)
    if lab.locked_changes():
        return "a locked file changed", "validation"
    for path, text in changed.items():
        if not path.endswith(".py"):
            continue
        try:
            compile(text, path, "exec")
        except SyntaxError as error:
            return f"{path} does not compile: line {error.lineno}: {error.msg}", "validation"
        if not audit:
            continue
        reasons = audit_source(text, "prepare", exports, ending=lab.config.get("ends_with", "finish"))
        if reasons:
            return f"audit: {'; '.join(reasons[:3])}", "audit"
        if only_seeds_changed(lab.read(path), text):
            return "changes only random seeds: that measures noise, not an idea", "audit"
    new_fp = fingerprint(changed.get(allowed[0], lab.read(allowed[0])))
    earlier = next((r for r in rows if r.get("fingerprint") == new_fp and r.get("status") not in ("rejected", "interrupted")
                    and r.get("kind") != "interrupted"), None)
    if earlier is not None:
        return f"already tried: the same change as experiment {earlier['index']} ({earlier.get('description', '')})", "duplicate"
    return "", ""
