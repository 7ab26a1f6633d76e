"""How the notebook feels during a run: trivial-cell latency (nbclient), dashboard bytes and CPU.

    python benchmarks/kernel_latency.py [--budget 20] [--experiments 3] [--cells 50]

Runs a real kernel through nbclient in a scratch directory: 50 trivial cells on an idle kernel,
then an offline run (heuristic agent) and 50 trivial cells while an experiment trains. Inside the
kernel it counts the comm_msg payload the dashboard sends (JSON + binary buffers) per render,
and the CPU seconds (thread time) spent folding events and rendering, per minute of the run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent

INSTRUMENT = """import json, time
from autoresearch_nb.front.magics import CURRENT
BENCH = {"bytes": 0, "messages": 0, "render_cpu": 0.0, "fold_cpu": 0.0, "renders": 0,
         "started": time.time()}
_dashboard = CURRENT.dashboard
_comm_class = type(_dashboard.widget.comm)
_publish = _comm_class.publish_msg
def _counting_publish(self, msg_type, data=None, metadata=None, buffers=None, **keys):
    if msg_type == "comm_msg":
        BENCH["bytes"] += len(json.dumps(data, default=str)) + sum(len(memoryview(b).cast("B")) for b in buffers or [])
        BENCH["messages"] += 1
    return _publish(self, msg_type, data=data, metadata=metadata, buffers=buffers, **keys)
_comm_class.publish_msg = _counting_publish
_render, _apply = _dashboard.render, _dashboard.view.apply
def _timed_render():
    before = time.thread_time()
    try:
        return _render()
    finally:
        BENCH["render_cpu"] += time.thread_time() - before
        BENCH["renders"] += 1
def _timed_apply(event):
    before = time.thread_time()
    try:
        return _apply(event)
    finally:
        BENCH["fold_cpu"] += time.thread_time() - before
_dashboard.render, _dashboard.view.apply = _timed_render, _timed_apply"""

UNTIL_TRAINING = """deadline = time.time() + 600
while time.time() < deadline and CURRENT.session.alive and (
        not CURRENT.session.snapshot()["current"] or CURRENT.session.state != "running"):
    time.sleep(0.1)
print(CURRENT.session.snapshot()["current"])"""

REPORT = """BENCH["wall"] = time.time() - BENCH["started"]
print(json.dumps(BENCH))"""


def build(args) -> tuple[nbformat.NotebookNode, range, range]:
    trivial = ["1 + 1"] * args.cells
    sources = ["%load_ext autoresearch_nb", *trivial,
               f"%autoresearch start --agent heuristic --budget {args.budget} --policy greedy "
               f"--max-experiments {args.experiments} --tag bench",
               INSTRUMENT, UNTIL_TRAINING, *trivial,
               "%autoresearch wait", REPORT]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    idle = range(1, 1 + args.cells)
    busy_start = 1 + args.cells + 3
    return nb, idle, range(busy_start, busy_start + args.cells)


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    return (f"{name}: median {statistics.median(ms):.1f} ms, worst {ms[-1]:.1f} ms, "
            f"p90 {ms[int(0.9 * (len(ms) - 1))]:.1f} ms (n={len(ms)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=20.0, help="training seconds per experiment")
    parser.add_argument("--experiments", type=int, default=3)
    parser.add_argument("--cells", type=int, default=50)
    args = parser.parse_args()

    nb, idle, busy = build(args)
    started, latency = {}, {}

    def on_cell_execute(cell, cell_index):
        started[cell_index] = time.perf_counter()

    def on_cell_executed(cell, cell_index, execute_reply):
        latency[cell_index] = time.perf_counter() - started[cell_index]

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="arnb-bench-") as scratch:
        client = NotebookClient(nb, timeout=1800, kernel_name="python3",
                                resources={"metadata": {"path": scratch}},
                                on_cell_execute=on_cell_execute, on_cell_executed=on_cell_executed)
        with client.setup_kernel(env=env):
            for index in range(len(nb.cells)):
                client.execute_cell(nb.cells[index], index)
    report = json.loads(nb.cells[-1].outputs[0]["text"].strip().splitlines()[-1])
    training = nb.cells[busy.start - 1].outputs[0]["text"].strip()

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; budget {args.budget:g}s, "
          f"{args.experiments} experiments")
    print(summary("trivial cell, idle kernel", [latency[i] for i in idle]))
    print(summary("trivial cell while an experiment trains", [latency[i] for i in busy]))
    print(f"  (training during those cells: {training[:100]})")
    renders = max(report["renders"], 1)
    minutes = report["wall"] / 60
    print(f"dashboard: {report['renders']} renders, {report['messages']} comm messages, "
          f"{report['bytes'] / 1024:.1f} KiB in {report['wall']:.0f} s of run")
    print(f"  bytes per dashboard update: {report['bytes'] / renders / 1024:.1f} KiB mean "
          f"({report['bytes'] / max(report['wall'], 1e-9) / 1024:.1f} KiB/s)")
    print(f"  CPU per minute of run: {(report['render_cpu'] + report['fold_cpu']) / minutes:.2f} s "
          f"(render {report['render_cpu'] / minutes:.2f} s, event folding "
          f"{report['fold_cpu'] / minutes:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
