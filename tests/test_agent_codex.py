"""`--agent codex`: the real Codex CLI (`codex exec`, installed from npm by scripts/test.sh) against a
loopback Responses API that streams, as Codex asks for it. The scripted model edits with Codex's own
apply_patch, run through its shell tool inside Codex's sandbox, and states what it changed."""
from __future__ import annotations

import json
import os
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
from servers import Reply, ResponsesServer, make_lab, output_text, responses_reply, shell_call

CODEX_VERSION = "0.171.0"  # scripts/test.sh installs this one
CANARY = "sk-openai-canary-7be21"


@pytest.fixture(scope="module")
def codex() -> Path:
    return npm_program("codex", "@openai/codex", CODEX_VERSION)


@pytest.fixture
def cli_env(codex, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", f"{codex.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.delenv("CODEX_API_KEY", raising=False)
    # outside /tmp: Codex refuses to put its helper programs under a temporary directory
    home = Path("/var/tmp") / f"codex-home-{os.getpid()}-{time.monotonic_ns()}"
    home.mkdir(parents=True)
    monkeypatch.setenv("CODEX_HOME", str(home))
    monkeypatch.setenv("HOME", str(home))


def outputs(request: dict) -> list[dict]:
    return [i for i in request.get("input", []) if isinstance(i, dict) and i.get("type") == "function_call_output"]


def patch(path: str, old: str, new: str) -> str:
    return (f"apply_patch <<'EOF'\n*** Begin Patch\n*** Update File: {path}\n@@\n-{old}\n+{new}\n"
            "*** End Patch\nEOF\n")


def editing(old: str, new: str, description: str, path: str = "nanochat/train.py"):
    """A model that patches one line of `path`, then says what it changed."""
    def reply(request: dict) -> dict:
        if not outputs(request):
            return responses_reply(shell_call(patch(path, old, new)))
        return responses_reply(output_text(f"Done.\nDESCRIPTION: {description}\nRATIONALE: worth a try"))
    return reply


def test_a_night_driven_by_codex_runs_its_edits_and_records_its_tokens(cli_env, tiny_lab):
    train = (tiny_lab / "nanochat" / "train.py").read_text().splitlines()
    line = {name: next(l for l in train if l.startswith(name + " = ")) for name in
            ("MATRIX_LR", "EMBED_LR", "WARMDOWN_FRAC", "UNEMBED_LR", "ROPE_BASE")}
    edits = [(line["MATRIX_LR"], line["MATRIX_LR"].replace("0.02", "0.03", 1), "MATRIX_LR 0.02 -> 0.03"),
             (line["EMBED_LR"], line["EMBED_LR"].replace("0.3", "0.4", 1), "EMBED_LR 0.3 -> 0.4"),
             (line["WARMDOWN_FRAC"], line["WARMDOWN_FRAC"].replace("0.4", "0.5", 1), "WARMDOWN_FRAC 0.4 -> 0.5"),
             (line["UNEMBED_LR"], line["UNEMBED_LR"].replace("0.004", "0.008", 1), "UNEMBED_LR 0.004 -> 0.008"),
             (line["ROPE_BASE"], line["ROPE_BASE"].replace("10000.0", "1000.0", 1), "ROPE_BASE 10000 -> 1000")]
    proposals = []

    def reply(request):
        if not outputs(request):
            proposals.append(request)
        return editing(*edits[min(len(proposals), len(edits)) - 1])(request)

    with ResponsesServer(default=reply) as server:
        done = cli("run", "--lab", str(tiny_lab), "--agent", "codex", "--model", "gpt-5-codex",
                   "--base-url", server.url + "/v1", "--budget", "2", "--noise-runs", "1", "--policy", "greedy",
                   "--max-experiments", "5", "--depth", "0", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = Lab.open(tiny_lab).rows()
    experiments = [r for r in rows if r["role"] == "experiment" and r["status"] != "disturbed"]
    assert all(r["status"] in ("keep", "discard") for r in experiments), [(r["status"], r.get("reason")) for r in experiments]
    assert len(experiments) >= 3 and [r["description"] for r in experiments] == [e[2] for e in edits][:len(experiments)]
    for row in experiments:  # tokens from Codex's own turn events, priced at the named model's list price
        usage = draft_usage(rows, row)
        assert usage["input_tokens"] > 1000 and usage["output_tokens"] > 0, usage
        expected = (usage["input_tokens"] * 1.25 + usage["cache_read_tokens"] * 0.125 + usage["output_tokens"] * 10) / 1e6
        assert usage["cost_usd"] == pytest.approx(expected, abs=1e-6) and "list price" in usage["cost_note"], usage
    sent = proposals[0]
    assert sent["stream"] is True and sent["model"] == "gpt-5-codex"
    assert not any(tool.get("type") == "web_search" for tool in sent["tools"]), [t.get("type") for t in sent["tools"]]
    headers = {name.lower(): value for name, value in server.requests[0]["headers"].items()}
    assert headers.get("authorization") == f"Bearer {CANARY}"  # the key reaches Codex, never the experiment
    logs = "".join((tiny_lab / r["log"]).read_text() for r in experiments)
    assert CANARY not in logs and CANARY not in (tiny_lab / ".autoresearch" / "ledger.jsonl").read_text()
    lab_check(tiny_lab)


def propose(tmp_path, model_reply, **options):
    context = make_lab(tmp_path / "lab")
    with ResponsesServer(default=model_reply) as server:
        agent = make_agent("codex", model="gpt-5-codex", base_url=server.url + "/v1", **options)
        try:
            return agent.propose(context), server
        except ProposalError as error:
            return error, server


def test_codex_edits_are_the_proposal_and_its_side_files_are_discarded(cli_env, tmp_path):
    def reply(request):
        done = outputs(request)
        if not done:
            return responses_reply(shell_call(patch("nanochat/train.py", "DEPTH = 4", "DEPTH = 6")))
        if len(done) == 1:
            return responses_reply(shell_call("echo 'my notes' > notes.md"))
        return responses_reply(output_text("DESCRIPTION: DEPTH 4 -> 6"))
    proposal, _ = propose(tmp_path, reply)
    assert not isinstance(proposal, ProposalError), proposal
    assert "DEPTH = 6" in proposal.files["nanochat/train.py"] and set(proposal.files) == {"nanochat/train.py"}
    assert proposal.description == "DEPTH 4 -> 6" and proposal.meta["side_files"] == ["notes.md"]


def test_an_edit_of_the_locked_file_refuses_the_proposal(cli_env, tmp_path):
    outcome, _ = propose(tmp_path, editing("EVAL_TOKENS = 1000", "EVAL_TOKENS = 10", "fewer eval tokens",
                                           path="nanochat/prepare.py"))
    assert isinstance(outcome, ProposalError)
    assert "REFUSED" in outcome.reason or "changed none of the allowed files" in outcome.reason, outcome.reason


def test_a_hung_model_meets_the_agent_timeout(cli_env, tmp_path):
    def hang(request):
        time.sleep(60)
        return responses_reply(output_text("too late"))
    outcome, _ = propose(tmp_path, hang, timeout=8)
    assert isinstance(outcome, ProposalError) and "ran past its 8 s limit" in outcome.reason, outcome


def test_a_failing_api_is_reported_as_an_outage_not_as_no_change(cli_env, tmp_path):
    failing = Reply(500, {"error": {"message": "the server had an error", "type": "server_error"}})
    outcome, server = propose(tmp_path, lambda request: failing, timeout=240)
    assert isinstance(outcome, ProposalError), outcome
    assert outcome.fatal, outcome.reason
    assert len(server.requests) >= 2  # Codex retried before giving up


def test_without_the_program_or_a_login_it_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LabError, match="npm install -g @openai/codex"):
        make_agent("codex")
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CODEX_HOME", str(tmp_path / "codex"))
    for name in ("OPENAI_API_KEY", "CODEX_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(LabError, match="codex login"):
        make_agent("codex")


def test_the_events_it_prints_give_the_description_and_the_tokens(cli_env, tmp_path):
    agent = make_agent("codex")
    output = "\n".join(json.dumps(event) for event in (
        {"type": "thread.started", "thread_id": "t"},
        {"type": "item.completed", "item": {"type": "agent_message", "text": "DESCRIPTION: halve the batch"}},
        {"type": "turn.completed", "usage": {"input_tokens": 900, "cached_input_tokens": 400, "output_tokens": 30}}))
    text, usage = agent.understand(output)
    assert "DESCRIPTION: halve the batch" in text
    assert (usage["input_tokens"], usage["cache_read_tokens"], usage["output_tokens"]) == (500, 400, 30)
    # its default model has no price we know: the rows say so rather than $0
    assert usage["billing"] == "unpriced" and usage["cost_usd"] == 0
    assert "reports no price" in cost_text(*facts.spent([{"usage": usage}]))


def test_max_cost_stops_a_codex_night_at_the_models_list_price(cli_env, tiny_lab):
    train = (tiny_lab / "nanochat" / "train.py").read_text().splitlines()
    line = next(l for l in train if l.startswith("MATRIX_LR = "))
    with ResponsesServer(default=editing(line, line.replace("0.02", "0.03", 1), "MATRIX_LR 0.02 -> 0.03")) as server:
        done = cli("run", "--lab", str(tiny_lab), "--agent", "codex", "--model", "gpt-5-codex",
                   "--base-url", server.url + "/v1", "--budget", "2", "--noise-runs", "1",
                   "--max-experiments", "8", "--max-cost", "0.05", "--depth", "0", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = Lab.open(tiny_lab).rows()
    proposals = [r for r in rows if (r.get("usage") or {}).get("cost_usd")]
    each = proposals[0]["usage"]["cost_usd"]
    # a proposal costs about $0.03 here: a second would pass $0.05
    assert 0.02 < each < 0.05 and len(proposals) == 1, [(r["index"], r["usage"]) for r in rows]
    assert "--max-cost" in done.stdout
    lab_check(tiny_lab)


def this_turn(request: dict) -> list[dict]:
    """The tool outputs since the prompt of the proposal under way (a resumed session holds earlier ones)."""
    items = [i for i in request.get("input", []) if isinstance(i, dict)]
    start = max(n for n, i in enumerate(items) if i.get("type") == "message" and i.get("role") == "user")
    return outputs({"input": items[start:]})


def user_texts(request: dict) -> list[str]:
    return [" ".join(part.get("text", "") for part in i.get("content", []) if isinstance(part, dict))
            for i in request.get("input", []) if isinstance(i, dict) and i.get("type") == "message"
            and i.get("role") == "user"]


def test_its_shell_cannot_write_outside_the_scratch_copy_fresh_or_resumed(cli_env, tmp_path):
    outside = Path(os.environ["HOME"]) / "escaped.txt"
    firsts: list[dict] = []

    def reply(request):
        done = this_turn(request)
        if not done:
            firsts.append(request)
            return responses_reply(shell_call(f"echo out > {outside}"))
        if len(done) == 1:
            return responses_reply(shell_call(patch("nanochat/train.py", "DEPTH = 4", f"DEPTH = {4 + len(firsts)}")))
        return responses_reply(output_text(f"DESCRIPTION: DEPTH 4 -> {4 + len(firsts)}"))
    context = make_lab(tmp_path / "lab")
    with ResponsesServer(default=reply) as server:
        for memory in (False, True):
            agent = make_agent("codex", model="gpt-5-codex", base_url=server.url + "/v1", memory=memory)
            try:
                for _ in range(2 if memory else 1):  # with memory, the second runs as `codex exec resume`
                    proposal = agent.propose(context)
                    assert proposal.files, proposal
            finally:
                agent.close()
    assert len(user_texts(firsts[-1])) > len(user_texts(firsts[-2]))  # the last one was a resumed session
    assert not outside.exists()


def test_with_memory_each_proposal_resumes_the_session_and_is_told_only_what_is_new(cli_env, tiny_lab):
    train = (tiny_lab / "nanochat" / "train.py").read_text().splitlines()
    line = {name: next(l for l in train if l.startswith(name + " = ")) for name in ("MATRIX_LR", "EMBED_LR", "WARMDOWN_FRAC")}
    edits = [(line["MATRIX_LR"], line["MATRIX_LR"].replace("0.02", "0.03", 1), "MATRIX_LR 0.02 -> 0.03"),
             (line["EMBED_LR"], line["EMBED_LR"].replace("0.3", "0.4", 1), "EMBED_LR 0.3 -> 0.4"),
             (line["WARMDOWN_FRAC"], line["WARMDOWN_FRAC"].replace("0.4", "0.5", 1), "WARMDOWN_FRAC 0.4 -> 0.5")]
    firsts: list[dict] = []

    def reply(request):
        if not this_turn(request):
            firsts.append(request)
            old, new, _ = edits[min(len(firsts), len(edits)) - 1]
            return responses_reply(shell_call(patch("nanochat/train.py", old, new)))
        return responses_reply(output_text(f"Done.\nDESCRIPTION: {edits[min(len(firsts), len(edits)) - 1][2]}"))

    with ResponsesServer(default=reply) as server:
        done = cli("run", "--lab", str(tiny_lab), "--agent", "codex", "--agent-memory", "--model", "gpt-5-codex",
                   "--base-url", server.url + "/v1", "--budget", "2", "--noise-runs", "1", "--policy", "greedy",
                   "--max-experiments", "4", "--depth", "0", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = Lab.open(tiny_lab).rows()
    experiments = [r for r in rows if r["role"] == "experiment" and r["status"] != "disturbed"]
    assert [r["description"] for r in experiments] == [e[2] for e in edits][:len(experiments)] and len(experiments) >= 2
    turns = [r["memory"] for r in experiments]
    assert [t["turn"] for t in turns] == list(range(1, len(turns) + 1)) and len({t["conversation"] for t in turns}) == 1
    first, second = user_texts(firsts[0]), user_texts(firsts[1])
    assert second[:len(first)] == first and "Results since your last change" in second[-1]
    assert experiments[0]["description"] in second[-1]
    lab_check(tiny_lab)


def test_a_resumed_session_is_charged_only_the_tokens_its_turn_added(cli_env, tmp_path):
    agent = make_agent("codex", model="gpt-5-codex", memory=True)

    def turn(input_tokens, output_tokens):
        return "\n".join(json.dumps(event) for event in (
            {"type": "thread.started", "thread_id": "019a-thread"},
            {"type": "item.completed", "item": {"type": "agent_message", "text": "DESCRIPTION: x"}},
            {"type": "turn.completed", "usage": {"input_tokens": input_tokens, "cached_input_tokens": 0,
                                                 "output_tokens": output_tokens}}))
    # Codex 0.171 reports the session's running total after `exec resume` (40k, then 40k + 50k)
    assert agent.understand(turn(40_000, 100))[1]["input_tokens"] == 40_000
    second = agent.understand(turn(90_000, 250))[1]
    assert (second["input_tokens"], second["output_tokens"]) == (50_000, 150)
    agent.close()
