"""The lab's records and their one writer: every write goes through here, which remembers the bytes it
wrote, so that a write by anyone else is found, named and undone.

The records are ledger.jsonl, results.tsv, journal.md, run.json, config.json and inflight.json. The
coordinator writes them (the journal from its drafter thread) while experiments run; an experiment
writes only its run directory. Ownership is decided by comparison, not by a snapshot taken before a
run: the keeper holds each record's bytes as it last wrote them, or as it found them when the session
took the lab over. "Changed" therefore means "not what the harness wrote": the coordinator's own rows
are what a record is compared against, so they are never mistaken for an experiment's, and never
rolled back. A record found changed is put back to the keeper's bytes, before anything more is
written to it, and the change is reported as an incident for the coordinator to blame.

Who is blamed is the coordinator's call (loop.py): inside the sandbox an experiment cannot write the
lab at all (it is mounted read-only), so a change found then came from outside the experiments; with
no sandbox every run under way when the change was found is refused.
"""
from __future__ import annotations

import threading
from pathlib import Path

from .ledger import append_durably, replace_durably as _replace


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


class RecordKeeper:
    """The bytes of each record as the harness last wrote them; writes that keep them so; a check that
    finds, names and undoes anyone else's. Safe to call from several threads of one process."""

    def __init__(self, paths):
        self.paths = [Path(p) for p in paths]
        self._lock = threading.RLock()
        self._known: dict[Path, bytes | None] | None = None
        self._incidents: list[str] = []

    def hold(self) -> None:
        """Take the records as they are now for the harness's own: from here until release() this
        process is their one writer (a session, or a loop, taking the lab over). A torn last ledger
        line (a kill mid-append) is cut off first."""
        with self._lock:
            self._known = {}
            for path in self.paths:
                data = _read(path)
                if data and path.suffix == ".jsonl" and not data.endswith(b"\n"):
                    data = data[:data.rfind(b"\n") + 1]
                    _replace(path, data)
                self._known[path] = data
            self._incidents.clear()

    def release(self) -> None:
        """The run is over: others may write the records again (a CLI beside a notebook, say)."""
        with self._lock:
            self._known = None
            self._incidents.clear()

    @property
    def held(self) -> bool:
        return self._known is not None

    def _put_back(self, path: Path) -> None:
        if path not in self.paths:
            raise ValueError(f"{path} is not one of the lab's records")
        if self._known is None:  # not held: nothing to compare with
            return
        known = self._known[path]
        if _read(path) == known:
            return
        self._incidents.append(path.name)
        if known is None:
            path.unlink(missing_ok=True)
        else:
            _replace(path, known)

    def read(self, path: Path) -> bytes | None:
        """A record as the harness wrote it while a run holds the lab (so what the coordinator decides
        never rests on a write it has not caught yet); as it is on disk otherwise."""
        path = Path(path)
        with self._lock:
            if self._known is None:
                return _read(path)
            return self._known.get(path, _read(path))

    def foreign(self) -> list[str]:
        """Names of the records someone other than the harness changed since the last call (found now,
        or by a write meanwhile), each put back as the harness wrote it."""
        with self._lock:
            for path in self.paths:
                self._put_back(path)
            found, self._incidents = self._incidents, []
            return sorted(set(found))

    def _write(self, path, write, after) -> None:
        """Put back anyone else's change, write, and remember `after(the bytes before)`."""
        path = Path(path)
        with self._lock:
            self._put_back(path)
            write(path)
            if self._known is not None:
                self._known[path] = after(self._known[path])

    def append(self, path: Path, data: bytes) -> None:
        """Append durably (fsync) to a record."""
        self._write(path, lambda p: append_durably(p, data), lambda before: (before or b"") + data)

    def replace(self, path: Path, data: bytes) -> None:
        """Write a record whole, atomically."""
        self._write(path, lambda p: _replace(p, data), lambda before: data)

    def remove(self, path: Path) -> None:
        self._write(path, lambda p: p.unlink(missing_ok=True), lambda before: None)
