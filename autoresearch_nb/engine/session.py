"""One research run: owns the lab, the loop thread and the event stream. Front ends drive it."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass

from ..judge import conditions, facts, ladder
from ..agents import AGENTS, make_agent
from ..agents.pricing import model_prices
from ..errors import LabError, LabGone
from . import notify
from .events import Event, EventBus
from ..lab.lab import DEFAULT_DIR, Lab
from ..lab.ledger import now_iso
from .loop import LoopOptions, ResearchLoop
from ..run import sandbox
from ..run.runner import clean_environment

POLICIES = ("noise", "greedy")
LOSS_POINTS = 600


@dataclass
class RunOptions:
    lab: str = DEFAULT_DIR
    agent: str = "heuristic"
    model: str | None = None
    budget: float | None = None
    max_experiments: int | None = None
    tag: str | None = None
    policy: str = "noise"
    max_cost: float | None = None
    resume: bool = False
    base_url: str | None = None
    command: str | None = None
    noise_runs: int = 2
    seed: int = 0
    agent_timeout: float | None = None
    agent_memory: bool = False   # a CLI agent resumes its conversation from proposal to proposal
    rebaseline: bool = False     # other conditions than the rows continued: measure the best again
    ablate: int | None = None    # instead of research: ablate the best, this many runs per change
    transfer: dict | None = None  # instead of research: the transfer ladder, {"budget_x", "depth", "repeats"}
    workers: int = 1             # experiments at once: local slots (CPU) or one per GPU in `gpus`
    gpus: list | None = None     # CUDA devices, one worker each, e.g. ["0", "1"]
    depth: int = 1               # drafts the agent keeps ready ahead of the workers (0: no pipelining)
    ray: str | None = None       # run the workers as Ray actors: "auto" or a cluster address
    notify: str | None = None    # a webhook for kept changes and the night's end (notify.py); never stored
    hours: float | None = None   # no run starts that could not end within this many hours of the start
    until: str | None = None     # ... or before this local time, "HH:MM" (the next one to come)
    overlap: bool = False        # a worker's next run starts up while its last is evaluated (run/workers.py)


CLI_AGENTS = ("claude-code", "codex")   # the named CLIs: a timeout, a session to resume


def default_tag() -> str:
    return time.strftime("%b%d").lower()


def check_options(options: RunOptions) -> None:
    """One clear line for each mistake a person can make on the command line or in a magic."""
    if options.budget is not None and not options.budget > 0:
        raise LabError(f"--budget must be a positive number of seconds (got {options.budget:g})")
    if options.max_experiments is not None and options.max_experiments < 1:
        raise LabError(f"--max-experiments must be at least 1 (got {options.max_experiments})")
    if options.policy not in POLICIES:
        raise LabError(f"unknown --policy {options.policy!r}: choose noise (the default) or greedy")
    if options.max_cost is not None and options.max_cost <= 0:
        raise LabError(f"--max-cost must be a positive number of dollars (got {options.max_cost:g})")
    if options.workers < 1:
        raise LabError(f"--workers must be at least 1 (got {options.workers})")
    if options.depth < 0:
        raise LabError(f"--depth must be 0 (no pipelining) or more (got {options.depth})")
    if options.gpus is not None and (not options.gpus or any(not str(g).strip().isdigit() for g in options.gpus)):
        raise LabError(f"--gpus takes CUDA device numbers, e.g. --gpus 0,1,2,3 (got {','.join(map(str, options.gpus))})")
    if options.ablate is not None and options.ablate < 1:
        raise LabError(f"--repeats must be at least 1 (got {options.ablate})")
    if options.transfer is not None:
        if not options.transfer.get("budget_x", 0) > 0:
            raise LabError(f"--budget-x must be a positive multiple of the night's budget (got {options.transfer.get('budget_x')})")
        if options.transfer.get("depth") is not None and options.transfer["depth"] < 1:
            raise LabError(f"--depth must be at least 1 (got {options.transfer['depth']})")
        if options.transfer.get("repeats", 0) < 1:
            raise LabError(f"--repeats must be at least 1 (got {options.transfer.get('repeats')})")
    if options.noise_runs < 1:
        raise LabError("--noise-runs must be at least 1: the noise policy needs repeats of the baseline")
    if options.agent not in AGENTS:
        raise LabError(f"unknown agent {options.agent!r}: choose one of {', '.join(AGENTS)}")
    if options.agent == "command" and not options.command:
        raise LabError('the command agent needs --command, e.g. --command "claude -p"')
    if options.agent_timeout is not None and not options.agent_timeout > 0:
        raise LabError(f"--agent-timeout must be a positive number of seconds (got {options.agent_timeout:g}); "
                       "leave it out for the default of 900")
    if options.agent_timeout is not None and options.agent not in CLI_AGENTS + ("command",):
        raise LabError("--agent-timeout limits a coding-agent CLI: it goes with --agent claude-code, codex or command")
    if options.agent_memory and options.agent not in CLI_AGENTS:
        raise LabError("--agent-memory resumes a CLI's own conversation: it goes with --agent claude-code or codex")
    if options.max_cost is not None and options.agent == "codex" and model_prices(options.model) is None:
        raise LabError("--max-cost needs a price and Codex reports none: name a model whose list price is known "
                       "(e.g. --model gpt-5-codex, gpt-5, gpt-5-mini), or leave --max-cost out")
    if options.notify is not None:
        notify.check_url(options.notify)
    deadline_of(options)  # --hours / --until: a mistake is said before anything starts
    if options.agent == "openai" and not (options.base_url or os.environ.get("OPENAI_BASE_URL")):
        raise LabError("the openai agent needs --base-url (e.g. http://localhost:11434/v1 for Ollama)")


def shared_gpu(device: str, workers: int, gpus: list | None) -> str | None:
    """Why several workers on one GPU are refused, or None: runs sharing a card slow each other's timed
    training (the wall clock counts the wait), so no number from them would be fair."""
    if gpus:
        named = [str(g).strip() for g in gpus]
        if len(set(named)) < len(named):
            return (f"--gpus {','.join(named)} names a GPU twice: two workers on one card slow each other's timed "
                    "training; give each worker its own GPU")
        return None
    if device == "cuda" and workers > 1:
        return (f"--workers {workers} on the GPU would put {workers} runs on one card, each slowing the other's "
                "timed training: give one worker per GPU with --gpus (e.g. --gpus 0,1), or leave --workers out")
    return None


def deadline_of(options: RunOptions, now: float | None = None) -> float | None:
    """The epoch second no run may end after (--hours from now, or the next --until HH:MM), or None."""
    now = time.time() if now is None else now
    if options.hours is not None and options.until is not None:
        raise LabError("give --hours or --until, not both")
    if options.hours is not None:
        if not options.hours > 0:
            raise LabError(f"--hours must be a positive number of hours (got {options.hours:g})")
        return now + 3600.0 * options.hours
    if options.until is None:
        return None
    try:
        hour, minute = (int(part) for part in options.until.split(":"))
        if not (0 <= hour < 24 and 0 <= minute < 60):
            raise ValueError
    except ValueError:
        raise LabError(f"--until takes a local time as HH:MM, e.g. --until 07:30 (got {options.until!r})") from None
    moment = time.localtime(now)
    target = time.mktime((moment.tm_year, moment.tm_mon, moment.tm_mday, hour, minute, 0, 0, 0, -1))
    return target if target > now else target + 86400.0


def agent_options(options: RunOptions) -> dict:
    if options.agent == "heuristic":
        return {"seed": options.seed}
    if options.agent == "command":
        return {"command": options.command, "timeout": options.agent_timeout}
    if options.agent in CLI_AGENTS:
        return {"model": options.model, "timeout": options.agent_timeout, "base_url": options.base_url,
                "memory": options.agent_memory}
    return {"model": options.model, "base_url": options.base_url}


class Session:
    """Start, watch and steer one run. All git work happens in the loop thread once started."""

    def __init__(self, options: RunOptions, agent=None, audit: bool = True):
        """`agent`: an Agent object to use instead of building one by name (tests, benchmarks)."""
        check_options(options)
        self.audit = audit
        self.options = options
        self.lab = Lab.open(options.lab)
        self.bus = EventBus()
        self._lock = threading.Lock()
        self._rows = self.lab.rows()
        self._header: dict = {}
        self._lanes: dict[str, dict] = {}   # what each worker is running, by worker name
        self._queue: dict = {}
        self._state, self._message = "idle", ""
        self._thread: threading.Thread | None = None
        # Set when the loop thread has really finished. Thread.join/is_alive are not trusted:
        # a KeyboardInterrupt landing inside join() can make a live thread look dead.
        self._ended = threading.Event()
        self.loop: ResearchLoop | None = None
        self.error: str | None = None
        self.usage_error = False    # the error is the person's to fix (a LabError), not a bug
        previous = self._previous_run()
        if options.ablate or options.transfer:  # they continue the lab's run with its settings
            if not self._rows:
                raise LabError(f"{self.lab.root} has no run to {'ablate' if options.ablate else 'transfer'} yet: "
                               "start one first")
            options.resume = True
        prepare = self.lab.root / "nanochat" / "prepare.py"
        if options.transfer and options.transfer.get("depth") and not (
                prepare.exists() and "AUTORESEARCH_DEPTH" in prepare.read_text(errors="replace")):
            raise LabError("--depth needs a prepare.py that reads AUTORESEARCH_DEPTH, and this lab's is older: "
                           "leave --depth out (a budget multiple works on any lab)")
        if self._rows and not options.resume:
            raise LabError(f"{self.lab.root} already holds run '{previous.get('tag', '?')}' with "
                           f"{len(self._rows)} experiments: continue it with --resume, or make a new lab "
                           f"with `autoresearch-nb init NEWDIR`")
        self.tag = options.tag or previous.get("tag") or default_tag()
        if options.resume:  # settings not given again are those of the run being resumed
            for key in ("budget", "policy", "max_experiments", "max_cost", "noise_runs"):
                if getattr(options, key) in (None, RunOptions.__dataclass_fields__[key].default) and previous.get(key) is not None:
                    setattr(options, key, previous[key])
        self.agent = agent or make_agent(options.agent, **agent_options(options))
        self.bus.subscribe(self._track)
        self.notifier = None
        if options.notify:
            self.notifier = notify.Notifier(options.notify, self.tag, self.lab.rows, self.lab.state_dir / "notify.log",
                                            self.lab.config.get("metric", "val_bpb"),
                                            self.lab.config.get("direction", "lower"))
            self.bus.subscribe(self.notifier.handle)

    # -- front-end API ----------------------------------------------------------------------
    def subscribe(self, callback):
        return self.bus.subscribe(callback)

    @property
    def alive(self) -> bool:
        return self._thread is not None and not self._ended.is_set()

    @property
    def state(self) -> str:
        return self._state

    def start(self) -> "Session":
        if self.alive:
            raise LabError("this session is already running: `stop` it first")
        try:
            self.loop = self._prepare_lab()
        except BaseException:
            self.lab.records.release()
            raise
        self._ended.clear()
        self._thread = threading.Thread(target=self._main, name="autoresearch-loop", daemon=True)
        self._thread.start()
        return self

    def stop(self, now: bool = False) -> None:
        if self.loop:
            self.loop.stop(now)
        self._set_state("stopping", "stopping now: the current experiment is killed and recorded" if now
                        else "stopping after the current experiment")

    def pause(self) -> None:
        if self.loop:
            self.loop.pause()

    def resume(self) -> None:
        if self.loop:
            self.loop.resume()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is None:
            return True
        return self._ended.wait(timeout)

    def steer(self, text: str) -> None:
        text = " ".join(text.split())
        if not text:
            raise LabError("steer needs a note, e.g. steer \"try a deeper, narrower model\"")
        self.lab.state_dir.mkdir(exist_ok=True)
        with open(self.lab.steering_path, "a", encoding="utf-8") as handle:
            handle.write(f"[{now_iso()}] {text}\n")
        self.bus.emit("message", text=f"steering note added: {text}", level="info")

    def snapshot(self) -> dict:
        with self._lock:
            rows = copy.deepcopy(self._rows)
            header = dict(self._header)
            lanes = copy.deepcopy(self._lanes)
            queue = dict(self._queue)
            state, message = self._state, self._message
        current = max(lanes.values(), key=lambda lane: lane.get("started_at", 0), default=None)
        return {"header": header, "rows": rows, "current": current, "lanes": lanes, "queue": queue,
                "state": state, "message": message}

    # -- set-up (main thread, before the loop thread exists) -----------------------------
    def _previous_run(self) -> dict:
        try:
            return json.loads(self.lab.run_info_path.read_text())
        except (OSError, ValueError):
            return {}

    def _prepare_lab(self) -> ResearchLoop:
        lab, branch = self.lab, f"autoresearch/{self.tag}"
        lab.records.hold()  # from here on this session is the records' one writer (the loop releases them)
        loop = ResearchLoop(lab, self.agent, LoopOptions(budget=self.options.budget or 0.0,
                                                         max_experiments=self.options.max_experiments,
                                                         policy=self.options.policy, noise_runs=self.options.noise_runs,
                                                         max_cost=self.options.max_cost, seed=self.options.seed,
                                                         audit=self.audit, depth=self.options.depth,
                                                         workers=len(self.options.gpus or []) or self.options.workers,
                                                         deadline=deadline_of(self.options),
                                                         gpus=[str(g).strip() for g in self.options.gpus]
                                                         if self.options.gpus else None),
                            self.bus, pool=self._ray_pool())
        if lab.inflight_path.exists():  # a run stopped uncleanly (even before its first row): repair first
            if lab.branch() != branch and branch in lab.repo.heads:
                lab.repo.git.checkout("-f", branch)
            loop.recover()
        loop.check_lab()
        if lab.branch() != branch:
            if branch in [h.name for h in lab.repo.heads]:
                if not self.options.resume:
                    raise LabError(f"branch {branch} already exists in {lab.root}: choose another --tag or add --resume")
                lab.repo.git.checkout(branch)
            else:
                lab.repo.git.checkout("-b", branch)
        self._rows = lab.rows()
        return loop

    # -- the loop thread --------------------------------------------------------------------
    def _main(self) -> None:
        try:
            loop = self.loop
            probe = loop.pool.probe(self.lab) if hasattr(loop.pool, "probe") else self._setup_data()
            loop.options.profile = probe["name"]
            loop.options.overlap = self.options.overlap
            shared = shared_gpu(probe.get("device", ""), loop.options.workers, loop.options.gpus)
            if shared and not hasattr(loop.pool, "probe"):  # Ray actors hold one GPU each by construction
                raise LabError(shared)
            loop.options.budget = float(self.options.budget or self.lab.config.get("budget") or probe["time_budget"])
            screen_budget = loop.options.budget  # the night's, kept in run.json for a later --resume
            if self.options.transfer:
                segment, reason = self._ladder_conditions(loop, probe)
            else:
                loop.options.run_info = {"profile_facts": probe}
                segment, reason = self._settle_conditions(loop, probe)
            info = {"lab": str(self.lab.root), "tag": self.tag, "branch": f"autoresearch/{self.tag}",
                    "agent": self.agent.name, "agent_label": self.agent.label or self.agent.name,
                    "model": self.agent.model, "profile": probe["name"], "device": probe.get("device_name", probe["device"]),
                    "budget": screen_budget, "policy": self.options.policy,
                    "max_experiments": self.options.max_experiments, "max_cost": self.options.max_cost,
                    "noise_runs": self.options.noise_runs, "conditions": loop.options.conditions,
                    "workers": loop.options.workers, "depth": self.options.depth,
                    "segment": segment, "segment_reason": reason,
                    "sandbox": str(sandbox.probe()),
                    "started_at": self._previous_run().get("started_at") if self.options.resume else None}
            if self.options.transfer:  # shown by the front ends; run.json keeps the night's budget
                info.update(transfer=reason, run_budget=loop.options.budget)
            info["started_at"] = info["started_at"] or now_iso()
            info["resumed_at"] = now_iso() if self.options.resume else None
            self.lab.write_run_info(info)
            self.bus.emit("run_started", **info)
            loop.run(ablate=self.options.ablate, transfer=self.options.transfer and {
                "scale": ladder.scale_of(self.options.transfer["budget_x"], self.options.transfer.get("depth")),
                "repeats": self.options.transfer.get("repeats", 2)})
            self._set_state("finished", loop.finish_reason)
        except LabError as error:
            self.error = str(error)
            self.usage_error = True
            self._set_state("error", str(error))
        except Exception as error:  # recorded for the person; the lab stays consistent
            if not self.lab.reachable():  # a write failed because the drive went: say so, write nothing
                self.error, self.usage_error = str(LabGone(self.lab.root)), True
                self._set_state("error", self.error)
                return
            self.error = f"{type(error).__name__}: {error}"
            with open(self.lab.state_dir / "session.log", "a", encoding="utf-8") as handle:
                handle.write(f"[{now_iso()}]\n{traceback.format_exc()}\n")
            self._set_state("error", f"{self.error} (details in .autoresearch/session.log)")
        finally:
            self.lab.records.release()  # also when the run failed before its loop began
            try:
                self.agent.close()
            finally:
                self.bus.emit("run_finished", reason=self._message)
                if self.notifier is not None:  # the night's last message goes out before the process may end
                    self.notifier.close()
                self._ended.set()

    def _settle_conditions(self, loop: ResearchLoop, probe: dict) -> tuple[int, str]:
        """This session's conditions against the rows it continues: the same segment, a new one
        (--rebaseline, or unasked on another machine: conditions.MACHINE), or a refusal that says how to go on."""
        now = conditions.of(probe, loop.options.budget, self.lab.config)
        rows = self.lab.rows()
        segment = facts.current_segment(rows)
        changed = conditions.differences(conditions.last_recorded(rows), now)
        reason = ""
        if rows and (self.options.rebaseline or conditions.machine_only(changed)):
            segment += 1
            reason = "; ".join(changed) or "re-baseline asked for"
            if not self.options.rebaseline:
                reason = f"another machine: {reason}"
            self.bus.emit("message", level="info", text=f"new comparison segment {segment} ({reason}): "
                                                         "the best is measured again before any experiment")
        elif changed:
            raise LabError(conditions.refusal(changed))
        loop.options.segment, loop.options.conditions, loop.options.segment_reason = segment, now, reason
        return segment, reason

    def _ladder_conditions(self, loop: ResearchLoop, probe: dict) -> tuple[int, str]:
        """The transfer ladder's scale: the budget multiplied, the depth the runs get, and the scale's own
        segment below zero (judge/ladder.py), never compared with the night's."""
        transfer = self.options.transfer
        scale = ladder.scale_of(transfer["budget_x"], transfer.get("depth"))
        screen = conditions.last_recorded(self.lab.rows()).get("budget") or loop.options.budget
        loop.options.budget = round(float(screen) * scale["budget_x"], 3)
        probe = dict(probe, time_budget=loop.options.budget)
        if scale["depth"]:
            probe.update(depth=scale["depth"], depth_override=scale["depth"])
        loop.options.run_info = {"profile_facts": probe}
        segment = ladder.segment_for(self.lab.rows(), scale)
        reason = f"transfer ladder at {ladder.scale_text(scale)}"
        loop.options.segment, loop.options.segment_reason = segment, reason
        loop.options.conditions = conditions.of(probe, loop.options.budget, self.lab.config)
        return segment, reason

    def _ray_pool(self):
        """Ray actors as the workers when --ray is given (the extra autoresearch-nb[ray])."""
        if not self.options.ray:
            return None
        from ..run.ray_workers import RayPool

        return RayPool.connect(self.options.ray, self.options.workers, self.bus)

    def _setup_data(self) -> dict:
        """Resolve the profile and prepare data in subprocesses, so the kernel imports no torch."""
        self._set_state("preparing", "preparing data and tokenizer (cached after the first time)")
        config = self.lab.config
        env = clean_environment({"AUTORESEARCH_PROFILE": config.get("profile") or "auto",
                                 "AUTORESEARCH_DATA": config.get("data", "builtin"),
                                 "AUTORESEARCH_BYTE_LEVEL": "1" if config.get("byte_level") else None})
        env.pop("AUTORESEARCH_BUDGET", None)
        cmd = [sys.executable, "nanochat/prepare.py", "--conditions", "--data", config.get("data", "builtin")]
        if config.get("profile") not in (None, "auto"):
            cmd += ["--profile", config["profile"]]
        if config.get("byte_level"):
            cmd.append("--byte-level")
        log = self.lab.state_dir / "logs" / "prepare.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle:  # the conditions are the last line of stdout; the rest is for the log
            done = subprocess.run(cmd, cwd=self.lab.root, env=env, stdout=subprocess.PIPE, stderr=handle, text=True)
            handle.write(done.stdout)
        if done.returncode != 0 or not done.stdout.strip():
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise LabError(f"preparing the data failed: {tail[0]} (full log: {log})")
        return json.loads(done.stdout.strip().splitlines()[-1])

    # -- tracking events into the snapshot ----------------------------------------------------
    def _set_state(self, state: str, message: str) -> None:
        self.bus.emit("state", state=state, message=message)

    def _track(self, event: Event) -> None:
        with self._lock:
            if event.kind == "run_started":
                self._header = dict(event.data)
            elif event.kind == "experiment_started":
                self._lanes[str(event.data.get("worker"))] = {**event.data, "progress": 0.0, "losses": [],
                                                              "curve": [], "started_at": event.time}
            elif event.kind == "step":
                lane = self._lanes.get(str(event.data.get("worker")))
                if lane is None or lane.get("job") != event.data.get("job"):
                    return
                lane["progress"] = float(event.data.get("progress", 0.0))
                if "loss" in event.data:
                    losses = lane["losses"]
                    losses.append((event.data.get("step", len(losses)), event.data["loss"]))
                    lane["curve"].append((lane["progress"], event.data["loss"]))  # by share of the budget
                    if len(losses) > LOSS_POINTS:
                        del losses[::2]
                        del lane["curve"][::2]
            elif event.kind == "experiment_finished":
                row = event.data["row"]
                self._rows.append(row)
                for name, lane in list(self._lanes.items()):
                    if row.get("job") is not None and lane.get("job") == row.get("job"):
                        del self._lanes[name]
            elif event.kind == "queue":
                self._queue = dict(event.data)
            elif event.kind == "state":
                self._state, self._message = event.data["state"], event.data.get("message", "")
            elif event.kind == "message":
                self._message = event.data.get("text", "")
