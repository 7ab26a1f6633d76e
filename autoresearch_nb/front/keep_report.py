"""The results notebook kept next to the lab during the night: rewritten (not executed) after every kept
change, so a runtime that resets or a session that dies never costs the morning's report."""
from __future__ import annotations

import threading


class KeepReport:
    """A session subscriber: on a kept change, writes LAB-results.ipynb beside the lab in the background."""

    def __init__(self, lab_root):
        self.lab_root = lab_root
        self.written = 0
        self.error = ""
        self._busy = threading.Lock()
        self._last: threading.Thread | None = None

    def handle(self, event) -> None:
        if event.kind != "experiment_finished":
            return
        row = event.data.get("row") or {}
        if row.get("status") == "keep" and row.get("role") == "experiment":
            self._last = threading.Thread(target=self._write, name="autoresearch-keep-report", daemon=True)
            self._last.start()

    def close(self, wait: float = 30.0) -> None:
        """Let the last write finish before the process ends."""
        if self._last is not None:
            self._last.join(timeout=wait)

    def _write(self) -> None:
        from ..report.export import export_lab

        with self._busy:  # one at a time; a later keep writes a later record
            try:
                export_lab(self.lab_root, run=False)
                self.written += 1
            except Exception as error:  # the night goes on; `export` by hand says what is wrong
                self.error = f"{type(error).__name__}: {error}"
