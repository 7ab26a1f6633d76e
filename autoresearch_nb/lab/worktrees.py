"""Git worktrees the experiments run in: one per worker slot, moved to each job's commit, none left behind."""
from __future__ import annotations

import shutil
from pathlib import Path

import git

from .ledger import make_folder


class Worktrees:
    """Only the coordinator's thread calls these (it is the one git writer)."""

    def __init__(self, lab):
        self.lab = lab
        self.root = lab.state_dir / "worktrees"

    def path(self, slot: int) -> Path:
        return self.root / f"slot-{slot}"

    def checkout(self, slot: int, commit: str) -> Path:
        """The slot's worktree at `commit`, clean (no file left from the slot's previous job)."""
        path = self.path(slot)
        repo = self.lab.repo
        if (path / ".git").exists():
            try:
                repo.git.execute(["git", "-C", str(path), "checkout", "-q", "--detach", "--force", commit])
                repo.git.execute(["git", "-C", str(path), "clean", "-fdqx"])
                return path
            except git.GitCommandError:
                self.remove(slot)  # a broken worktree is made again
        make_folder(path.parent)
        if path.exists():
            shutil.rmtree(path)
        repo.git.worktree("prune")
        repo.git.worktree("add", "-q", "--detach", "--force", str(path), commit)
        return path

    def remove(self, slot: int) -> None:
        path = self.path(slot)
        try:
            self.lab.repo.git.worktree("remove", "--force", str(path))
        except git.GitCommandError:
            pass
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        self.lab.repo.git.worktree("prune")

    def remove_all(self) -> None:
        """Every slot's worktree gone, git's list of worktrees pruned (after a run, or a kill)."""
        if self.root.exists():
            for path in sorted(self.root.iterdir()):
                if path.name.startswith("slot-"):
                    self.remove(int(path.name.split("-", 1)[1]))
        self.lab.repo.git.worktree("prune")

    def leftovers(self) -> list[str]:
        """Worktrees git still knows besides the lab's own tree (a test's view)."""
        out = self.lab.repo.git.worktree("list", "--porcelain")
        trees = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")]
        return [t for t in trees if Path(t).resolve() != Path(self.lab.root).resolve()]
