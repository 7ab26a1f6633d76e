"""Prompt tokens per proposal (first vs cached) and the Claude agent's own overhead, on loopback.

Runs the real ClaudeAgent (real anthropic SDK) against the local Messages API server from
tests/servers.py, which counts tokens at about four characters a token and models prompt
caching at the request's breakpoints. Each scripted proposal is view -> insert -> submit.

    python benchmarks/agent_overhead.py [--proposals 20]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from autoresearch_nb.agents.base import Context  # noqa: E402
from autoresearch_nb.agents.claude import DEFAULT_MODEL, ClaudeAgent  # noqa: E402
from autoresearch_nb.agents.pricing import cost_usd  # noqa: E402
from servers import AnthropicServer, editor, message, submit  # noqa: E402

DEPTH = 20


def default_lab_files() -> tuple[str, str]:
    """The default charter and train.py from the repository (the lab template)."""
    return ((ROOT / "program.md").read_text(encoding="utf-8"),
            (ROOT / "nanochat" / "train.py").read_text(encoding="utf-8"))


def history(depth: int) -> list[dict]:
    """A plausible ledger `depth` experiments deep: a baseline, keeps, discards, a crash."""
    rows = [{"index": 0, "status": "keep", "val_bpb": 1.500000, "role": "baseline",
             "description": "baseline"}]
    best = 1.5
    for index in range(1, depth):
        if index % 7 == 0:
            rows.append({"index": index, "status": "crash", "kind": "oom", "val_bpb": None,
                         "description": f"double the batch size again (try {index})",
                         "reason": "CUDA out of memory while allocating the logits"})
            continue
        gain = index % 3 == 0
        best = best - 0.004 if gain else best
        rows.append({"index": index, "status": "keep" if gain else "discard",
                     "val_bpb": best if gain else best + 0.003 * (index % 4 + 1),
                     "description": f"experiment {index}: tweak the schedule and the width",
                     "role": "experiment"})
    return rows


def context(charter: str, train: str, depth: int) -> Context:
    rows = history(depth)
    ran = [r["val_bpb"] for r in rows if r.get("val_bpb") is not None]
    diff = "".join(f"-LEARNING_RATE_{i} = 0.0{i}\n+LEARNING_RATE_{i} = 0.0{i + 1}\n"
                   for i in range(depth))
    journal = "".join(f"- #{r['index']} {r['description']}: {r['status']}\n" for r in rows[1:])
    return Context(index=depth, charter=charter, files={"nanochat/train.py": train},
                   allowed=["nanochat/train.py"], locked=["nanochat/prepare.py"], history=rows,
                   best=min(ran) if ran else None, baseline=ran[0] if ran else None,
                   budget=300.0, best_diff=diff, journal=journal,
                   last_failure="Traceback...\ntorch.OutOfMemoryError: CUDA out of memory\n"
                   if depth >= 7 else "",
                   steering=["try a deeper, narrower model"] if depth else [],
                   profile={"gpu": "H100 80GB", "dtype": "bfloat16"})


def scripted_proposal(k: int) -> list[dict]:
    return [message(editor(command="view", path="nanochat/train.py")),
            message(editor(command="insert", path="nanochat/train.py", insert_line=0,
                           insert_text=f"# experiment {k}\n")),
            message(submit(f"experiment {k}", "measure the agent"))]


def measure_tokens(charter: str, train: str, depth: int) -> tuple[dict, dict, dict]:
    """Opening-request usage of a first proposal and of the next one (one more row of history)."""
    with AnthropicServer(scripted_proposal(0) + scripted_proposal(1)) as server:
        agent = ClaudeAgent(api_key="local", base_url=server.url, retry_backoff=0.001)
        first = agent.propose(context(charter, train, depth))
        after = context(charter, train, depth)
        after.history = after.history + [{"index": depth, "status": "discard", "val_bpb": 1.49,
                                          "description": "experiment 0"}]
        second = agent.propose(after)
        agent.close()
    return server.replies[0]["usage"], server.replies[3]["usage"], {"first": first.usage,
                                                                    "second": second.usage}


def measure_overhead(charter: str, train: str, proposals: int) -> list[float]:
    script = [step for k in range(proposals) for step in scripted_proposal(k)]
    with AnthropicServer(script) as server:
        agent = ClaudeAgent(api_key="local", base_url=server.url, retry_backoff=0.001)
        ctx = context(charter, train, DEPTH)
        agent.propose(ctx)  # warm up: imports, connection pool
        server.script = script[3:]
        walls = []
        for _ in range(proposals - 1):
            start = time.perf_counter()
            agent.propose(ctx)
            walls.append(time.perf_counter() - start)
        agent.close()
    return walls


def prompt_of(usage: dict) -> int:
    return (usage["input_tokens"] + usage["cache_read_input_tokens"]
            + usage["cache_creation_input_tokens"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proposals", type=int, default=20)
    args = parser.parse_args()
    charter, train = default_lab_files()
    print(f"model priced as {DEFAULT_MODEL}; tokens counted by the local server (~4 chars/token)")
    print(f"default charter {len(charter)} chars, nanochat/train.py {len(train)} chars\n")
    print(f"{'lab depth':>9} {'request':>22} {'prompt':>7} {'fresh':>7} {'cache rd':>8} "
          f"{'cache wr':>8}")
    for depth in (0, DEPTH):
        first, cached, totals = measure_tokens(charter, train, depth)
        for label, usage in (("first proposal, turn 1", first), ("next proposal, turn 1", cached)):
            print(f"{depth:>9} {label:>22} {prompt_of(usage):>7} {usage['input_tokens']:>7} "
                  f"{usage['cache_read_input_tokens']:>8} {usage['cache_creation_input_tokens']:>8}")
        for name, usage in totals.items():
            print(f"{depth:>9} {name + ' (3 turns) total':>22} "
                  f"{usage['input_tokens'] + usage['cache_read_tokens'] + usage['cache_write_tokens']:>7} "
                  f"{usage['input_tokens']:>7} {usage['cache_read_tokens']:>8} "
                  f"{usage['cache_write_tokens']:>8}   ${usage['cost_usd']:.4f}")
        uncached = cost_usd(DEFAULT_MODEL, {"input_tokens": prompt_of(first) * 3,
                                            "output_tokens": totals["second"]["output_tokens"]})
        print(f"{depth:>9} {'same 3 turns uncached':>22} {'':>7} {'':>7} {'':>8} {'':>8}   "
              f"${uncached:.4f} (at least)")
    walls = measure_overhead(charter, train, args.proposals)
    print(f"\nagent wall overhead per proposal (3 requests, local server, depth {DEPTH}, "
          f"n={len(walls)}): median {statistics.median(walls) * 1000:.1f} ms, "
          f"max {max(walls) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
