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
from dataclasses import dataclass, field

from . import facts, inflight, plan, sandbox
from .agents.base import Agent, Context, ProposalError
from .audit import fingerprint
from .checks import fixed_exports, validate
from .context import build_context
from .describe import describe_change
from .disturbance import detect
from .drafter import Drafter
from .errors import LabError
from .events import EventBus
from .inflight import State, crashpoint, now_iso
from .judge import decide
from .lab import Lab
from .ledger import write_results
from .reapply import reapply
from .records import base_row, result_fields, settle
from .tracks import Draft, Job, Track
from .workers import LocalPool, timeout_for  # noqa: F401  (timeout_for: callers read it here too)

BASE_SEED = 42
SEED_STEP = 7919              # the k-th run of one code gets seed BASE_SEED + seed + SEED_STEP * k
MAX_REJECTED_IN_A_ROW = 10
MAX_BASELINE_FAILURES = 3
AGENT_OUTAGE_WAITS = (30.0, 60.0, 120.0)
MEASUREMENTS = ("baseline", "noise", "remeasure", "ablation")


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


class ResearchLoop:
    """Runs experiments on a lab until stopped, bounded, or out of money. One per lab at a time."""

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
        inflight.append(self.lab, rows, row)
        crashpoint("after_append")
        write_results(self.lab.results_path, rows)
        if self.drafter is not None and (row.get("role") == "experiment" or row.get("status") == "crash"):
            self.drafter.lesson(self.context(rows), row)
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
        with open(self.lab.journal_path, "a", encoding="utf-8") as handle:
            handle.write(entry)

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
    def run(self, ablate: int | None = None) -> str:
        """Research until an end; with `ablate`, measure the best without each kept change instead."""
        self.state = State.load(self.lab)
        self._retire_other_segments()
        if self.pool is None:
            gpus = list(self.options.gpus) if self.options.gpus else [None] * max(1, self.options.workers)
            self.pool = LocalPool(gpus)
        self.pool.attach(self.events, self.lab, self.options)
        self.drafter = Drafter(self.agent, self.events, self._journal)
        self.drafter.start()
        self.bus.emit("state", state="running", message="running")
        try:
            if ablate:
                from .ablation import run as ablation_run

                return self._finish(ablation_run(self, ablate))
            return self._finish(self._coordinate())
        finally:
            self.drafter.stop()
            self.pool.close()
            self._late_answers()
            self._drop_unused_drafts()
            self.state.save(self.lab)
            self.pool.forget()

    def _finish(self, reason: str) -> str:
        """The session announces the end (run_finished) once the thread is done."""
        self.finish_reason = reason
        return reason

    def _coordinate(self) -> str:
        self._rejected_in_a_row = self._outages = self._baseline_failures = 0
        self._draft_after, self._exhausted, ending = 0.0, "", ""
        while True:
            rows = self.rows()
            ending = ending or self._why_end(rows)
            if self.unpaused.is_set():
                self.commit_charter()
                self._dispatch(rows, ending)
                if not ending:
                    self._ask_for_drafts(rows)
            if not self._running():
                if ending:
                    self._wind_down()
                    return ending
                if self._exhausted and not self.state.drafts and not self._waiting_tracks():
                    return self._exhausted
            self._tell_queue()
            try:
                event = self.events.get(timeout=0.25)
            except queue.Empty:
                continue
            ending = self._handle(event) or ending

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
        if limit is not None and facts.ran(rows) >= limit:
            return f"reached --max-experiments {limit}"
        if self._over_budget(rows):
            return f"the next proposal would pass --max-cost ${self.options.max_cost:.2f}"
        if self._rejected_in_a_row >= MAX_REJECTED_IN_A_ROW:
            return f"{self._rejected_in_a_row} proposals in a row were rejected; see `status` for why"
        return ""

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

    # -- what runs where ----------------------------------------------------------------------
    def _running(self) -> bool:
        return any(t.job for t in self.state.tracks)

    def _waiting_tracks(self) -> list[Track]:
        return [t for t in self.state.tracks if not t.job and t.decision is None and not t.parked]

    def _free_slots(self) -> list[int]:
        busy = {t.job["slot"] for t in self.state.tracks if t.job}
        return [slot for slot in range(self.pool.size) if slot not in busy]

    def _room(self, rows: list[dict]) -> bool:
        limit = self.options.max_experiments
        if limit is None:
            return True
        pending = sum(1 for t in self.state.tracks for r in t.rows if r.get("status") in facts.RAN_STATUSES)
        return facts.ran(rows) + pending + sum(1 for t in self.state.tracks if t.job) < limit

    def _dispatch(self, rows: list[dict], ending: str) -> None:
        if self.stop_now.is_set():
            return
        for slot in self._free_slots():
            track = self._next_track(rows, ending)
            if track is None:
                return
            if not self._room(rows):
                self._out_of_room(track, rows)
                continue
            self._start(track, slot)

    def _next_track(self, rows: list[dict], ending: str) -> Track | None:
        waiting = sorted(self._waiting_tracks(), key=lambda t: (t.role not in MEASUREMENTS, t.id))
        if waiting:
            return waiting[0]
        if ending and not any(t.parked for t in self.state.tracks):
            return None
        in_flight = sum(1 for t in self.state.tracks if t.role in ("baseline", "noise", "remeasure") and not t.decision)
        due = plan.next_measurement(rows, self.options.segment, self.options.policy, self.options.noise_runs,
                                    metric=self.metric, in_flight=in_flight)
        if due is not None:
            return self._measurement(due, rows)
        if ending or plan.barrier(rows, self.options.segment, self.options.policy, self.options.noise_runs, self.metric):
            return None
        while self.state.drafts and self._rejected_in_a_row < MAX_REJECTED_IN_A_ROW:
            track = self._candidate(self.state.drafts.pop(0), rows)
            self.state.save(self.lab)
            if track is not None:
                return track
        return None

    def _measurement(self, due: plan.Measurement, rows: list[dict]) -> Track:
        return self.add_measurement(due.role, self.lab.head(), due.description, rows)

    def add_measurement(self, role: str, commit: str, description: str, rows: list[dict] | None = None,
                        ablates: int | None = None) -> Track:
        """A track that measures code already on the branch (or the best without a change) once."""
        rows = self.rows() if rows is None else rows
        code, best = self.lab.code_id(commit), self.lab.head()
        track = Track(self.state.new_id(), role, commit, best, description, self._seed_for(code, rows),
                      self.options.segment, ablates=ablates,
                      shared={"code": code, "parent_code": self.lab.code_id(best)})
        self.state.tracks.append(track)
        self.state.save(self.lab)
        return track

    def drain(self) -> str:
        """Run the tracks there are, on every free worker, until none is left (or a stop)."""
        while self.state.tracks:
            if self.stop_now.is_set():
                self.pool.stop_all()
            elif self.unpaused.is_set() and not self.stop_requested.is_set():
                for slot in self._free_slots():
                    waiting = self._waiting_tracks()
                    if not waiting:
                        break
                    self._start(waiting[0], slot)
            if not self._running() and (self.stop_requested.is_set() or not self._waiting_tracks()):
                for track in [t for t in self.state.tracks if not t.job]:
                    self._close(track, "dropped")
                break
            try:
                self._handle(self.events.get(timeout=0.25))
            except queue.Empty:
                continue
        return "stopped" if self.stop_requested.is_set() else ""

    def _seed_for(self, code: str, rows: list[dict]) -> int:
        """Runs of one code get seeds of their own, so repeats measure the noise."""
        earlier = sum(1 for r in rows if r.get("code") == code and r.get("status") != "disturbed")
        earlier += sum(1 for t in self.state.tracks if t.shared.get("code") == code)
        return BASE_SEED + self.options.seed + SEED_STEP * earlier

    def _start(self, track: Track, slot: int) -> None:
        job = Job(self.state.new_id(), track.id, track.commit, track.seed, self.pool.name(slot),
                  started_at=now_iso())
        track.job = {**job.record(), "slot": slot, "log": self._relative(self.pool.log_path(job.id))}
        track.runs += 1
        self.state.save(self.lab)
        tree = self.pool.prepare(slot, track.commit)
        track.job["cwd"] = str(tree)
        self.pool.run(slot, job, tree,
                      on_step=lambda step, j=job: self.bus.emit("step", index=j.id, job=j.id, worker=j.worker, **step),
                      on_start=lambda pid, j=job: self.events.put(("started", j.id, pid)))
        confirming = track.role == "experiment" and track.values
        self.bus.emit("experiment_started", index=job.id, job=job.id, worker=job.worker,
                      description=f"confirm: {track.description}" if confirming else track.description,
                      role="confirm" if confirming else track.role, budget=self.options.budget,
                      commit=self.lab.short(track.commit))

    def _out_of_room(self, track: Track, rows: list[dict]) -> None:
        """No run left under --max-experiments: a candidate is decided on what it has, the rest dropped."""
        if track.role == "experiment" and track.values:
            verdict = plan.verdict(rows, self.options.segment, track.values, self.options.policy, self.direction,
                                   self.metric, against=track.shared.get("parent_code"), max_runs=len(track.values))
            self._conclude(track, verdict)
        else:
            self._close(track, "dropped")

    # -- drafts -----------------------------------------------------------------------------
    def _ask_for_drafts(self, rows: list[dict]) -> None:
        if (self._exhausted or time.monotonic() < self._draft_after or self.stop_requested.is_set()
                or self._rejected_in_a_row >= MAX_REJECTED_IN_A_ROW):
            return
        free = len(self._free_slots()) - len(self._waiting_tracks())
        wanted = max(0, free) + self.options.depth
        limit = self.options.max_experiments
        if limit is not None:  # no draft that --max-experiments leaves no run for
            used = facts.ran(rows) + sum(1 for t in self.state.tracks if t.job) + sum(
                1 for t in self.state.tracks for r in t.rows if r.get("status") in facts.RAN_STATUSES)
            wanted = min(wanted, limit - used)
        have = len(self.state.drafts) + self.drafter.pending
        while have < wanted:
            draft_id = self.state.new_id()
            self.drafter.ask(draft_id, self.lab.head(), self.context(rows))
            have += 1

    def context(self, rows: list[dict] | None = None) -> Context:
        rows = self.rows() if rows is None else rows
        best = facts.value_to_beat(rows, self.metric)
        context = build_context(self.lab, len(rows), rows, facts.best_row(rows), best.mean if best else None,
                                self.options.budget, self.options.run_info.get("profile_facts") or {}, self.options.seed)
        context.in_flight = [t.description for t in self.state.tracks if t.role == "experiment" and not t.decision]
        context.in_flight += [f"{d.description} (drafted, not yet run)" for d in self.state.drafts]
        return context

    def _candidate(self, draft: Draft, rows: list[dict]) -> Track | None:
        """Commit a draft onto the best (re-applied if the best moved since it was drafted), or
        record why it cannot run."""
        head = self.lab.head()
        extra = dict(usage=draft.usage, propose_s=draft.propose_s, rationale=draft.rationale, meta=draft.meta,
                     started=draft.started_at)
        files = dict(draft.files)
        rebased = draft.base != head
        if rebased:
            allowed = {p: t for p, t in files.items() if p in self.lab.config["allowed"]}
            merged = reapply(self.lab, draft.base, allowed, head)
            if merged is None:
                self._rejected("conflict", "drafted on a best that has moved since; it does not re-apply onto "
                               "the new best: drafted again", draft.description, **extra)
                return None
            files = {**files, **merged}
        problem, kind = validate(self.lab, files, rows, self.fixed_exports, self.options.audit)
        description = " ".join(draft.description.split())[:200] or describe_change(
            {p: self.lab.read(p) for p in files if p in self.lab.config["allowed"]}, files)
        code_print = fingerprint(files.get(self.lab.config["allowed"][0], ""))
        twin = next((t for t in self.state.tracks if t.shared.get("fingerprint") == code_print), None)
        if not problem and twin is not None:
            problem, kind = f"already running: the same change as '{twin.description}'", "duplicate"
        if problem:
            self._rejected(kind, problem, description, fingerprint=code_print, **extra)
            return None
        self._rejected_in_a_row = 0
        commit = self.lab.commit_files(files, head, f"experiment: {description}")
        self.lab.keep_ref(self.lab.short(commit), commit)
        track = Track(self.state.new_id(), "experiment", commit, head, description, BASE_SEED + self.options.seed,
                      self.options.segment,
                      first={"rationale": draft.rationale, "usage": draft.usage, **draft.meta,
                             "timings": {"propose_s": draft.propose_s}, "started_at": draft.started_at},
                      shared={"fingerprint": code_print, "diff": self._diff_stats(head, commit),
                              "code": self.lab.code_id(commit), "parent_code": self.lab.code_id(head),
                              **({"rebased": True, "drafted_on": self.lab.short(draft.base)} if rebased else {})})
        self.state.tracks.append(track)
        self.state.save(self.lab)
        crashpoint("after_commit")
        return track

    def _rejected(self, kind: str, reason: str, description: str = "", usage=None, propose_s: float = 0.0,
                  rationale: str = "", meta=None, fingerprint=None, started: str = "", fatal: bool = False,
                  exhausted: bool = False) -> dict:
        row = base_row(self.options, self.agent, description=description or "(no proposal)",
                       status="rejected" if kind != "interrupted" else "interrupted", kind=kind, reason=reason,
                       usage=usage or {}, rationale=rationale, fingerprint=fingerprint, val_bpb=None,
                       parent=self.lab.short(self.lab.head()), started_at=started or now_iso(), **(meta or {}))
        row["timings"]["propose_s"] = round(propose_s, 3)
        row["timings"]["total_s"] = round(propose_s, 3)
        if fatal:
            row["fatal"] = True
        if exhausted:
            row["exhausted"] = True
        if kind not in ("conflict", "not_run"):
            self._rejected_in_a_row += 1
        return self.record(row)

    def _late_answers(self) -> None:
        """Drafts and failures the agent answered after the run decided to end: recorded all the same."""
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            if event[0] == "draft":
                self.state.drafts.append(event[1])
            elif event[0] == "draft_failed":
                self._draft_failed(*event[1:])

    def _drop_unused_drafts(self) -> None:
        """Drafts the run ended before running: recorded, so what they cost is in the ledger."""
        for draft in self.state.drafts:
            self._rejected("not_run", "drafted while the run was ending: not run", draft.description,
                           usage=draft.usage, propose_s=draft.propose_s, rationale=draft.rationale,
                           started=draft.started_at)
        self.state.drafts = []

    # -- events -----------------------------------------------------------------------------
    def _handle(self, event) -> str:
        kind = event[0]
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
                self.state.save(self.lab)
                crashpoint(f"during_{track.role}")
        elif kind == "result":
            track = self._track_of_job(event[1])
            if track is not None:
                return self._result(track, event[2])
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

    def _track_of_job(self, job_id: int) -> Track | None:
        return next((t for t in self.state.tracks if t.job and t.job["id"] == job_id), None)

    def _result(self, track: Track, result) -> str:
        job = track.job
        track.job = None
        row = self._run_row(track, job, result)
        if not result.ok:
            row["status"] = "interrupted" if result.kind == "interrupted" else "crash"
            track.rows.append(row)
            if track.role == "experiment":
                self._conclude(track, None, "interrupted" if result.kind == "interrupted" else "discard")
            else:
                self._close(track, "crashed")
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
            self._close(track, "measured")
            self._judge_parked()
            return ""
        track.values.append(result.summary[self.metric])
        track.seed = BASE_SEED + self.options.seed + SEED_STEP * len(track.values)  # its next run's own seed
        self._judge(track)
        return ""

    def _run_row(self, track: Track, job: dict, result) -> dict:
        first = not track.rows and not track.values and track.runs <= 1 + track.disturbed_streak and bool(track.first)
        description = track.description if track.role != "experiment" or not track.values else \
            f"confirm: {track.description}"
        role = track.role if track.role != "experiment" or not track.values else "confirm"
        row = base_row(self.options, self.agent, role=role, commit=self.lab.short(track.commit),
                       parent=self.lab.short(track.parent), description=description, seed=job["seed"],
                       started_at=job.get("started_at") or now_iso(), finished_at=now_iso(), log=job.get("log"),
                       job=job["id"], worker=job.get("worker"), host=self.pool.host_of(job["slot"]),
                       device=self.pool.device(job["slot"]),
                       **track.shared)
        if track.ablates is not None:
            row["ablates"] = track.ablates
        row["sandbox"] = sandbox.probe().name
        row.update(result_fields(result, self.metric))
        if first:
            row.update({k: v for k, v in track.first.items() if k not in ("timings", "started_at")})
            row["timings"].update(track.first.get("timings", {}))
            row["started_at"] = track.first.get("started_at") or row["started_at"]
        row["timings"]["run_s"] = round(result.wall_seconds, 3)
        row["timings"]["total_s"] = round(result.wall_seconds + (row["timings"].get("propose_s") or 0.0), 3)
        return row

    # -- verdicts ---------------------------------------------------------------------------
    def _judge(self, track: Track) -> None:
        rows = self.rows()
        head_code = self.lab.code_id(self.lab.head())
        against = track.shared.get("parent_code")
        measuring = any(t.role in ("remeasure", "baseline", "noise") and not t.decision for t in self.state.tracks)
        if self.options.policy == "noise" and against == head_code and (
                measuring or plan.best_runs(rows, self.options.segment, self.metric) < 2):
            track.parked = True  # the value to beat is being measured: judge against it once it is
            self.state.save(self.lab)
            return
        track.parked = False
        verdict = plan.verdict(rows, self.options.segment, track.values, self.options.policy, self.direction,
                               self.metric, against=against)
        if verdict.decision == "more" and not self._room(rows):
            verdict = plan.verdict(rows, self.options.segment, track.values, self.options.policy, self.direction,
                                   self.metric, against=against, max_runs=len(track.values))
        if verdict.decision == "more":
            self.state.save(self.lab)
            return
        self._conclude(track, verdict)

    def _judge_parked(self) -> None:
        for track in [t for t in self.state.tracks if t.parked and t.decision is None]:
            self._judge(track)

    def _conclude(self, track: Track, verdict, decision: str | None = None) -> None:
        """Settle a candidate: keep it (the branch moves), discard it, or re-apply it onto a best that
        moved while it ran."""
        record = verdict.record() if verdict is not None else None
        decision = decision or verdict.decision
        head = self.lab.head()
        moved = decision == "keep" and track.shared.get("parent_code") != self.lab.code_id(head)
        if moved:
            self._rebase(track, head, record)
            decision = "discard"
        elif decision == "keep" and head != self.lab.repo.git.rev_parse(track.parent):
            # only the charter moved: the same code goes on top of it
            track.commit = self.lab.commit_files({p: self.lab.file_at_commit(track.commit, p)
                                                  for p in self.lab.config["allowed"]}, head,
                                                 f"experiment: {track.description}")
        settle(track.rows, decision, record)
        self._close(track, decision)

    def _rebase(self, track: Track, head: str, record: dict) -> None:
        """A result that beat its own parent after the best moved: re-applied onto the new best and
        confirmed there (a new candidate), or discarded when it does not re-apply."""
        files = {p: self.lab.file_at_commit(track.commit, p) for p in self.lab.config["allowed"]}
        merged = reapply(self.lab, track.parent, files, head)
        if merged is None:
            for row in track.rows:
                row["reason"] = "beat its own parent, but the best moved meanwhile and it does not re-apply onto it"
            return
        commit = self.lab.commit_files(merged, head, f"experiment (re-applied): {track.description}")
        self.lab.keep_ref(self.lab.short(commit), commit)
        again = Track(self.state.new_id(), "experiment", commit, head, track.description, track.seed,
                      self.options.segment, first={"rationale": track.first.get("rationale", "")},
                      shared={**track.shared, "code": self.lab.code_id(commit), "parent_code": self.lab.code_id(head),
                              "rebased": True, "rebased_from": self.lab.short(track.commit),
                              "diff": self._diff_stats(head, commit)})
        for row in track.rows:
            row["reason"] = f"beat its own parent ({self.lab.short(track.parent)}); re-applied onto the new best to be confirmed there"
        self.state.tracks.append(again)

    def _close(self, track: Track, decision: str) -> None:
        """Record a finished track's rows (the note first says the verdict, so a kill between two
        appends is finished on resume as decided) and, for a kept change, move the branch."""
        track.decision = decision
        self.state.save(self.lab)
        crashpoint("after_judge")
        if decision == "keep":
            self.lab.reset(track.commit)
        rows = self.rows()
        for row in track.rows:
            self.record(row, rows)
        self.state.tracks.remove(track)
        self.state.save(self.lab)

    def _wind_down(self) -> None:
        """The run is ending: candidates are decided on the runs they have, other tracks dropped."""
        for track in [t for t in self.state.tracks if t.decision is None and not t.job]:
            self._out_of_room(track, self.rows())

    def _retire_other_segments(self) -> None:
        """Tracks left from a session under other conditions: their runs are recorded, not judged."""
        for track in [t for t in self.state.tracks if t.segment != self.options.segment]:
            settle(track.rows, "interrupted", None)
            self._close(track, "interrupted")

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


def _cut(text: str, limit: int) -> str:
    """At most `limit` characters, cut between words."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"
