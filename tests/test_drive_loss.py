"""A lab whose drive goes mid-night (Colab's Drive unmounted; here its folder moved away under the running
night, on real training): the night stops within seconds with one line saying what to do, its runs are
killed, nothing is written where the lab was (a folder made there would keep the drive from mounting
again), and once the drive is back `--resume` goes on with every row it had."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from autoresearch_nb.lab.lab import Lab
from conftest import cli, lab_check

pytestmark = pytest.mark.slow


def ledger_rows(lab) -> int:
    try:
        return len((lab / ".autoresearch" / "ledger.jsonl").read_text().splitlines())
    except OSError:
        return 0


def experiment_processes(lab) -> list[str]:
    done = subprocess.run(["pgrep", "-af", str(lab)], capture_output=True, text=True)
    return [line for line in done.stdout.splitlines() if "train.py" in line or "prepare.py" in line]


def test_a_drive_lost_mid_night_stops_it_cleanly_and_resume_goes_on(tmp_path):
    drive = tmp_path / "drive"
    lab = drive / "MyDrive" / "lab"
    assert cli("init", str(lab), "--profile", "tiny").returncode == 0
    night = subprocess.Popen([sys.executable, "-m", "autoresearch_nb", "run", "--lab", str(lab), "--budget", "2",
                              "--max-experiments", "40"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=os.environ.copy())
    deadline = time.monotonic() + 300
    while ledger_rows(lab) < 3 and time.monotonic() < deadline and night.poll() is None:
        time.sleep(0.2)
    assert ledger_rows(lab) >= 3, night.communicate()
    before = Lab.open(lab).rows()

    away = tmp_path / "unmounted"
    drive.rename(away)  # the mount is gone: the lab's path no longer leads anywhere
    lost_at = time.monotonic()
    out, err = night.communicate(timeout=120)
    stopped_after = time.monotonic() - lost_at

    assert night.returncode == 2, out + err
    message = err.strip().splitlines()
    assert len(message) == 1 and "cannot be read any more" in message[0] and "--resume" in message[0], err
    assert "Traceback" not in out + err
    assert stopped_after < 60, stopped_after
    assert not drive.exists(), sorted(str(p) for p in drive.rglob("*"))  # nothing begun again on the local disk
    assert not experiment_processes(away), experiment_processes(away)

    away.rename(drive)  # mounted again
    kept = Lab.open(lab).rows()
    assert kept[:len(before)] == before  # what it had recorded is all there
    done = cli("run", "--lab", str(lab), "--budget", "2", "--max-experiments", str(len(kept) + 2), "--resume",
               timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = Lab.open(lab).rows()
    assert rows[:len(kept)] == kept and len(rows) > len(kept)
    assert [r["index"] for r in rows] == list(range(len(rows)))
    lab_check(lab)
