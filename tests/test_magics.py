"""%autoresearch and %%program through a real IPython InteractiveShell (the terminal front end)."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from autoresearch_nb.front import magics
from autoresearch_nb.lab.lab import Lab
from autoresearch_nb.front.magics import CURRENT, frontend_of

CHARTER = "# Goal\nLower val_bpb on the CPU profile.\n\n- keep changes small\n"
SUBCOMMANDS = ("init", "start", "stop", "pause", "resume", "status", "wait", "show", "diff",
               "apply", "steer", "export", "ablate", "check")


@pytest.fixture
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "autoresearch_nb")
    yield ip
    if CURRENT.session is not None and CURRENT.session.alive:
        CURRENT.session.stop(now=True)
        CURRENT.session.wait(timeout=60)
    CURRENT.__init__()


def run(shell, source: str):
    """Run a cell as a person would; returns the ExecutionResult."""
    return shell.run_cell(source, store_history=False)


def usage_error(shell, capsys, source: str) -> str:
    """The one line a user mistake prints; fails if it was anything else."""
    result = run(shell, source)
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    out, err = capsys.readouterr()
    shown = (out + err).strip()
    assert "Traceback" not in shown
    lines = [line for line in shown.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("UsageError: "), shown
    return lines[0]


def test_help_lists_every_subcommand(shell, capsys):
    run(shell, "%autoresearch?")
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert f"%autoresearch {name}" in out
    assert "%%program" in out and "--max-experiments" in out and "--now" in out


@pytest.mark.parametrize("line, says", [
    ("", "give a command"),
    ("bogus", "invalid choice: 'bogus'"),
    ("show x", "invalid int value: 'x'"),
    ("start --policy fast", "invalid choice: 'fast'"),
    ("start --budget soon", "invalid float value: 'soon'"),
    ("steer", "say what to steer toward"),
    ("steer ''", "say what to steer toward"),
    ("diff 1 2 3", "unrecognized arguments: 3"),
    ("start --tag \"unclosed", "check the quotes"),
    ("stop", "no run in this kernel"),
    ("pause", "no run in this kernel"),
    ("wait", "no run in this kernel"),
    ("ablate --repeats two", "invalid int value: 'two'"),
])
def test_mistakes_give_one_clear_line(shell, capsys, line, says):
    assert says in usage_error(shell, capsys, f"%autoresearch {line}")


def test_agent_timeout_reaches_the_run_options(shell, capsys, tmp_path):
    from autoresearch_nb.front.magic_args import parse

    assert parse('start --agent command --command "claude -p" --agent-timeout 45')[0].agent_timeout == 45
    run(shell, f"%autoresearch init {tmp_path / 'lab'}")
    capsys.readouterr()
    message = usage_error(shell, capsys, f"%autoresearch start --lab {tmp_path / 'lab'} --agent command "
                                         "--command aider --agent-timeout -1")
    assert "--agent-timeout must be a positive number of seconds" in message


def test_a_missing_lab_says_how_to_make_one(shell, capsys, tmp_path):
    CURRENT.lab_dir = tmp_path / "nowhere"
    for line in ("status", "show 1", "diff 1", "apply 1", "export", "steer go faster"):
        message = usage_error(shell, capsys, f"%autoresearch {line}")
        assert "no lab at" in message and "init" in message
    assert "no lab at" in usage_error(shell, capsys, "%program")


def test_unload_removes_the_magics_and_load_brings_them_back(shell, capsys):
    run(shell, "%unload_ext autoresearch_nb")
    assert run(shell, "%autoresearch status").error_in_exec is not None
    assert "Line magic function `%autoresearch` not found" in capsys.readouterr().err
    run(shell, "%load_ext autoresearch_nb")
    assert "give a command" in usage_error(shell, capsys, "%autoresearch")


def test_frontend_detection():
    assert frontend_of(InteractiveShell.instance()) == "terminal"

    class ZMQInteractiveShell:
        kernel = object()

    assert frontend_of(ZMQInteractiveShell()) == "notebook"
    sys.modules["google.colab"] = types.ModuleType("google.colab")
    try:
        assert frontend_of(ZMQInteractiveShell()) == "colab"
    finally:
        del sys.modules["google.colab"]


def test_init_and_program_write_the_charter_and_show_the_change(shell, capsys, tmp_path):
    lab_dir = tmp_path / "lab"
    run(shell, f"%autoresearch init {lab_dir}")
    assert f"Created a lab in {lab_dir}" in capsys.readouterr().out
    before = (lab_dir / "program.md").read_text()

    result = run(shell, f"%%program\n{CHARTER}")
    assert result.success
    out = capsys.readouterr().out
    assert (lab_dir / "program.md").read_text() == CHARTER
    assert "+Lower val_bpb on the CPU profile." in out
    first_old_line = before.splitlines()[0]
    assert f"-{first_old_line}" in out

    run(shell, "%program")
    assert CHARTER.strip() in capsys.readouterr().out
    run(shell, f"%%program\n{CHARTER}")
    assert "unchanged" in capsys.readouterr().out

    run(shell, f"%autoresearch init {lab_dir}")
    assert "Using the existing lab" in capsys.readouterr().out


def test_program_creates_the_default_lab_when_there_is_none(shell, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    CURRENT.lab_dir = Path(magics.DEFAULT_LAB)
    run(shell, f"%%program\n{CHARTER}")
    out = capsys.readouterr().out
    assert "Created a lab in" in out
    assert (tmp_path / "autoresearch-lab" / "program.md").read_text() == CHARTER


@pytest.mark.slow
def test_a_short_run_from_start_to_apply(shell, capsys, tmp_path):
    lab_dir = tmp_path / "lab"
    run(shell, f"%autoresearch init {lab_dir}")
    run(shell, f"%%program\n{CHARTER}")
    capsys.readouterr()

    result = run(shell, "%autoresearch start --budget 2 --max-experiments 2 --policy greedy --tag t1")
    assert result.success, result.error_in_exec
    assert "Started a run" in capsys.readouterr().out
    assert CURRENT.session is not None

    again = usage_error(shell, capsys, "%autoresearch start")
    assert "already going" in again and "%autoresearch stop" in again and "status" in again

    run(shell, "%autoresearch steer prefer changes to the learning rate")
    assert "Noted" in capsys.readouterr().out

    run(shell, "%autoresearch status")
    status = capsys.readouterr().out
    assert re.search(r"\d+ changes? kept:", status) and "state:" in status

    run(shell, "%autoresearch wait --timeout 600")
    out = capsys.readouterr().out
    assert "Run ended" in out
    run(shell, "%autoresearch check")
    assert capsys.readouterr().out.startswith("ok: ")
    rows = CURRENT.session.snapshot()["rows"]
    assert len(rows) >= 2
    ran = next(r for r in reversed(rows) if r.get("commit") and r.get("role") != "baseline")
    n = ran["index"]

    run(shell, f"%autoresearch show {n}")
    shown = capsys.readouterr().out
    assert f"experiment {n}:" in shown and ran["description"] in shown
    assert "diff:" in shown or ran["status"] == "rejected"

    run(shell, f"%autoresearch diff {n}")
    assert "nanochat/train.py" in capsys.readouterr().out

    run(shell, f"%autoresearch apply {n}")
    assert f"Experiment {n}'s nanochat/train.py is in the next cell" in capsys.readouterr().out
    cell = shell.rl_next_input
    assert cell.startswith(f"# %autoresearch apply {n}: nanochat/train.py at commit")
    assert "def " in cell and len(cell.splitlines()) > 20

    working = lab_dir / "nanochat" / "train.py"
    run(shell, "%autoresearch apply 0 --write")
    assert "Wrote experiment 0's nanochat/train.py" in capsys.readouterr().out
    assert working.read_text() == Lab.open(lab_dir).file_at(0, "nanochat/train.py")
    kept = working.read_text()
    working.write_text(kept + "# edited by hand\n")
    run(shell, "%autoresearch check")  # the person's edit: the lab is no longer as the run left it
    said = capsys.readouterr().out
    assert "breaks 1 invariant" in said and "the work tree is not clean: nanochat/train.py" in said, said
    working.write_text(kept)

    run(shell, "%autoresearch stop")
    assert "already ended" in capsys.readouterr().out
    assert "ended" in usage_error(shell, capsys, "%autoresearch resume")
    ended = CURRENT.session
    assert "--resume" in usage_error(shell, capsys, "%autoresearch start --budget 2")
    assert CURRENT.session is ended, "a start that failed must not replace the kernel's run"

    run(shell, "%autoresearch status")
    status = capsys.readouterr().out
    assert f"lab {lab_dir}" in status and "state: finished" in status
    assert status.count("\n   ") >= len(rows), "one table line per experiment"
