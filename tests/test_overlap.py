"""A worker's next run starts up while its last one is evaluated, on real training: it is never started
before the last run's training process has ended, its training clock waits until the last evaluation
has ended, and no row is lost. Each run's own code and a slowed evaluator print their own times, so
the proof does not rest on the harness's word alone. Overlap is off unless asked for (--overlap):
the default night never overlaps."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from autoresearch_nb.lab.lab import Lab
from conftest import cli, lab_check

pytestmark = pytest.mark.slow

# The evaluation of a tiny model takes a fraction of a second; on a GPU it takes 2 s. This stand-in
# waits 1.5 s after "go", then runs the lab's fixed evaluator and says when it ended.
SLOW_EVALUATOR = '''import subprocess, sys, time
if sys.stdin.readline().strip() != "go":
    sys.exit(0)
time.sleep(1.5)
done = subprocess.run([sys.executable, "nanochat/prepare.py", "--evaluate", sys.argv[1]])
print(f"EVAL-END {time.time():.3f}", flush=True)
sys.exit(done.returncode)
'''
STAMP = re.compile(r"^(TOUCH|CLOCK|EVAL-END) ([0-9.]+)$", re.MULTILINE)


def stamped_lab(lab: Path) -> None:
    """train.py prints when it starts building its model and when its clock has started; the slowed
    evaluator prints when it ended. Committed as the lab's baseline."""
    train = lab / "nanochat" / "train.py"
    code = train.read_text()
    code = code.replace("vocab_size = load_tokenizer().vocab_size\n",
                        "vocab_size = load_tokenizer().vocab_size\n"
                        "print(f\"TOUCH {__import__('time').time():.3f}\", flush=True)\n", 1)
    code = code.replace("clock.start()\n", "clock.start()\nprint(f\"CLOCK {__import__('time').time():.3f}\", flush=True)\n", 1)
    assert code.count("TOUCH") == 1 and code.count("CLOCK {") == 1
    train.write_text(code)
    (lab.parent / "slow_eval.py").write_text(SLOW_EVALUATOR)
    config_path = lab / ".autoresearch" / "config.json"
    config = json.loads(config_path.read_text())
    config["evaluate"] = ["{python}", str(lab.parent / "slow_eval.py"), "{run_dir}"]
    config_path.write_text(json.dumps(config, indent=2))
    subprocess.run(["git", "-C", str(lab), "commit", "-qam", "stamps"], check=True, capture_output=True)


def runs_in_order(lab: Path) -> list[dict]:
    """Each run's own stamps (from its log) and the harness's span, in the order the runs started."""
    runs = []
    for row in Lab.open(lab).rows():
        if not row.get("log"):
            continue
        stamps = {name: float(value) for name, value in STAMP.findall((lab / row["log"]).read_text())}
        runs.append({**stamps, **{f"span_{k}": v for k, v in (row.get("span") or {}).items()}, "index": row["index"]})
    return sorted(runs, key=lambda run: run["span_spawned"])


def night(lab: Path, *extra: str) -> list[dict]:
    stamped_lab(lab)
    done = cli("run", "--lab", str(lab), "--budget", "2", "--max-experiments", "6", *extra, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = Lab.open(lab).rows()
    assert not [r for r in rows if r["status"] == "crash"], [(r["index"], r.get("reason")) for r in rows]
    lab_check(lab)
    runs = runs_in_order(lab)
    assert len(runs) >= 6 and all({"TOUCH", "CLOCK", "EVAL-END"} <= set(run) for run in runs), runs
    return runs


def test_the_next_run_starts_up_beside_the_last_evaluation_but_never_beside_its_training(tiny_lab):
    runs = night(tiny_lab, "--overlap")
    for last, run in zip(runs, runs[1:]):
        # started only once the last run's training process had ended: no timed phase shared
        assert run["span_spawned"] >= last["span_trained"], (last, run)
        assert run["TOUCH"] >= last["span_trained"], (last, run)
        # its own clock started only once the last evaluation had ended, by the evaluator's own word
        assert run["CLOCK"] >= last["EVAL-END"], (last, run)
        assert run["span_clock"] >= last["span_ended"], (last, run)
    # and the overlap happened: most runs built their model while the last one was being evaluated
    beside = [run for last, run in zip(runs, runs[1:]) if run["TOUCH"] < last["EVAL-END"]]
    assert len(beside) >= len(runs) // 2, runs
    rows = Lab.open(tiny_lab).rows()
    assert all((r.get("harness") or {}).get("overlap_s") is not None for r in rows if r.get("log")), rows


def test_by_default_each_run_starts_after_the_last_has_been_evaluated(tiny_lab):
    runs = night(tiny_lab)
    for last, run in zip(runs, runs[1:]):
        assert run["TOUCH"] > last["EVAL-END"], (last, run)
        assert run["span_spawned"] >= last["span_ended"], (last, run)
