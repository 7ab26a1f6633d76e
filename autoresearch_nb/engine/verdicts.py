"""The coordinator's verdicts: a candidate judged against the best (or against its own parent when
the best moved while it ran), kept, discarded, or re-applied onto the new best to be confirmed.

A mixin of ResearchLoop (loop.py); the statistics are judge.py's, the schedule plan.py's.
"""
from __future__ import annotations

from ..judge import plan
from .inflight import crashpoint
from ..lab.reapply import reapply
from .records import settle
from .tracks import Track


class Verdicts:
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
                               self.metric, against=against, seeds=track.seeds, next_seed=track.seed,
                               loads=track.loads)
        if verdict.decision == "more" and not self._room(rows):
            verdict = plan.verdict(rows, self.options.segment, track.values, self.options.policy, self.direction,
                                   self.metric, against=against, max_runs=len(track.values), seeds=track.seeds,
                                   loads=track.loads)
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
        again = Track(self.state.new_id(), "experiment", commit, head, track.description, self._run_seed(0),
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

