"""Shared by the benchmarks: a fresh lab in a temp dir and a quiet session run to the end."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from autoresearch_nb.lab.lab import init_lab
from autoresearch_nb.engine.session import RunOptions, Session


def fresh_lab(profile: str, name: str = "lab") -> Path:
    root = Path(tempfile.mkdtemp(prefix="arnb-bench-")) / name
    init_lab(root, profile=profile)
    return root


def run_session(options: RunOptions, agent=None, audit: bool = True, on_event=None) -> tuple[Session, float]:
    """Run to the end; returns the session and its wall time in seconds."""
    session = Session(options, agent=agent, audit=audit)
    if on_event:
        session.subscribe(on_event)
    started = time.monotonic()
    session.start()
    session.wait()
    if session.error:
        raise SystemExit(f"run failed: {session.error}")
    return session, time.monotonic() - started
