"""The offline heuristic agent: deterministic, never repeats itself, follows what was kept, stays in size."""
from __future__ import annotations

import ast
import difflib
import functools
from pathlib import Path

import pytest

from autoresearch_nb.agents.base import Context, ProposalError
from autoresearch_nb.agents.heuristic import TRAIN_FILE, HeuristicAgent, constants, fingerprint, model_cost
from autoresearch_nb.run.audit import audit_source

REPO = Path(__file__).resolve().parent.parent
TRAIN = (REPO / "nanochat" / "train.py").read_text()
PREPARE = (REPO / "nanochat" / "prepare.py").read_text()
FIXED = {n.name for n in ast.parse(PREPARE).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
# The facts of the tiny profile, as the loop hands them over.
PROFILE = {"name": "tiny", "device": "cpu", "time_budget": 5, "seq_len": 64, "vocab_size": 512,
           "eval_tokens": 4096, "depth": 1, "n_embd": 32, "device_batch": 8, "total_batch": 512,
           "dtype": "float32"}


def context(source: str = TRAIN, history: list[dict] | None = None, index: int = 1) -> Context:
    return Context(index=index, charter="# lower val_bpb", files={TRAIN_FILE: source}, allowed=[TRAIN_FILE],
                   locked=["nanochat/prepare.py"], history=history or [], best=1.0, baseline=1.0,
                   profile=PROFILE, budget=5, baseline_files={TRAIN_FILE: TRAIN})


def walk(seed: int, steps: int, keep=lambda i: False, cap: float = 3.0) -> list[tuple]:
    """Drive the agent as the loop would: each proposal is recorded; kept ones become the code."""
    agent, source = HeuristicAgent(seed=seed, max_cost_factor=cap), TRAIN
    history = [{"index": 0, "role": "baseline", "status": "keep", "fingerprint": fingerprint(TRAIN)}]
    out = []
    for i in range(1, steps + 1):
        try:
            proposal = agent.propose(context(source, history, i))
        except ProposalError as error:
            out.append(("exhausted", error.reason, None))
            break
        new = proposal.files[TRAIN_FILE]
        status = "keep" if keep(i) else "discard"
        history.append({"index": i, "role": "experiment", "status": status, "fingerprint": fingerprint(new),
                        "move": proposal.meta.get("move"), "description": proposal.description})
        out.append((proposal, new, source))
        if status == "keep":
            source = new
    return out


@functools.cache
def exhaustive(cap: float = 3.0) -> list[tuple]:
    """Every proposal from the baseline when nothing is ever kept (about 25; shared between tests)."""
    return walk(seed=0, steps=60, cap=cap)


def test_the_same_seed_proposes_the_same_change():
    first = HeuristicAgent(seed=3).propose(context())
    again = HeuristicAgent(seed=3).propose(context())
    assert first.files == again.files and first.description == again.description


def test_other_seeds_explore_in_another_order():
    orders = {tuple(p.description for p, _, _ in walk(seed, 6)) for seed in (0, 1, 2)}
    assert len(orders) > 1


def test_it_never_proposes_a_change_it_has_tried():
    steps = exhaustive()
    proposals = [s for s in steps if s[0] != "exhausted"]
    prints = [fingerprint(new) for _, new, _ in proposals]
    assert len(prints) == len(set(prints)) and fingerprint(TRAIN) not in prints
    assert len(proposals) >= 15  # a real catalogue, not two moves
    assert steps[-1][0] == "exhausted" and "tried every change" in steps[-1][1]


def comments(source: str) -> list[str]:
    return sorted(line[line.index("#"):] for line in source.splitlines() if "#" in line)


def proposals_and_sources() -> list[tuple]:
    return [s for s in exhaustive() + walk(seed=1, steps=8, keep=lambda i: i % 2 == 0) if s[0] != "exhausted"]


def test_every_proposal_compiles_and_passes_the_audit():
    for proposal, new, _ in proposals_and_sources():
        compile(new, TRAIN_FILE, "exec")
        assert audit_source(new, "prepare", FIXED) == [], proposal.description


def test_constant_edits_change_only_their_own_line_and_keep_its_comment():
    for proposal, new, old in proposals_and_sources():
        if proposal.meta["move"].startswith("switch:"):
            continue
        changed = [(a, b) for a, b in zip(old.splitlines(), new.splitlines()) if a != b]
        assert len(old.splitlines()) == len(new.splitlines())
        assert 1 <= len(changed) <= 2, (proposal.description, changed)
        for before, after in changed:
            if "#" in before:
                assert after.endswith(before[before.index("#"):]), (before, after)


def test_structural_switches_leave_the_rest_of_the_file_as_it_was():
    # The diff a person reads in the morning should be the idea, not a reformatted class.
    for proposal, new, old in proposals_and_sources():
        if not proposal.meta["move"].startswith("switch:"):
            continue
        assert comments(new) == comments(old), proposal.description
        opcodes = difflib.SequenceMatcher(None, old.splitlines(), new.splitlines()).get_opcodes()
        edits = [op for op in opcodes if op[0] != "equal"]
        assert [op[0] for op in edits] == ["replace"], (proposal.description, edits)
        assert edits[0][2] - edits[0][1] == 1, (proposal.description, edits)


def test_it_pushes_further_along_a_kept_direction():
    agent = HeuristicAgent(seed=0)
    history = [{"index": 0, "role": "baseline", "status": "keep", "fingerprint": fingerprint(TRAIN)}]
    scaled = next(p for p, _, _ in exhaustive() if p.meta["move"] == "EMBED_LR:up")  # 0.3 -> 0.6
    kept = scaled.files[TRAIN_FILE]
    history.append({"index": 1, "role": "experiment", "status": "keep", "fingerprint": fingerprint(kept),
                    "move": "EMBED_LR:up"})
    second = agent.propose(context(kept, history, 2))
    assert second.meta["move"] == "EMBED_LR:up" and second.description == "EMBED_LR 0.6 -> 1.2"


def test_it_stays_within_what_the_hardware_can_train():
    baseline_cost = model_cost(constants(ast.parse(TRAIN), PROFILE))
    costs = {p.description: model_cost(constants(ast.parse(new), PROFILE)) for p, new, _ in exhaustive()[:-1]}
    assert max(costs.values()) > baseline_cost  # with room, it does try larger models
    capped = walk(seed=0, steps=60, cap=1.0)
    assert capped[-1][0] == "exhausted"
    for proposal, new, _ in capped[:-1]:
        assert model_cost(constants(ast.parse(new), PROFILE)) <= baseline_cost, proposal.description
        assert constants(ast.parse(new), PROFILE)["DEVICE_BATCH"] <= 2 * PROFILE["device_batch"]


def test_structural_switches_edit_the_code_not_just_constants():
    proposals = [(p, new) for p, new, _ in exhaustive()[:-1]]
    gelu = next(new for p, new in proposals if p.description == "MLP activation ReLU² -> GELU")
    assert "F.gelu(self.c_fc(x))" in gelu and "square()" not in gelu
    assert any(p.meta["move"] == "switch:no_qk_norm" for p, _ in proposals)


def test_a_lab_without_train_py_gets_a_clear_refusal():
    ctx = context()
    ctx.files = {"model.py": "x = 1\n"}
    with pytest.raises(ProposalError, match="nanochat/train.py"):
        HeuristicAgent().propose(ctx)
