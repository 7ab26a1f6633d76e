"""The research loop: propose -> validate -> commit -> run -> judge -> keep | revert -> record.

Every state change survives `kill -9`: before anything touches the tree, .autoresearch/inflight.json
says what is under way and which commit to return to; the ledger row is appended (fsync) before
the in-flight note is removed, so a resume neither loses nor repeats a row.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from . import boundary, inflight
from .agents.base import Agent, Context, ProposalError
from .audit import fingerprint
from .checks import fixed_exports, validate
from .context import build_context
from .errors import LabError
from .events import EventBus
from .inflight import crashpoint, now_iso
from .judge import judge, noise_estimate
from .lab import Lab
from .ledger import RAN_STATUSES, append_row, write_results
from .runner import RunResult, Runner, clean_environment

BASE_SEED = 42
MAX_REJECTED_IN_A_ROW = 10
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

    def ran(self, rows: list[dict]) -> int:
        return sum(1 for r in rows if r.get("status") in RAN_STATUSES)

    def best(self, rows: list[dict]) -> dict | None:
        kept = [r for r in rows if r.get("status") == "keep"]
        return kept[-1] if kept else None

    def best_score(self, rows: list[dict]) -> float | None:
        """The value to beat. While the baseline is best, the mean of its repeats: one lucky
        baseline run would otherwise make every later change look worse than it is."""
        best = self.best(rows)
        if best is None:
            return None
        if best.get("role") == "baseline":
            values = [best["val_bpb"]] + [r["val_bpb"] for r in rows if r.get("role") == "noise"
                                          and r.get("status") == "discard" and r.get("val_bpb") is not None]
            return sum(values) / len(values)
        return best.get("score", best.get("val_bpb"))

    def record(self, row: dict) -> dict:
        rows = self.rows()
        row.setdefault("finished_at", now_iso())
        timings = row.setdefault("timings", {})
        if "total_s" not in timings:  # wall time of the whole step: propose, validate, run, judge, git
            timings["total_s"] = round(time.monotonic() - getattr(self, "_step_started", time.monotonic()), 3)
        row.setdefault("agent", self.agent.name)
        row.setdefault("model", self.agent.model)
        best = self.best(rows + [row]) if row.get("status") == "keep" else self.best(rows)
        row["best"] = best.get("score") if best else None
        append_row(self.lab.ledger_path, row)
        crashpoint("after_append", row.get("index"))
        write_results(self.lab.results_path, rows + [row])
        self._journal(row)
        inflight.clear(self.lab)
        self.bus.emit("experiment_finished", row=row)
        return row

    def _journal(self, row: dict) -> None:
        try:
            lesson = self.agent.reflect(self.context(row["index"] + 1), row) or ""
        except Exception:  # a lesson is nice to have; the record is what matters
            lesson = ""
        value = f"{row['val_bpb']:.6f}" if row.get("val_bpb") is not None else "-"
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
        rejected_in_a_row, outages = 0, 0
        self.bus.emit("state", state="running", message="running")
        while True:
            if self.stop_requested.is_set():
                return self._finish("stopped")
            if not self.unpaused.is_set():
                self.unpaused.wait()
                continue
            rows = self.rows()
            if self.options.max_experiments is not None and self.ran(rows) >= self.options.max_experiments:
                return self._finish(f"reached --max-experiments {self.options.max_experiments}")
            if self._over_budget(rows):
                return self._finish(f"the next proposal would pass --max-cost ${self.options.max_cost:.2f}")
            self.commit_charter()
            row = self.step(rows)
            if row is None:
                continue
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

    def step(self, rows: list[dict]) -> dict | None:
        index = len(rows)
        self._step_started = time.monotonic()
        baseline = next((r for r in rows if r.get("role") == "baseline" and r.get("status") == "keep"), None)
        if baseline is None:
            return self.run_same_code(index, "baseline", "baseline", BASE_SEED + self.options.seed)
        repeats = [r for r in rows if r.get("role") == "noise" and r.get("status") in ("keep", "discard")]
        if self.options.policy == "noise" and len(repeats) < self.options.noise_runs:
            seed = BASE_SEED + self.options.seed + 1000 * (len(repeats) + 1)
            return self.run_same_code(index, "noise", f"baseline repeat, seed {seed} (noise estimate)", seed)
        return self.experiment(index, rows)

    def run_same_code(self, index: int, role: str, description: str, seed: int) -> dict:
        head = self.lab.head()
        started = now_iso()
        inflight.write(self.lab, index=index, phase="run", role=role, parent=head, commit=head,
                             description=description, started_at=started, log=self._log_rel(index))
        self.bus.emit("experiment_started", index=index, description=description, role=role,
                      budget=self.options.budget, commit=self.lab.short(head))
        result = self.execute(index, seed)
        row = self.base_row(index, role, head, head, description, seed, started)
        source = self.lab.read(self.lab.config["allowed"][0])
        row["fingerprint"] = fingerprint(source)
        row.update(self.result_fields(result))
        row["timings"]["run_s"] = round(result.wall_seconds, 3)
        if not result.ok:
            row.update(status="crash" if result.kind != "interrupted" else "interrupted")
            return self.record(row)
        if role == "baseline":
            row.update(status="keep", score=result.summary["val_bpb"])
        else:
            row.update(status="discard")
            baseline = next(r for r in self.rows() if r.get("role") == "baseline" and r.get("status") == "keep")
            row["judge"] = {"policy": self.options.policy, "decision": "noise estimate",
                            "noise": noise_estimate(self.rows() + [row])}
            row["baseline_value"] = baseline.get("val_bpb")
        return self.record(row)

    def experiment(self, index: int, rows: list[dict]) -> dict | None:
        best = self.best(rows)
        parent = self.lab.head()
        started = now_iso()
        inflight.write(self.lab, index=index, phase="propose", role="experiment", parent=parent, started_at=started)
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
        extra = dict(usage=proposal.usage, propose_s=propose_s, description=proposal.description,
                     rationale=proposal.rationale, meta=proposal.meta)
        if problem:
            return self._rejected(index, parent, started, kind, problem, **extra,
                                  fingerprint=fingerprint(proposal.files.get(self.lab.config["allowed"][0], "")))
        description = " ".join((proposal.description or "untitled change").split())[:200]
        inflight.write(self.lab, index=index, phase="commit", role="experiment", parent=parent, started_at=started,
                             description=description)
        self.lab.write_files(proposal.files)
        crashpoint("after_write", index)
        commit = self.lab.commit(list(proposal.files), f"experiment {index}: {description}")
        self.lab.keep_ref(index, commit)
        crashpoint("after_commit", index)
        inflight.write(self.lab, index=index, phase="run", role="experiment", parent=parent, commit=commit,
                             started_at=started, description=description, log=self._log_rel(index))
        self.bus.emit("experiment_started", index=index, description=description, role="experiment",
                      budget=self.options.budget, commit=self.lab.short(commit))
        seed = BASE_SEED + self.options.seed
        result = self.execute(index, seed)
        row = self.base_row(index, "experiment", commit, parent, description, seed, started)
        row.update(self.result_fields(result), rationale=proposal.rationale, usage=proposal.usage,
                   fingerprint=fingerprint(proposal.files.get(self.lab.config["allowed"][0], "")),
                   diff=self._diff_stats(parent, commit), **proposal.meta)
        row["timings"].update(propose_s=round(propose_s, 3), run_s=round(result.wall_seconds, 3))
        if not result.ok:
            self.lab.reset(parent)
            row["status"] = "interrupted" if result.kind == "interrupted" else "crash"
            return self.record(row)
        t1 = time.monotonic()
        value = result.summary["val_bpb"]
        best_score = self.best_score(rows) if best else value
        verdict = judge(value, best_score, rows, self.options.policy, self.lab.config["direction"])
        confirm_row = None
        room = self.options.max_experiments is None or self.ran(rows) + 2 <= self.options.max_experiments
        if verdict.decision == "confirm" and room and not self.stop_now.is_set():
            confirm_row, verdict = self.confirm(index, commit, parent, description, value, best_score, rows, row)
        elif verdict.decision == "confirm":
            verdict.decision = "discard"
        row["judge"] = verdict.record()
        row["timings"]["judge_s"] = round(time.monotonic() - t1, 3)
        if verdict.decision == "keep":
            row["status"] = "keep"
            row["score"] = (value + confirm_row["val_bpb"]) / 2 if confirm_row else value
        else:
            row["status"] = "discard"
            self.lab.reset(parent)
        crashpoint("after_judge", index)
        if confirm_row is not None:  # the confirmation's own row carries its run time
            row["timings"]["total_s"] = round(time.monotonic() - self._step_started - confirm_row["timings"]["run_s"], 3)
        recorded = self.record(row)
        if confirm_row is not None:
            status = recorded["status"]
            if confirm_row.get("val_bpb") is None:  # the re-run itself crashed or was stopped
                status = "interrupted" if confirm_row.get("kind") == "interrupted" else "crash"
            confirm_row.update(index=index + 1, status=status, judge=recorded["judge"],
                               score=recorded.get("score"))
            confirm_row["timings"]["total_s"] = confirm_row["timings"].get("run_s", 0.0)
            kept = recorded["status"] == "keep"
            inflight.write(self.lab, index=index + 1, phase="record", role="confirm", parent=commit if kept else parent,
                                 commit=commit, description=confirm_row["description"])
            self.record(confirm_row)
        return recorded

    def confirm(self, index, commit, parent, description, value, best_score, rows, row):
        """Re-run a borderline winner with another seed before deciding."""
        seed = BASE_SEED + self.options.seed + 7919 * (index + 1)
        started = now_iso()
        inflight.write(self.lab, index=index, phase="confirm", role="experiment", parent=parent, commit=commit,
                             started_at=row["started_at"], description=description, log=self._log_rel(index))
        self.bus.emit("experiment_started", index=index + 1, description=f"confirm: {description}",
                      role="confirm", budget=self.options.budget, commit=self.lab.short(commit))
        result = self.execute(index + 1, seed)
        confirm_row = self.base_row(index + 1, "confirm", commit, parent, f"confirm: {description}", seed, started)
        confirm_row.update(self.result_fields(result), fingerprint=row.get("fingerprint"))
        confirm_row["timings"]["run_s"] = round(result.wall_seconds, 3)
        if not result.ok:
            verdict = judge(value, best_score, rows, self.options.policy, self.lab.config["direction"])
            verdict.decision = "discard"
            confirm_row["kind"] = result.kind
            return confirm_row, verdict
        verdict = judge(value, best_score, rows, self.options.policy, self.lab.config["direction"],
                        confirmation=result.summary["val_bpb"])
        return confirm_row, verdict

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
        runner = Runner(config["command"], self.lab.root, env, self.lab.log_path(index), self.options.budget,
                        timeout_for(self.options.budget, self.options.profile, config.get("startup_allowance"),
                                    facts.get("clock", "wall")),
                        on_step=lambda step: self.bus.emit("step", index=index, **step), on_start=lambda pid: inflight.note_pid(self.lab, pid),
                        **boundary.for_lab(self.lab, index, facts, self.options.budget))
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
                "agent": self.agent.name, "model": self.agent.model}

    def result_fields(self, result: RunResult) -> dict:
        fields = {k: result.summary.get(k) for k in ("val_bpb", "training_seconds", "total_seconds",
                                                     "peak_vram_mb", "mfu_percent", "total_tokens_M",
                                                     "num_steps", "num_params_M", "depth")}
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
        if fatal:
            row["fatal"] = True
        if exhausted:
            row["exhausted"] = True
        return self.record(row)

    def context(self, index: int, rows: list[dict] | None = None) -> Context:
        rows = self.rows() if rows is None else rows
        return build_context(self.lab, index, rows, self.best(rows), self.best_score(rows), self.options.budget,
                             self.options.run_info.get("profile_facts") or {}, self.options.seed)

    def _diff_stats(self, old: str, new: str) -> dict:
        out = self.lab.repo.git.diff("--numstat", old, new)
        added = removed = files = 0
        for line in out.splitlines():
            a, r, _ = line.split("\t", 2)
            files += 1
            added += int(a) if a.isdigit() else 0
            removed += int(r) if r.isdigit() else 0
        return {"files": files, "added": added, "removed": removed}

    def _log_rel(self, index: int) -> str:
        return str(self.lab.log_path(index).relative_to(self.lab.root))
