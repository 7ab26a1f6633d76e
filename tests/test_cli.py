"""The `autoresearch-nb` command as a person uses it: init, run (real nanochat on the tiny profile),
status, steer, and one clear line with exit code 2 for each mistake."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from autoresearch_nb.lab.lab import Lab
from autoresearch_nb.lab.ledger import RESULTS_HEADER, read_results_tsv
from autoresearch_nb.front.progress import STATUS_MARK
from conftest import cli


def git(root: Path, *args: str, env: dict | None = None) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autoresearch-nb: "), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return lines[0]


# -- init -------------------------------------------------------------------------------------

def test_init_works_where_git_has_no_identity(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), GIT_CONFIG_NOSYSTEM="1")
    assert subprocess.run(["git", "config", "user.email"], env=env, capture_output=True).returncode != 0
    lab = tmp_path / "lab"
    done = subprocess.run([*cli_prefix(), "init", str(lab)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert git(lab, "log", "--format=%s", env=env) == "lab created from the autoresearch-nb template"
    git(lab, "commit", "--allow-empty", "-qm", "the loop can commit too", env=env)
    assert git(lab, "status", "--porcelain", env=env) == ""
    for rel in ("program.md", "nanochat/prepare.py", "nanochat/train.py", ".gitignore"):
        assert (lab / rel).exists()
    config = json.loads((lab / ".autoresearch" / "config.json").read_text())
    assert config["allowed"] == ["nanochat/train.py"] and config["locked"] == ["nanochat/prepare.py"]
    assert config["metric"] == "val_bpb" and config["direction"] == "lower"
    assert not list(home.iterdir()), "init wrote into the user's home"


def cli_prefix() -> list[str]:
    import sys

    return [sys.executable, "-m", "autoresearch_nb"]


def test_init_on_an_existing_lab_says_so_and_changes_nothing(tiny_lab):
    before = {p: p.read_bytes() for p in tiny_lab.rglob("*") if p.is_file() and ".git" not in p.parts}
    head = git(tiny_lab, "rev-parse", "HEAD")
    done = cli("init", str(tiny_lab), "--profile", "cpu")
    assert done.returncode == 0
    assert "already a lab" in done.stdout and "nothing changed" in done.stdout
    assert {p: p.read_bytes() for p in tiny_lab.rglob("*") if p.is_file() and ".git" not in p.parts} == before
    assert git(tiny_lab, "rev-parse", "HEAD") == head


def test_init_into_a_directory_with_other_files_refuses(tmp_path):
    (tmp_path / "mine.txt").write_text("do not touch")
    message = one_line_error(cli("init", str(tmp_path)))
    assert "not empty" in message
    assert not (tmp_path / ".git").exists()


# -- mistakes a person can make -----------------------------------------------------------------

def test_run_without_a_lab(tmp_path):
    message = one_line_error(cli("run", "--lab", str(tmp_path / "nowhere"), "--budget", "1"))
    assert "autoresearch-nb init" in message


def test_status_without_a_lab(tmp_path):
    assert "autoresearch-nb init" in one_line_error(cli("status", "--lab", str(tmp_path / "nowhere")))


def test_a_lab_from_another_version(tiny_lab):
    path = tiny_lab / ".autoresearch" / "config.json"
    config = json.loads(path.read_text())
    config["format"] = 99
    path.write_text(json.dumps(config))
    message = one_line_error(cli("run", "--lab", str(tiny_lab), "--budget", "1"))
    assert "another version" in message and "init" in message


def test_a_tree_edited_by_hand(tiny_lab):
    train = tiny_lab / "nanochat" / "train.py"
    train.write_text(train.read_text().replace("HEAD_DIM = 64", "HEAD_DIM = 16"))
    message = one_line_error(cli("run", "--lab", str(tiny_lab), "--budget", "1"))
    assert "nanochat/train.py" in message and "commit" in message
    assert "HEAD_DIM = 16" in train.read_text()  # the person's edit is theirs to keep or drop
    assert Lab.open(tiny_lab).rows() == []


def test_a_locked_file_edited_by_hand(tiny_lab):
    prepare = tiny_lab / "nanochat" / "prepare.py"
    prepare.write_text(prepare.read_text() + "\n# tuned\n")
    message = one_line_error(cli("run", "--lab", str(tiny_lab), "--budget", "1"))
    assert "nanochat/prepare.py" in message and "locked" in message


@pytest.mark.parametrize("args, words", [
    (["--agent", "gpt-genius"], ["unknown agent", "heuristic"]),
    (["--budget", "0"], ["--budget", "positive"]),
    (["--budget", "-5"], ["--budget", "positive"]),
    (["--max-experiments", "0"], ["--max-experiments"]),
    (["--agent", "openai"], ["--base-url"]),
    (["--agent", "command", "--command", "aider", "--agent-timeout", "0"], ["--agent-timeout", "positive"]),
    (["--agent-timeout", "60"], ["--agent-timeout", "claude-code", "codex or command"]),
    (["--agent-memory"], ["--agent-memory", "claude-code or codex"]),
    (["--agent", "codex", "--max-cost", "1"], ["--max-cost", "Codex reports none", "--model gpt-5-codex"]),
    (["--agent", "command", "--command", "aider", "--agent-memory"], ["--agent-memory", "claude-code or codex"]),
])
def test_bad_run_options(tiny_lab, args, words):
    message = one_line_error(cli("run", "--lab", str(tiny_lab), *args))
    assert all(word in message for word in words), message
    assert Lab.open(tiny_lab).branch() == "main"


def test_init_with_budget_zero(tmp_path):
    assert "--budget" in one_line_error(cli("init", str(tmp_path / "lab"), "--budget", "0"))


# -- a real run -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_run(tmp_path_factory, data_cache):
    """A real offline research run on nanochat: heuristic agent, tiny profile, 1 s budget, 4 runs."""
    lab = tmp_path_factory.mktemp("real") / "lab"
    assert cli("init", str(lab), "--profile", "tiny").returncode == 0
    steer = cli("steer", "--lab", str(lab), "prefer", "learning-rate", "changes")
    done = cli("run", "--lab", str(lab), "--budget", "1", "--max-experiments", "4", "--policy", "greedy", "--tag", "t1")
    return lab, done, steer


@pytest.mark.slow
def test_the_run_finishes_cleanly_on_its_branch(real_run):
    lab_dir, done, _ = real_run
    assert done.returncode == 0, done.stdout + done.stderr
    lab = Lab.open(lab_dir)
    assert lab.branch() == "autoresearch/t1"
    assert lab.dirty_files() == [] and not lab.inflight_path.exists()
    assert "reached --max-experiments 4" in done.stdout


@pytest.mark.slow
def test_the_ledger_and_results_tsv_agree(real_run):
    lab = Lab.open(real_run[0])
    rows = lab.rows()
    assert [r["index"] for r in rows] == list(range(len(rows)))
    # (a run slowed by other work on the machine is "disturbed" and run again: not the verdict's row)
    first = next(r for r in rows if r["status"] != "disturbed")
    assert first["role"] == "baseline" and first["status"] == "keep" and first["val_bpb"] > 0
    ran = [r for r in rows if r["status"] in ("keep", "discard", "crash", "interrupted")]
    assert len(ran) == 4  # --max-experiments bounds the charged runs
    assert lab.results_path.read_text().splitlines()[0] == RESULTS_HEADER
    results = read_results_tsv(lab.results_path)
    shown = [r for r in rows if r["status"] in ("keep", "discard", "crash", "interrupted", "disturbed")]
    assert [(r["commit"], r["status"]) for r in results] == \
        [(r["commit"], "discard" if r["status"] == "disturbed" else r["status"]) for r in shown]
    results = [line for line, r in zip(results, shown) if r["status"] != "disturbed"]
    for row, line in zip(ran, results):
        if row["status"] in ("keep", "discard"):
            assert line["val_bpb"] == pytest.approx(row["val_bpb"], abs=1e-6)
            assert (lab.root / row["log"]).exists() and "val_bpb:" in lab.log_tail(row["index"])
        assert row["agent"] == "heuristic" and row["timings"]["run_s"] > 0


@pytest.mark.slow
def test_the_branch_holds_exactly_the_kept_changes(real_run):
    lab = Lab.open(real_run[0])
    rows = lab.rows()
    kept = [r for r in rows if r["status"] == "keep"]
    assert lab.short(lab.head()) == kept[-1]["commit"]
    log = git(lab.root, "log", "--format=%h", "--abbrev=7", "main..HEAD").split()
    experiments = [r for r in kept if r["role"] == "experiment"]
    assert sorted(log) == sorted(r["commit"] for r in experiments)
    for row in rows:
        if row["status"] == "discard" and row["role"] == "experiment":
            # not on the branch, but kept reachable for show/diff
            assert row["commit"] not in log
            assert lab.file_at(row["index"]) != lab.file_at_commit(row["parent"], "nanochat/train.py")
            assert git(lab.root, "rev-parse", "--short=7", f"refs/experiments/{row['commit']}") == row["commit"]
    # each experiment's diff is the one change it describes
    for row in rows:
        if row["role"] == "experiment" and row.get("commit"):
            diff = lab.diff(row["index"])
            assert diff.count("\n+") - diff.count("\n+++") >= 1
            assert row["diff"]["files"] == 1


@pytest.mark.slow
def test_terminal_progress_shows_each_experiment(real_run):
    lab_dir, done, _ = real_run
    out = done.stdout
    assert "run t1 on autoresearch/t1" in out and "heuristic baseline" in out
    rows = Lab.open(lab_dir).rows()
    for row in rows:
        mark = STATUS_MARK[row["status"]].strip()
        assert any(line.split()[:2] == [str(row["index"]), mark] for line in out.splitlines()), row
    # four counted runs, and any disturbed from outside on top (run again, not counted)
    disturbed = sum(1 for row in rows if row["status"] == "disturbed")
    assert out.strip().splitlines()[-1].startswith(f"done: {4 + disturbed} runs"), out.strip().splitlines()[-1]


@pytest.mark.slow
def test_status_shows_the_table_the_best_and_the_counts(real_run):
    lab_dir = real_run[0]
    done = cli("status", "--lab", str(lab_dir))
    assert done.returncode == 0, done.stderr
    rows = Lab.open(lab_dir).rows()
    for row in rows:
        assert row["description"][:30] in done.stdout
    kept = [r for r in rows if r["status"] == "keep"]
    assert re.search(rf"\b(keep|kept):? {len(kept)}\b|\b{len(kept)} (keep|kept)\b", done.stdout), done.stdout
    assert f"best val_bpb {kept[-1]['val_bpb']:.6f}" in done.stdout
    assert "in flight" not in done.stdout


@pytest.mark.slow
def test_steering_note_is_kept_in_the_lab(real_run):
    lab_dir, _, steer = real_run
    assert steer.returncode == 0
    assert "prefer learning-rate changes" in (lab_dir / ".autoresearch" / "steering.md").read_text()


@pytest.mark.slow
def test_a_second_run_in_the_same_lab_must_say_resume(real_run):
    message = one_line_error(cli("run", "--lab", str(real_run[0]), "--budget", "1"))
    assert "--resume" in message


@pytest.mark.slow
def test_each_run_is_evaluated_in_a_second_process_from_what_it_handed_over(real_run):
    lab = Lab.open(real_run[0])
    ran = [r for r in lab.rows() if r["status"] in ("keep", "discard")]
    assert ran
    for row in ran:
        log = (lab.root / row["log"]).read_text()
        assert "training clock started" in log and "handover: model exported" in log
        assert "evaluating in a separate process" in log and "--evaluate" in log
        assert f"val_bpb:          {row['val_bpb']:.6f}" in log.split("the run's summary")[1]
        handed = lab.state_dir / "runs" / f"run-{row['job']:05d}"
        assert (handed / "handover.json").exists() and not (handed / "model.pt2").exists()


def _flags(parser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings} - {"-h", "--help"}


def test_the_cli_and_the_magic_take_the_same_run_options():
    from autoresearch_nb.front.cli import build_parser
    from autoresearch_nb.front.magic_args import COMMANDS, parse
    from autoresearch_nb.front.options import run_options

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    started = {name: parser for name, parser, _ in COMMANDS.listed}
    assert _flags(commands["run"]) == _flags(started["start"])
    assert _flags(commands["ablate"]) == _flags(started["ablate"])
    line = "start --noise-runs 3 --seed 7 --gpus 0,1 --policy greedy --depth 0"
    from_magic = run_options(parse(line)[0], "lab")
    from_cli = run_options(build_parser().parse_args(["run", *line.split()[1:]]), "lab")
    assert from_magic == from_cli
    assert (from_magic.noise_runs, from_magic.seed, from_magic.gpus, from_magic.policy, from_magic.depth) == \
        (3, 7, ["0", "1"], "greedy", 0)
