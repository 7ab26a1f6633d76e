"""Tokens sent per proposal by Claude Code and Codex, fresh per proposal against --agent-memory.

A real night (tiny profile, real training) per CLI and mode, with the real CLI (scripts/test.sh
installs it) talking to the loopback server of tests/servers.py, which counts about four characters
a token and models Anthropic's prompt cache. Each scripted proposal reads train.py, changes one
constant (a different one each time) and says what it changed. The tokens are what each CLI itself
reports in its JSON (the ledger's usage); the bytes are the requests the server received.

    python benchmarks/cli_memory.py [--proposals 10] [--agents claude-code,codex]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
BIN = ROOT / ".npm-agents" / "node_modules" / ".bin"

from autoresearch_nb.engine.session import RunOptions  # noqa: E402
from autoresearch_nb.lab.lab import Lab  # noqa: E402
from common import fresh_lab, run_session  # noqa: E402
from servers import (AnthropicServer, ResponsesServer, message, output_text, responses_reply,  # noqa: E402
                     shell_call, text, tool_use)

EDITS = (("MATRIX_LR", "0.03"), ("EMBED_LR", "0.4"), ("UNEMBED_LR", "0.008"), ("MUON_MOMENTUM", "0.9"),
         ("WEIGHT_DECAY", "0.01"), ("WARMUP_FRAC", "0.05"), ("WARMDOWN_FRAC", "0.5"), ("FINAL_LR_FRAC", "0.1"),
         ("LOGIT_SOFTCAP", "30.0"), ("ROPE_BASE", "1000.0"), ("MATRIX_LR", "0.015"), ("EMBED_LR", "0.2"))


class Turns:
    """The requests of each proposal, as the server saw them."""

    def __init__(self):
        self.bytes: list[list[int]] = []

    def start_or_continue(self, request: dict, new_turn: bool) -> int:
        if new_turn or not self.bytes:
            self.bytes.append([])
        self.bytes[-1].append(len(json.dumps(request)))
        return len(self.bytes) - 1


def claude_model(turns: Turns):
    def this_turn(messages):
        start = max(i for i, m in enumerate(messages) if m["role"] == "user" and not (
            isinstance(m["content"], list) and any(b.get("type") == "tool_result" for b in m["content"])))
        return [b for m in messages[start:] if m["role"] == "user" and isinstance(m["content"], list)
                for b in m["content"] if b.get("type") == "tool_result"]

    def reply(request):
        done = this_turn(request["messages"])
        k = turns.start_or_continue(request, not done)
        name, value = EDITS[k % len(EDITS)]
        target = re.search(r"Primary working directory: (\S+)", json.dumps(request)).group(1).rstrip("\\n")
        target += "/nanochat/train.py"
        if not done:
            return message(tool_use("Read", {"file_path": target}))
        if len(done) == 1:
            content = json.dumps(done[0].get("content"))
            current = re.search(rf"{name} = ([^ \\]+)", content).group(1)
            return message(tool_use("Edit", {"file_path": target, "old_string": f"{name} = {current}",
                                             "new_string": f"{name} = {value}"}))
        return message(text(f"Done.\nDESCRIPTION: {name} -> {value}\nRATIONALE: next on the list"))
    return reply


def codex_model(turns: Turns):
    def this_turn(items):
        items = [i for i in items if isinstance(i, dict)]
        start = max(n for n, i in enumerate(items) if i.get("type") == "message" and i.get("role") == "user")
        return [i for i in items[start:] if i.get("type") == "function_call_output"]

    def reply(request):
        done = this_turn(request.get("input", []))
        k = turns.start_or_continue(request, not done)
        name, value = EDITS[k % len(EDITS)]
        if not done:
            return responses_reply(shell_call("cat nanochat/train.py"))
        if len(done) == 1:
            return responses_reply(shell_call(f"sed -i -E 's/^{name} = [^ ]+/{name} = {value}/' nanochat/train.py"))
        return responses_reply(output_text(f"Done.\nDESCRIPTION: {name} -> {value}\nRATIONALE: next on the list"))
    return reply


def night(agent: str, memory: bool, proposals: int) -> list[dict]:
    """One night of `proposals` agent proposals; per proposal: tokens the CLI reported, bytes sent, cost."""
    turns = Turns()
    server = (AnthropicServer(default=claude_model(turns)) if agent == "claude-code"
              else ResponsesServer(default=codex_model(turns)))
    lab = fresh_lab("tiny")
    with server:
        url = server.url if agent == "claude-code" else server.url + "/v1"
        options = RunOptions(lab=str(lab), agent=agent, agent_memory=memory, base_url=url, budget=1.0,
                             policy="greedy", max_experiments=proposals + 1, depth=0,
                             model=None if agent == "claude-code" else "gpt-5-codex")
        run_session(options)
    rows = [r for r in Lab.open(lab).rows() if r.get("agent") == agent and r.get("usage")]
    out = []
    for row in rows:  # a run re-run after a disturbance carries no usage of its own: one row a proposal
        usage = row["usage"]
        sent = usage["input_tokens"] + usage["cache_read_tokens"] + usage["cache_write_tokens"]
        if sent:
            out.append({"sent": sent, "cache_read": usage["cache_read_tokens"], "output": usage["output_tokens"],
                        "cost": usage.get("cost_usd", 0.0), "turn": (row.get("memory") or {}).get("turn", 0)})
    for number, proposal in enumerate(out):
        proposal["bytes"] = sum(turns.bytes[number]) if number < len(turns.bytes) else 0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proposals", type=int, default=10)
    parser.add_argument("--agents", default="claude-code,codex")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="cli-memory-home-", dir="/var/tmp"))  # Codex refuses homes under /tmp
    os.environ.update(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", HOME=str(home), CODEX_HOME=str(home / "codex"),
                      ANTHROPIC_API_KEY="sk-ant-benchmark", OPENAI_API_KEY="sk-benchmark")
    (home / "codex").mkdir()
    os.environ.pop("CLAUDE_CODE_OAUTH_TOKEN", None)
    for agent in args.agents.split(","):
        results = {mode: night(agent, mode == "memory", args.proposals) for mode in ("fresh", "memory")}
        print(f"\n{agent}: tokens sent per proposal (input + cache read + cache write, as the CLI reports them)")
        print(f"{'#':>3} {'fresh':>9} {'memory':>9} {'(turn)':>6} {'fresh KB':>9} {'memory KB':>9}"
              f" {'mem cache read':>14} {'fresh $':>8} {'memory $':>8}")
        fresh, remembered = results["fresh"], results["memory"]
        for k in range(min(len(fresh), len(remembered))):
            f, m = fresh[k], remembered[k]
            print(f"{k + 1:>3} {f['sent']:>9} {m['sent']:>9} {m['turn']:>6} {f['bytes'] / 1024:>9.1f}"
                  f" {m['bytes'] / 1024:>9.1f} {m['cache_read']:>14} {f['cost']:>8.4f} {m['cost']:>8.4f}")
        for mode, found in results.items():
            total = sum(p["sent"] for p in found)
            cost = sum(p["cost"] for p in found)
            print(f"{mode:>7}: {len(found)} proposals, {total} tokens sent in all, {total / max(1, len(found)):.0f} "
                  f"a proposal, {sum(p['cache_read'] for p in found)} of them cache reads, "
                  f"{sum(p['output'] for p in found)} output; cost ${cost:.4f} (the row's: the CLI's own figure, or the list price where the CLI reports none)")


if __name__ == "__main__":
    main()
