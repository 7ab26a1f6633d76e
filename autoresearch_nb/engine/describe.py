"""One line saying what a change did, read from the code: constants `A -> B`, definitions touched."""
from __future__ import annotations

import ast
import copy
import posixpath

MAX_CHARS = 160
MAX_VALUE_CHARS = 32


def describe_change(old: dict[str, str], new: dict[str, str], limit: int = MAX_CHARS) -> str:
    """E.g. "MATRIX_LR 0.02 -> 0.03; WARMDOWN_FRAC 0.4 -> 0.2; changed MLP.forward".

    `old` and `new` map paths to contents (None or absent: no such file); only paths in `new`
    are described. Files that do not parse get "edited <file>", never a guess.
    """
    changed = [path for path in new if new[path] != old.get(path)]
    items: list[str] = []
    for path in changed:
        parts = _describe_file(path, old.get(path), new[path])
        if len(changed) > 1:  # several files: say which one each part is about
            parts = [f"{posixpath.basename(path)}: {part}" for part in parts]
        items += parts
    return _fit(items, limit) if items else "no change"


def _describe_file(path: str, before: str | None, after: str | None) -> list[str]:
    name = posixpath.basename(path)
    if before is None:
        return [f"created {name}"]
    if after is None:
        return [f"deleted {name}"]
    if not path.endswith(".py"):
        return [f"edited {name}"]
    try:
        old_tree, new_tree = ast.parse(before), ast.parse(after)
    except SyntaxError:
        return [f"edited {name} (it does not parse)"]
    parts = _constants(old_tree, before, new_tree, after)
    parts += _definitions(old_tree, new_tree)
    if _other_code(old_tree) != _other_code(new_tree):
        parts.append("changed top-level code")
    return parts or [f"comments or formatting in {name}"]


def _constants(old_tree, old_text, new_tree, new_text) -> list[str]:
    """Module-level `NAME = value` assignments that appeared, vanished or changed value."""
    before, after = _assignments(old_tree, old_text), _assignments(new_tree, new_text)
    parts = []
    for name, value in after.items():
        if name not in before:
            parts.append(f"added {name} = {value}")
        elif before[name] != value:
            parts.append(f"{name} {before[name]} -> {value}")
    parts += [f"removed {name}" for name in before if name not in after]
    return parts


def _assignments(tree: ast.Module, text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for node in tree.body:
        target = _assigned_name(node)
        if target and target not in found and node.value is not None:
            found[target] = _short(ast.get_source_segment(text, node.value) or ast.unparse(node.value))
    return found


def _assigned_name(node: ast.stmt) -> str | None:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


def _definitions(old_tree: ast.Module, new_tree: ast.Module) -> list[str]:
    """Functions, classes and methods added, removed or changed (compared by syntax tree)."""
    before, after = _defs(old_tree), _defs(new_tree)
    changed = [name for name in after if name in before and before[name] != after[name]]
    added = [name for name in after if name not in before]
    removed = [name for name in before if name not in after]
    parts = []
    for verb, names in (("changed", changed), ("added", added), ("removed", removed)):
        if names:
            parts.append(f"{verb} {', '.join(names)}")
    return parts


def _defs(tree: ast.Module) -> dict[str, str]:
    """Qualified name -> the dump of its tree; a class counts without its methods, which count
    on their own, so a changed method does not also report its class."""
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found[node.name] = ast.dump(node)
        elif isinstance(node, ast.ClassDef):
            methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            shell = copy.copy(node)
            shell.body = [n for n in node.body if n not in methods]
            found[node.name] = ast.dump(shell)
            for method in methods:
                found[f"{node.name}.{method.name}"] = ast.dump(method)
    return found


def _other_code(tree: ast.Module) -> list[str]:
    """Top-level statements that are neither simple assignments nor definitions, in order."""
    return [ast.dump(node) for node in tree.body
            if not _assigned_name(node)
            and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


def _short(value: str) -> str:
    value = " ".join(value.split())
    return value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS - 1].rstrip() + "…"


def _fit(items: list[str], limit: int) -> str:
    """Join items with "; ", as many as fit in `limit` characters, then say how many were left."""
    text = "; ".join(items)
    if len(text) <= limit:
        return text
    for keep in range(len(items) - 1, 0, -1):
        text = "; ".join(items[:keep]) + f"; and {len(items) - keep} more"
        if len(text) <= limit:
            return text
    return items[0][:limit - 1] + "…"
