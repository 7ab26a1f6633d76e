"""When a change is kept: the verdict step. With judge.py (the pure rule and its statistics, reached
through plan.verdict, which finds what a candidate is compared with in the rows) this is the whole
answer. A candidate is judged against the best, or against its own parent when the best moved while
it ran; it is kept (the branch moves), discarded, or re-applied onto the new best to be confirmed.

The coordinator (loop.py) owns it and hands it what it needs by name: the lab, the crash-safe state,
the options, `record` (append a row), `room` (is a run left under --max-experiments), `run_seed`
(the k-th run's seed) and `diff_stats`. It answers nothing: it changes the state and records rows.
"""
from __future__ import annotations

from collections.abc import Callable

from ..judge import plan
from ..lab.reapply import reapply
from .inflight import State, crashpoint
from .records import settle
from .tracks import Track


class VerdictStep:
    def __init__(self, lab, state: State, options, metric: str, direction: str, record: Callable,
                 room: Callable[[list[dict]], bool], run_seed: Callable[[int], int],
                 diff_stats: Callable[[str, str], dict]):
        self.lab, self.state, self.options = lab, state, options
        self.metric, self.direction = metric, direction
        self.record, self.room, self.run_seed, self.diff_stats = record, room, run_seed, diff_stats

    def judge(self, track: Track) -> None:
        """After a clean run of a candidate: decide, ask for another run, or wait for the value to beat."""
        rows = self.lab.rows()
        head_code = self.lab.code_id(self.lab.head())
        against = track.shared.get("parent_code")
        measuring = any(t.role in ("remeasure", "baseline", "noise") and not t.decision for t in self.state.tracks)
        if self.options.policy == "noise" and against == head_code and (
                measuring or plan.best_runs(rows, self.options.segment, self.metric) < 2):
            track.parked = True  # the value to beat is being measured: judge against it once it is
            self.state.save(self.lab)
            return
        track.parked = False
        verdict = self._verdict(track, rows)
        if verdict.decision == "more" and not self.room(rows):
            verdict = self._verdict(track, rows, max_runs=len(track.values))
        if verdict.decision == "more":
            self.state.save(self.lab)
            return
        self.conclude(track, verdict)

    def judge_parked(self) -> None:
        for track in [t for t in self.state.tracks if t.parked and t.decision is None]:
            self.judge(track)

    def decide_on_what_it_has(self, track: Track, rows: list[dict]) -> None:
        """No run left (--max-experiments, or the night ends): a candidate is decided on the runs it
        has, anything else dropped."""
        if track.role == "experiment" and track.values:
            self.conclude(track, self._verdict(track, rows, max_runs=len(track.values)))
        else:
            self.close(track, "dropped")

    def _verdict(self, track: Track, rows: list[dict], max_runs: int | None = None):
        extra = {"max_runs": max_runs} if max_runs is not None else {"next_seed": track.seed}
        return plan.verdict(rows, self.options.segment, track.values, self.options.policy, self.direction,
                            self.metric, against=track.shared.get("parent_code"), seeds=track.seeds,
                            loads=track.loads, **extra)

    def conclude(self, track: Track, verdict, decision: str | None = None) -> None:
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
        self.close(track, decision)

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
        again = Track(self.state.new_id(), "experiment", commit, head, track.description, self.run_seed(0),
                      self.options.segment, first={"rationale": track.first.get("rationale", "")},
                      shared={**track.shared, "code": self.lab.code_id(commit), "parent_code": self.lab.code_id(head),
                              "rebased": True, "rebased_from": self.lab.short(track.commit),
                              "diff": self.diff_stats(head, commit)})
        for row in track.rows:
            row["reason"] = f"beat its own parent ({self.lab.short(track.parent)}); re-applied onto the new best to be confirmed there"
        self.state.tracks.append(again)

    def close(self, track: Track, decision: str) -> None:
        """Record a finished track's rows (the note first says the verdict, so a kill between two
        appends is finished on resume as decided) and, for a kept change, move the branch."""
        track.decision = decision
        self.state.save(self.lab)
        crashpoint("after_judge")
        if decision == "keep":
            self.lab.reset(track.commit)
        rows = self.lab.rows()
        for row in track.rows:
            self.record(row, rows)
        self.state.tracks.remove(track)
        self.state.save(self.lab)

    def wind_down(self) -> None:
        """The run is ending: candidates are decided on the runs they have, other tracks dropped."""
        for track in [t for t in self.state.tracks if t.decision is None and not t.job]:
            self.decide_on_what_it_has(track, self.lab.rows())

    def retire_other_segments(self) -> None:
        """Tracks left from a session under other conditions: their runs are recorded, not judged."""
        for track in [t for t in self.state.tracks if t.segment != self.options.segment]:
            settle(track.rows, "interrupted", None)
            self.close(track, "interrupted")
