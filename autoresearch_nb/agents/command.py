"""The command agent: a coding-agent CLI (claude -p, codex exec) edits the lab's tree; we take its diff."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
from pathlib import Path

from ..errors import LabError
from .base import Agent, Context, Proposal, ProposalError
from .prompting import situation_block, system_prompt, templated_lesson

KILL_GRACE_S = 5.0
MAX_DESCRIPTION_CHARS = 160
CLI_FINISH = ("Edit the allowed files in place, in the current directory (a git working tree). "
              "Do not commit, do not run the training (the harness runs it), do not touch other "
              "files. When done, print one line describing the change: the last line you print "
              "becomes the experiment's description.")
# Untracked harness state a CLI must not rewrite (logs are written by the harness meanwhile).
PROTECTED_STATE = ("results.tsv", ".autoresearch")
UNPROTECTED_STATE_DIRS = (".autoresearch/logs",)
MAX_PROTECTED_BYTES = 8 * 1024 * 1024  # snapshotting is for records, not for big artefacts


class CommandAgent(Agent):
    """Runs a coding-agent CLI in the lab; what it changed in the allowed files is the proposal."""

    name = "command"

    def __init__(self, command: str, timeout: float = 900):
        if not command or not command.strip():
            raise LabError('--agent command needs --command, e.g. --command "claude -p".')
        self.command = command
        self.timeout = float(timeout)
        self.model = None
        self.label = f"command: {command.strip().split()[0]}"

    def propose(self, context: Context) -> Proposal:
        root = Path(context.lab_dir) if context.lab_dir else None
        if root is None or not (root / ".git").exists():
            raise ProposalError("the command agent needs the lab's git working tree "
                                f"(lab_dir={context.lab_dir!r})", _no_usage(), fatal=True)
        before = TreeSnapshot.take(root)
        with tempfile.TemporaryDirectory(prefix="autoresearch-prompt-") as scratch:
            prompt_file = Path(scratch) / "prompt.md"
            prompt = build_prompt(context)
            prompt_file.write_text(prompt, encoding="utf-8")
            command = self.command.replace("{prompt_file}", shlex.quote(str(prompt_file)))
            env = dict(os.environ, AUTORESEARCH_PROMPT_FILE=str(prompt_file))
            try:
                outcome = run_in_group(command, root, prompt, env, self.timeout)
            finally:
                # Whatever happened, the loop gets the tree back as it was.
                changed = before.changes(root)
                contents = {path: _read(root / path) for path in changed
                            if path in context.allowed}
                before.restore(root, changed)
        return self._judge(context, outcome, changed, contents)

    def _judge(self, context: Context, outcome: "Outcome", changed: list[str],
               contents: dict[str, str | None]) -> Proposal:
        if outcome.timed_out:
            raise ProposalError(f"command agent ran past its {self.timeout:g} s limit: killed, "
                                "its changes reverted", _no_usage())
        forbidden = [path for path in changed if path not in context.allowed]
        if forbidden:
            raise ProposalError("command agent changed files it may not: "
                                f"{', '.join(forbidden)} (all its changes reverted)", _no_usage())
        if outcome.returncode != 0:
            raise ProposalError(f"command exited with status {outcome.returncode}: "
                                f"{_last_line(outcome.stderr) or _last_line(outcome.stdout)}",
                                _no_usage(), fatal=outcome.returncode == 127)
        deleted = [path for path, text in contents.items() if text is None]
        if deleted:
            raise ProposalError(f"command agent deleted {', '.join(deleted)} (reverted)",
                                _no_usage())
        files = {path: text for path, text in contents.items() if text != context.files.get(path)}
        if not files:
            raise ProposalError("command agent changed none of the allowed files", _no_usage())
        description = _last_line(outcome.stdout)[:MAX_DESCRIPTION_CHARS]
        if not description:
            description = f"command agent: {', '.join(sorted(files))}"
        return Proposal(files=files, description=description,
                        rationale=outcome.stdout.strip()[-2000:], usage=_no_usage())

    def reflect(self, context: Context, row: dict) -> str:
        return templated_lesson(context, row)

    def estimate_next_cost(self, history_usage: list[dict]) -> float:
        return 0.0  # a CLI bills on its own account; we cannot see it


def build_prompt(context: Context) -> str:
    """The same charter, rules and history an LLM agent gets, with CLI instructions."""
    return system_prompt(context, finish=CLI_FINISH) + "\n" + situation_block(context) + "\n"


class Outcome:
    def __init__(self, returncode: int | None, stdout: str, stderr: str, timed_out: bool):
        self.returncode, self.stdout, self.stderr, self.timed_out = (returncode, stdout, stderr,
                                                                     timed_out)


def run_in_group(command: str, cwd: Path, prompt: str, env: dict, timeout: float) -> Outcome:
    """Run `command` in a shell of its own process group; past `timeout` the whole group dies."""
    process = subprocess.Popen(command, shell=True, cwd=cwd, env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(prompt, timeout=timeout)
        return Outcome(process.returncode, stdout, stderr, False)
    except subprocess.TimeoutExpired:
        _kill_group(process, signal.SIGTERM)
        try:
            stdout, stderr = process.communicate(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_group(process, signal.SIGKILL)
            try:
                stdout, stderr = process.communicate(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:  # a grandchild left the group but holds the pipes
                stdout, stderr = "", ""
        return Outcome(None, stdout or "", stderr or "", True)
    except BaseException:
        _kill_group(process, signal.SIGKILL)
        process.wait()
        raise


def _kill_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class TreeSnapshot:
    """What the working tree looked like before the CLI ran, enough to find and undo its changes."""

    def __init__(self, head: str, branch: str, dirty: dict[str, bytes | None],
                 state: dict[str, bytes]):
        self.head, self.branch, self.dirty, self.state = head, branch, dirty, state

    @classmethod
    def take(cls, root: Path) -> "TreeSnapshot":
        head = _git(root, "rev-parse", "HEAD").strip()
        branch = _git(root, "symbolic-ref", "-q", "HEAD", check=False).strip()
        dirty = {path: _read_bytes(root / path) for path in _status(root)}
        state = {path: data for path in _state_files(root)
                 if (data := _read_bytes(root / path)) is not None}
        return cls(head, branch, dirty, state)

    def changes(self, root: Path) -> list[str]:
        """Paths the CLI changed (created, edited, deleted, committed), sorted."""
        branch_now = _git(root, "symbolic-ref", "-q", "HEAD", check=False).strip()
        if self.branch and branch_now != self.branch:  # it switched branches: point HEAD back
            _git(root, "symbolic-ref", "HEAD", self.branch)
        if _git(root, "rev-parse", "HEAD").strip() != self.head:
            # It committed: move the branch back and keep its edits as working-tree changes.
            _git(root, "reset", "-q", "--mixed", self.head)
        changed = {path for path in _status(root)
                   if path not in self.dirty or _read_bytes(root / path) != self.dirty[path]}
        changed |= {path for path in self.dirty if _read_bytes(root / path) != self.dirty[path]}
        changed |= {path for path, data in self.state.items() if _read_bytes(root / path) != data}
        return sorted(changed)

    def restore(self, root: Path, changed: list[str]) -> None:
        """Put every changed path back as it was, touching nothing else."""
        to_reset = []
        for path in changed:
            saved = self.dirty.get(path, self.state.get(path))
            if path in self.dirty or path in self.state:
                _write_back(root / path, saved)
            else:
                to_reset.append(path)
        if not to_reset:
            return
        tracked = set(_git(root, "ls-tree", "-r", "-z", "--name-only", "HEAD", "--",
                           *to_reset).split("\0")) - {""}
        if tracked:
            _git(root, "checkout", "-q", "HEAD", "--", *sorted(tracked))
        created = [path for path in to_reset if path not in tracked]
        if created:
            _git(root, "rm", "-q", "--cached", "--ignore-unmatch", "--", *created)
            for path in created:
                _write_back(root / path, None)
                _prune_empty_dirs((root / path).parent, root)


def _status(root: Path) -> list[str]:
    """Paths differing from HEAD (staged, unstaged, untracked), ignored files left out."""
    out = _git(root, "status", "--porcelain=v1", "-z", "-uall", "--no-renames")
    return [entry[3:] for entry in out.split("\0") if len(entry) > 3]


def _state_files(root: Path) -> list[str]:
    paths = []
    for name in PROTECTED_STATE:
        target = root / name
        if target.is_file():
            paths.append(name)
        elif target.is_dir():
            for file in target.rglob("*"):
                relative = file.relative_to(root).as_posix()
                if (file.is_file() and not relative.startswith(UNPROTECTED_STATE_DIRS)
                        and file.stat().st_size <= MAX_PROTECTED_BYTES):
                    paths.append(relative)
    return paths


def _git(root: Path, *args: str, check: bool = True) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise ProposalError(f"git {args[0]} failed in the lab: {result.stderr.strip()}",
                            _no_usage(), fatal=True)
    return result.stdout


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _read(path: Path) -> str | None:
    data = _read_bytes(path)
    return None if data is None else data.decode("utf-8", errors="replace")


def _write_back(path: Path, data: bytes | None) -> None:
    if data is None:
        if path.is_file() or path.is_symlink():
            path.unlink()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _prune_empty_dirs(directory: Path, root: Path) -> None:
    while directory != root and directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
        directory = directory.parent


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[-1].split()) if lines else ""


def _no_usage() -> dict:
    return {"input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0,
            "cache_write_tokens": 0, "cost_usd": 0.0}
