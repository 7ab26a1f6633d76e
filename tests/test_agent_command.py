"""The command agent running small real "CLIs" (python scripts) in a real git lab."""
from __future__ import annotations

import shlex
import sys
import textwrap
from pathlib import Path

import pytest

from autoresearch_nb.agents.base import ProposalError
from autoresearch_nb.agents.command import CommandAgent
from autoresearch_nb.errors import LabError
from servers import PREPARE_PY, TRAIN_PY, git, make_lab


def cli(tmp_path: Path, body: str) -> str:
    """A fake coding-agent CLI: a python script run with the lab as its working directory."""
    script = tmp_path / "fake_cli.py"
    script.write_text("import os, sys, pathlib, subprocess\n" + textwrap.dedent(body))
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"


def assert_clean(lab: Path, head: str) -> None:
    assert git(lab, "status", "--porcelain", "-uall") == ""
    assert git(lab, "rev-parse", "HEAD").strip() == head
    assert (lab / "nanochat" / "train.py").read_text() == TRAIN_PY
    assert (lab / "nanochat" / "prepare.py").read_text() == PREPARE_PY


def test_allowed_edit_becomes_the_proposal_and_the_tree_is_restored(tmp_path):
    lab = tmp_path / "lab"
    context = make_lab(lab, history=[{"index": 0, "status": "keep", "val_bpb": 1.4,
                                      "description": "baseline", "role": "baseline"}])
    head = git(lab, "rev-parse", "HEAD").strip()
    command = cli(tmp_path, """
        prompt = sys.stdin.read()
        assert "Lower val_bpb within the budget" in prompt, "charter on stdin"
        assert pathlib.Path(os.environ["AUTORESEARCH_PROMPT_FILE"]).read_text() == prompt
        path = pathlib.Path("nanochat/train.py")
        path.write_text(path.read_text().replace("LEARNING_RATE = 0.02", "LEARNING_RATE = 0.04"))
        print("Thinking about the schedule...")
        print("raise the learning rate to 0.04")
        print("")
    """)
    proposal = CommandAgent(command, timeout=60).propose(context)
    assert proposal.files == {
        "nanochat/train.py": TRAIN_PY.replace("LEARNING_RATE = 0.02", "LEARNING_RATE = 0.04")}
    assert proposal.description == "raise the learning rate to 0.04"
    assert proposal.usage["cost_usd"] == 0.0
    assert_clean(lab, head)


def test_forbidden_edits_are_reverted_and_the_proposal_rejected(tmp_path):
    lab = tmp_path / "lab"
    context = make_lab(lab)
    head = git(lab, "rev-parse", "HEAD").strip()
    command = cli(tmp_path, """
        pathlib.Path("nanochat/train.py").write_text("DEPTH = 99\\n")
        pathlib.Path("nanochat/prepare.py").write_text("EVAL_TOKENS = 1\\n")
        pathlib.Path("extra/deep").mkdir(parents=True)
        pathlib.Path("extra/deep/notes.txt").write_text("hi")
        print("made it faster")
    """)
    with pytest.raises(ProposalError) as caught:
        CommandAgent(command, timeout=60).propose(context)
    assert "nanochat/prepare.py" in caught.value.reason
    assert "extra/deep/notes.txt" in caught.value.reason
    assert not caught.value.fatal
    assert not (lab / "extra").exists()
    assert_clean(lab, head)


def test_a_cli_that_commits_still_yields_a_proposal_and_the_branch_is_put_back(tmp_path):
    lab = tmp_path / "lab"
    context = make_lab(lab)
    head = git(lab, "rev-parse", "HEAD").strip()
    command = cli(tmp_path, """
        path = pathlib.Path("nanochat/train.py")
        path.write_text(path.read_text().replace("DEPTH = 4", "DEPTH = 6"))
        subprocess.run(["git", "commit", "-qam", "deeper"], check=True)
    """)
    proposal = CommandAgent(command, timeout=60).propose(context)
    assert proposal.files["nanochat/train.py"] == TRAIN_PY.replace("DEPTH = 4", "DEPTH = 6")
    assert proposal.description == "command agent: nanochat/train.py"
    assert_clean(lab, head)


def test_prompt_file_placeholder_and_tampering_with_harness_state(tmp_path):
    lab = tmp_path / "lab"
    context = make_lab(lab)
    state = lab / ".autoresearch"
    state.mkdir()
    (state / "ledger.jsonl").write_text('{"index": 0}\n')
    (lab / "results.tsv").write_text("commit\tval_bpb\n")
    head = git(lab, "rev-parse", "HEAD").strip()
    command = cli(tmp_path, """
        assert "Your task" in pathlib.Path(sys.argv[1]).read_text()
        path = pathlib.Path("nanochat/train.py")
        path.write_text(path.read_text().replace("DEPTH = 4", "DEPTH = 2"))
        with open(".autoresearch/ledger.jsonl", "a") as ledger:
            ledger.write('{"index": 1, "val_bpb": 0.1}\\n')
    """) + " {prompt_file}"
    with pytest.raises(ProposalError) as caught:
        CommandAgent(command, timeout=60).propose(context)
    assert ".autoresearch/ledger.jsonl" in caught.value.reason
    assert (state / "ledger.jsonl").read_text() == '{"index": 0}\n'
    assert (lab / "results.tsv").read_text() == "commit\tval_bpb\n"
    assert_clean(lab, head)


def test_time_limit_kills_the_process_group_and_reverts(tmp_path):
    lab = tmp_path / "lab"
    context = make_lab(lab)
    head = git(lab, "rev-parse", "HEAD").strip()
    pid_file = tmp_path / "child.pid"
    command = cli(tmp_path, f"""
        pathlib.Path("nanochat/train.py").write_text("half-written")
        child = subprocess.Popen(["sleep", "120"])
        pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))
        child.wait()
    """)
    with pytest.raises(ProposalError, match="limit"):
        CommandAgent(command, timeout=1.5).propose(context)
    assert not _running(int(pid_file.read_text())), "the CLI's children die with it"
    assert_clean(lab, head)


def _running(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        state = next(line for line in status.read_text().splitlines() if line.startswith("State"))
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "Z" not in state.split()[1]


def test_no_change_failure_and_missing_cli(tmp_path):
    lab = tmp_path / "lab"
    context = make_lab(lab)
    with pytest.raises(ProposalError, match="none of the allowed files"):
        CommandAgent(cli(tmp_path, "print('nothing to do')\n"), timeout=60).propose(context)
    failing = cli(tmp_path, "sys.stderr.write('quota exceeded\\n'); sys.exit(3)\n")
    with pytest.raises(ProposalError, match="status 3: quota exceeded") as caught:
        CommandAgent(failing, timeout=60).propose(context)
    assert not caught.value.fatal
    with pytest.raises(ProposalError) as caught:
        CommandAgent("no-such-coding-cli -p", timeout=60).propose(context)
    assert caught.value.fatal and "127" in caught.value.reason
    with pytest.raises(LabError, match="--command"):
        CommandAgent("  ")
