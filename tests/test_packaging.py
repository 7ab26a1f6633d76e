"""The wheel carries nanochat/ and program.md inside the package, from the one copy at the top."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_creates_a_lab_from_its_own_template(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("autoresearch_nb-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for rel in ("nanochat/prepare.py", "nanochat/train.py", "program.md"):
        packaged = f"autoresearch_nb/template/{rel}"
        assert packaged in names
        assert zipfile.ZipFile(wheel).read(packaged) == (REPO / rel).read_bytes()
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    lab = tmp_path / "lab"
    done = subprocess.run([sys.executable, "-c", "import sys, autoresearch_nb.lab as l; "
                           "print(l.template_dir()); sys.exit(l.__file__.startswith(sys.argv[1]) is False)",
                           str(site)], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(site / "autoresearch_nb" / "template")
    init = subprocess.run([sys.executable, "-m", "autoresearch_nb", "init", str(lab)], env=env,
                          capture_output=True, text=True, cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    assert (lab / "nanochat" / "train.py").read_bytes() == (REPO / "nanochat" / "train.py").read_bytes()
