"""A scratch git repository a coding-agent CLI works in: the allowed files, the locked ones read-only, the charter."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .base import Context, ProposalError

CHARTER = "program.md"
DESCRIPTION_FILE = ".autoresearch-description.txt"
MAX_DESCRIPTION_BYTES = 64 * 1024
# A scratch repo must commit whatever the person's global git config says (signing, hooks).
GIT_SETTINGS = ("-c", "user.name=autoresearch", "-c", "user.email=autoresearch@localhost",
                "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null",
                "-c", "init.defaultBranch=main")


@dataclass
class Changes:
    """What the CLI did to the scratch copy, sorted into what counts and what is thrown away."""

    files: dict[str, str] = field(default_factory=dict)  # allowed files with new contents
    locked: list[str] = field(default_factory=list)      # locked files changed or removed
    deleted: list[str] = field(default_factory=list)     # allowed files removed or replaced by a link
    side: list[str] = field(default_factory=list)        # everything else written: discarded


class ScratchLab:
    """A temporary git repo holding copies of the lab's files; the lab itself is never handed out.

    Use as a context manager; the directory is removed on exit. `prompt_file` lies outside the
    repo, so the CLI's tree holds only the lab's files (and the description file it may write).
    With `home` (a CLI that resumes its conversation) the copy is made afresh at the same path every
    time, since CLIs file their sessions under the directory they ran in; the caller removes `home`.
    """

    def __init__(self, context: Context, home: Path | None = None):
        self._tmp = None
        if home is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="autoresearch-cli-", ignore_cleanup_errors=True)
            base = Path(self._tmp.name)
        else:
            base = Path(home)
            _remove(base / "lab")
        self.root = base / "lab"
        self.prompt_file = base / "prompt.md"
        self.description_file = self.root / DESCRIPTION_FILE
        self.allowed = list(context.allowed)
        self.editable = [path for path in context.allowed if path in context.files]
        self.locked: list[str] = []
        self.original: dict[str, bytes] = {}
        for path in self.editable:
            self._write(path, context.files[path].encode("utf-8"), read_only=False)
        lab = Path(context.lab_dir) if context.lab_dir else None
        for path in context.locked:
            if lab is not None and (lab / path).is_file():
                self._write(path, (lab / path).read_bytes(), read_only=True)
                self.locked.append(path)
        if CHARTER not in self.original:
            self._write(CHARTER, context.charter.encode("utf-8"), read_only=True)
        self.read_only = self.locked + ([CHARTER] if CHARTER not in self.allowed else [])
        self._git("init", "-q")
        self._git("add", "-A")
        self._git("commit", "-q", "--no-verify", "-m", f"the lab before experiment {context.index}")

    def __enter__(self) -> "ScratchLab":
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def changes(self) -> Changes:
        """Compare the tree with what was written: allowed edits, locked edits, side files."""
        found = _walk(self.root)
        result = Changes()
        for path in self.allowed:
            kind = found.get(path)
            if kind is None and path not in self.original:
                continue
            if kind != "file":
                result.deleted.append(path)
                continue
            data = (self.root / path).read_bytes()
            if data != self.original.get(path):
                result.files[path] = data.decode("utf-8", errors="replace")
        for path in self.read_only:
            if found.get(path) != "file" or (self.root / path).read_bytes() != self.original[path]:
                (result.locked if path in self.locked else result.side).append(path)
        result.side = sorted(result.side + [path for path in found
                                            if path not in self.original and path not in self.allowed
                                            and path != DESCRIPTION_FILE])
        return result

    def stated_description(self) -> str:
        """What the CLI wrote to the description file ("" if nothing)."""
        try:
            with open(self.description_file, "rb") as handle:
                return handle.read(MAX_DESCRIPTION_BYTES).decode("utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
            return ""

    def _write(self, path: str, data: bytes, read_only: bool) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if read_only:  # a hint CLIs respect; the comparison in changes() is the real check
            target.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        self.original[path] = data

    def _git(self, *args: str) -> None:
        done = subprocess.run(["git", *GIT_SETTINGS, *args], cwd=self.root, capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise ProposalError(f"could not make the scratch copy for the CLI: git {args[0]}: "
                                f"{done.stderr.strip()}", fatal=True)
        if args[0] == "init":  # CLIs that commit need an identity, whatever the global config
            for key, value in (("user.name", "autoresearch"),
                               ("user.email", "autoresearch@localhost")):
                subprocess.run(["git", "config", key, value], cwd=self.root, check=True)


def _remove(tree: Path) -> None:
    """Remove the last copy, read-only files included."""
    if tree.exists():
        for path in tree.rglob("*"):
            if not path.is_symlink():
                path.chmod(stat.S_IRWXU)
        shutil.rmtree(tree, ignore_errors=True)


def _walk(root: Path) -> dict[str, str]:
    """Relative path -> "file" or "link" for everything under root but .git (links not followed)."""
    found = {}
    for directory, dirs, files in os.walk(root):
        here = Path(directory)
        if here == root and ".git" in dirs:
            dirs.remove(".git")
        for name in files + [d for d in dirs if (here / d).is_symlink()]:
            path = here / name
            found[path.relative_to(root).as_posix()] = "link" if path.is_symlink() else "file"
    return found
