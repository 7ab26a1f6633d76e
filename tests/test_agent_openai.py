"""The OpenAI-compatible agent through the real openai SDK, against scripted chat completions."""
from __future__ import annotations

import json

import pytest

from autoresearch_nb.agents.base import ProposalError
from autoresearch_nb.agents.openai_agent import OpenAIAgent
from autoresearch_nb.errors import LabError
from servers import TRAIN_PY, OpenAIServer, chat_reply, function_call, make_lab, openai_error

EDIT = "str_replace_based_edit_tool"
NEW_LR = TRAIN_PY.replace("LEARNING_RATE = 0.02", "LEARNING_RATE = 0.04")


def agent_for(server, **options) -> OpenAIAgent:
    options.setdefault("retry_backoff", 0.001)
    return OpenAIAgent(base_url=server.url + "/v1", model="local-coder", **options)


def tool_messages(request: dict) -> list[dict]:
    """The tool results at the end of a recorded request."""
    tail = []
    for msg in reversed(request["messages"]):
        if msg["role"] != "tool":
            break
        tail.insert(0, msg)
    return tail


def happy_script():
    return [
        chat_reply(function_call(EDIT, {"command": "view", "path": "nanochat/train.py"}),
                   content="Looking first."),
        chat_reply(function_call(EDIT, {"command": "str_replace", "path": "nanochat/train.py",
                                        "old_str": "LEARNING_RATE = 0.02",
                                        "new_str": "LEARNING_RATE = 0.04"})),
        chat_reply(function_call("submit_experiment", {"description": "double the learning rate",
                                                       "rationale": "lr looks too low"})),
    ]


def test_full_proposal_through_function_calls(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    context = make_lab(tmp_path / "lab")
    with OpenAIServer(happy_script()) as server:
        agent = agent_for(server)
        proposal = agent.propose(context)
        agent.close()
    assert proposal.files == {"nanochat/train.py": NEW_LR}
    assert proposal.description == "double the learning rate"
    assert (tmp_path / "lab" / "nanochat" / "train.py").read_text() == TRAIN_PY
    first, second, _ = server.bodies()
    assert all(r["path"] == "/v1/chat/completions" for r in server.requests)
    assert first["model"] == "local-coder"
    assert {t["function"]["name"] for t in first["tools"]} == {EDIT, "submit_experiment"}
    assert first["messages"][0]["role"] == "system"
    assert "Lower val_bpb within the budget" in first["messages"][0]["content"]
    assert "\tLEARNING_RATE = 0.02" in tool_messages(second)[0]["content"]
    # The assistant's tool calls are replayed so each tool message answers one of them.
    assistant = second["messages"][2]
    assert assistant["tool_calls"][0]["id"] == tool_messages(second)[0]["tool_call_id"]
    # No key in the environment and a local base URL: a placeholder key, as local servers take.
    headers = {k.lower(): v for k, v in server.requests[0]["headers"].items()}
    assert headers["authorization"] == "Bearer none"


def test_locked_file_refused_and_malformed_arguments_recovered(tmp_path):
    context = make_lab(tmp_path / "lab")
    script = [
        chat_reply(function_call(EDIT, {"command": "create", "path": "nanochat/prepare.py",
                                        "file_text": "EVAL_TOKENS = 1\n"})),
        chat_reply(function_call(EDIT, '{"command": "str_replace", "path": "nanochat/tra')),
        chat_reply(function_call("run_shell", {"cmd": "rm -rf /"})),
        chat_reply(function_call(EDIT, {"command": "str_replace", "path": "nanochat/train.py",
                                        "old_str": "DEPTH = 4", "new_str": "DEPTH = 6"}),
                   function_call("submit_experiment", {"description": "deeper model",
                                                       "rationale": "capacity"})),
    ]
    with OpenAIServer(script) as server:
        proposal = agent_for(server).propose(context)
    locked, malformed, unknown = (tool_messages(b)[0]["content"] for b in server.bodies()[1:4])
    assert locked.startswith("Error:") and "locked" in locked
    assert malformed.startswith("Error:") and "not valid JSON" in malformed
    assert unknown.startswith("Error:") and "Unknown tool" in unknown
    assert proposal.files == {"nanochat/train.py": TRAIN_PY.replace("DEPTH = 4", "DEPTH = 6")}
    assert (tmp_path / "lab" / "nanochat" / "prepare.py").read_text().endswith("= 1000\n")


def test_rate_limit_then_success_and_storm_past_retries(tmp_path):
    context = make_lab(tmp_path / "lab")
    with OpenAIServer([openai_error(429, "rate limited")] + happy_script()) as server:
        assert agent_for(server, max_retries=1).propose(context).files == {
            "nanochat/train.py": NEW_LR}
    assert len(server.requests) == 4

    first_turn = {"prompt_tokens": 900, "completion_tokens": 40, "total_tokens": 940}
    script = [chat_reply(function_call(EDIT, {"command": "view", "path": "nanochat/train.py"}),
                         usage=first_turn)]
    with OpenAIServer(script, default=openai_error(503, "overloaded")) as server:
        with pytest.raises(ProposalError) as caught:
            agent_for(server, max_retries=2).propose(context)
    assert caught.value.fatal and "503" in caught.value.reason
    assert len(server.requests) == 1 + 3
    assert caught.value.usage["input_tokens"] == 900
    assert caught.value.usage["output_tokens"] == 40
    assert caught.value.usage["cost_usd"] == 0.0  # no price known for a local model
    assert "no price known" in caught.value.usage["cost_note"]


def test_usage_counts_cached_prompt_tokens_once(tmp_path):
    context = make_lab(tmp_path / "lab")
    with OpenAIServer(happy_script()) as server:
        proposal = agent_for(server).propose(context)
    prompts = [server_usage["prompt_tokens"] for server_usage in _server_usages(server)]
    assert proposal.usage["input_tokens"] + proposal.usage["cache_read_tokens"] == sum(prompts)
    assert proposal.usage["cache_read_tokens"] > 0, "later turns reuse the earlier prefix"


def _server_usages(server):
    # Recompute what the server reported from its own counter on the recorded requests.
    fresh = OpenAIServer()
    usages = []
    for body in server.bodies():
        prompt, cached = fresh._count_prompt(body)
        usages.append({"prompt_tokens": prompt, "cached_tokens": cached})
    fresh._httpd.server_close()
    return usages


def test_never_submitting_is_rejected_after_the_turn_limit(tmp_path):
    context = make_lab(tmp_path / "lab")
    with OpenAIServer([], default=chat_reply(content="Hmm, let me think.")) as server:
        with pytest.raises(ProposalError) as caught:
            agent_for(server, max_turns=2).propose(context)
    assert not caught.value.fatal and "2 turns" in caught.value.reason
    last = server.bodies()[-1]["messages"][-1]
    assert last["role"] == "user" and "submit_experiment" in last["content"]


def test_bad_options_are_user_errors(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LabError, match="--model"):
        OpenAIAgent(base_url="http://127.0.0.1:1/v1")
    with pytest.raises(LabError, match="OPENAI_API_KEY"):
        OpenAIAgent(model="gpt-test")


def test_submit_arguments_as_json_text_round_trip():
    # A description with newlines becomes one line, as results.tsv needs.
    from autoresearch_nb.agents.edit_tools import parse_submission
    description, rationale = parse_submission(json.loads(
        '{"description": "wider\\nMLP  and\\tgelu", "rationale": "  more capacity  "}'))
    assert description == "wider MLP and gelu" and rationale == "more capacity"
