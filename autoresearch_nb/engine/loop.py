"""The research loop's coordinator: the one thread that writes the branch, the ledger and results.tsv.

It keeps every worker busy: measurements plan.py says are due, the next run of a candidate the
judge asked more of, or a new candidate made from a draft the agent wrote meanwhile (drafter.py,
`depth` drafts ahead: the agent thinks while the workers train). A draft made on a best that has
moved since is re-applied onto the new best (reapply.py) or drafted again when it conflicts. A
result whose parent is no longer the best is judged against its own parent: a loss is discarded,
a win is re-applied onto the current best and confirmed there before it is kept. Every change of
state is written to .autoresearch/inflight.json before it is acted on (inflight.py), so after
`kill -9` a resume loses no row, repeats none, and re-queues each run that was under way, once.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field, replace

from ..judge import facts, plan
from . import inflight, records
from ..run import sandbox
from ..agents.base import Agent, ProposalError
from .checks import fixed_exports
from ..run.disturbance import detect
from .drafter import Drafter
from ..errors import LabError, LabGone
from .events import EventBus
from .inflight import State, crashpoint
from ..lab.ledger import now_iso
from ..lab.lab import Lab
from .records import run_row
from .scheduling import BASE_SEED, MAX_REJECTED_IN_A_ROW, SEED_STEP, Scheduling  # noqa: F401  (read here too)
from .tracks import Track
from .verdicts import VerdictStep
from ..run.workers import LocalPool, timeout_for  # noqa: F401  (timeout_for: callers read it here too)

MAX_BASELINE_FAILURES = 3
LAB_PROBE_S = 5.0  # how often the coordinator checks that the lab can still be read (a drive may go)
AGENT_OUTAGE_WAITS = (30.0, 60.0, 120.0)


@dataclass
class LoopOptions:
    budget: float
    max_experiments: int | None = None
    policy: str = "noise"
    noise_runs: int = 2
    max_cost: float | None = None
    seed: int = 0
    profile: str = "cpu"
    outage_waits: tuple = AGENT_OUTAGE_WAITS
    audit: bool = True          # off only in the false-keeps benchmark, which must change seeds
    run_info: dict = field(default_factory=dict)
    segment: int = 0            # the comparison segment new rows belong to (session.py decides)
    conditions: dict = field(default_factory=dict)   # what every row records it was measured under
    segment_reason: str = ""    # why this segment started (what changed), kept on its rows
    workers: int = 1            # experiments at once (local slots)
    gpus: list | None = None    # one CUDA device per slot, e.g. ["0", "1"]
    depth: int = 1              # drafts the agent keeps ready beyond the free workers (0: no pipelining)
    deadline: float | None = None  # --hours / --until: no run starts that could not end before this (epoch s)
    overlap: bool = False       # a worker's next run starts up while its last is evaluated (workers.py)


class ResearchLoop(Scheduling):
    """Runs experiments on a lab until stopped, bounded, or out of money. One per lab at a time.

    Its scheduling (which track runs where, when the agent drafts) is scheduling.py's, on this object;
    its verdicts are a VerdictStep of their own (verdicts.py), made for each run."""

    def __init__(self, lab: Lab, agent: Agent, options: LoopOptions, bus: EventBus | None = None, pool=None):
        self.lab, self.agent, self.options = lab, agent, options
        self.bus = bus or EventBus()
        self.stop_requested = threading.Event()
        self.stop_now = threading.Event()
        self.unpaused = threading.Event()
        self.unpaused.set()
        self.finish_reason = ""
        self.fixed_exports = fixed_exports(lab)
        self.metric, self.direction = lab.config.get("metric", "val_bpb"), lab.config.get("direction", "lower")
        self.events: queue.Queue = queue.Queue()
        self.pool = pool
        self.state = State()
        self.drafter: Drafter | None = None
        self.verdicts: VerdictStep | None = None

    # -- control, from any thread -----------------------------------------------------------
    def stop(self, now: bool = False) -> None:
        self.stop_requested.set()
        self.unpaused.set()
        if now:
            self.stop_now.set()
            if self.pool is not None:
                self.pool.stop_all()
        self.events.put(("wake",))

    def pause(self) -> None:
        self.unpaused.clear()
        self.bus.emit("state", state="paused", message="paused: nothing new starts until resume")

    def resume(self) -> None:
        self.unpaused.set()
        self.events.put(("wake",))
        self.bus.emit("state", state="running", message="resumed")

    # -- records ----------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        return self.lab.rows()

    def record(self, row: dict, rows: list[dict] | None = None) -> dict:
        """Append one row (fsync) with the next index, rebuild results.tsv, tell the front ends."""
        rows = self.rows() if rows is None else rows
        row.setdefault("finished_at", now_iso())
        inflight.append(self.lab, rows, records.seal(row))
        crashpoint("after_append")
        self.lab.write_results(rows)
        if self.drafter is not None and (row.get("role") == "experiment" or row.get("status") == "crash"):
            self.drafter.lesson(self.context(rows), {k: v for k, v in row.items() if k != "holdout_bpb"})
        self.bus.emit("experiment_finished", row=row)
        return row

    def _journal(self, row: dict, lesson: str) -> None:
        """The journal's entry for a row (written on the drafter's thread, beside the agent)."""
        value = f"{row[self.metric]:.6f}" if row.get(self.metric) is not None else "-"
        entry = f"\n## {row['index']}: {row.get('status')} ({value}) {row.get('description', '')}\n"
        if row.get("reason"):
            entry += f"- {row.get('kind') or 'reason'}: {row['reason']}\n"
        if row.get("rationale"):
            entry += f"- hypothesis: {_cut(row['rationale'], 500)}\n"
        if lesson:
            entry += lesson.rstrip() + "\n"
        self.lab.append_journal(entry)

    def recover(self) -> None:
        """Make the lab consistent after a crash, a kill -9 or a kernel restart."""
        self.state = inflight.recover(self.lab)

    def check_lab(self) -> None:
        changed = self.lab.locked_changes()
        if changed:
            raise LabError(f"{', '.join(changed)} changed since the lab was made (locked files are fixed): "
                           f"restore with `git -C {self.lab.root} checkout main -- {' '.join(changed)}`")
        dirty = [f for f in self.lab.dirty_files() if f != "program.md"]
        if dirty:
            raise LabError(f"the lab has changes made by hand in {', '.join(dirty[:5])}: commit them "
                           f"(`git -C {self.lab.root} commit -am '...'`) or discard them "
                           f"(`git -C {self.lab.root} checkout -- .`), then start again")

    def commit_charter(self) -> None:
        """A charter edited in the notebook between experiments becomes part of the branch."""
        if "program.md" in self.lab.dirty_files():
            self.lab.commit(["program.md"], "charter updated by the person")

    # -- the run ----------------------------------------------------------------------------
    def run(self, ablate: int | None = None, transfer: dict | None = None) -> str:
        """Research until an end; with `ablate`, measure the best without each kept change instead; with
        `transfer` ({"scale", "repeats"}), run the transfer ladder at that scale."""
        self.lab.records.hold()  # this thread is the records' one writer until the run ends
        self.state = State.load(self.lab)
        self.verdicts = VerdictStep(self.lab, self.state, self.options, self.metric, self.direction, self.record,
                                    room=self._room, run_seed=self._run_seed, diff_stats=self._diff_stats)
        self.verdicts.retire_other_segments()
        if self.pool is None:
            gpus = list(self.options.gpus) if self.options.gpus else [None] * max(1, self.options.workers)
            self.pool = LocalPool(gpus, overlap=self.options.overlap)
        self.pool.attach(self.events, self.lab, self.options)
        self.drafter = Drafter(self.agent, self.events, self._journal)
        self.drafter.start()
        self.bus.emit("state", state="running", message="running")
        try:
            if ablate:
                from .ablation import run as ablation_run

                return self._finish(ablation_run(self, ablate))
            if transfer:
                from .transfer import run as transfer_run

                return self._finish(transfer_run(self, transfer["scale"], transfer["repeats"]))
            return self._finish(self._coordinate())
        finally:
            self.drafter.stop()
            self.pool.close()
            if self.lab.reachable():  # a lab that went (an unmounted drive) gets no write: none would land
                self._check_records()  # the last runs' writes, if any, are undone before the last rows
                self._late_answers()
                self._drop_unused_drafts()
                self.state.save(self.lab)
                self.pool.forget()
            self.lab.records.release()

    def _finish(self, reason: str) -> str:
        """The session announces the end (run_finished) once the thread is done."""
        self.finish_reason = reason
        return reason

    def _coordinate(self) -> str:
        self._rejected_in_a_row = self._outages = self._baseline_failures = 0
        self._draft_after, self._exhausted, ending = 0.0, "", ""
        while True:
            self.check_reachable()
            rows = self.rows()
            ending = ending or self._why_end(rows)
            if self.unpaused.is_set():
                self.commit_charter()
                self._dispatch(rows, ending)
                if not ending:
                    self._ask_for_drafts(rows)
            if not self._running():
                if ending:
                    self.verdicts.wind_down()
                    return ending
                if self._exhausted and not self.state.drafts and not self._waiting_tracks():
                    return self._exhausted
            self._tell_queue()
            try:
                event = self.events.get(timeout=0.25)
            except queue.Empty:
                continue
            ending = self._handle(event) or ending

    def check_reachable(self, now: bool = False) -> None:
        """Stop the night (its runs killed, nothing more written) once the lab cannot be read: what it
        recorded stays where it is, and a resume re-queues the runs that were under way. Checked every
        LAB_PROBE_S, and `now` before a run starts (whose folders would otherwise be made afresh on the
        local disk, under the drive's mount point, where they would keep the drive from mounting again)."""
        now = now or time.monotonic() >= getattr(self, "_probe_after", 0.0)
        if not now:
            return
        self._probe_after = time.monotonic() + LAB_PROBE_S
        if not self.lab.reachable():
            self.pool.stop_all()
            raise LabGone(self.lab.root)

    def _tell_queue(self) -> None:
        """What waits (not running): the front ends show it beside the workers' lanes."""
        now = {"waiting": [t.description for t in self._waiting_tracks()], "drafts": len(self.state.drafts),
               "parked": sum(1 for t in self.state.tracks if t.parked)}
        if now != getattr(self, "_queue_told", None):
            self._queue_told = now
            self.bus.emit("queue", **now)

    def _why_end(self, rows: list[dict]) -> str:
        if self.stop_now.is_set():
            self.pool.stop_all()
            return "stopped"
        if self.stop_requested.is_set():
            return "stopped"
        limit = self.options.max_experiments
        if limit is not None and facts.counted(rows) >= limit:
            return f"reached --max-experiments {limit}"
        if self._over_budget(rows):
            return f"the next proposal would pass --max-cost ${self.options.max_cost:.2f}"
        if self.options.deadline is not None and time.time() + self._run_seconds(rows) > self.options.deadline:
            return (f"the next run could not end by {time.strftime('%H:%M', time.localtime(self.options.deadline))} "
                    "(--hours / --until)")
        if self._rejected_in_a_row >= MAX_REJECTED_IN_A_ROW:
            return f"{self._rejected_in_a_row} proposals in a row were rejected; see `status` for why"
        return ""

    def _run_seconds(self, rows: list[dict]) -> float:
        """What the next run will take, from the last runs' wall times (drafting included); before any,
        the budget with the hard limit's allowance for start-up and evaluation."""
        recent = [float(r["timings"].get("total_s") or r.get("run_wall_s") or 0.0) for r in rows[-5:]
                  if r.get("run_wall_s") and facts.segment_of(r) >= 0]
        if recent:
            return max(recent)
        return timeout_for(self.options.budget, self.options.profile)

    def _over_budget(self, rows: list[dict]) -> bool:
        if self.options.max_cost is None:
            return False
        costs = [float((r.get("usage") or {}).get("cost_usd") or 0.0) for r in rows]
        costs += [float((d.usage or {}).get("cost_usd") or 0.0) for d in self.state.drafts]
        spent = sum(costs)
        recent = [c for c in costs[-5:] if c > 0]
        estimate = max(recent) if recent else 0.0
        if hasattr(self.agent, "estimate_next_cost"):
            try:
                estimate = float(self.agent.estimate_next_cost([r.get("usage") or {} for r in rows]))
            except Exception:
                pass
        return spent + estimate > self.options.max_cost

    # -- events -----------------------------------------------------------------------------
    def _handle(self, event) -> str:
        self._check_records()
        kind = event[0]
        if kind in ("draft", "draft_failed"):
            self.drafter.settled()
        if kind == "draft":
            self.state.drafts.append(event[1])
            self.state.save(self.lab)
            self._outages = 0
            crashpoint("after_propose")
        elif kind == "draft_failed":
            return self._draft_failed(*event[1:])
        elif kind == "started":
            track = self._track_of_job(event[1])
            if track is not None:
                track.job["pid"] = event[2]
                track.job["pid_identity"] = event[3]  # a resume ends this process, no later one
                self.state.save(self.lab)
                crashpoint(f"during_{track.role}")
        elif kind == "trained":  # only its evaluation is left: its worker may start the next run
            track = self._track_of_job(event[1])
            if track is not None:
                track.job["evaluating"] = True
                self.state.save(self.lab)
        elif kind == "result":
            track = self._track_of_job(event[1])
            try:
                if track is not None:
                    return self._result(track, event[2])
            finally:
                if hasattr(self.pool, "settled"):  # --overlap: the worker's next run may start its clock
                    self.pool.settled(event[1])
        elif kind == "lost":  # a remote worker died: its job goes back in the queue, once
            track = self._track_of_job(event[1])
            if track is not None:
                track.job, track.runs = None, track.runs - 1
                self.state.save(self.lab)
                self.bus.emit("message", level="warning", text=f"a worker was lost ({event[2]}): its run is re-queued")
        return ""

    def _draft_failed(self, draft_id: int, base: str, error: ProposalError, seconds: float, started: str) -> str:
        exhausted = "tried every change" in error.reason
        self._rejected("agent", error.reason, usage=error.usage, propose_s=seconds, fatal=error.fatal,
                       exhausted=exhausted, started=started)
        if exhausted:
            self._exhausted = error.reason
        if error.fatal:
            self._outages += 1
            if self._outages > len(self.options.outage_waits):
                return f"the agent failed {self._outages} times in a row: {error.reason}"
            self._draft_after = time.monotonic() + self.options.outage_waits[self._outages - 1]
        return ""

    def _check_records(self) -> None:
        """Records written by anyone but the harness are put back (recordkeeper.py). Inside the sandbox
        no experiment can write the lab, so nothing is blamed on them; without one, every run under
        way is refused when its result comes, since the harness cannot tell which of them wrote."""
        changed = self.lab.records.foreign()
        if not changed:
            return
        names = ", ".join(changed)
        running = [t for t in self.state.tracks if t.job]
        if sandbox.probe().active or not running:
            self.bus.emit("message", level="warning", text=f"{names} changed by a process other than the harness "
                          "(not an experiment: they cannot write the lab); put back as the harness wrote them")
            return
        for track in running:
            track.job["foreign"] = sorted(set(track.job.get("foreign", [])) | set(changed))
            track.job["suspects"] = max(len(running), track.job.get("suspects", 0))
        self.state.save(self.lab)
        self.bus.emit("message", level="warning", text=f"{names} written by a process other than the harness while "
                      f"{len(running)} run(s) went on: put back, and the run(s) refused")

    def _track_of_job(self, job_id: int) -> Track | None:
        return next((t for t in self.state.tracks if t.job and t.job["id"] == job_id), None)

    def _result(self, track: Track, result) -> str:
        job = track.job
        track.job = None
        if job.get("foreign") and result.kind != "interrupted":
            result = refused_for_records(result, job["foreign"], job.get("suspects", 1))
        row = run_row(track, job, result, self.options, self.agent, self.lab, self.pool, self.metric)
        if not result.ok:
            row["status"] = "interrupted" if result.kind == "interrupted" else "crash"
            track.rows.append(row)
            if track.role == "experiment":
                self.verdicts.conclude(track, None, "interrupted" if result.kind == "interrupted" else "discard")
            else:
                self.verdicts.close(track, "crashed")
                if track.role == "baseline" and result.kind != "interrupted":
                    self._baseline_failures += 1
                    if self._baseline_failures >= MAX_BASELINE_FAILURES:
                        return (f"the baseline itself failed {self._baseline_failures} times ({result.kind}: "
                                f"{result.reason}); its log: {row.get('log')}")
            return ""
        disturbance = detect(result.steps)
        if disturbance is not None:
            row["disturbance"] = disturbance.record()
            if track.disturbed_streak < plan.MAX_DISTURBED_RERUNS:
                track.disturbed_streak += 1
                row.update(status="disturbed", kind="disturbed", reason=disturbance.reason() + "; run again")
                self.bus.emit("message", level="warning", text=f"{disturbance.reason()}: running it again")
                if track.rows:
                    track.rows.append(row)
                else:
                    self.record(row)
                self.state.save(self.lab)
                return ""
            row["reason"] = disturbance.reason() + f"; judged anyway after {track.disturbed_streak} re-runs"
        track.disturbed_streak = 0
        track.rows.append(row)
        if track.role != "experiment":
            self._baseline_failures = 0
            row["status"] = "keep" if track.role == "baseline" else "discard"
            self.verdicts.close(track, "measured")
            self.verdicts.judge_parked()
            return ""
        track.values.append(result.summary[self.metric])
        track.seed = self._run_seed(len(track.values))  # its next run's own seed
        self.verdicts.judge(track)
        return ""

    # -- pieces -----------------------------------------------------------------------------
    def _diff_stats(self, old: str, new: str) -> dict:
        out = self.lab.repo.git.diff("--numstat", old, new, "--", *self.lab.config["allowed"])
        added = removed = files = 0
        for line in out.splitlines():
            a, r, _ = line.split("\t", 2)
            files += 1
            added += int(a) if a.isdigit() else 0
            removed += int(r) if r.isdigit() else 0
        return {"files": files, "added": added, "removed": removed}

    def _relative(self, path) -> str:
        return str(path.relative_to(self.lab.root))


def refused_for_records(result, names: list[str], suspects: int):
    """The result of a run during which the lab's records were written by someone other than the harness."""
    if suspects <= 1:
        reason = (f"the experiment wrote to {', '.join(names)} (put back as the harness wrote it): only the "
                  "harness writes the lab's records; experiments write only their run directory")
    else:
        reason = (f"{', '.join(names)} written by a process other than the harness while this run and "
                  f"{suspects - 1} other(s) went on, with no sandbox to tell which (put back): each is refused")
    return replace(result, ok=False, kind="refused", reason=reason)


def _cut(text: str, limit: int) -> str:
    """At most `limit` characters, cut between words."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"
