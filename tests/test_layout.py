"""The package's layout is its architecture: each layer folder imports only the layers below it, and
every module imports on its own in a fresh interpreter (no circle hidden by import order)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "autoresearch_nb"
# bottom to top; folders on one floor do not import each other
FLOORS = [("errors", "version"), ("lab",), ("run", "judge"), ("agents", "ui"), ("engine",), ("report",), ("front",)]
FLOOR = {name: n for n, names in enumerate(FLOORS) for name in names}
ENTRY = ("__init__", "__main__")  # the package's face sits above everything


def modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def place(module: str) -> str:
    """The layer a module belongs to: its folder, or its own name at the package's root."""
    parts = module.split(".")[1:]
    return parts[0] if parts else "__init__"


def imported(module: str) -> set[str]:
    """Package modules that `module` imports anywhere (top level or inside a function)."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "autoresearch_nb" or target.startswith("autoresearch_nb."):
                found |= {f"{target}.{alias.name}" for alias in node.names} | {target}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("autoresearch_nb")}
    return {name for name in found if name in set(modules())} - {module}


def test_each_layer_imports_only_the_layers_below_it():
    upward = []
    for module in modules():
        here = place(module)
        if here in ENTRY:
            continue
        for target in imported(module):
            there = place(target)
            if there == here:
                continue
            if there in ENTRY or FLOOR[there] >= FLOOR[here]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that run sideways or back up:\n" + "\n".join(sorted(upward))


def test_every_folder_is_on_a_floor():
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    files = {path.stem for path in PACKAGE.glob("*.py")} - set(ENTRY)
    assert folders | files <= set(FLOOR), f"place these on a floor in FLOORS: {sorted(folders | files - set(FLOOR))}"


@pytest.mark.parametrize("module", [m for m in modules() if not m.endswith("__main__")])  # that one runs
def test_each_module_imports_on_its_own(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_flat_names_exported_notebooks_use_still_resolve():
    done = subprocess.run([sys.executable, "-c", "from autoresearch_nb import analysis; "
                           "print(analysis.__name__, callable(analysis.load), callable(analysis.best_row))"],
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["autoresearch_nb.report.analysis", "True", "True"], done.stderr
