"""The workers as Ray actors, on a local Ray instance that declares a fixed number of CPUs and GPUs: a scored
target with a worker killed mid-run (its job re-queued, recorded once), and a real nanochat run on the tiny
profile through the CLI, as a person starts one."""
from __future__ import annotations

import os
import signal

import pytest

ray = pytest.importorskip("ray", reason="Ray is the [ray] extra; scripts/test.sh installs it")

from autoresearch_nb.engine.loop import LoopOptions, ResearchLoop  # noqa: E402
from autoresearch_nb.run.ray_workers import RayPool  # noqa: E402
from autoresearch_nb.lab.worktrees import Worktrees  # noqa: E402
from conftest import cli  # noqa: E402
from test_loop import ScriptedAgent, assert_consistent, scored_lab  # noqa: E402
from test_workers import SCORED, switch  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_actors_run_experiments_and_a_killed_worker_has_its_job_re_queued(cluster, tmp_path):
    lab = scored_lab(tmp_path / "lab", baseline=SCORED)
    pool = RayPool.connect("auto", 2)
    assert sorted(identity["gpus"] for identity in pool.identities) == ["0", "1"]  # one GPU each
    agent = ScriptedAgent([switch("B", "B on"), switch("A", "A on"), switch("C", "C on")])
    loop = ResearchLoop(lab, agent, LoopOptions(budget=1.0, policy="greedy", profile="tiny", depth=1), pool=pool)
    killed = []

    def on_started(event):
        if event.kind == "experiment_started" and event.data["description"] == "B on" and not killed:
            slot = next(i for i in range(pool.size) if pool.name(i) == event.data["worker"])
            killed.append(pool.identities[slot]["pid"])
            os.kill(killed[0], signal.SIGKILL)

    loop.bus.subscribe(on_started)
    loop.run()
    rows = assert_consistent(lab)
    assert killed, "the run never started B"
    b = [r for r in rows if r["description"] == "B on" and not r.get("rebased")]
    assert len(b) == 1 and b[0]["status"] in ("keep", "discard"), b   # re-queued, recorded once
    assert not any(r["status"] == "interrupted" for r in rows)
    jobs = [r["job"] for r in rows if r.get("job") is not None]
    assert len(jobs) == len(set(jobs))
    assert {r["worker"].split(" ")[0] for r in rows if r.get("worker")} <= {"r0", "r1"}
    assert all(r["host"] for r in rows if r.get("worker"))
    assert all((lab.root / r["log"]).exists() for r in rows if r["status"] in ("keep", "discard"))
    assert Worktrees(lab).leftovers() == []


def test_a_real_tiny_run_on_ray_through_the_cli(tmp_path):
    lab = tmp_path / "lab"
    assert cli("init", str(lab), "--profile", "tiny").returncode == 0
    done = cli("run", "--lab", str(lab), "--ray", "local", "--workers", "2", "--budget", "2",
               "--max-experiments", "3", "--policy", "greedy", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 workers" in done.stdout and "reached --max-experiments 3" in done.stdout
    from autoresearch_nb.lab.lab import Lab

    rows = Lab.open(lab).rows()
    ran = [r for r in rows if r["status"] in ("keep", "discard")]
    assert len(ran) == 3 and all(r["val_bpb"] > 0 for r in ran), (
        [(r["status"], r["description"], r.get("error"), r.get("disturbance")) for r in rows], done.stdout)
    assert all(r["worker"].startswith(("r0", "r1")) for r in ran)
    log = (lab / ran[-1]["log"]).read_text()
    assert "evaluating in a separate process" in log  # the same boundary as a local worker
