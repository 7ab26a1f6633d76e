"""The offline heuristic agent: an honest baseline that needs no LLM, no key and no network.

It edits train.py through its syntax tree: the UPPERCASE constants at the top (learning rates,
schedule, sizes, batch) and a small catalogue of structural switches. It is deterministic for a
seed, never proposes code that was tried before, pushes further along a direction that was just
kept, and keeps the model within what the profile's hardware can run.
"""
from __future__ import annotations

import ast
import random
from dataclasses import dataclass

from ..run.audit import fingerprint
from .base import Agent, Context, Proposal, ProposalError

TRAIN_FILE = "nanochat/train.py"


@dataclass
class Move:
    key: str                 # what it changes, e.g. "MATRIX_LR:up" (used to push a kept direction)
    changes: dict            # constant name -> new value (python literal)
    description: str
    rationale: str
    transform: str | None = None   # name of a structural switch


def constants(tree: ast.Module, profile: dict) -> dict:
    """Module-level UPPERCASE constants whose value can be worked out (literals, PROFILE[...])."""
    values = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        if not name.isupper():
            continue
        value = node.value
        if (isinstance(value, ast.Subscript) and isinstance(value.value, ast.Name) and value.value.id == "PROFILE"
                and isinstance(value.slice, ast.Constant) and value.slice.value in profile):
            values[name] = profile[value.slice.value]
            continue
        try:
            values[name] = ast.literal_eval(value)
        except ValueError:
            continue
    return values


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return repr(value)


def _scaled(name, values, factor, rationale, key_suffix, minimum=None, maximum=None, integer=False):
    old = values.get(name)
    if not isinstance(old, (int, float)) or isinstance(old, bool) or old == 0:
        return None
    new = old * factor
    if integer:
        new = int(round(new))
    else:
        new = float(f"{new:.4g}")
    if new == old or (minimum is not None and new < minimum) or (maximum is not None and new > maximum):
        return None
    direction = "up" if new > old else "down"
    return Move(f"{name}:{direction}", {name: new}, f"{name} {_fmt(old)} -> {_fmt(new)}", rationale)


def _set(name, values, new, rationale):
    old = values.get(name)
    if old is None or old == new:
        return None
    direction = "up" if (isinstance(old, (int, float)) and isinstance(new, (int, float)) and new > old) else "down"
    return Move(f"{name}:{direction}", {name: new}, f"{name} {_fmt(old)} -> {_fmt(new)}", rationale)


def constant_moves(values: dict, profile: dict) -> list[list[Move]]:
    """Candidate moves in tiers of prior promise; within a tier the order is shuffled by seed."""
    seq = profile.get("seq_len", 256)
    lr = "the learning rate sets how far each of the few steps in the budget can go"
    tiers = [
        [_scaled("MATRIX_LR", values, 2.0, lr, "up"), _scaled("MATRIX_LR", values, 0.5, lr, "down"),
         _scaled("EMBED_LR", values, 2.0, lr, "up"), _scaled("UNEMBED_LR", values, 2.0, lr, "up"),
         _set("WARMDOWN_FRAC", values, 0.6, "a longer warm-down often helps short runs"),
         _set("WARMDOWN_FRAC", values, 0.2, "a shorter warm-down keeps the learning rate high for longer")],
        [_scaled("MATRIX_LR", values, 1.5, lr, "up"), _scaled("UNEMBED_LR", values, 0.5, lr, "down"),
         _scaled("EMBED_LR", values, 0.5, lr, "down"),
         _set("FINAL_LR_FRAC", values, 0.1, "ending above zero keeps learning to the last step"),
         _set("MUON_MOMENTUM", values, 0.9, "less momentum reacts faster in a short run"),
         _set("LOGIT_SOFTCAP", values, 30.0, "a looser cap lets confident predictions through"),
         _set("LOGIT_SOFTCAP", values, 10.0, "a tighter cap regularizes the logits")],
        [_scaled("DEPTH", values, 1.0 + 1.0 / max(values.get("DEPTH", 4), 1), "one more block: capacity against speed", "up", integer=True),
         _scaled("DEPTH", values, 1.0 - 1.0 / max(values.get("DEPTH", 4), 1), "one block fewer: more steps in the budget", "down", minimum=1, integer=True),
         _set("MLP_RATIO", values, 3, "a narrower MLP trades capacity for steps"),
         _set("HEAD_DIM", values, 32, "more, smaller heads"),
         _set("WARMUP_FRAC", values, 0.05, "a short warm-up can steady the first steps"),
         _set("ADAM_BETAS", values, (0.9, 0.95), "smoother Adam statistics for the embeddings"),
         _set("ROPE_BASE", values, 1000.0, "a smaller RoPE base suits short contexts")],
    ]
    dim, head = values.get("MODEL_DIM"), values.get("HEAD_DIM")
    if isinstance(dim, int) and isinstance(head, int) and head > 0:
        wider = ((int(dim * 1.5) + head - 1) // head) * head
        narrower = max(head, (int(dim * 0.75) // head) * head)
        tiers[2].append(_set("MODEL_DIM", values, wider, "a wider model learns more per token"))
        tiers[2].append(_set("MODEL_DIM", values, narrower, "a narrower model takes more steps"))
    device_batch, total = values.get("DEVICE_BATCH"), values.get("TOTAL_BATCH")
    if isinstance(device_batch, int) and isinstance(total, int) and device_batch >= 2:
        half = Move("BATCH:down", {"DEVICE_BATCH": device_batch // 2, "TOTAL_BATCH": total // 2},
                    f"batch {total} -> {total // 2} tokens", "smaller batches: twice the steps in the budget")
        if total // 2 >= (device_batch // 2) * seq:
            tiers.insert(0, [half])  # a fixed time budget rewards more steps: the first thing to try
        tiers[2].append(Move("BATCH:up", {"TOTAL_BATCH": total * 2}, f"batch {total} -> {total * 2} tokens (accumulated)",
                             "larger batches: less gradient noise per step"))
    return [[m for m in tier if m is not None] for tier in tiers]


# -- structural switches -------------------------------------------------------------------


class _Switch(ast.NodeTransformer):
    def __init__(self, name):
        self.name, self.applied = name, False

    def visit_Call(self, node):
        self.generic_visit(node)
        func = node.func
        if self.name == "gelu" and isinstance(func, ast.Attribute) and func.attr == "square":
            inner = func.value
            if isinstance(inner, ast.Call) and ast.unparse(inner.func) in ("F.relu", "torch.relu"):
                self.applied = True
                return ast.Call(func=ast.parse("F.gelu", mode="eval").body, args=inner.args, keywords=[])
        if self.name in ("no_qk_norm", "no_embed_norm") and isinstance(func, ast.Name) and func.id == "norm" and node.args:
            arg = node.args[0]
            text = ast.unparse(arg)
            if self.name == "no_qk_norm" and text.startswith("apply_rotary("):
                self.applied = True
                return arg
            if self.name == "no_embed_norm" and text.startswith("self.wte("):
                self.applied = True
                return arg
        return node


SWITCHES = {
    "gelu": ("MLP activation ReLU² -> GELU", "a smoother activation may train faster at this size"),
    "no_qk_norm": ("drop QK-norm", "fewer normalizations: faster steps, if attention stays stable"),
    "no_embed_norm": ("drop the norm after the embedding", "simpler input path; the blocks normalize anyway"),
}


def apply_move(source: str, move: Move) -> str | None:
    tree = ast.parse(source)
    if move.transform:
        switch = _Switch(move.transform)
        tree = switch.visit(tree)
        if not switch.applied:
            return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in move.changes:
                node.value = ast.parse(repr(move.changes[name]), mode="eval").body
    return _render(source, tree)


def _render(original: str, tree: ast.Module) -> str:
    """Rewrite only the innermost statements that changed, so comments and layout elsewhere survive."""
    lines = original.splitlines(keepends=True)
    edits: list[tuple[ast.stmt, ast.stmt]] = []
    _changed_statements(ast.parse(original).body, tree.body, edits)
    for old, new in sorted(edits, key=lambda pair: pair[0].lineno, reverse=True):
        first, last = lines[old.lineno - 1], lines[old.end_lineno - 1]
        indent = " " * old.col_offset
        body = "\n".join(indent + line if i else line for i, line in enumerate(ast.unparse(new).splitlines()))
        text = first[:old.col_offset] + body
        if old.lineno == old.end_lineno and "#" in last and _comment_start(last):
            column = last.index("#")  # keep the comment, aligned where it was when it fits
            text = text.ljust(column) if len(text) < column - 1 else text + "  "
            text += last[column:].rstrip("\n")
        lines[old.lineno - 1:old.end_lineno] = [text + "\n"]
    return "".join(lines)


COMPOUND = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef, ast.If, ast.For, ast.While, ast.With)


def _changed_statements(old_body: list, new_body: list, edits: list) -> None:
    """Pair up statements; descend into compound ones whose header is unchanged."""
    for old, new in zip(old_body, new_body):
        if ast.dump(old) == ast.dump(new):
            continue
        if type(old) is type(new) and isinstance(old, COMPOUND) and _header(old) == _header(new) \
                and len(old.body) == len(new.body) and len(getattr(old, "orelse", [])) == len(getattr(new, "orelse", [])):
            _changed_statements(old.body, new.body, edits)
            _changed_statements(getattr(old, "orelse", []), getattr(new, "orelse", []), edits)
        else:
            edits.append((old, new))


def _header(node: ast.AST) -> str:
    fields = {k: v for k, v in ast.iter_fields(node) if k not in ("body", "orelse")}
    return repr({k: ast.dump(v) if isinstance(v, ast.AST) else
                 [ast.dump(x) if isinstance(x, ast.AST) else x for x in v] if isinstance(v, list) else v
                 for k, v in fields.items()})


def _comment_start(line: str) -> bool:
    """True when the line's '#' starts a comment rather than sitting inside a string."""
    code = line[:line.index("#")]
    return code.count('"') % 2 == 0 and code.count("'") % 2 == 0


def model_cost(values: dict) -> float:
    """Rough compute per token of the blocks: grows with depth x width^2 x (attention + MLP)."""
    depth, dim, ratio = values.get("DEPTH", 1), values.get("MODEL_DIM", 1), values.get("MLP_RATIO", 4)
    try:
        return float(depth) * float(dim) ** 2 * (4 + 2 * float(ratio))
    except (TypeError, ValueError):
        return 0.0


class HeuristicAgent(Agent):
    name = "heuristic"
    label = "heuristic baseline"
    model = None

    def __init__(self, seed: int = 0, max_cost_factor: float = 3.0, **_ignored):
        self.seed = seed
        self.max_cost_factor = max_cost_factor
        self.issued: set[str] = set()   # proposed this session: some may be running, not yet in the history

    def candidates(self, context: Context) -> list[Move]:
        source = context.files[TRAIN_FILE]
        values = constants(ast.parse(source), context.profile)
        rng = random.Random(self.seed)
        ordered: list[Move] = []
        for tier in constant_moves(values, context.profile):
            rng.shuffle(tier)
            ordered += tier
        switches = [Move(f"switch:{name}", {}, text, why, transform=name) for name, (text, why) in SWITCHES.items()]
        rng.shuffle(switches)
        ordered[6:6] = switches[:1]
        ordered += switches[1:]
        # Push further along a direction that was just kept.
        last_keep = next((r for r in reversed(context.history) if r.get("status") == "keep"
                          and r.get("role") == "experiment" and r.get("move")), None)
        if last_keep:
            again = [m for m in ordered if m.key == last_keep["move"]]
            ordered = again + [m for m in ordered if m.key != last_keep["move"]]
        return ordered

    def propose(self, context: Context) -> Proposal:
        source = context.files.get(TRAIN_FILE)
        if source is None:
            raise ProposalError(f"the heuristic agent edits {TRAIN_FILE}, which this lab does not allow")
        tried = {r.get("fingerprint") for r in context.history if r.get("fingerprint")
                 and r.get("status") != "interrupted" and r.get("kind") != "interrupted"}
        tried.add(fingerprint(source))
        tried |= self.issued
        baseline_values = self._baseline_values(context)
        for move in self.candidates(context):
            new_source = apply_move(source, move)
            if new_source is None:
                continue
            if fingerprint(new_source) in tried:
                continue
            values = constants(ast.parse(new_source), context.profile)
            if baseline_values and model_cost(values) > self.max_cost_factor * model_cost(baseline_values):
                continue  # beyond what this hardware can train usefully in the budget
            if values.get("DEVICE_BATCH", 0) > 2 * context.profile.get("device_batch", 10**9):
                continue
            self.issued.add(fingerprint(new_source))
            return Proposal({TRAIN_FILE: new_source}, move.description, move.rationale,
                            meta={"move": move.key})
        raise ProposalError("the heuristic agent has tried every change in its catalogue from this point")

    def _baseline_values(self, context: Context) -> dict:
        baseline = context.baseline_files.get(TRAIN_FILE)
        return constants(ast.parse(baseline), context.profile) if baseline else {}

    def reflect(self, context: Context, row: dict) -> str:
        status, description = row.get("status"), row.get("description", "")
        if status == "keep":
            return f"- kept: {description} (gain {(row.get('judge') or {}).get('gain') or 0:+.4f})"
        if status == "discard":
            return f"- no gain: {description}"
        if status in ("crash", "interrupted"):
            return f"- crashed ({row.get('kind')}): {description}"
        return ""
