"""The coordinator's scheduling: which track runs next on which worker, and when the agent drafts.

Part of ResearchLoop (loop.py), split out so each file reads in one sitting (the verdicts are a
VerdictStep of their own, reached as self.verdicts): measurements
plan.py says are due come first, then the runs the judge asked for, then new candidates made from
the agent's drafts (re-applied onto the best when it moved since they were drafted).
"""
from __future__ import annotations

import queue
import time

from ..judge import facts, plan
from ..run import proctime
from ..run.audit import fingerprint
from .checks import validate
from .context import build_context
from .describe import describe_change
from .inflight import crashpoint
from ..lab.ledger import now_iso
from ..agents.base import Context
from ..lab.reapply import reapply
from .records import rejected_row
from .tracks import Draft, Job, Track

BASE_SEED = 42
SEED_STEP = 7919              # the k-th run of one code gets seed BASE_SEED + seed + SEED_STEP * k
MAX_REJECTED_IN_A_ROW = 10
MEASUREMENTS = ("baseline", "noise", "remeasure", "ablation", "transfer")


class Scheduling:
    # -- what runs where ----------------------------------------------------------------------
    def _running(self) -> bool:
        return any(t.job for t in self.state.tracks)

    def _waiting_tracks(self) -> list[Track]:
        return [t for t in self.state.tracks if not t.job and t.decision is None and not t.parked]

    def _free_slots(self) -> list[int]:
        busy = {t.job["slot"] for t in self.state.tracks if t.job and not t.job.get("evaluating")}
        return [slot for slot in range(self.pool.size) if slot not in busy]

    def _used(self, rows: list[dict]) -> int:
        """Runs charged to --max-experiments: recorded, held on tracks, and under way."""
        held = sum(1 for t in self.state.tracks for r in t.rows if facts.charged(r))
        return facts.counted(rows) + held + sum(1 for t in self.state.tracks if t.job)

    def _room(self, rows: list[dict]) -> bool:
        limit = self.options.max_experiments
        return limit is None or self._used(rows) < limit

    def _dispatch(self, rows: list[dict], ending: str) -> None:
        if self.stop_now.is_set():
            return
        for slot in self._free_slots():
            track = self._next_track(rows, ending)
            if track is None:
                return
            if not self._room(rows):
                self.verdicts.decide_on_what_it_has(track, rows)
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
                        ablates: int | None = None, seed: int | None = None, shared: dict | None = None) -> Track:
        """A track that measures code already on the branch (or the best without a change) once; `seed`
        pins its run's seed (the transfer ladder pairs its codes by repeat), `shared` adds to its row."""
        rows = self.rows() if rows is None else rows
        code, best = self.lab.code_id(commit), self.lab.head()
        track = Track(self.state.new_id(), role, commit, best, description,
                      self._seed_for(code, rows) if seed is None else seed, self.options.segment, ablates=ablates,
                      shared={"code": code, "parent_code": self.lab.code_id(best), **(shared or {})})
        self.state.tracks.append(track)
        self.state.save(self.lab)
        return track

    def drain(self) -> str:
        """Run the tracks there are, on every free worker, until none is left (or a stop)."""
        while self.state.tracks:
            self.check_reachable()
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
                    self.verdicts.close(track, "dropped")
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
        return self._run_seed(earlier)

    def _run_seed(self, k: int) -> int:
        """The k-th run of any code: the same seed for every code, so runs of two codes pair up."""
        return BASE_SEED + self.options.seed + SEED_STEP * k

    def _start(self, track: Track, slot: int) -> None:
        self.check_reachable(now=True)
        job = Job(self.state.new_id(), track.id, track.commit, track.seed, self.pool.name(slot),
                  started_at=now_iso())
        track.job = {**job.record(), "slot": slot, "log": self._relative(self.pool.log_path(job.id))}
        track.runs += 1
        self.state.save(self.lab)
        tree = self.pool.prepare(slot, track.commit)
        track.job["cwd"] = str(tree)
        self.pool.run(slot, job, tree,
                      on_step=lambda step, j=job: self.bus.emit("step", index=j.id, job=j.id, worker=j.worker, **step),
                      # on the worker's thread right after the spawn: who the pid is, before the number can change hands
                      on_start=lambda pid, j=job: self.events.put(("started", j.id, pid, proctime.identity(pid))))
        crashpoint("after_start")  # handed to its worker, whichever kind (a Ray worker tells no pid)
        confirming = track.role == "experiment" and track.values
        self.bus.emit("experiment_started", index=job.id, job=job.id, worker=job.worker,
                      description=f"confirm: {track.description}" if confirming else track.description,
                      role="confirm" if confirming else track.role, budget=self.options.budget,
                      commit=self.lab.short(track.commit))

    # -- drafts -----------------------------------------------------------------------------
    def _ask_for_drafts(self, rows: list[dict]) -> None:
        if (self._exhausted or time.monotonic() < self._draft_after or self.stop_requested.is_set()
                or self._rejected_in_a_row >= MAX_REJECTED_IN_A_ROW):
            return
        free = len(self._free_slots()) - len(self._waiting_tracks())
        wanted = max(0, free) + self.options.depth
        limit = self.options.max_experiments
        if limit is not None:  # no draft that --max-experiments leaves no run for
            wanted = min(wanted, limit - self._used(rows))
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
        track = Track(self.state.new_id(), "experiment", commit, head, description, self._run_seed(0),
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
        row = rejected_row(self.options, self.agent, kind, reason, description=description,
                           parent=self.lab.short(self.lab.head()), usage=usage, propose_s=propose_s,
                           rationale=rationale, meta=meta, fingerprint=fingerprint, started=started, fatal=fatal,
                           exhausted=exhausted)
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
            if event[0] in ("draft", "draft_failed"):
                self.drafter.settled()
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

