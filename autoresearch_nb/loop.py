"""The research loop: propose -> validate -> commit -> run until the judge can decide -> keep | revert -> record.

Before each proposal the loop measures what plan.py says is due (the baseline, its repeats, the
best again). A candidate runs once, and again while the judge asks for more; a run disturbed
from outside (disturbance.py) is recorded and run again instead of judged. Every state change
survives `kill -9`: before anything touches the tree, .autoresearch/inflight.json says what is
under way, which commit to return to and the runs finished so far; rows are appended (fsync)
before the note is removed, so a resume neither loses nor repeats a row (inflight.py).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from . import boundary, facts, inflight, plan, sandbox
from .agents.base import Agent, Context, ProposalError
from .audit import fingerprint
from .checks import fixed_exports, validate
from .context import build_context
from .disturbance import detect
from .describe import describe_change
from .errors import LabError
from .events import EventBus
from .inflight import crashpoint, now_iso
from .judge import decide
from .lab import Lab
from .ledger import append_row, write_results
from .runner import RunResult, Runner, clean_environment

BASE_SEED = 42
MAX_REJECTED_IN_A_ROW = 10
MAX_BASELINE_FAILURES = 3
AGENT_OUTAGE_WAITS = (30.0, 60.0, 120.0)
SUMMARY_FIELDS = ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                  "total_tokens_M", "num_steps", "num_params_M", "depth")


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
    segment_reason: str = ""    # why this segment started (what changed), kept on its first rows


def timeout_for(budget: float, profile: str, allowance: float | None = None, clock: str = "wall") -> float:
    """Hard limit of one run: the budget (three times over on the cpu clock, which a starved process
    spends slowly) plus start-up (imports, data, compile) and evaluation."""
    return budget * (3.0 if clock == "cpu" else 1.25) + boundary.startup_allowance(profile, allowance)


class ResearchLoop:
    """Runs experiments on a lab until stopped, bounded, or out of money. One per lab at a time."""

    def __init__(self, lab: Lab, agent: Agent, options: LoopOptions, bus: EventBus | None = None):
        self.lab, self.agent, self.options = lab, agent, options
        self.bus = bus or EventBus()
        self.stop_requested = threading.Event()
        self.stop_now = threading.Event()
        self.unpaused = threading.Event()
        self.unpaused.set()
        self.runner: Runner | None = None
        self.finish_reason = ""
        self.fixed_exports = fixed_exports(lab)
        self.metric, self.direction = lab.config.get("metric", "val_bpb"), lab.config.get("direction", "lower")

    # -- control, from any thread -----------------------------------------------------------
    def stop(self, now: bool = False) -> None:
        self.stop_requested.set()
        self.unpaused.set()
        if now:
            self.stop_now.set()
            runner = self.runner
            if runner:
                runner.stop()

    def pause(self) -> None:
        self.unpaused.clear()
        self.bus.emit("state", state="paused", message="paused: the next experiment waits for resume")

    def resume(self) -> None:
        self.unpaused.set()
        self.bus.emit("state", state="running", message="resumed")

    # -- records ----------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        return self.lab.rows()

    def record(self, row: dict, rows: list[dict] | None = None) -> dict:
        """Append one row (fsync), rebuild results.tsv, add to the journal, tell the front ends."""
        rows = self.rows() if rows is None else rows
        row.setdefault("finished_at", now_iso())
        row.setdefault("agent", self.agent.name)
        row.setdefault("model", self.agent.model)
        best = facts.value_to_beat(rows + [row], self.metric)
        row["best"] = round(best.mean, 6) if best else None
        append_row(self.lab.ledger_path, row)
        crashpoint("after_append", row.get("index"))
        write_results(self.lab.results_path, rows + [row])
        self._journal(row)
        self.bus.emit("experiment_finished", row=row)
        return row

    def record_all(self, pending: list[dict], kept: bool, commit: str, parent: str) -> list[dict]:
        """Record the runs of one step in order; the note says what they are, so a kill between
        two appends is repaired on resume with the verdict intact."""
        note = inflight.read(self.lab)
        inflight.write(self.lab, **{**note, "phase": "record", "pending": pending, "kept": kept,
                                    "commit": commit, "parent": parent})
        rows = self.rows()
        for row in pending:
            rows.append(self.record(row, rows))
        inflight.clear(self.lab)
        return pending

    def _journal(self, row: dict) -> None:
        if row.get("role") not in ("experiment", None) and row.get("status") != "crash":
            return  # measurements of code already judged teach nothing new
        try:
            lesson = self.agent.reflect(self.context(row["index"] + 1), row) or ""
        except Exception:  # a lesson is nice to have; the record is what matters
            lesson = ""
        value = f"{row[self.metric]:.6f}" if row.get(self.metric) is not None else "-"
        entry = f"\n## {row['index']}: {row.get('status')} ({value}) {row.get('description', '')}\n"
        if row.get("reason"):
            entry += f"- {row.get('kind') or 'reason'}: {row['reason']}\n"
        if row.get("rationale"):
            entry += f"- hypothesis: {row['rationale'][:500]}\n"
        if lesson:
            entry += lesson.rstrip() + "\n"
        with open(self.lab.journal_path, "a", encoding="utf-8") as handle:
            handle.write(entry)

    def recover(self) -> None:
        """Make the lab consistent after a crash, a kill -9 or a kernel restart."""
        inflight.recover(self.lab, self.agent.name)

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

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> str:
        rejected_in_a_row, outages, baseline_failures = 0, 0, 0
        self.bus.emit("state", state="running", message="running")
        while True:
            if self.stop_requested.is_set():
                return self._finish("stopped")
            if not self.unpaused.is_set():
                self.unpaused.wait()
                continue
            rows = self.rows()
            if self.options.max_experiments is not None and facts.ran(rows) >= self.options.max_experiments:
                return self._finish(f"reached --max-experiments {self.options.max_experiments}")
            self.commit_charter()
            due = plan.next_measurement(rows, self.options.segment, self.options.policy,
                                        self.options.noise_runs, metric=self.metric)
            if due is not None:
                last = self.measure(due, rows)[-1]
                failed = due.role == "baseline" and last.get("status") == "crash"
                baseline_failures = baseline_failures + 1 if failed else 0
                if baseline_failures >= MAX_BASELINE_FAILURES:
                    return self._finish(f"the baseline itself failed {baseline_failures} times "
                                        f"({last.get('kind')}: {last.get('reason')}); see its log with `show {last['index']}`")
                continue
            if self._over_budget(rows):
                return self._finish(f"the next proposal would pass --max-cost ${self.options.max_cost:.2f}")
            row = self.experiment(rows)
            if row.get("status") == "rejected":
                rejected_in_a_row += 1
                if row.get("fatal"):
                    outages += 1
                    if outages > len(self.options.outage_waits):
                        return self._finish(f"the agent failed {outages} times in a row: {row.get('reason')}")
                    if self.stop_requested.wait(self.options.outage_waits[outages - 1]):
                        continue
                if row.get("exhausted"):
                    return self._finish(row["reason"])
                if rejected_in_a_row >= MAX_REJECTED_IN_A_ROW:
                    return self._finish(f"{rejected_in_a_row} proposals in a row were rejected; see `status` for why")
            else:
                rejected_in_a_row, outages = 0, 0

    def _finish(self, reason: str) -> str:
        """The session announces the end (run_finished) once the thread is done."""
        self.finish_reason = reason
        return reason

    def _over_budget(self, rows: list[dict]) -> bool:
        if self.options.max_cost is None:
            return False
        costs = [float((r.get("usage") or {}).get("cost_usd") or 0.0) for r in rows]
        spent = sum(costs)
        recent = [c for c in costs[-5:] if c > 0]
        estimate = max(recent) if recent else 0.0
        if hasattr(self.agent, "estimate_next_cost"):
            try:
                estimate = float(self.agent.estimate_next_cost([r.get("usage") or {} for r in rows]))
            except Exception:
                pass
        return spent + estimate > self.options.max_cost

    # -- measuring code that is already on the branch ---------------------------------------
    def measure(self, due: plan.Measurement, rows: list[dict]) -> list[dict]:
        """Run the best code again (baseline, repeat, re-measurement), re-running disturbed runs."""
        head = self.lab.head()
        index = len(rows)
        seed = BASE_SEED + self.options.seed
        if due.role == "noise":
            seed += 1000 * (1 + sum(1 for r in rows if r.get("role") == "noise"))
        elif due.role == "remeasure":
            seed = self.seed_for(index)
        before = facts.value_to_beat(rows, self.metric) if due.role == "remeasure" else None
        pending = self.runs(index, due.role, head, head, due.description, seed, step_started=time.monotonic())
        last = pending[-1]  # a clean run, a crash, or an interruption: never a disturbed re-run
        if last.get("status") is None:
            last["status"] = "keep" if due.role == "baseline" else "discard"
            self._note_drift(last, before)
        return self.record_all(pending, True, head, head)

    def _note_drift(self, row: dict, before) -> None:
        """A re-measurement far from the best's mean says the conditions may have moved."""
        value = row.get(self.metric)
        if before is None or value is None or before.half_width is None or before.runs < 2:
            return
        spread = before.half_width * before.runs ** 0.5  # back to a single run's Z95 spread
        if abs(value - before.mean) > 1.5 * spread:
            row["drift"] = round(value - before.mean, 6)
            self.bus.emit("message", level="warning", text=(
                f"the best measured {value:.6f} now against {before.text()} before: conditions may "
                "have drifted (other load, thermal limits); the mean takes it in"))

    # -- one proposal -----------------------------------------------------------------------
    def experiment(self, rows: list[dict]) -> dict:
        index = len(rows)
        self._step_started = time.monotonic()
        parent = self.lab.head()
        started = now_iso()
        self._note(index=index, phase="propose", role="experiment", parent=parent, started_at=started)
        self.bus.emit("proposing", index=index)
        t0 = time.monotonic()
        context = self.context(index, rows)
        try:
            proposal = self.agent.propose(context)
        except ProposalError as error:
            return self._rejected(index, parent, started, "agent", error.reason, usage=error.usage,
                                  fatal=error.fatal, propose_s=time.monotonic() - t0,
                                  exhausted="tried every change" in error.reason)
        except Exception as error:  # a broken agent is recorded, never fatal to the loop
            return self._rejected(index, parent, started, "agent", f"{type(error).__name__}: {error}",
                                  propose_s=time.monotonic() - t0)
        propose_s = time.monotonic() - t0
        crashpoint("after_propose", index)
        self.lab.reset(parent)  # whatever the agent did to the tree, the proposal is only its files
        if self.stop_now.is_set():
            return self._rejected(index, parent, started, "interrupted", "stopped while the agent was proposing",
                                  usage=proposal.usage, propose_s=propose_s, description=proposal.description)
        problem, kind = validate(self.lab, proposal.files, rows, self.fixed_exports, self.options.audit)
        # The agent's own line when it gave one; otherwise what the code says changed.
        description = " ".join((proposal.description or "").split())[:200] or describe_change(
            {p: self.lab.read(p) for p in proposal.files if p in self.lab.config["allowed"]}, proposal.files)
        extra = dict(usage=proposal.usage, propose_s=propose_s, description=description,
                     rationale=proposal.rationale, meta=proposal.meta)
        if problem:
            return self._rejected(index, parent, started, kind, problem, **extra,
                                  fingerprint=fingerprint(proposal.files.get(self.lab.config["allowed"][0], "")))
        self._note(index=index, phase="commit", role="experiment", parent=parent, started_at=started,
                   description=description)
        self.lab.write_files(proposal.files)
        crashpoint("after_write", index)
        commit = self.lab.commit(list(proposal.files), f"experiment {index}: {description}")
        self.lab.keep_ref(index, commit)
        crashpoint("after_commit", index)
        first = {"rationale": proposal.rationale, "usage": proposal.usage, **proposal.meta,
                 "timings": {"propose_s": round(propose_s, 3)}}
        shared = {"fingerprint": fingerprint(proposal.files.get(self.lab.config["allowed"][0], "")),
                  "diff": self._diff_stats(parent, commit)}
        pending = self.runs(index, "experiment", commit, parent, description, BASE_SEED + self.options.seed,
                            step_started=self._step_started, started=started, candidate=True, first=first,
                            shared=shared)
        kept = pending[-1].get("status") == "keep"
        if not kept:
            self.lab.reset(parent)
        crashpoint("after_judge", index)
        self.record_all(pending, kept, commit, parent)
        return next((r for r in pending if r.get("role") == "experiment"), pending[0])

    # -- running code until it has a clean run (or the judge its verdict) --------------------
    def runs(self, index: int, role: str, commit: str, parent: str, description: str, seed: int,
             step_started: float, started: str | None = None, candidate: bool = False,
             first: dict | None = None, shared: dict | None = None) -> list[dict]:
        """Run `commit` until a measurement has a clean run or a candidate a verdict. Returns the
        rows still to record, in order; a candidate's carry their final status and the verdict.
        A disturbed run with nothing before it awaiting a verdict is recorded at once, so the
        ledger and the front ends see it while its re-run goes on."""
        pending, values, disturbed_streak, verdict = [], [], 0, None
        number, run_role, run_seed = index, role, seed
        while True:
            started = started or now_iso()
            self._note(index=number, phase="run", role=run_role, parent=parent, commit=commit,
                       started_at=started, description=description, log=self._log_rel(number), pending=pending)
            shown = description if run_role != "confirm" else f"confirm: {description}"
            self.bus.emit("experiment_started", index=number, description=shown, role=run_role,
                          budget=self.options.budget, commit=self.lab.short(commit))
            run_started = time.monotonic()
            result = self.execute(number, run_seed)
            row = self.base_row(number, run_role, commit, parent, shown, run_seed, started)
            row["finished_at"] = now_iso()
            row.update(self.result_fields(result), **(shared or {}))
            if number == index and first:
                row.update({k: v for k, v in first.items() if k != "timings"})
                row["timings"].update(first.get("timings", {}))
            row["timings"]["run_s"] = round(result.wall_seconds, 3)
            row["timings"]["total_s"] = round(time.monotonic() - (step_started if number == index else run_started), 3)
            started, number = None, number + 1
            if not result.ok:
                row["status"] = "interrupted" if result.kind == "interrupted" else "crash"
                pending.append(row)
                if candidate:
                    self._settle(pending, "interrupted" if result.kind == "interrupted" else "discard", verdict)
                return pending
            disturbance = detect(result.steps)
            if disturbance is not None:
                row["disturbance"] = disturbance.record()
                if disturbed_streak < plan.MAX_DISTURBED_RERUNS:
                    disturbed_streak += 1
                    row.update(status="disturbed", kind="disturbed", reason=disturbance.reason() + "; run again")
                    self.bus.emit("message", level="warning", text=f"#{row['index']} {disturbance.reason()}: running it again")
                    if pending:
                        pending.append(row)
                    else:
                        self.record(row)
                    continue
                row["reason"] = disturbance.reason() + f"; judged anyway after {disturbed_streak} re-runs"
            disturbed_streak = 0
            pending.append(row)
            if not candidate:
                return pending
            values.append(result.summary[self.metric])
            verdict = plan.verdict(self.rows(), self.options.segment, values, self.options.policy,
                                   self.direction, self.metric)
            if verdict.decision == "more" and not self._room_for_another(len(pending)):
                verdict = decide(values, self._best_values(), verdict.noise, self.options.policy,
                                 self.direction, max_runs=len(values))
            if verdict.decision != "more":
                self._settle(pending, verdict.decision, verdict)
                return pending
            run_role, run_seed = "confirm", self.seed_for(number)

    def seed_for(self, index: int) -> int:
        """The seed of a repeated run of judged code: its own, so repeats measure the noise."""
        return BASE_SEED + self.options.seed + 7919 * index

    def _room_for_another(self, pending: int) -> bool:
        if self.stop_requested.is_set():
            return False
        limit = self.options.max_experiments
        return limit is None or facts.ran(self.rows()) + pending + 1 <= limit

    def _best_values(self) -> list[float]:
        rows = self.rows()
        best = facts.best_row(rows)
        return facts.code_runs(rows, self.options.segment, self.metric).get(facts.code_of(best), [])

    def _settle(self, pending: list[dict], decision: str, verdict) -> None:
        """Give a candidate's runs their final status: the verdict's, or what became of each run."""
        record = verdict.record() if verdict is not None else None
        for row in pending:
            if row.get("status") in (None, "keep", "discard"):
                row["status"] = decision
            if record is not None and row.get("status") in ("keep", "discard", "interrupted"):
                row["judge"] = record

    # -- pieces -----------------------------------------------------------------------------
    def execute(self, index: int, seed: int) -> RunResult:
        config = self.lab.config
        facts = self.options.run_info.get("profile_facts") or {}
        env = clean_environment({
            "AUTORESEARCH_BUDGET": self.options.budget, "AUTORESEARCH_SEED": seed,
            "AUTORESEARCH_PROFILE": self.options.profile, "AUTORESEARCH_DATA": config.get("data", "builtin"),
            "AUTORESEARCH_BYTE_LEVEL": "1" if config.get("byte_level") else None,
            "AUTORESEARCH_DATA_KEY": facts.get("data_key"),
        })
        run_dir = self.lab.state_dir / "runs" / f"{index:04d}"
        readable = facts.get("train_paths") or sandbox.lab_reads(config, env, self.lab.root)
        runner = Runner(config["command"], self.lab.root, env, self.lab.log_path(index), self.options.budget,
                        timeout_for(self.options.budget, self.options.profile, config.get("startup_allowance"),
                                    facts.get("clock", "wall")),
                        on_step=lambda step: self.bus.emit("step", index=index, **step),
                        on_start=lambda pid: inflight.note_pid(self.lab, pid),
                        wrap=lambda command: sandbox.wrap(command, root=self.lab.root, run_dir=run_dir, env=env,
                                                          readable=readable),
                        sandbox=sandbox.probe(), **boundary.for_lab(self.lab, index, facts, self.options.budget))
        self.runner = runner
        if self.stop_now.is_set():
            runner.stop()
        try:
            result = runner.run()
        finally:
            self.runner = None
        return result

    def base_row(self, index, role, commit, parent, description, seed, started) -> dict:
        return {"index": index, "role": role, "commit": self.lab.short(commit) if commit else "",
                "parent": self.lab.short(parent) if parent else "",
                "description": description, "seed": seed, "started_at": started, "kind": None, "reason": None,
                "rationale": "", "usage": {}, "diff": {"files": 0, "added": 0, "removed": 0},
                "log": self._log_rel(index), "timings": {"propose_s": 0.0, "run_s": 0.0, "judge_s": 0.0},
                "agent": self.agent.name, "model": self.agent.model, "segment": self.options.segment,
                "conditions": self.options.conditions, "policy": self.options.policy,
                "sandbox": sandbox.probe().name,
                **({"segment_reason": self.options.segment_reason} if self.options.segment_reason else {})}

    def result_fields(self, result: RunResult) -> dict:
        fields = {k: result.summary.get(k) for k in SUMMARY_FIELDS}
        fields["memory_gb"] = round((result.summary.get("peak_vram_mb") or 0.0) / 1024, 1)
        if not result.ok:
            fields.update(kind=result.kind, reason=result.reason, tail=result.tail[-2000:], val_bpb=None)
        return {**fields, "run_wall_s": round(result.wall_seconds, 2)}

    def _rejected(self, index, parent, started, kind, reason, usage=None, fatal=False, propose_s=0.0,
                  description="", rationale="", meta=None, fingerprint=None, exhausted=False) -> dict:
        self.lab.reset(parent)
        row = self.base_row(index, "experiment", "", parent, description or "(no proposal)", None, started)
        row.update(status="rejected" if kind != "interrupted" else "interrupted", kind=kind, reason=reason,
                   usage=usage or {}, rationale=rationale, fingerprint=fingerprint, val_bpb=None,
                   **(meta or {}))
        row["log"] = None
        row["timings"]["propose_s"] = round(propose_s, 3)
        row["timings"]["total_s"] = round(time.monotonic() - getattr(self, "_step_started", time.monotonic()), 3)
        if fatal:
            row["fatal"] = True
        if exhausted:
            row["exhausted"] = True
        row = self.record(row)
        inflight.clear(self.lab)
        return row

    def context(self, index: int, rows: list[dict] | None = None) -> Context:
        rows = self.rows() if rows is None else rows
        best = facts.value_to_beat(rows, self.metric)
        return build_context(self.lab, index, rows, facts.best_row(rows), best.mean if best else None,
                             self.options.budget, self.options.run_info.get("profile_facts") or {}, self.options.seed)

    def _diff_stats(self, old: str, new: str) -> dict:
        out = self.lab.repo.git.diff("--numstat", old, new)
        added = removed = files = 0
        for line in out.splitlines():
            a, r, _ = line.split("\t", 2)
            files += 1
            added += int(a) if a.isdigit() else 0
            removed += int(r) if r.isdigit() else 0
        return {"files": files, "added": added, "removed": removed}

    def _note(self, **data) -> None:
        inflight.write(self.lab, segment=self.options.segment, **data)

    def _log_rel(self, index: int) -> str:
        return str(self.lab.log_path(index).relative_to(self.lab.root))
