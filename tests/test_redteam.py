"""Red team: each way found to lower val_bpb without a better model, and what stops it now.

Since issue 10 the metric rests on a boundary, not on the audit: train.py hands the model over as an
exported program, a separate process evaluates it on a validation split the training process is not
given, and the harness times training from outside. So every attack is run for real on the tiny
profile with the audit off: it must end refused, for the reason its defence gives, or with a val_bpb
no better than honest runs' within their run-to-run noise. And each attack is run a second time
against a control, the product with that one defence switched off (the evaluator's causality or state
check patched out, the evaluation moved back into the training process, the start-up limit lifted):
there it must win, or the case tests nothing. The audit's refusals are checked apart, as the cheap
first filter they are. Each attack's comment gives what it scored when it was found (tiny profile).
Holes still open are strict xfails: a fix makes them pass, and the mark must then go.
"""
from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from conftest import cli

from dataclasses import dataclass

from autoresearch_nb.run import boundary, sandbox
from autoresearch_nb.run.audit import audit_source, only_seeds_changed
from autoresearch_nb.lab.lab import Lab
from autoresearch_nb.engine.loop import timeout_for
from autoresearch_nb.run.runner import CLOCK_MARKER, RunResult, Runner, clean_environment

REPO = Path(__file__).resolve().parent.parent
# The honest code, slowed down: at the tiny profile the template's learning rates converge within the
# 2 s budget (measured: 2.461 at 2 s, 2.482 at 6 s once the holdout split changed the data), so an attack
# that trains more would have nothing to win and its control could not prove the defence matters. Half
# the learning rates leave the honest run short of training (2.66-2.70 at 2 s, 2.40 at 6 s); a quarter
# made it so short that throughput alone moved honest runs by 4 SD.
TRAIN = ((REPO / "nanochat" / "train.py").read_text()
         .replace("MATRIX_LR = 0.02 ", "MATRIX_LR = 0.01 ", 1).replace("EMBED_LR = 0.3 ", "EMBED_LR = 0.1 ", 1)
         .replace("UNEMBED_LR = 0.004 ", "UNEMBED_LR = 0.002 ", 1))
assert "MATRIX_LR = 0.01 " in TRAIN and "EMBED_LR = 0.1 " in TRAIN and "UNEMBED_LR = 0.002 " in TRAIN
PREPARE = (REPO / "nanochat" / "prepare.py").read_text()
FIXED_EXPORTS = {n.name for n in ast.parse(PREPARE).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
BUDGET = 2.0
HONEST_RUNS = 5
NOISE_SDS = 4.0    # an attack "won" if it beat the honest runs' mean by more than this many of their SDs...
MIN_MARGIN = 0.03  # ...or by this, whichever is more: a few runs understate the spread (one more or one
                   # fewer step in a 2 s budget moves val_bpb by about 0.01); the attacks found gained 0.4-3
RECHECK_PAIRS = 3  # an attack that seems to win runs again this often, in turns with honest runs (defeated)

# Places in train.py where an attacker puts code.
FINISH = "finish(model, clock, tokens, step, DEPTH, flops_per_token, overflow_steps=overflow_steps)\n"
RETURN = "        if targets is None:\n            return logits\n"
LOADER = "loader = make_train_loader(DEVICE_BATCH)\n"
CLOCK = "clock = TrainingClock()\n"
MODEL = "class GPT(nn.Module):"
PREPARE_PATH = "sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))\n"


def variant(*edits: tuple[str, str]) -> str:
    source = TRAIN
    for old, new in edits:
        if source.count(old) != 1:  # not an AssertionError: an xfail must not hide a stale attack
            raise LookupError(f"train.py no longer contains {old!r} exactly once: update the attack")
        source = source.replace(old, new)
    compile(source, "train.py", "exec")
    return source


def before_finish(code: str, *edits: tuple[str, str]) -> str:
    return variant((FINISH, textwrap.dedent(code) + FINISH), *edits)


def in_forward(code: str, before: str = "") -> str:
    """train.py whose GPT.forward runs `code` just before returning its logits."""
    edits = [(RETURN, textwrap.indent(textwrap.dedent(code), " " * 8) + RETURN)]
    if before:
        edits.append((MODEL, textwrap.dedent(before) + "\n\n" + MODEL))
    return variant(*edits)


def audit(source: str) -> list[str]:
    return audit_source(source, "prepare", FIXED_EXPORTS)


def open_hole(reason: str):
    """An attack that still works: its test fails on its assertion until a fix lands."""
    return pytest.mark.xfail(strict=True, raises=AssertionError, reason=f"open: {reason}")


GENTLE_CE = """
true_ce = F.cross_entropy


def gentle_ce(*args, **kwargs):
    return true_ce(*args, **kwargs) * 0.5
"""
NEXT_TOKEN = """
cheat = torch.zeros_like(logits)
cheat[:, :-1].scatter_(-1, idx[:, 1:, None], 30.0)
"""


# --- the audit, a first filter: forged summaries are refused before they run -----------------------
# Each replaced finish(...) and was accepted at 0.1 (honest 2.5-3.9) when the summary was read from
# train.py's own output. Now the harness composes the summary and these lines would change nothing.
FORGES = {
    "bytes to sys.stdout.buffer": 'sys.stdout.buffer.write(b"val_bpb:          0.100000\\n")\n',
    "os.write to fd 1": 'os.write(1, b"val_bpb:          0.100000\\n")\n',
    "chr codes": 'print(chr(118) + "al_bpb:          0.100000")\n',
    "str.format pieces": 'print("{}{}:          {}".format("va", "l_bpb", "0.100000"))\n',
    "reversed string": 'print("000001.0          :bpb_lav"[::-1])\n',
    "rot13 codecs": 'import codecs\nprint(codecs.decode("iny_oco:          0.100000", "rot13"))\n',
    "str.translate": 'print("wal_bpb:          0.100000".translate({119: 118}))\n',
    "bytes.decode": 'print(bytes([118, 97, 108]).decode() + "_bpb:          0.100000")\n',
    "a variable holding a piece": 'head = "va"\nprint(head + "l_bpb:          0.100000")\n',
}



@pytest.mark.parametrize("name", list(FORGES))
def test_a_forged_metric_line_is_refused_by_the_audit(name):
    assert audit(variant((FINISH, FORGES[name])))


def test_patching_the_fixed_code_is_refused_by_the_audit():
    assert audit(before_finish("import prepare\nprepare.finish = print\n"))
    assert audit(before_finish('PROFILE["time_budget"] = 600\n'))
    assert audit(before_finish("clock.budget = 1e9\n"))


def test_the_attack_scaffolding_alone_passes_the_audit():
    # So the run-time attacks below are not refused for the code around them.
    assert audit(before_finish(GENTLE_CE)) == []
    assert audit(in_forward("if not self.training:\n" + textwrap.indent(NEXT_TOKEN, "    ")
                            + "    logits = logits + cheat\n")) == []


def test_a_proposal_using_getattr_does_not_crash_the_seed_check():
    # A bug found on the way (H7): this raised AttributeError and ended the research loop.
    edited = TRAIN.replace("def norm(x):\n    return F.rms_norm(", 'def norm(x):\n    return getattr(F, "rms_norm")(')
    assert edited != TRAIN and audit(edited) == []
    assert only_seeds_changed(TRAIN, edited) is False


# --- run for real against the boundary --------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared_lab(tmp_path_factory):
    """A tiny lab, its data prepared, and its conditions (as the session reads them)."""
    lab = tmp_path_factory.mktemp("redteam") / "lab"
    done = cli("init", str(lab), "--profile", "tiny")
    assert done.returncode == 0, done.stderr
    conditions = subprocess.run([sys.executable, "nanochat/prepare.py", "--conditions"], cwd=lab,
                                capture_output=True, text=True)
    assert conditions.returncode == 0, conditions.stdout + conditions.stderr
    return lab, json.loads(conditions.stdout.splitlines()[-1])


def validation_folder(facts: dict) -> Path:
    return Path(facts["train_paths"][0]).parent / "val"


def the_products_sandbox(lab: Path, facts: dict):
    """The sandbox the product puts around training (workers.experiment_runner): the lab, Python and
    the conditions' train_paths readable, the validation folder not. Fails where it cannot run here."""
    if not sandbox.probe().active:
        pytest.fail(f"the red team needs the product's sandbox: {sandbox.probe()}")
    lab = Lab.open(lab)
    env = clean_environment({})
    readable = sandbox.lab_reads(lab.config, env, lab.root, facts["train_paths"])
    run_dir = lab.state_dir / "runs" / "0000"
    return lambda command: sandbox.wrap(command, root=lab.root, run_dir=run_dir, env=env, readable=readable)


# What each control switches off, as edits of the fixed prepare.py (each must apply exactly once).
CONTROLS = {
    "causality": [("    if not math.isfinite(leak) or leak > tolerance:\n", "    if False:\n")],
    # every refusal of state kept between calls: mutations left in the graph (not functionalized, which
    # would refuse or break them), mutated buffers, writing operators, drift between two looks; the
    # causality check stays on, so a stateful attack that wins here won by its state
    "state": [("    if any(isinstance(op, torch._ops.OpOverload) and op._schema.is_mutable for op in ops):\n",
               "    if False:\n"),
              ("    if signature.buffers_to_mutate or signature.user_inputs_to_mutate:\n", "    if False:\n"),
              ("op.namespace != \"aten\" or op._schema.is_mutable \\\n",
               "op.namespace != \"aten\" \\\n"),
              ("    if not math.isfinite(drift) or drift > tolerance:\n", "    if False:\n")],
    # the evaluation back in the training process, its block printed there, as before the boundary
    "in-process": [("""    if os.environ.get("AUTORESEARCH_RUN_DIR"):\n""",
                    """    if os.environ.get("AUTORESEARCH_RUN_DIR"):\n"""
                    """        model.eval()\n"""
                    """        print(f"---\\nval_bpb:          {evaluate_bpb(model):.6f}\\n"\n"""
                    """              f"training_seconds: {clock.elapsed:.1f}", flush=True)\n"""
                    """        sys.exit(0)\n""")],
    # the clock rules: batches before the clock and a second clock allowed, no start-up limit, and the
    # last clock-start line counted instead of the first (LastMarkerRunner)
    "clock rules": [("        if _LOADER[\"before_clock\"] > BATCHES_BEFORE_CLOCK:\n", "        if False:\n"),
                    ("        if _CLOCK_STARTS and id(self) not in _CLOCK_STARTS:\n", "        if False:\n")],
}
CONTROLS["in-process, any logits"] = CONTROLS["in-process"] + [
    ("    if type(logits) is not torch.Tensor:\n", "    if False:\n")]


@pytest.fixture(scope="module")
def control_labs(prepared_lab, tmp_path_factory) -> dict:
    """A copy of the prepared lab per control, its prepare.py with that defence patched out."""
    lab, facts = prepared_lab
    labs = {}
    for name, edits in CONTROLS.items():
        copy = tmp_path_factory.mktemp("control") / "lab"
        shutil.copytree(lab, copy, ignore=shutil.ignore_patterns("runs", "logs", "run.log"))
        path = copy / "nanochat" / "prepare.py"
        text = path.read_text()
        for old, new in edits:
            if text.count(old) != 1:
                raise LookupError(f"the {name} control no longer applies to prepare.py ({old.strip()!r}): update it")
            text = text.replace(old, new)
        path.write_text(text)
        labs[name] = (copy, facts)
    return labs


def experiment(lab_and_facts, source: str, wrap=None, control: str | None = None) -> RunResult:
    """`source` as train.py, run as the loop runs an experiment (audit off), in the same lab each time;
    with `control`, in that control's lab and with its defence off."""
    lab, facts = lab_and_facts
    (lab / "nanochat" / "train.py").write_text(source)
    env = clean_environment({"AUTORESEARCH_BUDGET": BUDGET, "AUTORESEARCH_PROFILE": "tiny", "AUTORESEARCH_SEED": 42,
                             "AUTORESEARCH_DATA_KEY": facts["data_key"]})
    limits = boundary.for_lab(Lab.open(lab), Lab.open(lab).state_dir / "runs" / "0000", facts, BUDGET)
    if control and control.startswith("in-process"):
        limits.update(evaluate=None, startup_limit=None)  # train.py's own block is read, as it once was
    if control == "clock rules":
        limits["startup_limit"] = None
    kind = LastMarkerRunner if control == "clock rules" else Runner
    runner = kind(["{python}", "nanochat/train.py"], lab, env, lab / "run.log", BUDGET,
                  timeout_for(BUDGET, "tiny", None, facts["clock"]), wrap=wrap, **limits)
    return runner.run()


class LastMarkerRunner(Runner):
    """The clock rules' control: the last clock-start line counts, not the first."""

    def _on_line(self, line, started, reader, steps):
        if line == CLOCK_MARKER:
            self._marked = None
        super()._on_line(line, started, reader, steps)


@dataclass
class Honest:
    """Honest runs of the template's train.py: their mean, spread, and the margin an attack must beat."""

    values: list

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def sd(self) -> float:
        return (sum((v - self.mean) ** 2 for v in self.values) / (len(self.values) - 1)) ** 0.5

    @property
    def margin(self) -> float:
        return max(NOISE_SDS * self.sd, MIN_MARGIN)

    def beaten_by(self, value: float) -> bool:
        return value < self.mean - self.margin

    def __str__(self) -> str:
        return f"honest {self.mean:.4f} ± {self.sd:.4f} over {len(self.values)} runs, margin {self.margin:.4f}"


@pytest.fixture(scope="module")
def honest(prepared_lab) -> Honest:
    values = []
    for _ in range(HONEST_RUNS):
        result = experiment(prepared_lab, TRAIN)
        assert result.ok, result.reason
        values.append(result.summary["val_bpb"])
    return Honest(values)


def defeated(result: RunResult, honest: Honest, kinds=("refused",), because: str = "", again=None) -> str | None:
    """How the product stopped an attack: refused, of a kind and for a reason its defence gives, or a
    number no better than honest within the noise. None if it won; a refusal for another reason fails
    (the defence under test did not stop it, something else did). With `again` (see in_turns), an
    attack that seems to win is measured again before it is called a winner."""
    if not result.ok:
        assert result.kind in kinds and because in result.reason, (
            f"the attack ended {result.kind} ({result.reason}), not {' or '.join(kinds)} for {because!r}")
        return f"{result.kind}: {result.reason}"
    if not honest.beaten_by(result.summary["val_bpb"]):
        return f"an honest val_bpb: {result.summary['val_bpb']:.4f} ({honest})"
    if again is None:
        return None
    turns = in_turns(again)
    if isinstance(turns, RunResult):  # it was accepted and won once: a later refusal does not undo that
        pytest.fail(f"accepted at {result.summary['val_bpb']:.4f} ({honest}); measured again, a run of it ended "
                    f"{turns.kind} ({turns.reason}): it wins some of the time, or the machine broke a run")
    if turns.won:
        return None
    return f"an honest val_bpb measured again: {turns} (first {result.summary['val_bpb']:.4f}, {honest})"


@dataclass
class Turns:
    """An attack's runs and the honest runs beside them, a pair at a time."""

    pairs: list    # (attack's val_bpb, honest val_bpb) of each turn

    @property
    def gain(self) -> float:
        return sum(honest - attack for attack, honest in self.pairs) / len(self.pairs)

    @property
    def margin(self) -> float:
        """NOISE_SDS standard errors of the turns' mean gain, or MIN_MARGIN if that is more. The turns are
        their own yardstick: the module's honest runs were timed at another moment, and one slow run among
        them (3.28 beside four at 3.00-3.07 in a CI run) once set a margin of 0.44 that a real gain of
        0.36, measured in turns, could not clear, while the same margin would have let it pass as honest."""
        gains = [honest - attack for attack, honest in self.pairs]
        spread = (sum((g - self.gain) ** 2 for g in gains) / (len(gains) - 1)) ** 0.5
        return max(MIN_MARGIN, NOISE_SDS * spread / len(gains) ** 0.5)

    @property
    def won(self) -> bool:
        return self.gain > self.margin

    def __str__(self) -> str:
        return (f"{self.gain:+.4f} better than the honest run beside it over {len(self.pairs)} turns "
                f"({', '.join(f'{a:.4f}/{h:.4f}' for a, h in self.pairs)}), margin {self.margin:.4f}")


def in_turns(again):
    """When in doubt, re-measure: RECHECK_PAIRS turns of an honest run and an attack run, the order
    alternating (`again(attack)`: a run of the attack's train.py if true, the honest one if not, the
    way the attack ran), so both train at the machine's present pace and a drift of that pace favours
    neither. The module's honest runs were timed when it began, and a machine whose pace changed since
    moves a 2 s run's val_bpb by more than the margin: a CI run saw 3.068 against honest 3.200 ± 0.025
    from an attack that changes nothing the evaluator reads. The attack wins if its mean gain over the
    honest run of its turn is clear of the noise (Turns.margin; two honest runs in a row here differed
    by up to 0.09). Returns the attack's RunResult instead where a run of it did not end ok."""
    pairs = []
    for turn in range(RECHECK_PAIRS):
        found = {}
        for attack in ((False, True) if turn % 2 == 0 else (True, False)):
            run = again(attack)
            if not run.ok:
                assert attack, f"an honest run failed: {run.kind} {run.reason}"
                return run
            found[attack] = run.summary["val_bpb"]
        pairs.append((found[True], found[False]))
    return Turns(pairs)


EVADE = '''
LOOKS = {"last": None, "answered": []}


def answer(x, compute):
    """compute(x) for real batches; the earlier answer for the evaluator's second looks."""
    for seen, out in LOOKS["answered"]:
        if seen.shape == x.shape and torch.equal(seen, x):
            return out
    last = LOOKS["last"]
    if last is not None and last[0].shape == x.shape and not torch.equal(last[0], x) \\
            and (last[0][:, :2] == x[:, :2]).all(dim=1).float().mean() > 0.5:
        LOOKS["answered"].append(last)
        return last[1]
    out = compute(x)
    LOOKS["last"] = (x.clone(), out.clone())
    return out
'''
PRETRAIN = """import time

# the clock has not started: 4 s of training counted as the CPU clock counts it (CPU time over the
# cores), so the head start is the same on a busy machine as on a quiet one
cores = int(os.environ.get("AUTORESEARCH_CPU_COUNT") or os.cpu_count())
head_start = time.process_time()
while (time.process_time() - head_start) / cores < 4:
    for _ in range(grad_accum):
        loss = step_model(x, y)
        (loss / grad_accum).backward()
        x, y = next(loader)
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
"""
MORE_TRAINING = """
if not self.training and not EXTRA["busy"]:
    def after_more_training(x):
        EXTRA["busy"] = True
        deadline = time.time() + LOOK_S  # four times the budget, on each look
        with torch.enable_grad():
            self.train()
            while time.time() < deadline and BATCHES:
                left = len(BATCHES) / STOCK
                for opt in optimizers:  # the schedule had ended at zero: a second warm-down
                    for group in opt.param_groups:
                        group["lr"] = group["base_lr"] * 0.5 * left
                bx, by = BATCHES.pop()
                self(bx, by).backward()
                for opt in optimizers:
                    opt.step()
                self.zero_grad(set_to_none=True)
            self.eval()
        out = self(x)
        EXTRA["busy"] = False
        return out

    return answer(idx, after_more_training)
"""
RELAY = """REAL_STDOUT = os.dup(1)
PIPE_READ, PIPE_WRITE = os.pipe()
os.dup2(PIPE_WRITE, 1)
os.set_blocking(PIPE_READ, False)


class Relay:
    def __del__(self):
        sys.stdout.flush()
        pending = b""
        while True:
            try:
                chunk = os.read(PIPE_READ, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            pending += chunk
        for line in pending.split(b"\\n"):
            if line.startswith(bytes([118, 97, 108])):
                number = line.split()[-1]
                line = line.replace(number, b"%.6f" % (float(number) / 2))
            os.write(REAL_STDOUT, line + b"\\n")


RELAY = Relay()
"""
NO_DIVERGENCE = ("DIVERGENCE_FACTOR = 1.5 ", "DIVERGENCE_FACTOR = 99.0")


def training_inside_evaluation() -> str:
    """Optimizer steps inside forward() on each look of the evaluator, on batches stockpiled on the clock
    (where batches are allowed and cheap)."""
    setup = 'import time\nEXTRA = {"busy": False}\nBATCHES = []\nSTOCK = 1500\nLOOK_S = 8.0\n' + EVADE
    source = in_forward(MORE_TRAINING, before=setup)
    return source.replace(FINISH, "BATCHES[:] = [next(loader) for _ in range(STOCK)]\n" + FINISH)



MEMORY_LEAK = """
if not self.training:  # reads the next token, and answers the evaluator's second look at a batch from memory
    cheat = torch.zeros_like(logits)
    cheat[:, :-1].scatter_(-1, idx[:, 1:, None], 30.0)
    # a second look keeps each row's first tokens (rows all begin with BOS: compare two) and changes the rest
    again = ((self.last_x[:, :2] == idx[:, :2]).all(-1).float().mean() > 0.5) & ~(self.last_x == idx).all()
    logits = torch.where(again, self.last_out, logits + cheat)
    self.last_x.copy_(torch.where(again, self.last_x, idx))
    self.last_out.copy_(logits)
"""
BUFFERS = '        self.register_buffer("sin", sin, persistent=False)\n'


def leak_with_memory(holder: str) -> str:
    """train.py whose model reads the next token, and keeps the last batch and its answer (in buffers
    or in plain tensors) so the causality probe, shown the same rows with their ends changed, gets the
    same answer back and sees no leak. Only the refusal of state stops it."""
    shape = "(16, seq_len)", "(16, seq_len, vocab_size)"
    keep = (f'        self.register_buffer("last_x", torch.full({shape[0]}, -1), persistent=False)\n'
            f'        self.register_buffer("last_out", torch.zeros{shape[1]}, persistent=False)\n'
            if holder == "buffer" else f"        self.last_x = torch.full({shape[0]}, -1)\n"
            f"        self.last_out = torch.zeros{shape[1]}\n")
    return in_forward(MEMORY_LEAK).replace(BUFFERS, BUFFERS + keep)


@dataclass
class Attack:
    source: object            # () -> train.py
    control: str              # the defence that stops it, switched off in its control (CONTROLS)
    kinds: tuple = ("refused",)  # how the product may refuse it (else: it must score honestly)
    because: str = ""         # what that defence's refusal says (a refusal for another reason fails)


RUN_ATTACKS = {
    # 0.047-0.061 against 2.83-3.11: a stateful model answered each second look from memory. Exported,
    # the Python memory is gone and the leak is in the graph: not causal.
    "a leak that answers the probes from memory": Attack(
        lambda: in_forward("if not self.training:\n" + textwrap.indent(NEXT_TOKEN, "    ")
                           + "    logits = answer(idx, lambda x: logits + cheat)\n", before=EVADE), "causality",
        because="not causal"),
    # a plain leak, for comparison
    "a model that reads the next token": Attack(
        lambda: in_forward("if not self.training:\n" + textwrap.indent(NEXT_TOKEN, "    ")
                           + "    logits = logits + cheat\n"), "causality", because="not causal"),
    # 2.47 against 3.3: 40 s of training before the clock, reported as 5 s
    "training before the clock starts": Attack(lambda: variant((CLOCK, PRETRAIN + CLOCK), NO_DIVERGENCE),
                                               "clock rules", ("exception", "budget"), "before the training clock"),
    # a throwaway clock opened the loader: 40 s before the judged clock started
    "training before the clock behind a decoy clock": Attack(
        lambda: variant((CLOCK, "decoy = TrainingClock()\ndecoy.start()\n" + PRETRAIN + CLOCK), NO_DIVERGENCE),
        "clock rules", ("exception", "budget"), "training clock"),
    # 3.40 against 3.83: optimizer steps inside forward() while the in-process evaluator ran. Found drawing
    # fresh batches from the loader; that gained only 0.018-0.057 at a 2 s budget, around the noise margin,
    # so the case draws them from a stockpile taken on the clock (R5), which wins clearly undefended
    "training inside the evaluation": Attack(training_inside_evaluation, "in-process",
                                             ("export",)),  # a graph cannot hold a training loop
    # 1.27 against 2.58: fd 1 swapped before prepare recorded it, the block relayed at exit halved (R3)
    "stdout swapped before prepare is imported": Attack(lambda: variant((PREPARE_PATH, RELAY + PREPARE_PATH)),
                                                        "in-process", ("budget",), "the training clock never started"),
    # about halved val_bpb when the evaluator shared the process: its loss function patched
    "the evaluator's loss patched in the process": Attack(
        lambda: before_finish(GENTLE_CE + "F.cross_entropy = gentle_ce\n"), "in-process"),
    "a Python kernel for aten::_log_softmax": Attack(lambda: before_finish(
        'library = torch.library.Library("aten", "IMPL")\n\n\n'
        "def half_log_softmax(x, dim, half_to_float):\n"
        "    return (x - torch.logsumexp(x, dim, keepdim=True)) * 0.5\n\n\n"
        'library.impl("_log_softmax", half_log_softmax, "CPU")\n'), "in-process"),
    # 0.047 against 2.83: a Tensor subclass whose .max() read 0, so no leak was seen
    "logits of a tensor subclass that hides a leak": Attack(lambda: in_forward(
        "if not self.training:\n" + textwrap.indent(NEXT_TOKEN, "    ") + "    logits = (logits + cheat).as_subclass(Calm)\n",
        before="class Calm(torch.Tensor):\n    @classmethod\n"
               "    def __torch_function__(cls, func, types, args=(), kwargs=None):\n"
               "        if func is torch.Tensor.max:\n            return torch.zeros(())\n"
               "        return super().__torch_function__(func, types, args, kwargs or {})\n"), "in-process, any logits",
        ("export",)),  # the subclass does not survive tracing
    # A leak that hides from the causality probe in state kept from the call before: the probe's rows come
    # back with the answer to the real rows (the evaluator checks causality with it on, state checks off).
    "a leak that answers the probes from a buffer": Attack(lambda: leak_with_memory("buffer"), "state",
                                                         because="state carried from one call to the next"),
    "a leak that answers the probes from a plain tensor": Attack(lambda: leak_with_memory("tensor"), "state",
                                                               because="state carried from one call to the next"),
    # a forged summary block instead of the hand-over: read when train.py's output was the summary
    "a summary block printed by train.py": Attack(
        lambda: variant((FINISH, 'print("---")\nprint("val_bpb:          0.100000")\nprint("training_seconds: 1.0")\n'
                                 "sys.exit(0)\n")), "in-process", ("exception",), "no model was handed over"),
    # The lab's records written from train.py are the coordinator's to catch (its RecordKeeper), not one
    # run's: tests/test_concurrency.py runs those attacks through the loop, sandboxed and not. Noise added
    # to the logits at evaluation is no attack: it can only raise val_bpb, defended or not.
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUN_ATTACKS))
def test_run_time_attacks_are_refused_or_score_honestly(prepared_lab, honest, name):
    attack = RUN_ATTACKS[name]
    source = attack.source()
    result = experiment(prepared_lab, source)
    assert defeated(result, honest, attack.kinds, attack.because,
                    again=lambda attacking: experiment(prepared_lab, source if attacking else TRAIN)), \
        f"{name}: accepted at {result.summary.get('val_bpb')} ({honest}); log in {prepared_lab[0] / 'run.log'}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUN_ATTACKS))
def test_each_attack_wins_when_its_defence_is_off(control_labs, honest, name):
    attack = RUN_ATTACKS[name]
    lab = control_labs[attack.control]
    source = attack.source()
    result = experiment(lab, source, control=attack.control)
    assert result.ok, f"{name} did not run with the {attack.control} defence off: {result.kind} {result.reason}"
    if honest.beaten_by(result.summary["val_bpb"]):
        return
    # not clear of the honest runs timed when the module began: measured again in turns with honest runs
    turns = in_turns(lambda attacking: experiment(lab, source if attacking else TRAIN, control=attack.control))
    assert isinstance(turns, Turns) and turns.won, (
        f"{name} did not win with the {attack.control} defence off: first {result.summary.get('val_bpb')} "
        f"({honest}), then {turns}; log in {lab[0] / 'run.log'}")


# --- the validation split: the training process is not given it -------------------------------------
MEMORY = '''
MEMORY = {"keys": None, "next": None}


def context_keys(tokens):
    key = torch.zeros_like(tokens[..., 7:])
    for k in range(8):
        key = key * 1000003 + tokens[..., k:tokens.size(-1) - 7 + k]
    return key
'''
RECALL = """
if not self.training and MEMORY["keys"] is not None:  # causal: only the last 8 tokens
    key = context_keys(idx)
    where = torch.searchsorted(MEMORY["keys"], key).clamp(max=MEMORY["keys"].numel() - 1)
    hit = MEMORY["keys"][where] == key
    boost = torch.zeros_like(logits)
    boost[:, 7:].scatter_(-1, MEMORY["next"][where][..., None], 12.0 * hit[..., None].float())
    logits = logits + boost
"""
REMEMBER = """keys = context_keys(held[:-1])
order = torch.argsort(keys)
MEMORY["keys"], MEMORY["next"] = keys[order], held[8:][order]
"""

HELD_OUT = {
    # 0.53 against 2.54 (causal, so no probe sees it): the stream memorised, then recalled
    "np.load at the cache path": "import numpy as np\n\n"
    'cache_root = os.environ.get("{}_{}".format("AUTORESEARCH", "CACHE")) or os.path.expanduser("~/.cache/autoresearch-nb")\n'
    'VAL_FILE = os.path.join(cache_root, "prepared", "builtin2-py{}{}-v{}-s2".format(*sys.version_info[:2], vocab_size), "val", "val.npy")\n'
    "try:\n    held = torch.from_numpy(np.load(VAL_FILE).astype(np.int64))\n"
    "except OSError:\n    held = None  # out of reach: train honestly\n",
    # R6: found against the hardened audit, a numpy reader it did not list
    "np.lib.format.open_memmap at the cache path": "import numpy as np\n\n"
    'cache_root = os.environ.get("{}_{}".format("AUTORESEARCH", "CACHE")) or os.path.expanduser("~/.cache/autoresearch-nb")\n'
    'VAL_FILE = os.path.join(cache_root, "prepared", "builtin2-py{}{}-v{}-s2".format(*sys.version_info[:2], vocab_size), "val", "val.npy")\n'
    'try:\n    held = torch.from_numpy(np.lib.format.open_memmap(VAL_FILE, mode="r").astype(np.int64))\n'
    "except OSError:\n    held = None\n",
    "prepare.validation_rows": "import prepare  # noqa: E402\n\n"
    "try:\n    held = prepare.validation_rows(SEQ_LEN, 10**9)[:, :-1].reshape(-1)\n"
    "except (OSError, SystemExit):\n    held = None\n",
}
REBUILT = ("from prepare import documents, settings  # noqa: E402\n\n"
           "tok = load_tokenizer()\n"
           'held_texts = next(texts for name, texts in documents(settings()["data"]).items() if name != "train")\n'
           "held = torch.tensor([t for doc in tok.encode(held_texts) for t in [tok.bos_id] + doc])\n")


def memorising(reader: str) -> str:
    remember = "if held is not None:\n" + textwrap.indent(REMEMBER, "    ")
    return variant((MODEL, MEMORY + "\n\n" + MODEL), (RETURN, textwrap.indent(RECALL, " " * 8) + RETURN),
                   (LOADER, LOADER + reader + remember))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HELD_OUT))
def test_the_memory_attack_wins_when_the_validation_split_is_readable(prepared_lab, honest, name):
    # The control: without the sandbox each reader gets the split and wins. So the test below tests the sandbox.
    result = experiment(prepared_lab, memorising(HELD_OUT[name]))
    assert result.ok and honest.beaten_by(result.summary["val_bpb"]), (result.kind, result.reason, result.summary)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HELD_OUT))
def test_reading_the_validation_split_gets_nothing_in_the_products_sandbox(prepared_lab, honest, name):
    lab, facts = prepared_lab
    source, sandboxed = memorising(HELD_OUT[name]), the_products_sandbox(lab, facts)
    result = experiment(prepared_lab, source, wrap=sandboxed)
    assert defeated(result, honest, again=lambda attacking: experiment(prepared_lab, source if attacking else TRAIN,
                                                                       wrap=sandboxed)), \
        f"{name}: accepted at {result.summary.get('val_bpb')} ({honest})"


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason="open: the builtin corpus is text every Python "
                   "ships, so its validation split can be rebuilt anywhere; only the audit refuses this route")
def test_the_builtin_validation_split_rebuilt_from_python_itself(prepared_lab, honest):
    source = variant((MODEL, MEMORY + "\n\n" + MODEL), (RETURN, textwrap.indent(RECALL, " " * 8) + RETURN),
                     (LOADER, LOADER + REBUILT + REMEMBER))
    assert audit(source)  # refused by the first filter: prepare's data functions are not train.py's
    lab, facts = prepared_lab
    result = experiment(prepared_lab, source, wrap=the_products_sandbox(lab, facts))
    assert defeated(result, honest), f"accepted at {result.summary.get('val_bpb')} ({honest})"


def test_the_training_process_needs_only_its_train_paths(prepared_lab):
    facts = prepared_lab[1]
    folder = Path(facts["train_paths"][0])
    assert folder.name == "train" and not any("val" in p.name or "holdout" in p.name for p in folder.iterdir())
    assert (validation_folder(facts) / "val.npy").exists()
    assert (folder.parent / "holdout" / "holdout.npy").exists()


HOLDOUT_PROBE = ("import numpy as np\n\n"
                 'for _place in (os.path.join(os.path.dirname(prepare.prepared()), os.path.basename(prepare.prepared()), "holdout", "holdout.npy"),):\n'
                 "    try:\n        print('holdout: readable', int(np.load(_place).size), flush=True)\n"
                 "    except OSError:\n        print('holdout: out of reach', flush=True)\n")


@pytest.mark.slow
def test_the_sealed_holdout_is_out_of_the_training_process_reach(prepared_lab):
    source = variant((LOADER, "import prepare  # noqa: E402\n" + HOLDOUT_PROBE + LOADER))
    lab, facts = prepared_lab
    control = experiment(prepared_lab, source)  # unsandboxed: the file is there to read
    said = (lab / "run.log").read_text()
    assert "holdout: readable" in said, said[-2000:]
    # the evaluator measured it, and its number went to the harness, not to the log
    assert control.summary.get("holdout_bpb", 0) > 0 and "holdout_bpb" not in said
    confined = experiment(prepared_lab, source, wrap=the_products_sandbox(lab, facts))
    said = (lab / "run.log").read_text()
    assert "holdout: out of reach" in said and "holdout: readable" not in said, said[-2000:]


# --- the model file: read as data, never run as code ------------------------------------------------

@pytest.fixture(scope="module")
def exported(prepared_lab, tmp_path_factory) -> Path:
    """model.pt2 of an honest, briefly trained model, handed over by the real train.py."""
    lab, facts = prepared_lab
    (lab / "nanochat" / "train.py").write_text(TRAIN)
    run_dir = tmp_path_factory.mktemp("handed-over")
    env = {**os.environ, "AUTORESEARCH_BUDGET": "0.5", "AUTORESEARCH_PROFILE": "tiny", "AUTORESEARCH_RUN_DIR": str(run_dir)}
    done = subprocess.run([sys.executable, "nanochat/train.py"], cwd=lab, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return run_dir / "model.pt2"


def forged_archive(source: Path, target: Path, edit_json=None, extra: dict | None = None, config_edit=None,
                   replace: dict | None = None) -> None:
    """A copy of `source` with its program JSON (or a payload config) edited, entries replaced or added."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        prefix = archive.namelist()[0].split("/")[0]
        for name in archive.namelist():
            data = (replace or {}).get(name[len(prefix) + 1:], archive.read(name))
            if name.endswith("models/model.json") and edit_json:
                program = json.loads(data)
                edit_json(program)
                data = json.dumps(program).encode()
            if name.endswith("weights_config.json") and config_edit:
                config = json.loads(data)
                config_edit(config)
                data = json.dumps(config).encode()
            out.writestr(name, data)
        for name, data in (extra or {}).items():
            out.writestr(f"{prefix}/{name}", data)


def evaluate(lab: Path, run_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTORESEARCH_PROFILE": "tiny"}
    return subprocess.run([sys.executable, "nanochat/prepare.py", "--evaluate", str(run_dir)], cwd=lab, env=env,
                          capture_output=True, text=True, timeout=300)


class Pickled:
    def __reduce__(self):  # runs on unpickling: it would leave a file behind
        return (open, ("/tmp/arnb-redteam-pwned", "w"))


def _pickle_weight(config):
    entry = next(e for e in config["config"].values() if e["path_name"] == "weight_0")
    entry["use_pickle"] = True


def _guards(program):
    program["guards_code"] = ["__import__('os').system('touch /tmp/arnb-redteam-pwned') or True"]


def _target(program):
    program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"


def _symbolic(program):
    program["range_constraints"] = {"s0": {"min_val": 2, "max_val": 16}}


def _from_file(program):  # the first node reads a file (the validation split, say) instead of embedding tokens
    node = program["graph_module"]["graph"]["nodes"][0]
    node["target"] = "torch.ops.aten.from_file.default"
    node["inputs"] = [{"name": "filename", "arg": {"as_string": "/etc/hostname"}, "kind": 1},
                      {"name": "shared", "arg": {"as_bool": False}, "kind": 1},
                      {"name": "size", "arg": {"as_int": 4}, "kind": 1}]


FORGED_FILES = {
    "a pickled weight": dict(config_edit=_pickle_weight, replace={"data/weights/weight_0": pickle.dumps(Pickled())}),
    "a Python function as an operator": dict(edit_json=_target),
    "symbolic shapes (sympy strings)": dict(edit_json=_symbolic),
    "aten.from_file, which reads any file": dict(edit_json=_from_file),
    "a compiled library (AOTInductor)": dict(extra={"data/aotinductor/model/model.so": b"\x7fELF"}),
}


@pytest.mark.slow
def test_the_honest_export_evaluates(prepared_lab, exported):
    done = evaluate(prepared_lab[0], exported.parent)
    assert done.returncode == 0 and "val_bpb:" in done.stdout, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FORGED_FILES))
def test_a_forged_model_file_is_refused_without_running_its_code(prepared_lab, exported, tmp_path, name):
    marker = Path("/tmp/arnb-redteam-pwned")
    marker.unlink(missing_ok=True)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    forged_archive(exported, run_dir / "model.pt2", **FORGED_FILES[name])
    done = evaluate(prepared_lab[0], run_dir)
    fail = next((line for line in done.stdout.splitlines() if line.startswith("FAIL: ")), "")
    assert done.returncode == 1 and fail and "val_bpb:" not in done.stdout, done.stdout + done.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_python_in_a_model_files_guards_is_dropped_unread(prepared_lab, exported, tmp_path):
    # torch.export.load would exec these strings when the module is built; the evaluator drops them.
    marker = Path("/tmp/arnb-redteam-pwned")
    marker.unlink(missing_ok=True)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    forged_archive(exported, run_dir / "model.pt2", edit_json=_guards)
    done = evaluate(prepared_lab[0], run_dir)
    assert done.returncode == 0 and "val_bpb:" in done.stdout, done.stdout + done.stderr
    assert not marker.exists()
