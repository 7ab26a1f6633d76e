"""The audit: static checks that keep the agent's code from forging, patching or peeking at the metric.

It reads the proposed file with `ast` (never regex on raw text) and returns the reasons to reject
it, before any training time is spent. The fixed module is named by `fixed_module` (prepare).
"""
from __future__ import annotations

import ast
import hashlib
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
# What train.py may import at all; anything else (codecs, tempfile, threading, io, pathlib, ...) is
# a way around the checks below. Parts of torch that rewrite torch itself are refused too.
ALLOWED_IMPORTS = {"torch", "numpy", "math", "os", "sys", "time", "functools", "itertools", "collections",
                   "dataclasses", "typing", "warnings", "copy", "contextlib", "random", "statistics",
                   "enum", "operator", "__future__"}
TORCH_INTERNALS = ("torch.library", "torch.overrides", "torch.utils.cpp_extension", "torch.hub", "torch.package",
                   "torch.multiprocessing", "torch.utils._python_dispatch", "torch._C", "torch.ops")
# The fixed module's public face for train.py; the rest of it (data, files, cache) is not for training.
FIXED_API = {"DEVICE", "PROFILE", "SEQ_LEN", "TIME_BUDGET", "TrainingClock", "autocast_context", "fail",
             "finish", "load_tokenizer", "make_train_loader"}
# Ending the process (exit code 0 before the summary) or replacing it.
EXIT_NAMES = {"_exit", "exit", "quit", "SystemExit", "abort", "execl", "execle", "execlp", "execlpe", "execv",
              "execve", "execvp", "execvpe", "spawnl", "spawnle", "spawnv", "spawnve", "posix_spawn",
              "posix_spawnp", "fork", "forkpty", "kill", "killpg", "system", "popen"}
# Ways to rewrite how tensors compute.
TENSOR_HOOKS = {"as_subclass", "_make_subclass", "TorchFunctionMode", "TorchDispatchMode", "__torch_function__",
                "__torch_dispatch__", "register_forward_hook", "register_forward_pre_hook"}
ALLOWED_DUNDERS = {"__init__", "__name__", "__file__", "__qualname__", "__doc__", "__future__"}
# Reading files: the data is the fixed loader's, nothing else's.
FILE_READS = {"read_text", "read_bytes", "rglob", "iterdir", "glob", "listdir", "scandir", "walk", "fromfile",
              "memmap", "loadtxt", "from_file", "home", "expanduser", "open", "load", "genfromtxt"}
SETTINGS = ("torch.backends.", "torch._dynamo.config.", "torch._inductor.config.")
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
        self.fixed_objects: set[str] = set()  # of those, objects made by fixed calls (clock, loader)
        self.fixed_modules: set[str] = set()  # names bound to the fixed module itself
        self._direct_calls: set[int] = set()  # getattr/hasattr names that are called directly
        self.made_here: set[str] = set()      # names bound to objects train.py created with a call
        self.reasons: list[str] = []

    def reject(self, node: ast.AST, reason: str) -> None:
        line = getattr(node, "lineno", "?")
        self.reasons.append(f"line {line}: {reason}")

    # imports -----------------------------------------------------------------------------
    def _check_module(self, node, name: str) -> None:
        top = name.split(".")[0]
        if top in ESCAPE_MODULES:
            self.reject(node, f"imports {top}, which can rewrite code at run time")
        elif top not in ALLOWED_IMPORTS and top != self.fixed_module:
            self.reject(node, f"imports {top}: train.py may import {', '.join(sorted(ALLOWED_IMPORTS - {'__future__'}))} "
                              f"and {self.fixed_module}")
        if any(name == bad or name.startswith(bad + ".") for bad in TORCH_INTERNALS):
            self.reject(node, f"imports {name}, which rewrites torch itself")

    def visit_Import(self, node):
        for alias in node.names:
            top = alias.name.split(".")[0]
            bound = alias.asname or top
            self.modules.add(bound)
            if top == self.fixed_module:
                self.fixed_names.add(bound)
                self.fixed_modules.add(bound)
            self._check_module(node, alias.name)

    def visit_ImportFrom(self, node):
        top = (node.module or "").split(".")[0]
        self._check_module(node, node.module or "")
        for alias in node.names:
            bound = alias.asname or alias.name
            if alias.name in EXIT_NAMES or alias.name in TENSOR_HOOKS:
                self.reject(node, f"imports {alias.name}")
            if top != self.fixed_module and any(f"{node.module}.{alias.name}" == bad for bad in TORCH_INTERNALS):
                self.reject(node, f"imports {node.module}.{alias.name}, which rewrites torch itself")
            if top == self.fixed_module:
                if alias.name == "*" or alias.name not in FIXED_API:
                    self.reject(node, f"imports {alias.name} from {self.fixed_module}: train.py may use only "
                                      f"{', '.join(sorted(FIXED_API))}")
                self.fixed_names.add(bound)
                if alias.name in ("evaluate_bpb", "validation_rows", "check_causal"):
                    self.reject(node, f"imports {alias.name}: the evaluation belongs to {self.fixed_module}.finish")
            elif alias.name[:1].islower() or alias.name in ("F",):
                self.modules.add(bound)

    # definitions that shadow the fixed code -------------------------------------------------
    def _check_definition(self, node, name):
        if name in self.fixed_exports:
            self.reject(node, f"defines {name}, which would replace {self.fixed_module}'s fixed {name}")

    def visit_For(self, node):
        # for block in model.blocks: block.x = ... works on what train.py made; [torch.Tensor] does not
        if _root_name(node.iter) in self.made_here:
            self.made_here.update(n.id for n in ast.walk(node.target) if isinstance(n, ast.Name))
        self.generic_visit(node)

    def visit_FunctionDef(self, node):
        self._check_definition(node, node.name)
        if node.name in TENSOR_HOOKS:
            self.reject(node, f"defines {node.name}, which rewrites how tensors compute")
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
        elif root in self.modules and not (ast.unparse(target).startswith(SETTINGS) and _is_setting(value)):
            # A library setting (torch.backends...allow_tf32 = True) is fine; swapping a function is not.
            self.reject(node, f"changes {ast.unparse(target)}: patching an imported module is not allowed")
        elif isinstance(target, ast.Attribute) and target.attr in ("stdout", "stderr", "__stdout__", "__stderr__"):
            self.reject(node, f"replaces {ast.unparse(target)}: the run's output is the harness's")
        elif isinstance(target, ast.Attribute) and root != "self" and root not in self.made_here \
                and not ast.unparse(target).startswith(SETTINGS):
            # Attributes are set on what train.py made (model, optimizer, self), never on a module or
            # class reached some other way (a list element, a loop variable, a parameter).
            self.reject(node, f"sets {ast.unparse(target)}: attributes may be set only on objects train.py made")

    def visit_Assign(self, node):
        for target in node.targets:
            self._check_target(target, node, node.value)
        if isinstance(node.value, ast.Call) and _root_name(node.value) not in self.fixed_names:
            for target in node.targets:  # model = GPT(...), opt = torch.optim.AdamW(...)
                self.made_here.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        if not isinstance(node.value, ast.Call) and _root_name(node.value) in self.modules:
            # functional = F; functional.cross_entropy = ...: an alias is the module itself
            for target in node.targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        self.modules.add(name.id)
        if _root_name(node.value) in self.fixed_names:  # clock = TrainingClock(): its state is fixed too
            for target in node.targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        self.fixed_names.add(name.id)
                        if isinstance(node.value, ast.Call) or _root_name(node.value) in self.fixed_objects:
                            self.fixed_objects.add(name.id)
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
    def visit_Call(self, node):
        if isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
            self._direct_calls.add(id(node.func))
        self._visit_call(node)

    def visit_Name(self, node):
        if node.id in ("getattr", "hasattr") and id(node) not in self._direct_calls:
            self.reject(node, f"passes {node.id} around as a value: it may only be called, with a constant name")
        if node.id in ESCAPES:
            self.reject(node, f"uses {node.id}, which can run or rewrite code the audit cannot see")
        if node.id in EXIT_NAMES:
            self.reject(node, f"uses {node.id}: a run ends through {self.fixed_module}.finish or fail")
        if node.id in TENSOR_HOOKS:
            self.reject(node, f"uses {node.id}, which rewrites how tensors compute")
        if node.id in ("open", "Path"):
            self.reject(node, f"uses {node.id}: train.py reads no files (its data comes from make_train_loader)")

    def visit_Attribute(self, node):
        if node.attr in ESCAPE_ATTRIBUTES:
            self.reject(node, f"uses .{node.attr}, which reaches into other code's internals")
        elif node.attr.startswith("__") and node.attr.endswith("__") and node.attr not in ALLOWED_DUNDERS:
            self.reject(node, f"uses .{node.attr}, which reaches into how objects work")
        if node.attr in EXIT_NAMES:
            self.reject(node, f"uses .{node.attr}: a run ends through {self.fixed_module}.finish or fail")
        if node.attr in TENSOR_HOOKS:
            self.reject(node, f"uses .{node.attr}, which rewrites how tensors compute")
        chain = ast.unparse(node)
        if any(chain == bad or chain.startswith(bad + ".") for bad in TORCH_INTERNALS):
            self.reject(node, f"uses {chain}, which rewrites torch itself")
        root = _root_name(node)
        if node.attr.startswith("_") and not node.attr.startswith("__") and root in self.modules \
                and not any(chain.startswith(prefix.rstrip(".")) or prefix.startswith(chain + ".") for prefix in SETTINGS):
            self.reject(node, f"uses {chain}: a module's private parts (frames, internals) are off limits")
        if node.attr in ("attrgetter", "methodcaller"):
            self.reject(node, f"uses {chain}: attribute names as strings are beyond the audit")
        if node.attr in FILE_READS and root in self.modules:
            self.reject(node, f"uses {chain}: train.py reads no files (its data comes from make_train_loader)")
        if node.attr in ("items", "values", "keys") and chain.startswith("os.environ"):
            self.reject(node, "walks os.environ: train.py may read a named variable, not search the environment")
        if isinstance(node.value, ast.Name) and node.value.id in self.fixed_modules and node.attr not in FIXED_API \
                and not node.attr.startswith("_"):
            self.reject(node, f"uses {chain}: train.py may use only {', '.join(sorted(FIXED_API))} of {self.fixed_module}")
        if root in self.fixed_names and node.attr.startswith("_"):
            self.reject(node, f"uses {ast.unparse(node)}: the fixed module's private parts are off limits")
        if root in self.fixed_names and node.attr in ("evaluate_bpb", "validation_rows", "check_causal"):
            self.reject(node, f"calls {node.attr}: the evaluation belongs to {self.fixed_module}.finish")
        if node.attr == "modules" and root == "sys":
            self.reject(node, "uses sys.modules, which can swap the fixed module")
        if node.attr == "environ" and root == "os" and isinstance(getattr(node, "ctx", None), ast.Store):
            self.reject(node, "changes os.environ")
        self.generic_visit(node)

    def _visit_call(self, node):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name in ("getattr", "hasattr") and isinstance(node.func, ast.Name) and node.args:
            if _root_name(node.args[0]) in self.fixed_names:
                self.reject(node, f"uses {name} on the fixed module: use its public names directly")
            elif len(node.args) > 1 and not isinstance(node.args[1], ast.Constant):
                self.reject(node, f"uses {name} with a computed name, which the audit cannot follow")
            elif len(node.args) > 1 and str(node.args[1].value) in EXIT_NAMES | TENSOR_HOOKS | FILE_READS:
                self.reject(node, f"uses {name} to reach {node.args[1].value}")
            elif len(node.args) > 1 and str(node.args[1].value).startswith("__"):
                self.reject(node, f"uses {name} to reach {node.args[1].value}")
        if name == "type" and isinstance(node.func, ast.Name) and len(node.args) == 1:
            self.reject(node, "uses type(obj): classes of the harness's objects may not be reached or patched")
        if name in SEED_CALLS:
            self.reject(node, f"calls {name}: the harness owns random seeds (identical code with "
                              "another seed measures noise, not progress)")
        if name in ("putenv", "unsetenv", "setdefault", "update", "pop") and _root_name(node.func) == "os":
            self.reject(node, f"changes the environment with {ast.unparse(node.func)}")
        if name == "system" or name in ("popen", "execv", "execve", "fork", "kill"):
            if _root_name(node.func) == "os":
                self.reject(node, f"calls {ast.unparse(node.func)}")
        self.generic_visit(node)


def audit_source(source: str, fixed_module: str = "prepare", fixed_exports: set[str] | None = None,
                 ending: str | None = "finish") -> list[str]:
    """Reasons to reject `source` (empty when it passes). A syntax error is reported as such.
    `ending`: the fixed function the file must end by calling (None: no such rule)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        return [f"syntax error at line {error.lineno}: {error.msg}"]
    exports = set(fixed_exports or ()) | {"finish", "evaluate_bpb", "TrainingClock", "check_causal", "fail"}
    auditor = _Auditor(fixed_module, exports)
    auditor.visit(tree)
    if ending:
        _check_ending(tree, auditor, ending)
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
