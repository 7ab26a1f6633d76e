"""The same workers as Ray actors, one GPU each, anywhere on a cluster (pip install autoresearch-nb[ray]).

An actor gets a job as plain data: the job id, every tracked file of the code's commit, the seed,
the budget and the lab's config. It writes the files into a workspace of its own on its node,
prepares the data once per node (the node's cache), runs the experiment with the same Runner
as a local worker (sandbox, second-process evaluation) and returns the result and the log. The
coordinator in the notebook or CLI stays the only writer of the branch and the ledger; a job
whose actor is lost comes back as ("lost", job id, why) and is re-queued, and the slot gets a
new actor.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

POLL_S = 1.0
LOG_LIMIT = 4 * 1024 * 1024   # the log that comes back to the lab


def _ray():
    try:
        import ray
    except ImportError:
        from ..errors import LabError

        raise LabError("--ray needs Ray: pip install 'autoresearch-nb[ray]'") from None
    return ray


class ExperimentActor:
    """Runs jobs on its node. Methods: probe (the node's conditions), run (one job), progress, stop."""

    def __init__(self, cache: str | None = None):
        self.workspace = Path(tempfile.mkdtemp(prefix="autoresearch-actor-"))
        if cache:
            os.environ["AUTORESEARCH_CACHE"] = cache
        self.runner = None
        self.steps: list[dict] = []
        self._lock = threading.Lock()
        self._probes: dict[str, dict] = {}

    def identity(self) -> dict:
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES") or ""
        return {"host": socket.gethostname(), "pid": os.getpid(), "gpus": gpus}

    def probe(self, files: dict, config: dict) -> dict:
        """The node's conditions for this lab, preparing its data the first time (once per node:
        the data cache is the node's, and prepare.py builds it atomically)."""
        key = json.dumps([config.get("data"), config.get("profile"), config.get("byte_level")])
        if key not in self._probes:
            tree = self._write(self.workspace / "probe", files)
            command = [sys.executable, "nanochat/prepare.py", "--conditions", "--data", config.get("data", "builtin")]
            if config.get("profile") not in (None, "auto"):
                command += ["--profile", config["profile"]]
            if config.get("byte_level"):
                command.append("--byte-level")
            env = {k: v for k, v in os.environ.items() if k != "AUTORESEARCH_BUDGET"}
            done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"preparing the data on {socket.gethostname()} failed: "
                                   f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
            self._probes[key] = json.loads(done.stdout.strip().splitlines()[-1])
        return self._probes[key]

    def run(self, job: dict) -> dict:
        from .runner import RunResult
        from .workers import experiment_runner, log_path

        tree = self._write(self.workspace / f"job-{job['id']}", job["files"])
        lab = _NodeLab(tree, job["config"])
        with self._lock:
            self.steps = []
        try:
            self.runner = experiment_runner(lab, tree, job["id"], job["seed"], job["budget"], job["profile"],
                                            job["facts"], on_step=self._step)
            result = self.runner.run()
        except Exception as error:  # reported as the run's failure, never as a lost actor
            result = RunResult(False, "exception", f"the worker failed to run it: {type(error).__name__}: {error}")
        finally:
            self.runner = None
        log = log_path(lab, job["id"])
        text = log.read_text(encoding="utf-8", errors="replace")[-LOG_LIMIT:] if log.exists() else ""
        shutil.rmtree(tree, ignore_errors=True)
        return {"result": asdict(result), "log": text}

    def progress(self, since: int) -> list[dict]:
        with self._lock:
            return self.steps[since:]

    def stop(self) -> None:
        runner = self.runner
        if runner is not None:
            runner.stop()

    def _step(self, step: dict) -> None:
        with self._lock:
            self.steps.append(step)

    @staticmethod
    def _write(tree: Path, files: dict) -> Path:
        shutil.rmtree(tree, ignore_errors=True)
        for rel, text in files.items():
            path = tree / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return tree


class _NodeLab:
    """What experiment_runner needs of a lab, on a node that has only the job's files."""

    def __init__(self, root: Path, config: dict):
        self.root, self.config = root, config
        self.state_dir = root / ".autoresearch"


class RayPool:
    """Slots that are Ray actors; the coordinator uses it as it uses a LocalPool."""

    kind = "ray"

    def __init__(self, actors: list, started_ray: bool, options_for_actor: dict, bus=None):
        self.actors = actors
        self.started_ray, self.actor_options, self.bus = started_ray, options_for_actor, bus
        self.identities = [self._identity(actor) for actor in actors]
        self.events = self.lab = self.options = None
        self._busy: dict[int, int] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.host = socket.gethostname()

    @classmethod
    def connect(cls, address: str, workers: int, bus=None, gpus_each: float | None = None) -> "RayPool":
        """Actors on the cluster at `address` ("auto": a running cluster; "local": start one here).
        One per GPU the cluster has (or `workers`, if more than one was asked for)."""
        ray = _ray()
        started = False
        if not ray.is_initialized():
            if address == "local":
                ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            else:
                try:
                    ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
                except ConnectionError as error:
                    from ..errors import LabError

                    raise LabError(
                        f"could not join the Ray cluster at {address} ({error}). Is it running (`ray status`)? "
                        "A cluster started with token authentication needs its token here too: run with "
                        "RAY_AUTH_MODE=token and the RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) `ray start` had") from None
            started = True
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = workers if workers > 1 else max(1, gpus)
        each = gpus_each if gpus_each is not None else (1 if gpus else 0)
        options = {"num_gpus": each, "num_cpus": 1, "max_concurrency": 4, "max_restarts": 0,
                   "runtime_env": {"env_vars": {k: v for k, v in os.environ.items()
                                                if k.startswith("AUTORESEARCH_CACHE")}}}
        remote = ray.remote(ExperimentActor)
        actors = [remote.options(**options).remote(os.environ.get("AUTORESEARCH_CACHE")) for _ in range(count)]
        return cls(actors, started, options, bus)

    def _identity(self, actor) -> dict:
        ray = _ray()
        try:
            return ray.get(actor.identity.remote(), timeout=120)
        except Exception as error:
            return {"host": "?", "pid": None, "gpus": "", "error": str(error)}

    # -- the pool interface -----------------------------------------------------------------
    def attach(self, events, lab, options) -> None:
        self.events, self.lab, self.options = events, lab, options

    @property
    def size(self) -> int:
        return len(self.actors)

    def name(self, slot: int) -> str:
        identity = self.identities[slot]
        gpu = f" GPU {identity['gpus']}" if identity.get("gpus") else ""
        return f"r{slot} ({identity.get('host')}{gpu})"

    def host_of(self, slot: int) -> str:
        return self.identities[slot].get("host") or "?"

    def device(self, slot: int) -> str:
        return self.options.conditions.get("device_name") or self.options.profile

    def log_path(self, job_id: int) -> Path:
        from .workers import log_path

        return log_path(self.lab, job_id)

    def probe(self, lab) -> dict:
        """The run's conditions, from the first actor's node (its data prepared there)."""
        ray = _ray()
        files = self._files(lab, lab.head())
        facts = [ray.get(actor.probe.remote(files, lab.config)) for actor in self.actors]
        kinds = {f.get("device_name") for f in facts}
        if len(kinds) > 1:
            from ..errors import LabError

            raise LabError(f"the Ray workers have different devices ({', '.join(sorted(map(str, kinds)))}): "
                           "numbers are only compared on one kind; give the run workers of one kind")
        return facts[0]

    def prepare(self, slot: int, commit: str) -> dict:
        return self._files(self.lab, commit)

    def _files(self, lab, commit: str) -> dict:
        names = lab.repo.git.ls_tree("-r", "--name-only", commit).splitlines()
        return {name: lab.file_at_commit(commit, name) for name in names}

    def busy(self) -> set[int]:
        with self._lock:
            return set(self._busy)

    def run(self, slot: int, job, files: dict, on_step, on_start) -> None:
        from .runner import RunResult

        ray = _ray()
        actor = self.actors[slot]
        payload = {"id": job.id, "files": files, "seed": job.seed, "budget": self.options.budget,
                   "profile": self.options.profile, "config": dict(self.lab.config),
                   "facts": self.options.run_info.get("profile_facts") or {}}
        with self._lock:
            self._busy[slot] = job.id
        reference = actor.run.remote(payload)  # its experiment dies with the actor, which dies with this driver

        def watch():
            seen, outcome = 0, None
            while outcome is None:
                ready, _ = ray.wait([reference], timeout=POLL_S)
                try:
                    steps = ray.get(actor.progress.remote(seen), timeout=30)
                except Exception:
                    steps = []
                for step in steps:
                    on_step(step)
                seen += len(steps)
                if ready:
                    try:
                        outcome = ray.get(reference)
                    except Exception as error:  # the actor (or its node) is gone
                        outcome = error
            with self._lock:
                self._busy.pop(slot, None)
            if isinstance(outcome, Exception):
                self._replace(slot)
                self.events.put(("lost", job.id, f"{self.name(slot)}: {type(outcome).__name__}"))
                return
            log = self.log_path(job.id)
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(outcome["log"], encoding="utf-8")
            self.events.put(("result", job.id, RunResult(**outcome["result"])))

        thread = threading.Thread(target=watch, name=f"autoresearch-ray-{slot}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _replace(self, slot: int) -> None:
        """A new actor for a slot whose actor died (where the cluster still has room for one)."""
        ray = _ray()
        try:
            ray.kill(self.actors[slot])
        except Exception:
            pass
        self.actors[slot] = ray.remote(ExperimentActor).options(**self.actor_options).remote(
            os.environ.get("AUTORESEARCH_CACHE"))
        self.identities[slot] = self._identity(self.actors[slot])

    def stop_all(self) -> None:
        for slot in self.busy():
            try:
                self.actors[slot].stop.remote()
            except Exception:
                pass

    def close(self, wait: float = 60.0) -> None:
        self.stop_all()
        deadline = time.monotonic() + wait
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))

    def forget(self) -> None:
        ray = _ray()
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:
                pass
        if self.started_ray:
            ray.shutdown()
