"""The audit: static checks that keep the agent's code from forging, patching or peeking at the metric.

It reads the proposed file with `ast` (never regex on raw text) and returns the reasons to reject
it, before any training time is spent. The fixed module is named by `fixed_module` (prepare).
"""
from __future__ import annotations

import ast
import re

METRIC_NAMES = ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M")
# Ways out of the static picture: running strings as code, reaching into modules or frames.
ESCAPES = {"exec", "eval", "compile", "__import__", "globals", "vars", "setattr", "delattr",
           "__builtins__", "breakpoint"}
ESCAPE_ATTRIBUTES = {"__code__", "__globals__", "__dict__", "__builtins__", "__closure__",
                     "f_globals", "f_locals", "f_back", "__defaults__", "__kwdefaults__"}
ESCAPE_MODULES = {"importlib", "builtins", "inspect", "ctypes", "gc", "runpy", "subprocess",
                  "multiprocessing", "signal", "atexit", "imp", "pickle", "marshal", "types"}
PROTECTED_PATHS = ("results.tsv", "ledger", ".autoresearch", "journal.md", "program.md", "prepare.py")
SEED_CALLS = {"manual_seed", "seed", "manual_seed_all", "set_rng_state", "default_rng", "Generator"}
VALIDATION = re.compile(r"(^|[^a-z])(val|valid|validation|eval)([^a-z]|$)", re.IGNORECASE)


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


SETTING_NODES = (ast.Constant, ast.Name, ast.Load, ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp,
                 ast.Tuple, ast.cmpop, ast.boolop, ast.unaryop, ast.operator, ast.IfExp)


def _is_setting(value: ast.AST | None) -> bool:
    """A value that cannot carry code (no call, lambda or attribute): a library flag, not a patch."""
    return value is not None and all(isinstance(node, SETTING_NODES) for node in ast.walk(value))


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
        self.modules: set[str] = set()        # names bound to imported modules
        self.fixed_names: set[str] = set()    # names bound to the fixed module or its objects
        self.reasons: list[str] = []

    def reject(self, node: ast.AST, reason: str) -> None:
        line = getattr(node, "lineno", "?")
        self.reasons.append(f"line {line}: {reason}")

    # imports -----------------------------------------------------------------------------
    def visit_Import(self, node):
        for alias in node.names:
            top = alias.name.split(".")[0]
            bound = alias.asname or top
            self.modules.add(bound)
            if top == self.fixed_module:
                self.fixed_names.add(bound)
            if top in ESCAPE_MODULES:
                self.reject(node, f"imports {top}, which can rewrite code at run time")

    def visit_ImportFrom(self, node):
        top = (node.module or "").split(".")[0]
        if top in ESCAPE_MODULES:
            self.reject(node, f"imports from {top}, which can rewrite code at run time")
        for alias in node.names:
            bound = alias.asname or alias.name
            if top == self.fixed_module:
                if alias.name == "*" or alias.name.startswith("_"):
                    self.reject(node, f"imports {alias.name} from {self.fixed_module}: only its public names may be used")
                self.fixed_names.add(bound)
                if alias.name in ("evaluate_bpb", "validation_rows", "check_causal"):
                    self.reject(node, f"imports {alias.name}: the evaluation belongs to {self.fixed_module}.finish")
            elif alias.name[:1].islower() or alias.name in ("F",):
                self.modules.add(bound)

    # definitions that shadow the fixed code -------------------------------------------------
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

    # assignments --------------------------------------------------------------------------
    def _check_target(self, target, node, value=None):
        if isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._check_target(element, node, value)
            return
        if isinstance(target, ast.Name):
            self._check_definition(node, target.id)
            if "BUDGET" in target.id.upper():
                self.reject(node, f"assigns {target.id}: the time budget is fixed by the harness")
            if "SEED" in target.id.upper():
                self.reject(node, f"assigns {target.id}: the harness owns random seeds")
            return
        root = _root_name(target)
        if root in self.fixed_names:
            self.reject(node, f"changes {ast.unparse(target)}: the fixed code may not be patched")
        elif root in self.modules and not _is_setting(value):
            # A library setting (torch.backends...allow_tf32 = True) is fine; swapping a function is not.
            self.reject(node, f"changes {ast.unparse(target)}: patching an imported module is not allowed")

    def visit_Assign(self, node):
        for target in node.targets:
            self._check_target(target, node, node.value)
        if _root_name(node.value) in self.fixed_names:  # clock = TrainingClock(): its state is fixed too
            for target in node.targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        self.fixed_names.add(name.id)
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        self._check_target(node.target, node)
        self.generic_visit(node)

    def visit_AnnAssign(self, node):
        self._check_target(node.target, node, node.value)
        self.generic_visit(node)

    def visit_Delete(self, node):
        for target in node.targets:
            root = _root_name(target)
            if root in self.fixed_names or root in self.modules:
                self.reject(node, f"deletes {ast.unparse(target)}: the fixed code may not be patched")
        self.generic_visit(node)

    # names, attributes, calls -------------------------------------------------------------
    def visit_Name(self, node):
        if node.id in ESCAPES:
            self.reject(node, f"uses {node.id}, which can run or rewrite code the audit cannot see")

    def visit_Attribute(self, node):
        if node.attr in ESCAPE_ATTRIBUTES:
            self.reject(node, f"uses .{node.attr}, which reaches into other code's internals")
        root = _root_name(node)
        if root in self.fixed_names and node.attr.startswith("_"):
            self.reject(node, f"uses {ast.unparse(node)}: the fixed module's private parts are off limits")
        if root in self.fixed_names and node.attr in ("evaluate_bpb", "validation_rows", "check_causal"):
            self.reject(node, f"calls {node.attr}: the evaluation belongs to {self.fixed_module}.finish")
        if node.attr == "modules" and root == "sys":
            self.reject(node, "uses sys.modules, which can swap the fixed module")
        if node.attr == "environ" and root == "os" and isinstance(getattr(node, "ctx", None), ast.Store):
            self.reject(node, "changes os.environ")
        self.generic_visit(node)

    def visit_Call(self, node):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name in ("getattr", "hasattr") and isinstance(node.func, ast.Name) and node.args:
            if _root_name(node.args[0]) in self.fixed_names:
                self.reject(node, f"uses {name} on the fixed module: use its public names directly")
            elif len(node.args) > 1 and not isinstance(node.args[1], ast.Constant):
                self.reject(node, f"uses {name} with a computed name, which the audit cannot follow")
        if name in SEED_CALLS:
            self.reject(node, f"calls {name}: the harness owns random seeds (identical code with "
                              "another seed measures noise, not progress)")
        if name in ("putenv", "unsetenv", "setdefault", "update", "pop") and _root_name(node.func) == "os":
            self.reject(node, f"changes the environment with {ast.unparse(node.func)}")
        if name == "system" or name in ("popen", "execv", "execve", "fork", "kill"):
            if _root_name(node.func) == "os":
                self.reject(node, f"calls {ast.unparse(node.func)}")
        self.generic_visit(node)


def audit_source(source: str, fixed_module: str = "prepare", fixed_exports: set[str] | None = None) -> list[str]:
    """Reasons to reject `source` (empty when it passes). A syntax error is reported as such."""
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        return [f"syntax error at line {error.lineno}: {error.msg}"]
    exports = set(fixed_exports or ()) | {"finish", "evaluate_bpb", "TrainingClock", "check_causal", "fail"}
    auditor = _Auditor(fixed_module, exports)
    auditor.visit(tree)
    for node, text in _strings(tree):
        lowered = text.lower()
        if "val_bpb" in lowered or any(re.search(rf"(^|\W){name}\s*:", text) for name in METRIC_NAMES):
            auditor.reject(node, "writes a metric or summary line itself: only the fixed finish() prints it")
        if text.strip() == "---":
            auditor.reject(node, "prints the summary separator itself")
        if any(p in text for p in PROTECTED_PATHS):
            auditor.reject(node, f"names a harness file ({text[:40]!r}): results, ledger and fixed code are off limits")
        if "AUTORESEARCH_" in text:
            auditor.reject(node, f"reads or sets a harness variable ({text[:40]!r})")
        if VALIDATION.search(text) and len(text) < 40 and not text.strip().startswith(("#", "step")):
            auditor.reject(node, f"refers to the validation split ({text!r}): training may only read training data")
    return _dedupe(auditor.reasons)


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
        if name in ("getattr", "hasattr") and isinstance(node.func, ast.Name) and node.args:
            if _root_name(node.args[0]) in self.fixed_names:
                self.reject(node, f"uses {name} on the fixed module: use its public names directly")
            elif len(node.args) > 1 and not isinstance(node.args[1], ast.Constant):
                self.reject(node, f"uses {name} with a computed name, which the audit cannot follow")
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


def only_seeds_changed(old: str, new: str) -> bool:
    try:
        if normalized(old) == normalized(new):
            return False
        return normalized(old, erase_seeds=True) == normalized(new, erase_seeds=True)
    except SyntaxError:
        return False
