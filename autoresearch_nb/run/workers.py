"""Where experiments run: worker slots on this machine, one per GPU (or N on a CPU), each in a worktree.

A worker only runs jobs; it never writes the branch, the ledger or results.tsv. The coordinator
(loop.py) checks the slot's worktree out at the job's commit, hands the job over, and gets the
result back on its event queue as ("result", job id, RunResult). `experiment_runner` is the one
place a Runner is put together (environment, sandbox, boundary, timeouts) for every kind of worker.

Overlap: once a job's training process has ended well, the pool says ("trained", job id) and the
slot takes its next job while the last is evaluated; the new run starts up beside that evaluation
and its training clock waits (prepare.py's gate) until every earlier run on the slot has ended and
the coordinator has recorded it (settled()).
"""
from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Callable

from . import boundary, sandbox
from .runner import RunResult, Runner, clean_environment
from ..lab.worktrees import Worktrees

SETTLE_WAIT_S = 30.0  # the longest a run's clock waits for the coordinator to record the run before it


def timeout_for(budget: float, profile: str, allowance: float | None = None, clock: str = "wall") -> float:
    """Hard limit of one run: the budget (three times over on the cpu clock, which a starved process
    spends slowly) plus start-up (imports, data, compile) and evaluation."""
    return budget * (3.0 if clock == "cpu" else 1.25) + boundary.startup_allowance(profile, allowance)


def experiment_runner(lab, tree: Path, job_id: int, seed: int, budget: float, profile: str, facts: dict,
                      on_step: Callable[[dict], None] | None = None,
                      on_start: Callable[[int], None] | None = None, gpu: str | None = None,
                      after=None, on_trained: Callable[[], None] | None = None) -> Runner:
    """A Runner for one job of `lab`: its code checked out in `tree`, its log and run directory its own."""
    config = lab.config
    cache = compile_cache(lab)
    env = clean_environment({
        "AUTORESEARCH_BUDGET": budget, "AUTORESEARCH_SEED": seed, "AUTORESEARCH_PROFILE": profile,
        "AUTORESEARCH_DATA": config.get("data", "builtin"),
        "AUTORESEARCH_BYTE_LEVEL": "1" if config.get("byte_level") else None,
        "AUTORESEARCH_DATA_KEY": facts.get("data_key"),
        "CUDA_VISIBLE_DEVICES": gpu,
        "AUTORESEARCH_DEPTH": facts.get("depth_override"),  # the transfer ladder's larger model
    })
    # torch.compile's caches in the lab: shared by its runs (the sandbox's /tmp is each run's own) and
    # kept with it, so a Colab reset with the lab on Drive still compiles from the cache. The training
    # process's only: the evaluator compiles nothing (and torch would make the folder at import).
    caches = {"TORCHINDUCTOR_CACHE_DIR": cache / "inductor", "TRITON_CACHE_DIR": cache / "triton"}
    run_dir = lab.state_dir / "runs" / f"run-{job_id:05d}"
    readable = sandbox.lab_reads(config, env, tree, facts.get("train_paths"))
    return Runner(config["command"], tree, env, log_path(lab, job_id), budget,
                  timeout_for(budget, profile, config.get("startup_allowance"), facts.get("clock", "wall")),
                  on_step=on_step, on_start=on_start,
                  wrap=lambda command: sandbox.wrap(command, root=tree, run_dir=run_dir, env=env, readable=readable,
                                                    writable=[cache]),
                  sandbox=sandbox.probe(), after=after, on_trained=on_trained, training_env=caches,
                  **boundary.for_lab(lab, run_dir, facts, budget, tree))


def compile_cache(lab) -> Path:
    """Where torch.compile keeps what it compiled, for every run of the lab (made on first use)."""
    return lab.state_dir / "compile-cache"


def gate_supported(lab) -> bool:
    """Whether the lab's locked prepare.py has the clock's gate (labs made before it have not)."""
    prepare = lab.root / "nanochat" / "prepare.py"
    return bool(lab.config.get("evaluate")) and prepare.is_file() and \
        "AUTORESEARCH_CLOCK_GATE" in prepare.read_text(errors="replace")


def log_path(lab, job_id: int) -> Path:
    return lab.state_dir / "logs" / f"run-{job_id:05d}.log"


class LocalPool:
    """Slots on this machine: `gpus` names one CUDA device per slot; None entries are CPU slots."""

    kind = "local"

    def __init__(self, gpus: list[str | None], overlap: bool = False):
        self.gpus = list(gpus)
        self.host = socket.gethostname()
        self.overlap = overlap
        self.events = self.lab = self.options = self.worktrees = None
        self._runners: dict[int, Runner] = {}        # by job id: a slot may hold one training, others evaluating
        self._ended: dict[int, list[threading.Event]] = {}  # by slot: set as each of its runs is settled
        self._unsettled: dict[int, threading.Event] = {}       # by job id: ended, its result not yet recorded
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def attach(self, events, lab, options) -> None:
        """The coordinator's queue for results, its lab and its options (the run's settled budget)."""
        self.events, self.lab, self.options = events, lab, options
        self.worktrees = Worktrees(lab)
        self.overlap = self.overlap and gate_supported(lab)

    @property
    def size(self) -> int:
        return len(self.gpus)

    def name(self, slot: int) -> str:
        gpu = self.gpus[slot]
        return f"w{slot}" + (f" (GPU {gpu})" if gpu is not None else "")

    def host_of(self, slot: int) -> str:
        return self.host

    def device(self, slot: int) -> str:
        return self.options.conditions.get("device_name") or self.options.profile

    def log_path(self, job_id: int) -> Path:
        return log_path(self.lab, job_id)

    def prepare(self, slot: int, commit: str) -> Path:
        """The slot's worktree at the job's commit (on the coordinator's thread: the one git writer)."""
        return self.worktrees.checkout(slot, commit)

    def forget(self) -> None:
        """No worktree is left behind when the run ends."""
        self.worktrees.remove_all()

    def run(self, slot: int, job, tree: Path, on_step, on_start) -> None:
        """Start `job` in `slot`'s worktree `tree`; the result arrives on the event queue."""
        facts = self.options.run_info.get("profile_facts") or {}
        ended = threading.Event()
        with self._lock:
            earlier = [e for e in self._ended.get(slot, []) if not e.is_set()]
            self._ended[slot] = earlier + [ended]
        runner = experiment_runner(self.lab, tree, job.id, job.seed, self.options.budget, self.options.profile,
                                   facts, on_step, on_start, self.gpus[slot],
                                   after=earlier if self.overlap else None,
                                   on_trained=(lambda: self.events.put(("trained", job.id))) if self.overlap else None)
        with self._lock:
            self._runners[job.id] = runner

        def work():
            try:
                result = runner.run()
            except Exception as error:  # the harness's own failure is recorded as the run's
                result = RunResult(False, "exception", f"the harness failed to run it: {type(error).__name__}: {error}")
            with self._lock:
                self._runners.pop(job.id, None)
                self._unsettled[job.id] = ended
            self.events.put(("result", job.id, result))
            # the coordinator says settled() once the result is recorded; should it never, the next run waits no longer
            fallback = threading.Timer(SETTLE_WAIT_S, ended.set)
            fallback.daemon = True
            fallback.start()

        thread = threading.Thread(target=work, name=f"autoresearch-worker-{slot}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def settled(self, job_id: int) -> None:
        """The coordinator has recorded `job_id`'s result (judged, committed or reverted): the next run on
        its worker may start its training clock. Its bookkeeping would otherwise share the CPU with that
        run's timed training, which a run started after it (without --overlap) never does."""
        with self._lock:
            ended = self._unsettled.pop(job_id, None)
        if ended is not None:
            ended.set()

    def stop_all(self) -> None:
        with self._lock:
            runners = list(self._runners.values())
        for runner in runners:
            runner.stop()

    def close(self, wait: float = 30.0) -> None:
        self.stop_all()
        for thread in self._threads:
            thread.join(timeout=wait)
