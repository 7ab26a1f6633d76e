"""A check of the checks: break each defence in turn, in a copy of the tree, and see which tests fail.

Each mutation is an edit of the product's code that switches one defence off (it must apply exactly
once, or the script stops: the code moved and the mutation needs updating). The tests named for it run
against the mutated copy; a defence that no test notices is a defence the suite does not prove.
    python scripts/mutate.py [--only NAME] [--markdown docs/mutations.md]
Exit code 0 when every mutation made at least one test fail.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name: (what is broken, [(file, old, new)], pytest arguments)
MUTATIONS = {
    "evaluator state check": (
        "the evaluator accepts a model that changes its buffers, and one whose output drifts between calls",
        [("nanochat/prepare.py", "    if signature.buffers_to_mutate or signature.user_inputs_to_mutate:\n", "    if False:\n"),
         ("nanochat/prepare.py", "    if not math.isfinite(drift) or drift > tolerance:\n", "    if False:\n")],
        ["tests/test_redteam.py", "-k", "(buffer or plain) and refused_or_score"]),
    "evaluator causality probe": (
        "the evaluator accepts a model whose outputs move when later tokens change",
        [("nanochat/prepare.py", "    if not math.isfinite(leak) or leak > tolerance:\n", "    if False:\n")],
        ["tests/test_redteam.py", "-k", "(leak or reads) and refused_or_score"]),
    "sandbox network rule": (
        "bubblewrap runs the experiment in the host's network namespace",
        [("autoresearch_nb/run/sandbox.py", 'NAMESPACES = ("--unshare-net", ', "NAMESPACES = (")],
        ["tests/test_sandbox.py", "-k", "loopback or internet"]),
    "sandbox file rule": (
        "bubblewrap mounts the file system and the lab writable",
        [("autoresearch_nb/run/sandbox.py", '"--ro-bind", "/", "/", *_devices(), "--proc", "/proc"]\n    for',
          '"--bind", "/", "/", *_devices(), "--proc", "/proc"]\n    for'),
         ("autoresearch_nb/run/sandbox.py", '["--ro-bind-try", str(path), str(path)] if kind == 1',
          '["--bind-try", str(path), str(path)] if kind == 1')],
        ["tests/test_sandbox.py", "-k", "write_into_the_lab"]),
    "judge noise rule": (
        "the default policy keeps any improvement, however small against the noise (greedy's rule)",
        [("autoresearch_nb/judge/judge.py", '    if policy == "greedy":\n', "    if True:\n")],
        ["tests/test_judge.py"]),
    "locked-file guard": (
        "the runner no longer compares the run's locked files after training and evaluation",
        [("autoresearch_nb/run/runner.py", "        changed = guard.restore_changed()\n        if changed and not stopped:",
          "        changed = []\n        if changed and not stopped:"),
         ("autoresearch_nb/run/runner.py", "        changed = guard.restore_changed()\n        if changed:\n",
          "        changed = []\n        if changed:\n")],
        ["tests/test_runner.py", "-k", "records_is_refused"]),
    "record keeper": (
        "the coordinator no longer notices a record it did not write",
        [("autoresearch_nb/lab/recordkeeper.py", "        known = self._known[path]\n        if _read(path) == known:\n",
          "        known = self._known[path]\n        if True:\n")],
        ["tests/test_concurrency.py", "-k", "unsandboxed"]),
    "exactly-once re-queueing": (
        "a resume re-queues each run that was under way twice",
        [("autoresearch_nb/engine/inflight.py", "        kept.append(track)\n",
          "        kept.append(track)\n        kept.append(Track.load({**track.record(), \"id\": state.new_id()}))\n")],
        ["tests/test_resume.py", "-k", "exactly_once or two_workers"]),
}


def mutated_copy(edits) -> Path:
    """The tracked files of this checkout, copied and edited."""
    copy = Path(tempfile.mkdtemp(prefix="arnb-mutant-")) / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, copy / rel)
    for rel, old, new in edits:
        path = copy / rel
        text = path.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"the mutation no longer applies to {rel} ({old.strip()[:60]!r}): update scripts/mutate.py")
        path.write_text(text.replace(old, new))
    return copy


def run(name: str) -> dict:
    what, edits, tests = MUTATIONS[name]
    copy = mutated_copy(edits)
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(copy), "COLUMNS": "1000"}  # the mutated package shadows the installed one
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *tests],
                          cwd=copy, env=env, capture_output=True, text=True)
    # "FAILED tests/x.py::name[a parameter with spaces] - why": the why tells a real catch from a break
    found = re.findall(r"^FAILED (.+?)(?: - (.*))?$", done.stdout, re.M)
    failed = sorted({test for test, _ in found})
    said = {test: why for test, why in found}
    passed = re.search(r"(\d+) passed", done.stdout)
    shutil.rmtree(copy.parent, ignore_errors=True)
    return {"name": name, "what": what, "tests": " ".join(tests), "failed": failed, "said": said,
            "passed": int(passed.group(1)) if passed else 0, "seconds": time.monotonic() - started,
            "tail": done.stdout.strip().splitlines()[-1:] or [done.stderr[-300:]]}


def _cell(text: str) -> str:
    return text[:160].replace("|", "\\|")


def table(results: list[dict]) -> str:
    lines = ["| defence broken | how | tests run | failed |", "|---|---|---|---|"]
    for r in results:
        failed = "<br>".join(f"`{f.split('::', 1)[1]}`: {_cell(r['said'].get(f, ''))}" for f in r["failed"]) or "**none**"
        lines.append(f"| {r['name']} | {r['what']} | `{r['tests']}` | {len(r['failed'])}: {failed} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=list(MUTATIONS), help="run just this mutation")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    results = []
    for name in args.only or list(MUTATIONS):
        result = run(name)
        results.append(result)
        print(f"{name}: {len(result['failed'])} failed, {result['passed']} passed in {result['seconds']:.0f} s "
              f"({result['tail'][0]})", flush=True)
        for test, why in result["said"].items():
            print(f"    {test.split('::', 1)[1]}: {why[:240]}", flush=True)
    print("\n" + table(results))
    if args.markdown:
        Path(args.markdown).write_text(table(results) + "\n")
    unnoticed = [r["name"] for r in results if not r["failed"]]
    if unnoticed:
        print(f"\nno test noticed: {', '.join(unnoticed)}")
    return 1 if unnoticed else 0


if __name__ == "__main__":
    sys.exit(main())
