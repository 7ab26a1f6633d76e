"""Shared test set-up: one prepared-data cache for the whole session, labs on the tiny profile."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory):
    """Tests never touch ~/.cache: data and tokenizers are built once per session here."""
    cache = os.environ.get("AUTORESEARCH_TEST_CACHE") or str(tmp_path_factory.mktemp("cache"))
    previous = os.environ.get("AUTORESEARCH_CACHE")
    os.environ["AUTORESEARCH_CACHE"] = cache
    yield Path(cache)
    if previous is None:
        os.environ.pop("AUTORESEARCH_CACHE", None)
    else:
        os.environ["AUTORESEARCH_CACHE"] = previous


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m autoresearch_nb ...` as a user would, capturing its output."""
    return subprocess.run([sys.executable, "-m", "autoresearch_nb", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def lab_check(lab) -> None:
    """The lab's invariant check, as a person runs it (`autoresearch-nb check`)."""
    done = cli("check", "--lab", str(lab))
    assert done.returncode == 0 and done.stdout.startswith("ok:"), done.stdout + done.stderr


def draft_usage(rows: list[dict], row: dict) -> dict:
    """What the draft behind `row` cost: it is recorded once, on the candidate's first run, which may be
    a disturbed row run again later (so the sums count each proposal once)."""
    usages = [r["usage"] for r in rows if r.get("commit") == row.get("commit") and r.get("usage")]
    assert len(usages) == 1, [(r["index"], r["status"], r.get("usage")) for r in rows if r.get("commit") == row.get("commit")]
    return usages[0]


@pytest.fixture
def tiny_lab(tmp_path):
    """A fresh lab on the tiny profile (5-second budget): real nanochat, real git, fast."""
    lab = tmp_path / "lab"
    done = cli("init", str(lab), "--profile", "tiny")
    assert done.returncode == 0, done.stderr
    return lab


def crippled_lab(tmp_path) -> tuple[Path, str]:
    """A tiny lab whose baseline learns nothing at all (every learning rate 0), committed; and the
    template's train.py, whose one change repairs it: a sure keep on real training, even on a loaded
    machine. (With MATRIX_LR alone at 0 the repair gained 0.095 at 165 steps, and a CI run that trained
    the repair at a slower pace than the baseline discarded it.)"""
    lab = tmp_path / "lab"
    assert cli("init", str(lab), "--profile", "tiny").returncode == 0
    train_py = lab / "nanochat" / "train.py"
    good = train_py.read_text()
    crippled = good
    for rate in ("MATRIX_LR = 0.02 ", "EMBED_LR = 0.3 ", "UNEMBED_LR = 0.004 "):
        assert crippled.count(rate) == 1, f"the template no longer sets {rate.strip()}: update crippled_lab"
        crippled = crippled.replace(rate, rate.split("=")[0] + "= 0.0 ")
    train_py.write_text(crippled)
    subprocess.run(["git", "-C", str(lab), "commit", "-qam", "a crippled baseline"], check=True, capture_output=True)
    return lab, good


NPM_AGENTS = Path(__file__).resolve().parent.parent / ".npm-agents" / "node_modules" / ".bin"


def npm_program(name: str, package: str, version: str) -> Path:
    """A coding-agent CLI scripts/test.sh installed from npm; the test fails, not skips, without it
    (CI must run the real program)."""
    program = NPM_AGENTS / name
    if not program.exists():
        pytest.fail(f"{name} is not installed at {program}: `bash scripts/test.sh` installs it "
                    f"(or: npm install --prefix .npm-agents {package}@{version})")
    return program
