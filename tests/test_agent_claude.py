"""The Claude agent through the real anthropic SDK, against a scripted Messages API on loopback."""
from __future__ import annotations

import os

import pytest

from autoresearch_nb.agents.base import ProposalError
from autoresearch_nb.agents.claude import DEFAULT_MODEL, ClaudeAgent
from autoresearch_nb.errors import LabError
from servers import (TRAIN_PY, AnthropicServer, anthropic_error, editor, make_lab, message, submit,
                     text)

NEW_LR = TRAIN_PY.replace("LEARNING_RATE = 0.02", "LEARNING_RATE = 0.04")


def agent_for(server, **options) -> ClaudeAgent:
    options.setdefault("retry_backoff", 0.001)
    return ClaudeAgent(api_key="test-key", base_url=server.url, **options)


def tool_results(request: dict) -> list[dict]:
    """The tool_result blocks of the last user message of a recorded request."""
    content = request["messages"][-1]["content"]
    return [block for block in content if isinstance(block, dict)
            and block.get("type") == "tool_result"]


def happy_script():
    return [
        message(text("Let me look."), editor(command="view", path="nanochat/train.py")),
        message(editor(command="str_replace", path="nanochat/train.py",
                       old_str="LEARNING_RATE = 0.02", new_str="LEARNING_RATE = 0.04")),
        message(submit("double the learning rate", "lr looks too low; confirm if val_bpb drops")),
    ]


def test_full_proposal_view_edit_submit(tmp_path):
    context = make_lab(tmp_path / "lab")
    with AnthropicServer(happy_script()) as server:
        agent = agent_for(server)
        proposal = agent.propose(context)
        agent.close()
    assert proposal.files == {"nanochat/train.py": NEW_LR}
    assert proposal.description == "double the learning rate"
    assert "val_bpb drops" in proposal.rationale
    # The edits land on a scratch copy: the lab's file is untouched.
    assert (tmp_path / "lab" / "nanochat" / "train.py").read_text() == TRAIN_PY
    first, second, third = server.bodies()
    assert first["model"] == DEFAULT_MODEL
    assert {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"} in first["tools"]
    submit_tool = next(t for t in first["tools"] if t.get("name") == "submit_experiment")
    assert set(submit_tool["input_schema"]["required"]) == {"description", "rationale"}
    # The charter is in the system prompt and the stable prefix is marked for caching.
    assert "Lower val_bpb within the budget" in first["system"][0]["text"]
    assert first["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert first["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    # The view result came back numbered, the edit was acknowledged.
    viewed = tool_results(second)[0]
    assert not viewed["is_error"] and "\tLEARNING_RATE = 0.02" in viewed["content"]
    assert tool_results(third)[0]["is_error"] is False
    # The assistant's turns are replayed verbatim so the conversation stays valid.
    assert second["messages"][1]["content"][1]["name"] == "str_replace_based_edit_tool"
    for body in server.bodies():
        assert _breakpoints(body) <= 4, "the API allows at most four cache breakpoints"
        assert "test-key" not in str(body)


def _breakpoints(body: dict) -> int:
    return str(body).count("'cache_control'")


def test_edit_to_locked_or_other_file_is_refused_and_changes_nothing(tmp_path):
    context = make_lab(tmp_path / "lab")
    script = [
        message(editor(command="str_replace", path="nanochat/prepare.py",
                       old_str="EVAL_TOKENS = 1000", new_str="EVAL_TOKENS = 1"),
                editor(command="create", path="/etc/evil.py", file_text="x = 1\n"),
                submit("cheat", "smaller eval")),
        message(editor(command="str_replace", path="nanochat/train.py",
                       old_str="DEPTH = 4", new_str="DEPTH = 6")),
        message(submit("deeper model", "more capacity")),
    ]
    with AnthropicServer(script) as server:
        proposal = agent_for(server).propose(context)
    locked, other, early_submit = tool_results(server.bodies()[1])
    assert locked["is_error"] and "locked" in locked["content"]
    assert other["is_error"] and "not an editable file" in other["content"]
    # A submit after a refused edit in the same turn is not accepted.
    assert early_submit["is_error"]
    assert proposal.files == {"nanochat/train.py": TRAIN_PY.replace("DEPTH = 4", "DEPTH = 6")}
    assert proposal.description == "deeper model"
    assert (tmp_path / "lab" / "nanochat" / "prepare.py").read_text().endswith("= 1000\n")
    assert not os.path.exists("/etc/evil.py")


def test_malformed_tool_inputs_get_error_results_and_the_agent_recovers(tmp_path):
    context = make_lab(tmp_path / "lab")
    script = [
        message(editor(command="str_replace", path="nanochat/train.py", new_str="x")),
        message(editor(command="undo_edit", path="nanochat/train.py")),
        message(editor(command="insert", path="nanochat/train.py", insert_line="two",
                       insert_text="# note\n")),
        message(editor(command="str_replace", path="nanochat/train.py",
                       old_str="LEARNING_RATE = 0.99", new_str="LEARNING_RATE = 0.04")),
        message(submit("   ", "no description")),
        message(editor(command="insert", path="nanochat/train.py", insert_line=1,
                       insert_text="# tuned\n")),
        message(submit("note the tuning", "bookkeeping")),
    ]
    with AnthropicServer(script) as server:
        proposal = agent_for(server, max_turns=8).propose(context)
    errors = [tool_results(body)[0] for body in server.bodies()[1:6]]
    assert all(result["is_error"] for result in errors)
    assert "old_str" in errors[0]["content"]
    assert "Unknown command" in errors[1]["content"]
    assert "insert_line" in errors[2]["content"]
    assert "not found" in errors[3]["content"]
    assert "description" in errors[4]["content"]
    lines = proposal.files["nanochat/train.py"].splitlines()
    assert lines[1] == "# tuned" and len(lines) == len(TRAIN_PY.splitlines()) + 1


def test_rate_limit_then_success(tmp_path):
    context = make_lab(tmp_path / "lab")
    script = [anthropic_error(429, "rate_limit_error", "slow down")] + happy_script()
    with AnthropicServer(script) as server:
        proposal = agent_for(server, max_retries=2).propose(context)
    assert proposal.files == {"nanochat/train.py": NEW_LR}
    assert len(server.requests) == 4
    # The retried request is the same request.
    assert server.bodies()[0] == server.bodies()[1]


def test_overloaded_storm_past_the_retries_is_fatal_and_keeps_the_usage(tmp_path):
    context = make_lab(tmp_path / "lab")
    first_turn = {"input_tokens": 1200, "output_tokens": 80, "cache_read_input_tokens": 0,
                  "cache_creation_input_tokens": 2000}
    script = [message(editor(command="view", path="nanochat/train.py"), usage=first_turn)]
    storm = anthropic_error(529, "overloaded_error", "Overloaded")
    with AnthropicServer(script, default=storm) as server:
        agent = agent_for(server, max_retries=3, model="claude-sonnet-4-6")
        with pytest.raises(ProposalError) as caught:
            agent.propose(context)
    error = caught.value
    assert error.fatal
    assert "529" in error.reason and "4 attempts" in error.reason
    assert len(server.requests) == 1 + 4
    assert error.usage["input_tokens"] == 1200 and error.usage["cache_write_tokens"] == 2000
    expected = (1200 * 3 + 80 * 15 + 2000 * 3.75) / 1e6
    assert error.usage["cost_usd"] == pytest.approx(expected)


def test_server_error_then_success_and_bad_key_is_fatal(tmp_path):
    context = make_lab(tmp_path / "lab")
    with AnthropicServer([anthropic_error(500, "api_error")] + happy_script()) as server:
        assert agent_for(server, max_retries=1).propose(context).files
    with AnthropicServer([anthropic_error(401, "authentication_error", "invalid x-api-key")],
                         default=None) as server:
        with pytest.raises(ProposalError) as caught:
            agent_for(server, max_retries=5).propose(context)
    assert caught.value.fatal and "ANTHROPIC_API_KEY" in caught.value.reason
    assert len(server.requests) == 1, "a rejected key is not retried"


def test_unreachable_api_is_retried_then_fatal(tmp_path):
    context = make_lab(tmp_path / "lab")
    with AnthropicServer([]) as server:
        url = server.url  # the port is free again once this server has shut down
    agent = ClaudeAgent(api_key="test-key", base_url=url, max_retries=2, retry_backoff=0.001)
    with pytest.raises(ProposalError) as caught:
        agent.propose(context)
    assert caught.value.fatal and "3 attempts" in caught.value.reason
    assert "cannot reach" in caught.value.reason
    assert caught.value.usage["cost_usd"] == 0.0


def test_usage_and_cost_are_summed_over_the_turns(tmp_path):
    context = make_lab(tmp_path / "lab")
    turns = [
        {"input_tokens": 1000, "output_tokens": 200, "cache_creation_input_tokens": 3000,
         "cache_read_input_tokens": 0},
        {"input_tokens": 50, "output_tokens": 100, "cache_creation_input_tokens": 200,
         "cache_read_input_tokens": 3000},
    ]
    script = [
        message(editor(command="str_replace", path="nanochat/train.py",
                       old_str="LEARNING_RATE = 0.02", new_str="LEARNING_RATE = 0.04"),
                usage=turns[0]),
        message(submit("double the learning rate"), usage=turns[1]),
    ]
    with AnthropicServer(script) as server:
        agent = agent_for(server, model="claude-opus-4-6")
        proposal = agent.propose(context)
    assert proposal.usage["input_tokens"] == 1050
    assert proposal.usage["output_tokens"] == 300
    assert proposal.usage["cache_write_tokens"] == 3200
    assert proposal.usage["cache_read_tokens"] == 3000
    expected = (1050 * 5 + 300 * 25 + 3200 * 6.25 + 3000 * 0.5) / 1e6
    assert proposal.usage["cost_usd"] == pytest.approx(expected)
    assert agent.estimate_next_cost([proposal.usage]) == pytest.approx(expected)


def test_second_proposal_reads_the_cached_prefix(tmp_path):
    context = make_lab(tmp_path / "lab")
    with AnthropicServer(happy_script() + happy_script()) as server:
        agent = agent_for(server)
        first = agent.propose(context)
        second = agent.propose(context)
    usages = [reply["usage"] for reply in server.replies]
    assert usages[0]["cache_read_input_tokens"] == 0 and usages[0]["cache_creation_input_tokens"] > 0
    # Later turns of a proposal read the conversation so far from the cache...
    assert usages[1]["cache_read_input_tokens"] >= usages[0]["cache_creation_input_tokens"]
    # ...and the next proposal's opening request finds charter, tools, files and history cached.
    assert usages[3]["cache_read_input_tokens"] == usages[0]["cache_creation_input_tokens"]
    assert usages[3]["input_tokens"] == 0
    assert second.usage["cache_read_tokens"] > first.usage["cache_read_tokens"]
    assert first.usage["cost_usd"] > second.usage["cost_usd"] > 0


def test_a_proposal_that_never_submits_is_rejected_not_fatal(tmp_path):
    context = make_lab(tmp_path / "lab")
    chatter = message(text("I would like to think about this more."))
    with AnthropicServer([], default=chatter) as server:
        with pytest.raises(ProposalError) as caught:
            agent_for(server, max_turns=3).propose(context)
    assert not caught.value.fatal
    assert "3 turns" in caught.value.reason
    assert len(server.requests) == 3
    assert caught.value.usage["output_tokens"] > 0
    assert "submit_experiment" in str(server.bodies()[-1]["messages"][-1]["content"])


def test_a_submit_without_a_change_is_rejected(tmp_path):
    context = make_lab(tmp_path / "lab")
    with AnthropicServer([message(submit("nothing really"))]) as server:
        with pytest.raises(ProposalError) as caught:
            agent_for(server).propose(context)
    assert "without changing" in caught.value.reason and not caught.value.fatal


def test_missing_key_tells_the_user_how_to_set_it(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(LabError, match="ANTHROPIC_API_KEY"):
        ClaudeAgent()


def test_reflect_writes_a_lesson_from_the_row(tmp_path):
    context = make_lab(tmp_path / "lab")
    with AnthropicServer([]) as server:
        agent = agent_for(server)
        lesson = agent.reflect(context, {"index": 3, "status": "discard", "val_bpb": 1.234567,
                                         "description": "wider MLP"})
    assert "#3" in lesson and "wider MLP" in lesson and "1.234567" in lesson
    assert len(server.requests) == 0, "reflecting costs no API call"


@pytest.mark.skipif(not os.environ.get("ANTHROPIC_API_KEY"), reason="needs ANTHROPIC_API_KEY")
def test_live_smoke_against_the_real_api(tmp_path):
    context = make_lab(tmp_path / "lab")
    agent = ClaudeAgent(max_turns=8)
    try:
        proposal = agent.propose(context)
    finally:
        agent.close()
    assert set(proposal.files) == {"nanochat/train.py"}
    assert proposal.description and proposal.usage["cost_usd"] > 0
