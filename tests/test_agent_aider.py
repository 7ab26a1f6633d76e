"""aider-chat, the real CLI from its own virtual environment, as the command agent on a loopback server.

scripts/test.sh creates .venv-aider (aider's pins clash with ours); without it these tests fail and
say how to make it. Nothing here leaves the machine: the model is the scripted server, and the
recipe's flags and environment keep aider from checking for updates, sending analytics or
fetching model prices.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch_nb.agents.base import ProposalError
from autoresearch_nb.agents.command import CommandAgent
from autoresearch_nb.lab.lab import Lab
from servers import TRAIN_PY, OpenAIServer, chat_reply, git, make_lab, openai_error

REPO = Path(__file__).resolve().parent.parent
AIDER = Path(os.environ.get("AUTORESEARCH_AIDER") or REPO / ".venv-aider" / "bin" / "aider")
MODEL = "openai/test-model"
# The recipe in docs/agents.md, flag for flag (test_the_readme_recipe_is_this_one checks it is there).
AIDER_FLAGS = ("--edit-format diff --message-file {prompt_file} --yes-always --no-auto-commits "
               "--no-dirty-commits --no-gitignore --map-tokens 0 --no-check-update "
               "--no-show-release-notes --no-analytics --no-show-model-warnings --no-pretty "
               "--no-fancy-input --no-detect-urls "
               "nanochat/train.py --read nanochat/prepare.py --read program.md")


@pytest.fixture(scope="module")
def aider() -> Path:
    if not AIDER.exists():  # fail, not skip: CI must run the real CLI
        pytest.fail(f"aider is not installed at {AIDER}: `bash scripts/test.sh` makes .venv-aider "
                    "(or: python3 -m venv .venv-aider && .venv-aider/bin/pip install aider-chat==0.86.2)")
    return AIDER


def aider_command(aider: Path, server: OpenAIServer, tmp_path: Path) -> str:
    """The recipe in docs/agents.md pointed at the loopback server, with a home of its own for aider's files."""
    metadata = tmp_path / "aider-models.json"
    metadata.write_text(json.dumps({MODEL: {
        "max_input_tokens": 32768, "max_output_tokens": 4096, "input_cost_per_token": 0.0,
        "output_cost_per_token": 0.0, "litellm_provider": "openai", "mode": "chat"}}))
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {"HOME": home, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "OPENAI_API_BASE": f"{server.url}/v1", "OPENAI_API_KEY": "local"}
    assignments = " ".join(f"{key}={shlex.quote(str(value))}" for key, value in env.items())
    return (f"{assignments} {shlex.quote(str(aider))} --model {MODEL} "
            f"--model-metadata-file {shlex.quote(str(metadata))} {AIDER_FLAGS}")


def edit_reply(search: str, replace: str, words: str) -> dict:
    """A reply in aider's diff edit format: some words, then one SEARCH/REPLACE block."""
    return chat_reply(content=f"{words}\n\nnanochat/train.py\n```python\n<<<<<<< SEARCH\n{search}\n"
                              f"=======\n{replace}\n>>>>>>> REPLACE\n```\n")


def user_texts(request: dict) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"
            and isinstance(m["content"], str)]


def test_the_readme_recipe_is_this_one():
    readme = " ".join((REPO / "docs" / "agents.md").read_text().replace("\\\n", " ").split())
    assert " ".join(AIDER_FLAGS.split()) in readme


def test_aider_edits_the_scratch_copy_and_its_side_files_are_listed(aider, tmp_path):
    lab = tmp_path / "lab"
    context = make_lab(lab)
    head = git(lab, "rev-parse", "HEAD").strip()
    reply = edit_reply("LEARNING_RATE = 0.02", "LEARNING_RATE = 0.03",
                       "I will raise the learning rate.\n\nDESCRIPTION: LEARNING_RATE 0.02 -> 0.03\n"
                       "RATIONALE: the warmup is short, so a higher peak pays off")
    with OpenAIServer([reply]) as server:
        agent = CommandAgent(aider_command(aider, server, tmp_path), timeout=120)
        proposal = agent.propose(context)
    assert agent.label == "command: aider"
    assert proposal.files == {
        "nanochat/train.py": TRAIN_PY.replace("LEARNING_RATE = 0.02", "LEARNING_RATE = 0.03")}
    assert proposal.description == "LEARNING_RATE 0.02 -> 0.03"
    assert proposal.rationale == "the warmup is short, so a higher peak pays off"
    assert ".aider.chat.history.md" in proposal.meta["side_files"]
    # One request for one proposal: the prompt went in as one message, not line by line.
    assert len(server.requests) == 1
    texts = user_texts(server.requests[0]["body"])
    read_only = next(t for t in texts if t.startswith("Here are some READ ONLY files"))
    editable = next(t for t in texts if "added these files to the chat" in t)
    assert "nanochat/prepare.py" in read_only and "program.md" in read_only
    assert "nanochat/train.py" in editable and "nanochat/prepare.py" not in editable
    assert "submit_experiment" not in " ".join(texts)
    assert git(lab, "status", "--porcelain", "-uall", "--ignored") == ""
    assert git(lab, "rev-parse", "HEAD").strip() == head


def test_an_api_outage_is_a_fatal_rejection_with_aiders_words(aider, tmp_path):
    context = make_lab(tmp_path / "lab")
    with OpenAIServer([], default=openai_error(500, "upstream is down")) as server:
        # aider retries a 500 for about 80 s before giving up; the time limit ends it sooner, and leaves
        # aider's own start-up (several seconds on a loaded machine) time to reach the server twice.
        agent = CommandAgent(aider_command(aider, server, tmp_path), timeout=45)
        with pytest.raises(ProposalError) as caught:
            agent.propose(context)
    assert caught.value.fatal
    assert "API looks down" in caught.value.reason
    assert "The API provider's servers are down or overloaded." in caught.value.reason
    assert len(server.requests) >= 2


@pytest.mark.slow
def test_a_run_with_aider_records_what_changed_not_what_aider_printed(aider, tiny_lab, tmp_path):
    train = (tiny_lab / "nanochat" / "train.py").read_text()
    line = next(l for l in train.splitlines() if l.startswith("WARMDOWN_FRAC = 0.4"))
    reply = edit_reply(line, line.replace("0.4", "0.2", 1), "A shorter warmdown leaves more steps at the peak rate.")
    with OpenAIServer([reply]) as server:
        done = subprocess.run(
            [sys.executable, "-m", "autoresearch_nb", "run", "--lab", str(tiny_lab), "--agent", "command",
             "--command", aider_command(aider, server, tmp_path), "--agent-timeout", "120",
             "--budget", "2", "--max-experiments", "2", "--policy", "greedy", "--tag", "aider"],
            capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "agent command: aider," in done.stdout
    lab = Lab.open(tiny_lab)
    row = next(r for r in lab.rows() if r["role"] == "experiment" and r["status"] != "disturbed")
    assert row["description"] == "WARMDOWN_FRAC 0.4 -> 0.2"
    assert row["rationale"] == "" and ".aider.chat.history.md" in row["side_files"]
    assert any("\tWARMDOWN_FRAC 0.4 -> 0.2" in line for line in lab.results_path.read_text().splitlines()[1:])
    journal = lab.journal_path.read_text()
    assert "WARMDOWN_FRAC 0.4 -> 0.2" in journal
    for noise in ("Applied edit", "SEARCH", "Aider v", "hypothesis"):
        assert noise not in journal
    assert lab.dirty_files() == []
