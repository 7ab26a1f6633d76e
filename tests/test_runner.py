"""The runner: real subprocesses in their own process group, crash kinds, timeouts, the log, secrets."""
from __future__ import annotations

import json
import textwrap
import threading
import time
from pathlib import Path

import pytest

from autoresearch_nb.runner import Runner, clean_environment, parse_step

SUMMARY = textwrap.dedent("""\
    print("---")
    print("val_bpb:          1.234567")
    print("training_seconds: {seconds}")
    print("total_seconds:    9.0")
    print("peak_vram_mb:     0.0")
    print("num_steps:        12")
""")


def run_script(tmp_path: Path, body: str, budget: float = 5.0, timeout: float = 60.0, env: dict | None = None,
               on_step=None) -> tuple:
    """Run `body` as the experiment command; returns (result, runner, log text)."""
    script = tmp_path / "experiment.py"
    script.write_text(textwrap.dedent(body))
    log = tmp_path / "logs" / "0001.log"
    runner = Runner(["{python}", str(script)], tmp_path, env or clean_environment(), log, budget, timeout,
                    on_step=on_step)
    result = runner.run()
    return result, runner, log.read_text()


def gone(pid: int) -> bool:
    """True once `pid` no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def wait_gone(pid: int, patience: float = 10.0) -> bool:
    deadline = time.monotonic() + patience
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return gone(pid)


def test_a_good_run_returns_its_summary(tmp_path):
    result, _, log = run_script(tmp_path, SUMMARY.format(seconds=5.1))
    assert result.ok and result.kind is None
    assert result.summary["val_bpb"] == pytest.approx(1.234567)
    assert result.summary["num_steps"] == 12
    assert result.returncode == 0
    assert "val_bpb:          1.234567" in log and "exit code 0" in log


def test_syntax_error(tmp_path):
    result, _, _ = run_script(tmp_path, "def broken(:\n    pass\n")
    assert not result.ok and result.kind == "syntax"
    assert "SyntaxError" in result.reason


def test_exception_reports_the_tracebacks_last_line(tmp_path):
    result, _, log = run_script(tmp_path, """\
        def forward(x):
            raise ValueError("bad shape 3 x 7")
        print("starting")
        forward(1)
    """)
    assert not result.ok and result.kind == "exception"
    assert result.reason == "ValueError: bad shape 3 x 7"
    assert "Traceback" in result.tail and "Traceback" in log


def test_nan_loss(tmp_path):
    result, _, _ = run_script(tmp_path, """\
        import sys
        print("step 1 | loss 3.2 | progress 0.10")
        print("FAIL: nan loss at step 2", flush=True)
        sys.exit(1)
    """)
    assert not result.ok and result.kind == "nan"
    assert result.reason == "nan loss at step 2"


def test_a_fail_line_that_is_not_about_nan_is_an_exception(tmp_path):
    result, _, _ = run_script(tmp_path, """\
        import sys
        print("FAIL: the model is not causal: logits change by 0.3 when only later tokens change")
        sys.exit(1)
    """)
    assert result.kind == "exception" and result.reason.startswith("the model is not causal")


def test_out_of_memory_on_cpu(tmp_path):
    result, _, _ = run_script(tmp_path, "raise MemoryError('Unable to allocate 64.0 GiB')\n")
    assert not result.ok and result.kind == "oom"


def test_cuda_out_of_memory(tmp_path):
    result, _, _ = run_script(tmp_path, """\
        import torch
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    """)
    assert not result.ok and result.kind == "oom"
    assert "OutOfMemoryError" in result.reason


def test_timeout_kills_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    result, runner, log = run_script(tmp_path, f"""\
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print("started a data-loader worker", flush=True)
        time.sleep(300)
    """, timeout=3.0)
    assert not result.ok and result.kind == "timeout"
    assert wait_gone(runner.process.pid)
    assert wait_gone(int(pid_file.read_text())), "the experiment's own child outlived the timeout"
    assert "started a data-loader worker" in log


def test_training_past_the_budget(tmp_path):
    result, _, _ = run_script(tmp_path, SUMMARY.format(seconds=30.0), budget=5.0)
    assert not result.ok and result.kind == "budget"
    assert "30.0s" in result.reason
    assert result.summary["val_bpb"] == pytest.approx(1.234567)  # kept for the record, never judged


def test_killed_by_a_signal(tmp_path):
    result, _, _ = run_script(tmp_path, """\
        import os, signal
        print("about to be killed", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert not result.ok and result.kind == "killed"
    assert "SIGKILL" in result.reason


def test_stop_from_another_thread_is_interrupted(tmp_path):
    holder = {}

    def on_step(step):
        holder["step"] = step
        threading.Thread(target=holder["runner"].stop).start()

    script = tmp_path / "experiment.py"
    script.write_text("import time\nprint('step 1 | loss 4.0 | progress 0.05', flush=True)\ntime.sleep(300)\n")
    runner = Runner(["{python}", str(script)], tmp_path, clean_environment(), tmp_path / "x.log", 5.0, 120.0,
                    on_step=on_step)
    holder["runner"] = runner
    result = runner.run()
    assert holder["step"]["step"] == 1
    assert not result.ok and result.kind == "interrupted"
    assert wait_gone(runner.process.pid)


def test_stop_before_the_process_starts_still_stops_it(tmp_path):
    script = tmp_path / "experiment.py"
    script.write_text("import time\ntime.sleep(300)\n")
    runner = Runner(["{python}", str(script)], tmp_path, clean_environment(), tmp_path / "x.log", 5.0, 120.0)
    runner.stop()
    result = runner.run()
    assert result.kind == "interrupted"


def test_a_metric_printed_twice_is_not_a_result(tmp_path):
    result, _, _ = run_script(tmp_path, SUMMARY.format(seconds=5.0) + 'print("val_bpb:          0.100000")\n')
    assert not result.ok
    assert "stray val_bpb" in result.reason


def test_a_second_block_hidden_behind_many_lines_is_still_seen(tmp_path):
    padding = 'for i in range(1000):\n    print("filler", i)\n'
    result, _, _ = run_script(tmp_path, SUMMARY.format(seconds=5.0) + padding + SUMMARY.format(seconds=5.0))
    assert not result.ok
    assert "more than once" in result.reason


def test_a_run_without_a_summary_is_not_a_result(tmp_path):
    result, _, _ = run_script(tmp_path, "print('trained, forgot to evaluate')\n")
    assert not result.ok and result.kind == "exception"
    assert "without a summary" in result.reason


def test_the_command_that_cannot_start_is_an_exception(tmp_path):
    runner = Runner([str(tmp_path / "missing-binary")], tmp_path, clean_environment(), tmp_path / "x.log", 5, 10)
    result = runner.run()
    assert not result.ok and result.kind == "exception" and "could not start" in result.reason


def test_secrets_never_reach_the_experiment(tmp_path, monkeypatch):
    secrets = {"FOO_API_KEY": "sk-1", "ANTHROPIC_X": "a", "HF_TOKEN": "hf", "MY_PASSWORD": "p",
               "OPENAI_ORGANIZATION": "o", "GITHUB_TOKEN": "g", "aws_secret_access_key": "s"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("MY_ORDINARY_SETTING", "kept")
    _, _, log = run_script(tmp_path, "import json, os\nprint('ENV ' + json.dumps(dict(os.environ)))\n",
                           env=clean_environment({"AUTORESEARCH_SEED": 7}))
    seen = json.loads(next(line for line in log.splitlines() if line.startswith("ENV "))[4:])
    assert not set(secrets) & set(seen), set(secrets) & set(seen)
    assert seen["CUDA_VISIBLE_DEVICES"] == "3"
    assert seen["MY_ORDINARY_SETTING"] == "kept"
    assert seen["AUTORESEARCH_SEED"] == "7"


def test_the_log_is_written_line_by_line_and_steps_become_events(tmp_path):
    release = tmp_path / "release"
    seen = []
    holder = {}

    def on_step(step):
        # The line is in the log while the experiment is still running: a front end can tail it.
        seen.append((step, holder["log"].read_text(), holder["runner"].process.poll()))
        release.write_text("go")

    script = tmp_path / "experiment.py"
    script.write_text(textwrap.dedent(f"""\
        import os, time
        print("step 7 | loss 3.4120 | lr 0.0300 | tok/s 51234 | progress 0.41 | elapsed 24.6s", flush=True)
        deadline = time.time() + 60
        while not os.path.exists({str(release)!r}) and time.time() < deadline:
            time.sleep(0.02)
    """) + SUMMARY.format(seconds=5.0))
    holder["log"] = tmp_path / "logs" / "0003.log"
    runner = Runner(["{python}", str(script)], tmp_path, clean_environment(), holder["log"], 5.0, 120.0,
                    on_step=on_step)
    holder["runner"] = runner
    result = runner.run()
    assert result.ok
    step, log_then, returncode_then = seen[0]
    assert step == {"step": 7, "loss": 3.412, "lr": 0.03, "tok_s": 51234.0, "progress": 0.41, "elapsed": 24.6}
    assert "step 7 | loss 3.4120" in log_then and "val_bpb" not in log_then
    assert returncode_then is None


def test_parse_step_ignores_other_lines():
    assert parse_step("params 0.01M | depth 1") is None
    assert parse_step("stepping up the lr") is None
    assert parse_step("step 3 | loss nan-ish | progress 0.2")["progress"] == 0.2


TAMPERED_CLOCKS = {
    "a helper function winds the start forward": ("clock.start()\n", "clock.start()\n\n\ndef warm(c):\n"
                                                  "    c.started += 0.5\n\n\nwarm(clock)\n"),
    "a subclass reports half the time": ("clock = TrainingClock()\n", "class Clock(TrainingClock):\n"
                                         "    @property\n    def elapsed(self):\n        return super().elapsed / 2\n\n\n"
                                         "clock = Clock()\n"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TAMPERED_CLOCKS))
def test_the_fixed_finish_refuses_a_tampered_clock(tiny_lab, name):
    # The audit cannot follow every alias of the clock; the fixed finish() must notice instead,
    # or the run trains longer than its budget and reports that it did not.
    import subprocess
    import sys

    prepared = subprocess.run([sys.executable, "nanochat/prepare.py", "--profile", "tiny"], cwd=tiny_lab,
                              capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    old, new = TAMPERED_CLOCKS[name]
    train = tiny_lab / "nanochat" / "train.py"
    assert train.read_text().count(old) == 1
    train.write_text(train.read_text().replace(old, new))
    env = clean_environment({"AUTORESEARCH_BUDGET": 1, "AUTORESEARCH_PROFILE": "tiny", "AUTORESEARCH_SEED": 42})
    runner = Runner(["{python}", "nanochat/train.py"], tiny_lab, env, tiny_lab / "run.log", 1.0, 120.0)
    result = runner.run()
    assert not result.ok and "val_bpb" not in result.summary, result.tail
    assert "clock" in result.reason, result.reason
