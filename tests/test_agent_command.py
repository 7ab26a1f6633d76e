"""The command agent running small real "CLIs" (python scripts) in a scratch copy of a real git lab."""
from __future__ import annotations

import shlex
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from autoresearch_nb.agents.base import ProposalError
from autoresearch_nb.agents.cli_output import stated_description
from autoresearch_nb.agents.command import CommandAgent, build_prompt
from autoresearch_nb.agents.scratch_lab import ScratchLab
from autoresearch_nb.engine.describe import describe_change
from autoresearch_nb.errors import LabError
from autoresearch_nb.front.progress import result_line
from servers import PREPARE_PY, TRAIN_PY, git, make_lab
from test_loop import run_loop, scored_lab

REPO = Path(__file__).resolve().parent.parent
# What aider 0.86.2 printed, exit status 0, after retrying a server that answered 500 for 79 s.
AIDER_OUTAGE = """Aider v0.86.2
Model: openai/test-model with diff edit format
litellm.InternalServerError: InternalServerError: OpenAIException - upstream is
down
The API provider's servers are down or overloaded.
Retrying in 16.0 seconds...
litellm.InternalServerError: InternalServerError: OpenAIException - upstream is
down
The API provider's servers are down or overloaded.
"""


def cli(tmp_path: Path, body: str, name: str = "fake_cli.py") -> str:
    """A fake coding-agent CLI: a python script run in the scratch copy of the lab."""
    script = tmp_path / name
    script.write_text("import os, sys, pathlib, subprocess\n" + textwrap.dedent(body))
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"


def assert_untouched(lab: Path, head: str) -> None:
    assert git(lab, "status", "--porcelain", "-uall", "--ignored") == ""
    assert git(lab, "rev-parse", "HEAD").strip() == head
    assert (lab / "nanochat" / "train.py").read_text() == TRAIN_PY
    assert (lab / "nanochat" / "prepare.py").read_text() == PREPARE_PY


def test_the_cli_edits_a_scratch_git_copy_and_its_description_file_is_the_description(tmp_path):
    lab = tmp_path / "lab"
    context = make_lab(lab, history=[{"index": 0, "status": "keep", "val_bpb": 1.4,
                                      "description": "baseline", "role": "baseline"}])
    head = git(lab, "rev-parse", "HEAD").strip()
    command = cli(tmp_path, f"""
        import stat
        prompt = sys.stdin.read()
        assert "Lower val_bpb within the budget" in prompt, "charter on stdin"
        assert pathlib.Path(os.environ["AUTORESEARCH_PROMPT_FILE"]).read_text() == prompt
        assert pathlib.Path.cwd().resolve() != pathlib.Path({str(lab)!r}).resolve()
        tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True)
        assert tracked.stdout.split() == ["nanochat/prepare.py", "nanochat/train.py", "program.md"]
        assert not os.stat("nanochat/prepare.py").st_mode & 0o222, "locked files are read-only"
        assert os.stat("nanochat/train.py").st_mode & stat.S_IWUSR
        path = pathlib.Path("nanochat/train.py")
        path.write_text(path.read_text().replace("LEARNING_RATE = 0.02", "LEARNING_RATE = 0.04"))
        with open(os.environ["AUTORESEARCH_DESCRIPTION_FILE"], "w") as note:
            note.write("raise the learning rate to 0.04\\nwarmup is short, a higher peak should help\\n")
        print("Applied edit to nanochat/train.py")
    """)
    proposal = CommandAgent(command, timeout=60).propose(context)
    assert proposal.files == {
        "nanochat/train.py": TRAIN_PY.replace("LEARNING_RATE = 0.02", "LEARNING_RATE = 0.04")}
    assert proposal.description == "raise the learning rate to 0.04"
    assert proposal.rationale == "warmup is short, a higher peak should help"
    assert proposal.meta == {}
    assert proposal.usage["cost_usd"] == 0.0
    assert_untouched(lab, head)


def test_status_lines_never_become_the_description_the_diff_does(tmp_path):
    context = make_lab(tmp_path / "lab")
    quiet = cli(tmp_path, """
        path = pathlib.Path("nanochat/train.py")
        path.write_text(path.read_text().replace("LEARNING_RATE = 0.02", "LEARNING_RATE = 0.03")
                        .replace("WARMUP_STEPS = 10", "WARMUP_STEPS = 5"))
        print("nanochat/train.py")
        print("<<<<<<< SEARCH")
        print("Applied edit to nanochat/train.py")
        print("Commit a4e1950 chore: tune")
        print("diff>")
    """)
    proposal = CommandAgent(quiet, timeout=60).propose(context)
    assert proposal.description == "" and proposal.rationale == ""
    # The loop then describes the change from the code (loop.py calls the same function).
    assert describe_change(context.files, proposal.files) == \
        "LEARNING_RATE 0.02 -> 0.03; WARMUP_STEPS 10 -> 5"

    marked = cli(tmp_path, """
        path = pathlib.Path("nanochat/train.py")
        path.write_text(path.read_text().replace("DEPTH = 4", "DEPTH = 5"))
        print("**DESCRIPTION:** one more layer")
        print("RATIONALE: the model underfits")
        print("Applied edit to nanochat/train.py")
    """, name="marked.py")
    proposal = CommandAgent(marked, timeout=60).propose(context)
    assert (proposal.description, proposal.rationale) == ("one more layer", "the model underfits")
    # Long statements are cut between words, short enough for results.tsv and the journal.
    long = stated_description("word " * 100 + "\n" + "reason " * 200, "")
    assert len(long[0]) <= 160 and long[0].endswith("word…")
    assert len(long[1]) <= 500 and long[1].endswith("reason…")


def test_side_files_are_discarded_and_listed_and_a_locked_edit_is_refused(tmp_path):
    lab = tmp_path / "lab"
    context = make_lab(lab)
    head = git(lab, "rev-parse", "HEAD").strip()
    messy = cli(tmp_path, """
        path = pathlib.Path("nanochat/train.py")
        path.write_text(path.read_text().replace("DEPTH = 4", "DEPTH = 6"))
        with open(".gitignore", "a") as ignore:
            ignore.write(".aider*\\n")
        pathlib.Path(".aider.chat.history.md").write_text("# aider chat started\\n")
        pathlib.Path(".aider.tags.cache.v4").mkdir()
        pathlib.Path(".aider.tags.cache.v4/cache.db").write_bytes(b"\\0" * 64)
        pathlib.Path(".autoresearch").mkdir()
        pathlib.Path(".autoresearch/ledger.jsonl").write_text('{"index": 1, "val_bpb": 0.1}\\n')
        os.chmod("program.md", 0o644)
        pathlib.Path("program.md").write_text("# my own charter\\n")
    """)
    proposal = CommandAgent(messy, timeout=60).propose(context)
    assert proposal.files == {"nanochat/train.py": TRAIN_PY.replace("DEPTH = 4", "DEPTH = 6")}
    assert proposal.meta["side_files"] == [
        ".aider.chat.history.md", ".aider.tags.cache.v4/cache.db", ".autoresearch/ledger.jsonl",
        ".gitignore", "program.md"]
    assert_untouched(lab, head)

    forger = cli(tmp_path, """
        path = pathlib.Path("nanochat/train.py")
        path.write_text(path.read_text().replace("DEPTH = 4", "DEPTH = 6"))
        os.chmod("nanochat/prepare.py", 0o644)
        pathlib.Path("nanochat/prepare.py").write_text("EVAL_TOKENS = 1\\n")
    """, name="forger.py")
    with pytest.raises(ProposalError) as caught:
        CommandAgent(forger, timeout=60).propose(context)
    assert caught.value.reason.startswith("REFUSED")
    assert "nanochat/prepare.py" in caught.value.reason and not caught.value.fatal
    assert_untouched(lab, head)


def test_a_cli_that_commits_or_deletes(tmp_path):
    lab = tmp_path / "lab"
    context = make_lab(lab)
    head = git(lab, "rev-parse", "HEAD").strip()
    committer = cli(tmp_path, """
        path = pathlib.Path("nanochat/train.py")
        path.write_text(path.read_text().replace("DEPTH = 4", "DEPTH = 6"))
        subprocess.run(["git", "commit", "-qam", "deeper"], check=True)
    """)
    proposal = CommandAgent(committer, timeout=60).propose(context)
    assert proposal.files["nanochat/train.py"] == TRAIN_PY.replace("DEPTH = 4", "DEPTH = 6")
    deleter = cli(tmp_path, "os.remove('nanochat/train.py')\n", name="deleter.py")
    with pytest.raises(ProposalError, match="deleted nanochat/train.py"):
        CommandAgent(deleter, timeout=60).propose(context)
    assert_untouched(lab, head)


def test_prompt_file_and_description_file_placeholders(tmp_path):
    context = make_lab(tmp_path / "lab")
    command = cli(tmp_path, """
        assert sys.stdin.read() == "", "a CLI given the prompt file gets no stdin"
        assert "Your task" in pathlib.Path(sys.argv[1]).read_text()
        path = pathlib.Path("nanochat/train.py")
        path.write_text(path.read_text().replace("DEPTH = 4", "DEPTH = 2"))
        pathlib.Path(sys.argv[2]).write_text("DESCRIPTION: half the depth\\n")
    """) + " {prompt_file} {description_file}"
    proposal = CommandAgent(command, timeout=60).propose(context)
    assert proposal.description == "half the depth"


def test_time_limit_kills_the_process_group(tmp_path):
    lab = tmp_path / "lab"
    context = make_lab(lab)
    head = git(lab, "rev-parse", "HEAD").strip()
    pid_file, helper_file = tmp_path / "child.pid", tmp_path / "helper.pid"
    command = cli(tmp_path, f"""
        pathlib.Path("nanochat/train.py").write_text("half-written")
        child = subprocess.Popen(["sleep", "120"])
        pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))
        # a helper in a session of its own (a language server, say): outside the group, still the CLI's
        helper = subprocess.Popen(["sleep", "120"], start_new_session=True)
        pathlib.Path({str(helper_file)!r}).write_text(str(helper.pid))
        print("thinking hard", flush=True)
        child.wait()
    """)
    # the limit only has to outlast the CLI's start-up (a loaded machine may take seconds), not race it
    with pytest.raises(ProposalError, match="8 s limit") as caught:
        CommandAgent(command, timeout=8).propose(context)
    assert "thinking hard" in caught.value.reason and not caught.value.fatal
    assert not _running(int(pid_file.read_text())), "the CLI's children die with it"
    assert not _running(int(helper_file.read_text())), "a child in its own session dies with the CLI too"
    assert_untouched(lab, head)


def _running(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        state = next(line for line in status.read_text().splitlines() if line.startswith("State"))
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "Z" not in state.split()[1]


def test_no_change_twice_in_a_row_puts_the_output_tail_in_the_reason(tmp_path):
    context = make_lab(tmp_path / "lab")
    agent = CommandAgent(cli(tmp_path, """
        print("Model: local/qwen")
        print("I am not sure what to change; the file looks fine.")
    """), timeout=60)
    with pytest.raises(ProposalError) as first:
        agent.propose(context)
    assert first.value.reason == ("command agent changed none of the allowed files (its last line: "
                                  "I am not sure what to change; the file looks fine.)")
    with pytest.raises(ProposalError) as second:
        agent.propose(context)
    assert "2 times in a row" in second.value.reason
    assert second.value.reason.endswith(
        "Model: local/qwen / I am not sure what to change; the file looks fine.")
    assert not second.value.fatal
    # `autoresearch-nb status` shows it: the row's line keeps the reason's end.
    row = {"index": 3, "status": "rejected", "kind": "agent", "description": "(no proposal)",
           "reason": second.value.reason}
    assert result_line(row, None).endswith("the file looks fine.]")


def test_output_that_reads_like_an_outage_is_fatal_with_the_cli_text(tmp_path):
    context = make_lab(tmp_path / "lab")
    aider_down = cli(tmp_path, f"print({AIDER_OUTAGE!r})\n")
    with pytest.raises(ProposalError) as caught:
        CommandAgent(aider_down, timeout=60).propose(context)
    assert caught.value.fatal
    assert "servers are down or overloaded" in caught.value.reason
    claude_down = cli(tmp_path, """
        print('API Error: 529 {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
        sys.exit(1)
    """, name="claude_down.py")
    with pytest.raises(ProposalError, match="status 1: API Error: 529") as caught:
        CommandAgent(claude_down, timeout=60).propose(context)
    assert caught.value.fatal
    failing = cli(tmp_path, "sys.stderr.write('could not parse the reply\\n'); sys.exit(3)\n",
                  name="failing.py")
    with pytest.raises(ProposalError, match="status 3: could not parse the reply") as caught:
        CommandAgent(failing, timeout=60).propose(context)
    assert not caught.value.fatal
    with pytest.raises(ProposalError) as caught:
        CommandAgent("no-such-coding-cli -p", timeout=60).propose(context)
    assert caught.value.fatal and "127" in caught.value.reason
    with pytest.raises(LabError, match="--command"):
        CommandAgent("  ")


def test_an_outage_stops_the_run_with_the_cli_words(tmp_path):
    lab = scored_lab(tmp_path / "lab")
    agent = CommandAgent(cli(tmp_path, f"print({AIDER_OUTAGE!r})\n"), timeout=60)
    _, reason = run_loop(lab, agent, outage_waits=(0.0, 0.0, 0.0))
    assert reason.startswith("the agent failed 4 times in a row: command agent changed nothing")
    assert "servers are down or overloaded" in reason
    assert [r["status"] for r in lab.rows()] == ["keep"] + ["rejected"] * 4


def test_the_cli_prompt_names_no_tools_and_marks_read_only_files(tmp_path):
    context = make_lab(tmp_path / "lab")
    with ScratchLab(context) as scratch:
        prompt = build_prompt(context, scratch)
    assert "submit_experiment" not in prompt and "str_replace_based_edit_tool" not in prompt
    assert "Files you may edit: nanochat/train.py. Read-only files: nanochat/prepare.py, program.md" \
        in prompt
    assert ".autoresearch-description.txt" in prompt
    # A CLI that echoes its prompt (codex exec does) must not hand us a description by it.
    assert stated_description("", prompt) == ("", "")


def test_the_label_names_the_program():
    assert CommandAgent("HOME=/tmp/aider-home env -u OPENAI_ORG aider --yes-always").label == \
        "command: aider"
    assert CommandAgent("claude -p").label == "command: claude"
    assert CommandAgent("/opt/bin/codex exec -").label == "command: codex"


# -- stand-ins for Claude Code and Codex: the command lines in docs/agents.md, run against scripts that
#    behave like them (prompt on stdin, edit, status lines, their own side files).

CLAUDE_RECIPE = "claude -p --permission-mode acceptEdits --disallowedTools Bash,WebFetch,WebSearch"
CODEX_RECIPE = "codex exec --sandbox workspace-write -"


def stand_in(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\nimport os, sys, pathlib\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_claude_code_recipe_with_a_stand_in(tmp_path, monkeypatch):
    assert CLAUDE_RECIPE in (REPO / "docs" / "agents.md").read_text()
    lab = tmp_path / "lab"
    context = make_lab(lab)
    head = git(lab, "rev-parse", "HEAD").strip()
    stand_in(tmp_path / "bin", "claude", """
        args = sys.argv[1:]
        assert args[0] == "-p" and args[args.index("--permission-mode") + 1] == "acceptEdits"
        prompt = sys.stdin.read()  # claude -p takes the prompt on stdin
        assert "Files you may edit: nanochat/train.py" in prompt
        path = pathlib.Path("nanochat/train.py")
        path.write_text(path.read_text().replace("LEARNING_RATE = 0.02", "LEARNING_RATE = 0.03"))
        pathlib.Path(".autoresearch-description.txt").write_text(
            "LEARNING_RATE 0.02 -> 0.03\\nwarmup is short enough for a higher peak\\n")
        pathlib.Path(".claude").mkdir()
        pathlib.Path(".claude/settings.local.json").write_text("{}")
        print("I raised LEARNING_RATE to 0.03 in nanochat/train.py and noted why.")
    """)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{Path(sys.executable).parent}:/usr/bin:/bin")
    agent = CommandAgent(CLAUDE_RECIPE, timeout=60)
    proposal = agent.propose(context)
    assert agent.label == "command: claude"
    assert proposal.files == {
        "nanochat/train.py": TRAIN_PY.replace("LEARNING_RATE = 0.02", "LEARNING_RATE = 0.03")}
    assert proposal.description == "LEARNING_RATE 0.02 -> 0.03"
    assert proposal.meta["side_files"] == [".claude/settings.local.json"]
    assert_untouched(lab, head)


def test_codex_exec_recipe_with_a_stand_in(tmp_path, monkeypatch):
    assert CODEX_RECIPE in (REPO / "docs" / "agents.md").read_text()
    lab = tmp_path / "lab"
    context = make_lab(lab)
    head = git(lab, "rev-parse", "HEAD").strip()
    stand_in(tmp_path / "bin", "codex", """
        args = sys.argv[1:]
        assert args[0] == "exec" and args[-1] == "-", args
        assert args[args.index("--sandbox") + 1] == "workspace-write"
        assert os.path.isdir(".git"), "codex exec wants a git repository"
        prompt = sys.stdin.read()
        # Progress (with the prompt echoed) goes to stderr, the final message to stdout.
        sys.stderr.write("OpenAI Codex v0.46.0 (research preview)\\n--------\\n")
        sys.stderr.write(f"workdir: {os.getcwd()}\\nmodel: gpt-5-codex\\nsandbox: workspace-write\\n")
        sys.stderr.write("--------\\nuser\\n" + prompt + "\\nthinking\\n**Planning the change**\\n")
        path = pathlib.Path("nanochat/train.py")
        path.write_text(path.read_text().replace("WARMUP_STEPS = 10", "WARMUP_STEPS = 4"))
        sys.stderr.write("file update:\\nM nanochat/train.py\\ntokens used: 8,421\\n")
        print("Shortened the warmup in nanochat/train.py.")
        print("DESCRIPTION: WARMUP_STEPS 10 -> 4")
        print("RATIONALE: a short budget wastes less time at low rates")
    """)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{Path(sys.executable).parent}:/usr/bin:/bin")
    agent = CommandAgent(CODEX_RECIPE, timeout=60)
    proposal = agent.propose(context)
    assert agent.label == "command: codex"
    assert proposal.files == {
        "nanochat/train.py": TRAIN_PY.replace("WARMUP_STEPS = 10", "WARMUP_STEPS = 4")}
    assert proposal.description == "WARMUP_STEPS 10 -> 4"
    assert proposal.rationale == "a short budget wastes less time at low rates"
    assert proposal.meta == {}
    assert_untouched(lab, head)
