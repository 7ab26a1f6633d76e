"""The audit: a cheap first filter on the agent's code, before any training time is spent.

The metric does not rest on it: the model is evaluated in a process of its own and training is timed
from outside (see runner.py). What it still refuses, with a reason the agent can act on: printing a
metric or summary line, redefining or patching the fixed module (`fixed_module`, prepare), changing
seeds or the budget, naming the lab's records, and a file that does not end with its one finish() call.
It reads the proposed file with `ast` (never regex on raw text).
"""
from __future__ import annotations

import ast
import hashlib
import re

METRIC_NAMES = ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M")
PROTECTED_PATHS = ("results.tsv", "ledger", ".autoresearch", "journal.md", "program.md", "prepare.py")
# The fixed module's public face for train.py; the rest of it (data, files, cache, evaluator) is not for training.
FIXED_API = {"DEVICE", "PROFILE", "SEQ_LEN", "TIME_BUDGET", "TrainingClock", "autocast_context", "fail",
             "finish", "load_tokenizer", "make_train_loader"}
SEED_CALLS = {"manual_seed", "seed", "manual_seed_all", "set_rng_state", "default_rng", "Generator"}


def _strings(tree: ast.AST):
    """String constants, docstrings excepted (they are prose, never executed)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if id(node) in docstrings or not isinstance(node, (ast.Constant, ast.BinOp, ast.JoinedStr, ast.Call)):
            continue
        text = static_string(node)
        if text is not None:
            yield node, text


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def static_string(node: ast.AST) -> str | None:
    """The text a string expression always evaluates to, where the code spells it out in pieces
    ("va" + "l_bpb", f"{'va'}l_bpb", "".join(["va", "l"]), "%s_bpb" % "val"); None otherwise.
    Unknown parts of an f-string become a placeholder, so its literal text is still checked."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = static_string(node.left), static_string(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        template = static_string(node.left)
        parts = node.right.elts if isinstance(node.right, ast.Tuple) else [node.right]
        values = [static_string(part) for part in parts]
        if template is None or None in values:
            return None
        try:
            return template % tuple(values)
        except (TypeError, ValueError):
            return None
    if isinstance(node, ast.JoinedStr):
        pieces = []
        for part in node.values:
            if isinstance(part, ast.FormattedValue):
                pieces.append(static_string(part.value) or "\x00")
            else:
                pieces.append(static_string(part) or "")
        return "".join(pieces)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join"
            and len(node.args) == 1 and isinstance(node.args[0], (ast.List, ast.Tuple))):
        glue = static_string(node.func.value)
        items = [static_string(item) for item in node.args[0].elts]
        return None if glue is None or None in items else glue.join(items)
    return None


class _Auditor(ast.NodeVisitor):
    def __init__(self, fixed_module: str, fixed_exports: set[str]):
        self.fixed_module = fixed_module
        self.fixed_exports = fixed_exports
        self.fixed_names: set[str] = set()    # names bound to the fixed module, its objects, or what they made
        self.fixed_modules: set[str] = set()  # names bound to the fixed module itself
        self.reasons: list[str] = []

    def reject(self, node: ast.AST, reason: str) -> None:
        line = getattr(node, "lineno", "?")
        self.reasons.append(f"line {line}: {reason}")

    # the fixed module: its public names only, never changed --------------------------------
    def visit_Import(self, node):
        for alias in node.names:
            if alias.name.split(".")[0] == self.fixed_module:
                bound = alias.asname or alias.name.split(".")[0]
                self.fixed_names.add(bound)
                self.fixed_modules.add(bound)

    def visit_ImportFrom(self, node):
        if (node.module or "").split(".")[0] != self.fixed_module:
            return
        for alias in node.names:
            if alias.name == "*" or alias.name not in FIXED_API:
                self.reject(node, f"imports {alias.name} from {self.fixed_module}: train.py may use only "
                                  f"{', '.join(sorted(FIXED_API))}")
            self.fixed_names.add(alias.asname or alias.name)

    def _check_definition(self, node, name):
        if name in self.fixed_exports:
            self.reject(node, f"defines {name}, which would replace {self.fixed_module}'s fixed {name}")

    def visit_FunctionDef(self, node):
        self._check_definition(node, node.name)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self._check_definition(node, node.name)
        self.generic_visit(node)

    def _check_target(self, target, node):
        if isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._check_target(element, node)
        elif isinstance(target, ast.Name):
            self._check_definition(node, target.id)
            if "BUDGET" in target.id.upper():
                self.reject(node, f"assigns {target.id}: the time budget is fixed by the harness")
            if "SEED" in target.id.upper():
                self.reject(node, f"assigns {target.id}: the harness owns random seeds")
        elif _root_name(target) in self.fixed_names:
            self.reject(node, f"changes {ast.unparse(target)}: the fixed code may not be patched")

    def visit_Assign(self, node):
        for target in node.targets:
            self._check_target(target, node)
        if _root_name(node.value) in self.fixed_names:  # clock = TrainingClock(): its state is fixed too
            self.fixed_names.update(n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name))
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        self._check_target(node.target, node)
        self.generic_visit(node)

    def visit_AnnAssign(self, node):
        self._check_target(node.target, node)
        self.generic_visit(node)

    def visit_Delete(self, node):
        for target in node.targets:
            if _root_name(target) in self.fixed_names:
                self.reject(node, f"deletes {ast.unparse(target)}: the fixed code may not be patched")
        self.generic_visit(node)

    def visit_Attribute(self, node):
        root = _root_name(node)
        if isinstance(node.value, ast.Name) and node.value.id in self.fixed_modules and node.attr not in FIXED_API \
                and not node.attr.startswith("_"):
            self.reject(node, f"uses {ast.unparse(node)}: train.py may use only {', '.join(sorted(FIXED_API))} "
                              f"of {self.fixed_module}")
        if root in self.fixed_names and node.attr.startswith("_"):
            self.reject(node, f"uses {ast.unparse(node)}: the fixed module's private parts are off limits")
        if node.attr == "modules" and root == "sys":
            self.reject(node, "uses sys.modules, which can swap the fixed module")
        self.generic_visit(node)

    def visit_Call(self, node):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name in ("setattr", "delattr", "getattr") and node.args and _root_name(node.args[0]) in self.fixed_names:
            self.reject(node, f"uses {name} on the fixed code: use its public names directly")
        if name in SEED_CALLS:
            self.reject(node, f"calls {name}: the harness owns random seeds (identical code with "
                              "another seed measures noise, not progress)")
        self.generic_visit(node)


def audit_source(source: str, fixed_module: str = "prepare", fixed_exports: set[str] | None = None,
                 ending: str | None = "finish") -> list[str]:
    """Reasons to reject `source` (empty when it passes). A syntax error is reported as such.
    `ending`: the fixed function the file must end by calling (None: no such rule)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        return [f"syntax error at line {error.lineno}: {error.msg}"]
    exports = set(fixed_exports or ()) | {"finish", "handover", "evaluate_bpb", "TrainingClock", "fail"}
    auditor = _Auditor(fixed_module, exports)
    auditor.visit(tree)
    if ending:
        _check_ending(tree, auditor, ending)
    for node, text in _strings(tree):
        lowered = text.lower()
        if "val_bpb" in lowered or any(re.search(rf"(^|\W){name}\s*:", text) for name in METRIC_NAMES):
            auditor.reject(node, "writes a metric or summary line itself: the harness reports the run's numbers")
        if text.strip() == "---":
            auditor.reject(node, "prints the summary separator itself")
        if any(p in text for p in PROTECTED_PATHS):
            auditor.reject(node, f"names a harness file ({text[:40]!r}): results, ledger and fixed code are off limits")
        if "AUTORESEARCH_" in text:
            auditor.reject(node, f"reads or sets a harness variable ({text[:40]!r})")
    return _dedupe(auditor.reasons)


def _called(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        return node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
    return ""


def _check_ending(tree: ast.Module, auditor: _Auditor, ending: str) -> None:
    """The run ends with one top-level finish(...) call: the only way a summary is printed."""
    last = tree.body[-1] if tree.body else None
    if not (isinstance(last, ast.Expr) and _called(last.value) == ending):
        auditor.reject(last or tree, f"train.py must end with a top-level call {ending}(...), "
                                     "the only way a run reports its result")
    mentions = [n for n in ast.walk(tree) if (isinstance(n, ast.Name) and n.id == ending)
                or (isinstance(n, ast.Attribute) and n.attr == ending)]
    calls = [n for n in ast.walk(tree) if _called(n) == ending]
    if len(calls) != 1 or len(mentions) != 1:
        auditor.reject(calls[1] if len(calls) > 1 else tree.body[0] if tree.body else tree,
                       f"{ending} is used other than by the one call at the end of train.py")


def _dedupe(reasons: list[str]) -> list[str]:
    seen, out = set(), []
    for reason in reasons:
        if reason not in seen:
            seen.add(reason)
            out.append(reason)
    return out


class _SeedEraser(ast.NodeTransformer):
    """Blanks out every seed value so that two sources differing only in seeds compare equal."""

    def visit_Assign(self, node):
        names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        if any("SEED" in n.upper() for n in names):
            node.value = ast.Constant(value=None)
        return self.generic_visit(node)

    def visit_Call(self, node):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name in SEED_CALLS:
            node.args = [ast.Constant(value=None) for _ in node.args]
            node.keywords = []
        for keyword in node.keywords:
            if keyword.arg and "seed" in keyword.arg.lower():
                keyword.value = ast.Constant(value=None)
        return self.generic_visit(node)


def normalized(source: str, erase_seeds: bool = False) -> str:
    """The code's shape without comments or formatting (and optionally without seeds)."""
    tree = ast.parse(source)
    if erase_seeds:
        tree = _SeedEraser().visit(tree)
    return ast.dump(tree, annotate_fields=False)


def fingerprint(source: str) -> str:
    """Identifies a change by the code's shape: the same idea reformatted is the same experiment."""
    try:
        shape = normalized(source)
    except SyntaxError:
        shape = source
    return hashlib.sha1(shape.encode()).hexdigest()[:12]


def only_seeds_changed(old: str, new: str) -> bool:
    try:
        if normalized(old) == normalized(new):
            return False
        return normalized(old, erase_seeds=True) == normalized(new, erase_seeds=True)
    except SyntaxError:
        return False
