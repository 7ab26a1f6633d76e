"""The audit, a first filter: forged summary lines, patches to the fixed code, seed and budget changes and
harness files are rejected before they run; the real train.py and ordinary research edits to it pass.
What the audit no longer refuses is refused at run time (tests/test_redteam.py)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from autoresearch_nb.run.audit import audit_source, only_seeds_changed

REPO = Path(__file__).resolve().parent.parent
TRAIN = (REPO / "nanochat" / "train.py").read_text()
PREPARE = (REPO / "nanochat" / "prepare.py").read_text()
# What the loop passes: every top-level function and class of the locked prepare.py.
FIXED_EXPORTS = {n.name for n in ast.parse(PREPARE).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def audit(source: str) -> list[str]:
    return audit_source(source, "prepare", FIXED_EXPORTS)


def with_lines(extra: str) -> str:
    """train.py with `extra` inserted just before the final finish() call, where a forger would put it."""
    head, tail = TRAIN.rsplit("finish(model", 1)
    return head + extra.rstrip() + "\n" + "finish(model" + tail


def replaced(old: str, new: str) -> str:
    assert TRAIN.count(old) == 1, f"train.py no longer contains {old!r} exactly once"
    return TRAIN.replace(old, new)


def test_the_shipped_train_py_passes():
    assert audit(TRAIN) == []


LEGITIMATE_EDITS = {
    "a new constant used by a new layer": replaced(
        "DIVERGENCE_FACTOR = 1.5", "DIVERGENCE_FACTOR = 1.5\nDROPOUT = 0.1                        # after attention")
    .replace("        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))",
             "        return F.dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)), DROPOUT, self.training)"),
    "a new layer class (SwiGLU MLP)": replaced(
        "class MLP(nn.Module):",
        "class SwiGLU(nn.Module):\n    def __init__(self, dim, ratio):\n        super().__init__()\n"
        "        self.gate = nn.Linear(dim, ratio * dim, bias=False)\n"
        "        self.up = nn.Linear(dim, ratio * dim, bias=False)\n"
        "        self.down = nn.Linear(ratio * dim, dim, bias=False)\n\n"
        "    def forward(self, x):\n        return self.down(F.silu(self.gate(x)) * self.up(x))\n\n\n"
        "class MLP(nn.Module):"),
    "library switches (torch.backends flags, matmul precision)": replaced(
        'if DEVICE == "cuda":',
        'torch.backends.cudnn.benchmark = True\ntorch.set_float32_matmul_precision("high")\nif DEVICE == "cuda":'),
    "a different activation": replaced("F.relu(self.c_fc(x)).square()", "F.gelu(self.c_fc(x))"),
    "a new schedule reading the fixed clock": replaced(
        "    multiplier = lr_multiplier(clock.progress)",
        "    multiplier = lr_multiplier(min(1.0, clock.progress * 1.1))"),
    "gradient clipping and tied weights": replaced(
        "    for opt in optimizers:\n        scaler.step(opt)",
        "    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)\n"
        "    for opt in optimizers:\n        scaler.step(opt)"),
    # refused by the audit until the evaluator moved to a process of its own (issue 10)
    "other imports, a file read, type()": replaced(
        "import math\n", "import json\nimport math\nimport pathlib\n").replace(
        "DIVERGENCE_FACTOR = 1.5", "DIVERGENCE_FACTOR = 1.5\nNOTES = json.loads(pathlib.Path(__file__).with_name("
        "\"notes.json\").read_text()) if pathlib.Path(__file__).with_name(\"notes.json\").exists() else {}").replace(
        "    return F.rms_norm(x, (x.size(-1),))", "    assert type(x) is torch.Tensor\n    return F.rms_norm(x, (x.size(-1),))"),
    "a compile mode and an extra diagnostic print": replaced(
        "step_model = torch.compile(model) if COMPILE else model",
        'step_model = torch.compile(model, mode="max-autotune") if COMPILE else model\n'
        'print(f"matrices {len(matrices)} | grad accumulation {grad_accum}")'),
}


@pytest.mark.parametrize("name", list(LEGITIMATE_EDITS))
def test_ordinary_research_edits_pass(name):
    source = LEGITIMATE_EDITS[name]
    assert source != TRAIN
    compile(source, "train.py", "exec")
    assert audit(source) == [], name


def test_a_library_flag_set_from_an_expression_passes():
    # `allow_tf32 = DEVICE == "cuda"` is a setting, not a patch: nothing callable is swapped in.
    source = replaced('if DEVICE == "cuda":\n    torch.backends.cuda.matmul.allow_tf32 = True',
                      'torch.backends.cuda.matmul.allow_tf32 = DEVICE == "cuda"\nif DEVICE == "cuda":\n'
                      '    torch.backends.cuda.matmul.allow_tf32 = True')
    assert audit(source) == []


FORGERIES = {
    # printing the metric or the summary block itself
    "plain print of val_bpb": ('print("val_bpb: 0.5")', "metric"),
    "f-string val_bpb": ('print(f"val_bpb:          {0.5:.6f}")', "metric"),
    "another summary line": ('print(f"training_seconds: {3.0}")', "metric"),
    "the summary separator": ('print("---")', "separator"),
    # redefining or patching the fixed evaluator
    "redefines finish": ("def finish(*args, **kwargs):\n    print('ok')", "finish"),
    "redefines evaluate_bpb": ("def evaluate_bpb(model, *args):\n    return 0.1", "evaluate_bpb"),
    "patches prepare.evaluate_bpb": ("import prepare\nprepare.evaluate_bpb = lambda *a, **k: 0.1", "patch"),
    "patches through an alias": ("import prepare as p\np.evaluate_bpb = None", "patch"),
    "patches with setattr": ('import prepare\nsetattr(prepare, "evaluate_bpb", len)', "setattr"),
    "patches the clock class": ("import prepare\nprepare.TrainingClock.done = property(lambda s: False)", "patch"),
    "stretches clock.budget": ("clock.budget = 1e9", "patch"),
    "winds clock.started back": ("clock.started -= 30", "patch"),
    "swaps the module in sys.modules": ('sys.modules["prepare"] = None', "sys.modules"),
    # reaching the fixed module's data and evaluator (the validation split is the evaluator's)
    "imports _load_split": ("from prepare import _load_split", "_load_split"),
    "calls prepare._load_split": ('import prepare\nrows = prepare._load_split("train")', "private"),
    "imports validation_rows": ("from prepare import validation_rows", "validation_rows"),
    # changing the time budget
    "TIME_BUDGET assignment": ("TIME_BUDGET = 600", "budget"),
    "AUTORESEARCH_BUDGET env": ('os.environ["AUTORESEARCH_BUDGET"] = "600"', "harness variable"),
    "the profile's budget": ('PROFILE["time_budget"] = 600', "patch"),
    # touching the records
    "appends to results.tsv": ('open("results.tsv", "a").write("x")', "harness file"),
    "reads the ledger": ('p = ".autoresearch/ledger.jsonl"', "harness file"),
    "rewrites prepare.py": ('open("nanochat/prepare.py", "w")', "harness file"),
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_each_forgery_is_rejected_with_a_reason(name):
    extra, word = FORGERIES[name]
    reasons = audit(with_lines(extra))
    assert reasons, f"{name} passed the audit"
    assert any(word.lower() in r.lower() for r in reasons), reasons
    assert all(r.startswith("line ") for r in reasons)  # each reason says where


def test_reasons_point_at_the_offending_line():
    source = with_lines("clock.budget = 1e9")
    line = next(i for i, text in enumerate(source.splitlines(), 1) if text == "clock.budget = 1e9")
    assert any(r.startswith(f"line {line}:") for r in audit(source))


def test_a_metric_line_built_by_concatenation_is_rejected():
    # Without finish(), a run that prints this summary is scored on the number it chose.
    assert audit(with_lines('print("va" + "l_bpb:", 0.1)'))


# Stretching the clock through an alias (a helper function, a subclass) is caught at run time by
# the fixed finish(): see tests/test_runner.py::test_the_fixed_finish_refuses_a_tampered_clock.


def test_the_validation_split_cannot_be_read_through_getattr():
    assert audit(with_lines('import prepare\nrows = getattr(prepare, "_load_split")("va" + "l")'))


def test_syntax_errors_are_reported_as_such():
    reasons = audit("def broken(:\n    pass\n")
    assert len(reasons) == 1 and reasons[0].startswith("syntax error at line 1")


def test_docstrings_may_mention_the_metric():
    source = replaced('"""The schedule is a function of progress through the time budget, not of the step count."""',
                      '"""Warm-down tuned on val_bpb: the schedule follows progress, not steps."""')
    assert audit(source) == []


# -- seed-only changes -------------------------------------------------------------------------

SEEDED = "import torch\nSEED = 42\ntorch.manual_seed(SEED)\nLR = 0.02\n"


def test_a_change_of_seeds_only_is_recognised():
    assert only_seeds_changed(SEEDED, SEEDED.replace("SEED = 42", "SEED = 137"))
    assert only_seeds_changed(SEEDED, SEEDED.replace("manual_seed(SEED)", "manual_seed(137)"))
    assert only_seeds_changed("g = make(seed=1)\n", "g = make(seed=2)\n")


def test_a_real_change_is_not_a_seed_change():
    assert not only_seeds_changed(SEEDED, SEEDED)  # nothing changed at all
    assert not only_seeds_changed(SEEDED, SEEDED.replace("LR = 0.02", "LR = 0.04"))
    assert not only_seeds_changed(SEEDED, SEEDED.replace("SEED = 42", "SEED = 7").replace("LR = 0.02", "LR = 0.04"))
    assert not only_seeds_changed(SEEDED, SEEDED + "# only a comment\n")
    assert not only_seeds_changed(SEEDED, "def broken(:\n")
