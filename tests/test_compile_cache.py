"""torch.compile's caches live in the lab, written by sandboxed runs and read by the next ones: a run of
the same graph compiles from the cache (it writes nothing new there), and the cache travels with the lab
(on Colab, a lab on Drive survives a runtime reset with it). Real inductor compiles, on the CPU."""
from __future__ import annotations

import subprocess

import pytest

from autoresearch_nb.lab.lab import Lab
from autoresearch_nb.run.workers import compile_cache
from conftest import cli, lab_check

pytestmark = pytest.mark.slow


def cached_files(lab) -> set[str]:
    root = compile_cache(Lab.open(lab))
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_a_second_run_of_the_same_graph_compiles_from_the_labs_cache(tiny_lab):
    train = tiny_lab / "nanochat" / "train.py"
    train.write_text(train.read_text().replace('COMPILE = DEVICE == "cuda"', "COMPILE = True", 1))
    subprocess.run(["git", "-C", str(tiny_lab), "commit", "-qam", "compile on the CPU"], check=True, capture_output=True)
    lab = Lab.open(tiny_lab)
    lab.config["startup_allowance"] = 120  # compiling on the CPU takes longer than the cpu clock's few seconds
    lab.save_config()

    first = cli("run", "--lab", str(tiny_lab), "--budget", "1", "--max-experiments", "1", timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    filled = cached_files(tiny_lab)
    assert any(name.startswith("inductor/") for name in filled), filled  # written from inside the sandbox

    second = cli("run", "--lab", str(tiny_lab), "--budget", "1", "--max-experiments", "2", "--resume", timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    rows = [r for r in Lab.open(tiny_lab).rows() if r["status"] != "disturbed"]  # run again, not counted
    assert len(rows) == 2 and all(r["status"] in ("keep", "discard") for r in rows), [(r["status"], r.get("reason")) for r in rows]
    assert cached_files(tiny_lab) == filled  # everything it needed was there
    lab_check(tiny_lab)
