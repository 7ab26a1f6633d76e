"""describe_change: one line from the code itself, and the loop using it when an agent gives none."""
from __future__ import annotations

import textwrap

from autoresearch_nb.engine.describe import describe_change
from test_loop import ScriptedAgent, git, run_loop, score, scored_lab

TRAIN = "nanochat/train.py"
BASE = textwrap.dedent('''\
    """A model."""
    import torch

    MATRIX_LR = 0.02                     # Muon
    WARMDOWN_FRAC = 0.4
    ADAM_BETAS = (0.8, 0.95)


    class MLP:
        ratio = 4

        def __init__(self, dim):
            self.dim = dim

        def forward(self, x):
            return x.relu().square()


    class GPT:
        def __init__(self, depth):
            self.depth = depth


    def schedule(step):
        return MATRIX_LR * step


    if __name__ == "__main__":
        print(schedule(1))
    ''')


def described(new: str, old: str = BASE) -> str:
    return describe_change({TRAIN: old}, {TRAIN: new})


def test_constants_say_old_and_new_value():
    new = BASE.replace("MATRIX_LR = 0.02 ", "MATRIX_LR = 0.03 ").replace(
        "WARMDOWN_FRAC = 0.4", "WARMDOWN_FRAC = 0.2")
    assert described(new) == "MATRIX_LR 0.02 -> 0.03; WARMDOWN_FRAC 0.4 -> 0.2"
    new = BASE.replace("ADAM_BETAS = (0.8, 0.95)", "ADAM_BETAS = (0.9,\n              0.99)\nEPS = 1e-8")
    assert described(new) == "ADAM_BETAS (0.8, 0.95) -> (0.9, 0.99); added EPS = 1e-8"
    assert described(BASE.replace("WARMDOWN_FRAC = 0.4\n", "")) == "removed WARMDOWN_FRAC"


def test_functions_and_methods_touched_are_named():
    new = BASE.replace("x.relu().square()", "x.gelu()").replace(
        "self.depth = depth", "self.depth = depth * 2")
    assert described(new) == "changed MLP.forward, GPT.__init__"
    assert described(BASE.replace("ratio = 4", "ratio = 3")) == "changed MLP"
    new = BASE.replace("class GPT:", "def norm(x):\n    return x\n\n\nclass GPT:")
    assert described(new) == "added norm"
    assert described(BASE, old=new) == "removed norm"
    assert described(BASE.replace("print(schedule(1))", "print(schedule(2))")) == \
        "changed top-level code"


def test_what_the_code_cannot_say_is_not_guessed():
    assert described(BASE.replace("# Muon", "# Muon, for matrices")) == \
        "comments or formatting in train.py"
    assert described(BASE + "def broken(:\n") == "edited train.py (it does not parse)"
    assert describe_change({TRAIN: BASE}, {TRAIN: BASE}) == "no change"
    assert describe_change({}, {"notes/plan.md": "hi"}) == "created plan.md"


def test_several_files_and_the_length_bound():
    both = describe_change({TRAIN: BASE, "nanochat/model.py": "DEPTH = 4\n"},
                           {TRAIN: BASE.replace("WARMDOWN_FRAC = 0.4", "WARMDOWN_FRAC = 0.3"),
                            "nanochat/model.py": "DEPTH = 6\n"})
    assert both == "train.py: WARMDOWN_FRAC 0.4 -> 0.3; model.py: DEPTH 4 -> 6"
    many_old = "".join(f"CONSTANT_NUMBER_{i} = {i}\n" for i in range(30))
    many_new = "".join(f"CONSTANT_NUMBER_{i} = {i + 1}\n" for i in range(30))
    line = described(many_new, old=many_old)
    assert len(line) <= 160 and line.startswith("CONSTANT_NUMBER_0 0 -> 1; ")
    assert line.endswith(" more") and "; and " in line
    long_value = "SCHEDULE = [" + ", ".join(str(i) for i in range(50)) + "]\n"
    assert described(long_value, old="SCHEDULE = []\n") == "SCHEDULE [] -> [0, 1, 2, 3, 4, 5, 6, 7, 8, 9,…"


def test_the_loop_describes_a_proposal_that_came_without_a_description(tmp_path):
    lab = scored_lab(tmp_path / "lab")
    agent = ScriptedAgent([(score(0.9), ""), (score(0.8), "  \n "), (score(0.7), "my own words")])
    run_loop(lab, agent)
    rows = lab.rows()
    assert [r["description"] for r in rows[1:4]] == [
        "SCORE 1.0 -> 0.9", "SCORE 0.9 -> 0.8", "my own words"]
    assert "SCORE 1.0 -> 0.9" in lab.results_path.read_text()
    assert git(lab.root, "log", "-1", "--format=%s", rows[2]["commit"]) == \
        "experiment: SCORE 0.9 -> 0.8"
    assert "## 2: keep (0.800000) SCORE 0.9 -> 0.8" in lab.journal_path.read_text()
