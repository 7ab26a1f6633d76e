"""What an experiment may touch: its own run directory; never the lab's records or locked files.

The locked files of the run's own tree are guarded here, per run (no one else writes that tree while
it runs). The lab's records are not: the coordinator writes them while runs go on, and its
RecordKeeper (recordkeeper.py) tells its own writes from anyone else's."""
from __future__ import annotations

from pathlib import Path

CPU_STARTUP_LIMIT = 5.0   # seconds on the cpu clock before the training clock starts, plus a tenth of the budget


class ProtectedFiles:
    """The bytes of files the experiment must leave alone, taken before it runs. Where no sandbox keeps
    the experiment from writing them, this notices a change afterwards and puts the file back."""

    def __init__(self, paths):
        self.saved = {Path(p): (Path(p).read_bytes() if Path(p).is_file() else None) for p in paths}

    def restore_changed(self) -> list[str]:
        """Names of the files that changed, each restored to what it was."""
        changed = []
        for path, before in self.saved.items():
            now = path.read_bytes() if path.is_file() else None
            if now == before:
                continue
            changed.append(path.name)
            if before is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(before)
        return changed


def startup_allowance(profile: str, configured: float | None = None) -> float:
    """Seconds a run may take beyond its budget for start-up (imports, data, compile) and evaluation."""
    if configured is not None:
        return float(configured)
    return 180.0 if profile == "cuda" else 60.0


def startup_limit(clock: str, budget: float, allowance: float, configured: bool = False) -> float:
    """How long a run may work before its training clock starts. On the cpu clock start-up is imports
    and data (a few CPU seconds); on a GPU it includes compiling, so the whole start-up allowance. A
    lab that sets its allowance (a train.py that compiles on the CPU) gets it on either clock."""
    return CPU_STARTUP_LIMIT + 0.1 * budget if clock == "cpu" and not configured else allowance


def for_lab(lab, run_dir: Path, facts: dict, budget: float, tree: Path | None = None) -> dict:
    """The Runner's keyword arguments for a run of `lab` under the conditions `facts`, writing to
    `run_dir`, its code checked out in `tree` (a worktree; the lab's own tree by default)."""
    config = lab.config
    tree = Path(tree or lab.root)
    clock = facts.get("clock", "wall")
    evaluate = config.get("evaluate")
    allowance = startup_allowance(facts.get("name", ""), config.get("startup_allowance"))
    return {
        "run_dir": run_dir,
        "evaluate": list(evaluate) if evaluate else None,
        "clock": clock,
        "cores": int(facts.get("cpu_count") or 1),
        "startup_limit": startup_limit(clock, budget, allowance, config.get("startup_allowance") is not None) if evaluate else None,
        "protected": [tree / rel for rel in config.get("locked", [])],
    }
