"""`--agent claude-code`: the real Claude Code CLI (`claude -p`, installed from npm by scripts/test.sh)
against a loopback Messages API that streams, as the real one does. The scripted model reads
train.py with Claude Code's Read tool, changes it with its Edit tool and states what it changed."""
from __future__ import annotations

import json
import os
import shutil
import re
import time
from pathlib import Path

import pytest

from autoresearch_nb.agents import make_agent
from autoresearch_nb.agents.base import ProposalError
from autoresearch_nb.errors import LabError
from autoresearch_nb.judge import facts
from autoresearch_nb.lab.lab import Lab
from autoresearch_nb.lab.words import cost_text
from conftest import NPM_AGENTS as BIN, cli, draft_usage, lab_check, npm_program
from servers import AnthropicServer, anthropic_error, make_lab, message, text, tool_use

CLAUDE_VERSION = "2.1.332"  # scripts/test.sh installs this one
CANARY = "sk-ant-canary-3f9d1c"


@pytest.fixture(scope="module")
def claude() -> Path:
    return npm_program("claude", "@anthropic-ai/claude-code", CLAUDE_VERSION)


@pytest.fixture
def cli_env(claude, monkeypatch, tmp_path):
    """What a person has: the program on the PATH, a key; a home of the test's own."""
    monkeypatch.setenv("PATH", f"{claude.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("ANTHROPIC_API_KEY", CANARY)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CLAUDE_CODE_OAUTH_TOKEN", raising=False)
    (tmp_path / "home").mkdir()


def workdir(request: dict) -> str:
    """The scratch copy Claude Code runs in, as its system prompt names it."""
    found = re.search(r"Primary working directory: (\S+)", json.dumps(request))
    return found.group(1).rstrip("\\n")


def tool_results(request: dict) -> list[dict]:
    return [block for msg in request["messages"] if msg["role"] == "user" and isinstance(msg["content"], list)
            for block in msg["content"] if block.get("type") == "tool_result"]


def editing(old: str, new: str, description: str, path: str = "nanochat/train.py"):
    """A model that reads `path`, replaces `old` with `new` in it, then says what it did."""
    def reply(request: dict) -> dict:
        done = tool_results(request)
        target = f"{workdir(request)}/{path}"
        if not done:
            return message(tool_use("Read", {"file_path": target}))
        if len(done) == 1:
            return message(tool_use("Edit", {"file_path": target, "old_string": old, "new_string": new}))
        return message(text(f"Done.\nDESCRIPTION: {description}\nRATIONALE: a smaller step may train better"))
    return reply


def test_a_night_driven_by_claude_code_runs_its_edits_and_records_what_they_cost(cli_env, tiny_lab):
    edits = [("MATRIX_LR = 0.02 ", "MATRIX_LR = 0.03 ", "MATRIX_LR 0.02 -> 0.03"),
             ("EMBED_LR = 0.3 ", "EMBED_LR = 0.4 ", "EMBED_LR 0.3 -> 0.4"),
             ("WARMDOWN_FRAC = 0.4 ", "WARMDOWN_FRAC = 0.5 ", "WARMDOWN_FRAC 0.4 -> 0.5"),
             ("UNEMBED_LR = 0.004 ", "UNEMBED_LR = 0.008 ", "UNEMBED_LR 0.004 -> 0.008"),
             ("ROPE_BASE = 10000.0", "ROPE_BASE = 1000.0", "ROPE_BASE 10000 -> 1000")]
    proposals = []

    def reply(request):
        if not tool_results(request):
            proposals.append(request)
        return editing(*edits[min(len(proposals), len(edits)) - 1])(request)

    with AnthropicServer(default=reply) as server:
        done = cli("run", "--lab", str(tiny_lab), "--agent", "claude-code", "--budget", "2", "--noise-runs", "1",
                   "--policy", "greedy", "--max-experiments", "5", "--depth", "0",
                   env={"ANTHROPIC_BASE_URL": server.url}, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = Lab.open(tiny_lab).rows()
    # (a run slowed by other work on the machine is run again: that row is not the experiment's verdict)
    experiments = [r for r in rows if r["role"] == "experiment" and r["status"] != "disturbed"]
    assert all(r["status"] in ("keep", "discard") for r in experiments), [(r["status"], r.get("reason")) for r in experiments]
    assert len(experiments) >= 3 and [r["description"] for r in experiments] == [e[2] for e in edits][:len(experiments)]
    assert all(r["agent"] == "claude-code" for r in experiments)
    for row in experiments:  # tokens and dollars from Claude Code's own JSON result, billed to the key
        usage = draft_usage(rows, row)
        assert usage["input_tokens"] + usage["cache_write_tokens"] + usage["cache_read_tokens"] > 1000, usage
        assert usage["output_tokens"] > 0 and usage["cost_usd"] > 0, usage
    sent = proposals[0]  # the CLI as the agent runs it: non-interactive, no shell, no web
    names = {tool["name"] for tool in sent["tools"]}
    assert {"Read", "Edit"} <= names and not names & {"Bash", "WebFetch", "WebSearch"}, names
    assert sent["stream"] is True
    logs = "".join((tiny_lab / r["log"]).read_text() for r in experiments)
    assert CANARY not in logs and CANARY not in (tiny_lab / ".autoresearch" / "ledger.jsonl").read_text()
    assert "claude-code" in done.stdout or "Claude Code" in done.stdout
    lab_check(tiny_lab)


def propose(tmp_path, model_reply, **options):
    context = make_lab(tmp_path / "lab")
    agent = make_agent("claude-code", **options)
    with AnthropicServer(default=model_reply) as server:
        agent.extra_env = {**agent.extra_env, "ANTHROPIC_BASE_URL": server.url}
        try:
            return agent.propose(context), server
        except ProposalError as error:
            return error, server


def test_an_edit_of_the_locked_file_refuses_the_proposal(cli_env, tmp_path):
    outcome, _ = propose(tmp_path, editing("EVAL_TOKENS = 1000", "EVAL_TOKENS = 10", "fewer eval tokens",
                                           path="nanochat/prepare.py"))
    assert isinstance(outcome, ProposalError)
    assert "REFUSED" in outcome.reason or "changed none of the allowed files" in outcome.reason, outcome.reason


def test_files_it_writes_beside_the_allowed_ones_are_discarded_and_listed(cli_env, tmp_path):
    def reply(request):
        done = tool_results(request)
        if len(done) < 2:
            return editing("DEPTH = 4", "DEPTH = 6", "")(request)
        if len(done) == 2:
            return message(tool_use("Write", {"file_path": f"{workdir(request)}/notes.md", "content": "my notes\n"}))
        return message(text("DESCRIPTION: DEPTH 4 -> 6"))
    proposal, _ = propose(tmp_path, reply)
    assert not isinstance(proposal, ProposalError), proposal
    assert "DEPTH = 6" in proposal.files["nanochat/train.py"] and set(proposal.files) == {"nanochat/train.py"}
    assert proposal.meta["side_files"] == ["notes.md"] and proposal.description == "DEPTH 4 -> 6"


def test_a_hung_model_meets_the_agent_timeout(cli_env, tmp_path):
    def hang(request):
        time.sleep(60)
        return message(text("too late"))
    outcome, _ = propose(tmp_path, hang, timeout=8)
    assert isinstance(outcome, ProposalError) and "ran past its 8 s limit" in outcome.reason, outcome


def test_an_overloaded_api_is_reported_as_an_outage_not_as_no_change(cli_env, tmp_path, monkeypatch):
    monkeypatch.setenv("CLAUDE_CODE_MAX_RETRIES", "1")  # its own retries, kept short here
    outcome, server = propose(tmp_path, lambda request: anthropic_error(529, "overloaded_error", "Overloaded"))
    assert isinstance(outcome, ProposalError), outcome
    assert outcome.fatal, outcome.reason  # the loop waits and retries, then stops: not "no change"
    assert len(server.requests) >= 2       # Claude Code retried before giving up


def test_without_the_program_or_a_login_it_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LabError, match="npm install -g @anthropic-ai/claude-code"):
        make_agent("claude-code")
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(LabError, match="claude setup-token"):
        make_agent("claude-code")


def test_on_a_subscription_the_price_is_an_estimate_not_a_bill(cli_env, tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat-canary")
    proposal, server = propose(tmp_path, editing("DEPTH = 4", "DEPTH = 5", "DEPTH 4 -> 5"))
    assert not isinstance(proposal, ProposalError), proposal
    assert proposal.usage["cost_usd"] == 0.0 and proposal.usage["billing"] == "subscription"
    assert proposal.usage["list_cost_usd"] > 0
    assert server.requests[0]["headers"].get("Authorization", "").endswith("sk-ant-oat-canary")
    said = cost_text(*facts.spent([{"usage": proposal.usage}]))  # as the header and the export say it
    assert said.startswith("$0") and "subscription" in said and "not billed" in said, said


def test_max_cost_stops_a_night_driven_by_claude_code(cli_env, tiny_lab):
    with AnthropicServer(default=editing("MATRIX_LR = 0.02 ", "MATRIX_LR = 0.03 ", "MATRIX_LR 0.02 -> 0.03")) as server:
        done = cli("run", "--lab", str(tiny_lab), "--agent", "claude-code", "--budget", "2", "--noise-runs", "1",
                   "--max-experiments", "8", "--max-cost", "0.1", "--depth", "0",
                   env={"ANTHROPIC_BASE_URL": server.url}, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = Lab.open(tiny_lab).rows()
    spent = facts.spent(rows)[0]
    proposals = [r for r in rows if (r.get("usage") or {}).get("cost_usd")]
    # each proposal cost about $0.08 here (Claude Code's own figure): the second would pass $0.10
    assert len(proposals) == 1 and 0 < spent <= 0.1, [(r["index"], r["usage"]) for r in rows]
    assert "--max-cost" in done.stdout
    lab_check(tiny_lab)


def this_turn(request: dict) -> list[dict]:
    """The tool results since the prompt of the proposal under way (a resumed conversation holds earlier ones)."""
    messages = request["messages"]
    start = max(i for i, msg in enumerate(messages) if msg["role"] == "user" and not (
        isinstance(msg["content"], list) and any(b.get("type") == "tool_result" for b in msg["content"])))
    return tool_results({"messages": messages[start:]})


def turn_editing(edits: list[tuple[str, str, str]], firsts: list[dict]):
    """A model that makes edit k in the k-th proposal (read, edit, say), in a fresh or a resumed conversation."""
    def reply(request: dict) -> dict:
        done = this_turn(request)
        if not done:
            firsts.append(request)
        old, new, description = edits[min(len(firsts), len(edits)) - 1]
        target = f"{workdir(request)}/nanochat/train.py"
        if not done:
            return message(tool_use("Read", {"file_path": target}))
        if len(done) == 1:
            return message(tool_use("Edit", {"file_path": target, "old_string": old, "new_string": new}))
        return message(text(f"Done.\nDESCRIPTION: {description}\nRATIONALE: next in line"))
    return reply


def user_texts(request: dict) -> list[str]:
    return [msg["content"] if isinstance(msg["content"], str) else
            " ".join(b.get("text", "") for b in msg["content"] if b.get("type") == "text")
            for msg in request["messages"] if msg["role"] == "user"]


def test_with_memory_each_proposal_resumes_the_conversation_and_is_told_only_what_is_new(cli_env, tiny_lab):
    edits = [("MATRIX_LR = 0.02 ", "MATRIX_LR = 0.03 ", "MATRIX_LR 0.02 -> 0.03"),
             ("EMBED_LR = 0.3 ", "EMBED_LR = 0.4 ", "EMBED_LR 0.3 -> 0.4"),
             ("WARMDOWN_FRAC = 0.4 ", "WARMDOWN_FRAC = 0.5 ", "WARMDOWN_FRAC 0.4 -> 0.5")]
    firsts: list[dict] = []
    with AnthropicServer(default=turn_editing(edits, firsts)) as server:
        done = cli("run", "--lab", str(tiny_lab), "--agent", "claude-code", "--agent-memory", "--budget", "2",
                   "--noise-runs", "1", "--policy", "greedy", "--max-experiments", "4", "--depth", "0",
                   env={"ANTHROPIC_BASE_URL": server.url}, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = Lab.open(tiny_lab).rows()
    experiments = [r for r in rows if r["role"] == "experiment" and r["status"] != "disturbed"]
    assert [r["description"] for r in experiments] == [e[2] for e in edits][:len(experiments)] and len(experiments) >= 2
    turns = [r["memory"] for r in experiments]
    assert [t["turn"] for t in turns] == list(range(1, len(turns) + 1)), turns
    assert len({t["conversation"] for t in turns}) == 1, turns
    # The second proposal's request carries the first one's conversation, then a short follow-up with
    # the first result in it, not the whole charter again.
    first, second = user_texts(firsts[0]), user_texts(firsts[1])
    assert second[:len(first)] == first and len(second) > len(first)
    follow_up = second[-1]
    assert "Results since your last change" in follow_up and experiments[0]["description"] in follow_up
    assert "reset to the lab's best code" in follow_up
    assert len(follow_up) < len(first[0]) / 2, (len(follow_up), len(first[0]))
    assert workdir(firsts[0]) == workdir(firsts[1])  # one directory: Claude Code files sessions under it
    lab_check(tiny_lab)


def test_a_lost_conversation_costs_one_proposal_then_a_new_one_starts(cli_env, tmp_path):
    context = make_lab(tmp_path / "lab")
    agent = make_agent("claude-code", memory=True)
    edits = [("DEPTH = 4", "DEPTH = 5", "DEPTH 4 -> 5"), ("DEPTH = 4", "DEPTH = 6", "DEPTH 4 -> 6"),
             ("DEPTH = 4", "DEPTH = 3", "DEPTH 4 -> 3")]
    firsts: list[dict] = []
    try:
        with AnthropicServer(default=turn_editing(edits, firsts)) as server:
            agent.extra_env = {**agent.extra_env, "ANTHROPIC_BASE_URL": server.url}
            proposal = agent.propose(context)
            assert proposal.meta["memory"]["turn"] == 1
            # the machine was reset: Claude Code's stored sessions are gone
            shutil.rmtree(Path(os.environ["HOME"]) / ".claude" / "projects")
            with pytest.raises(ProposalError):
                agent.propose(context)
            again = agent.propose(context)
        assert again.meta["memory"]["turn"] == 1 and again.meta["memory"]["conversation"] != proposal.meta["memory"]["conversation"]
        assert len(user_texts(firsts[-1])) == 1  # a new conversation: the whole prompt, nothing before it
    finally:
        agent.close()
    assert not agent.memory.home.exists()
