"""The lab: a self-contained git repo made from the template, its config, and git operations."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import shutil
import time
from pathlib import Path

import git

from ..version import __version__
from ..errors import LabError
from .ledger import STATE_DIR, parse_rows, results_text, row_line
from .recordkeeper import RecordKeeper

LAB_FORMAT = 2  # 2: the model is evaluated apart (config "evaluate"; prepare.py --conditions, --evaluate)
DEFAULT_DIR = "autoresearch-lab"
TEMPLATE_FILES = ("program.md", "nanochat/prepare.py", "nanochat/train.py")
GITIGNORE = "results.tsv\n.autoresearch/\n__pycache__/\n*.pyc\n"
IDENTITY = {"user.name": "autoresearch-nb", "user.email": "autoresearch-nb@localhost"}


def template_dir() -> Path:
    """Where program.md and nanochat/ live: inside the installed wheel, or the source checkout."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "template"
    if (packaged / "nanochat" / "train.py").exists():
        return packaged
    source = package.parent
    if (source / "nanochat" / "train.py").exists():
        return source
    raise LabError("the packaged template is missing: reinstall autoresearch-nb")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def default_config(profile: str = "auto", data: str = "builtin", budget: float | None = None) -> dict:
    return {
        "format": LAB_FORMAT,
        "version": __version__,
        "allowed": ["nanochat/train.py"],
        "locked": ["nanochat/prepare.py"],
        "command": ["{python}", "nanochat/train.py"],
        # the fixed evaluator, a process of its own; None: the command prints its own summary
        "evaluate": ["{python}", "nanochat/prepare.py", "--evaluate", "{run_dir}", "--wait"],
        "metric": "val_bpb",
        "direction": "lower",
        "profile": profile,
        "data": data,
        "budget": budget,            # None: the profile's own budget
        "startup_allowance": None,   # None: chosen from the profile (see runner.timeout_for)
        "ends_with": "finish",       # the fixed call the agent's file must end with (None: no rule)
        "hashes": {},
    }


class Lab:
    """An opened lab directory. Only the loop thread writes to git."""

    def __init__(self, root: Path, config: dict):
        self.root = Path(root).resolve()
        self.config = config
        self.repo = git.Repo(self.root)
        # The one writer of the records: what it wrote is what they must hold (recordkeeper.py).
        self.records = RecordKeeper([self.ledger_path, self.results_path, self.journal_path, self.run_info_path,
                                     self.config_path, self.inflight_path])

    # -- paths ------------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def config_path(self) -> Path:
        return self.state_dir / "config.json"

    @property
    def ledger_path(self) -> Path:
        return self.state_dir / "ledger.jsonl"

    @property
    def results_path(self) -> Path:
        return self.root / "results.tsv"

    @property
    def charter_path(self) -> Path:
        return self.root / "program.md"

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.md"

    @property
    def steering_path(self) -> Path:
        return self.state_dir / "steering.md"

    @property
    def inflight_path(self) -> Path:
        return self.state_dir / "inflight.json"

    @property
    def run_info_path(self) -> Path:
        return self.state_dir / "run.json"

    def log_path(self, index: int) -> Path:
        return self.state_dir / "logs" / f"{index:04d}.log"

    def reachable(self) -> bool:
        """Whether the lab can still be read: a lost network mount answers ENOENT, ENOTCONN or EIO."""
        try:
            return self.config_path.is_file() and (self.root / ".git").exists()
        except OSError:
            return False

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path = DEFAULT_DIR) -> "Lab":
        root = Path(path).expanduser()
        config_path = root / STATE_DIR / "config.json"
        if not config_path.exists():
            raise LabError(f"no lab at {root}: create one with `autoresearch-nb init {root}`")
        try:
            config = json.loads(config_path.read_text())
        except ValueError:
            raise LabError(f"{config_path} is not valid JSON: fix it or create a new lab with `autoresearch-nb init`")
        if config.get("format") != LAB_FORMAT:
            raise LabError(f"{root} was made by another version of autoresearch-nb (lab format "
                           f"{config.get('format')!r}, this one reads {LAB_FORMAT}): create a new lab with `autoresearch-nb init`")
        try:
            return cls(root, config)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise LabError(f"{root} is not a git repository any more: create a new lab with `autoresearch-nb init`")

    def save_config(self) -> None:
        self.records.replace(self.config_path, (json.dumps(self.config, indent=2) + "\n").encode())

    # -- the records, write side (only the coordinator, through the keeper) -----------------------
    def append_row(self, row: dict) -> None:
        self.records.append(self.ledger_path, row_line(row))

    def write_results(self, rows: list[dict]) -> None:
        self.records.replace(self.results_path, results_text(rows).encode())

    def append_journal(self, text: str) -> None:
        self.records.append(self.journal_path, text.encode("utf-8"))

    def write_run_info(self, info: dict) -> None:
        self.records.replace(self.run_info_path, json.dumps(info, indent=2).encode())

    # -- files and git ----------------------------------------------------------------------
    def read(self, relpath: str) -> str:
        return (self.root / relpath).read_text(encoding="utf-8")

    def head(self) -> str:
        return self.repo.git.rev_parse("HEAD")

    def short(self, sha: str) -> str:
        return self.repo.git.rev_parse("--short=7", sha)

    def branch(self) -> str:
        try:
            return self.repo.git.symbolic_ref("--short", "HEAD")
        except git.GitCommandError:
            return ""

    def dirty_files(self) -> list[str]:
        """Tracked files changed, and untracked files added, in the working tree (ignored excluded)."""
        out = self.repo.git.status("--porcelain", "--untracked-files=all")
        return [line[3:].strip().strip('"') for line in out.splitlines() if line.strip()]

    def locked_changes(self) -> list[str]:
        """Locked files whose bytes differ from the hashes taken at init."""
        changed = []
        for rel, digest in self.config.get("hashes", {}).items():
            path = self.root / rel
            if not path.exists() or sha256(path) != digest:
                changed.append(rel)
        return changed

    def write_files(self, files: dict[str, str]) -> None:
        for rel, text in files.items():
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")

    def commit(self, paths: list[str], message: str) -> str:
        self.repo.git.add("--", *paths)
        self.repo.git.commit("-m", message, "--no-verify", "--allow-empty")
        return self.head()

    def keep_ref(self, name, sha: str) -> None:
        """Every experiment's commit stays reachable (discarded ones too), so `show` and `diff` work later."""
        self.repo.git.update_ref(f"refs/experiments/{name}", sha)

    def commit_files(self, files: dict[str, str], parent: str, message: str) -> str:
        """A commit of `parent` with `files` replaced, made without touching the working tree or the
        branch (a private index): how candidates are committed while other experiments run."""
        index = self.state_dir / f"commit-{os.getpid()}.index"
        env = {**os.environ, "GIT_INDEX_FILE": str(index)}

        def git_(*args: str, text: str | None = None) -> str:
            done = subprocess.run(["git", *args], cwd=self.root, env=env, input=text, capture_output=True, text=True)
            if done.returncode != 0:
                raise LabError(f"git {args[0]} failed in the lab: {done.stderr.strip()}")
            return done.stdout.strip()

        try:
            git_("read-tree", parent)
            for rel, content in files.items():
                blob = git_("hash-object", "-w", "--stdin", text=content)
                git_("update-index", "--add", "--cacheinfo", f"100644,{blob},{rel}")
            tree = git_("write-tree")
            return git_("commit-tree", tree, "-p", parent, "-m", message)
        finally:
            index.unlink(missing_ok=True)

    def code_id(self, sha: str) -> str:
        """What identifies the code a commit runs: its allowed files (a charter edit changes nothing)."""
        blobs = [self.repo.git.rev_parse(f"{sha}:{rel}") for rel in self.config["allowed"]]
        return hashlib.sha1(" ".join(blobs).encode()).hexdigest()[:12]

    def reset(self, sha: str) -> None:
        """Hard reset to `sha` and remove untracked files, so the tree is clean whatever happened.
        The person's charter is theirs: an edit not yet committed survives (the loop commits it)."""
        charter = self.charter_path.read_bytes() if self.charter_path.exists() else None
        self.repo.git.reset("--hard", sha)
        self.repo.git.clean("-fdq")
        if charter is not None and (not self.charter_path.exists() or self.charter_path.read_bytes() != charter):
            self.charter_path.write_bytes(charter)

    def write_charter(self, text: str) -> None:
        """The notebook's %%program: the loop commits it before the next experiment."""
        self.charter_path.write_text(text, encoding="utf-8")

    def file_at_commit(self, sha: str, relpath: str) -> str:
        return self.repo.git.show(f"{sha}:{relpath}")

    def diff_commits(self, old: str, new: str, paths: list[str] | None = None) -> str:
        return self.repo.git.diff(old, new, "--", *(paths or self.config["allowed"]))

    # -- the ledger, read side --------------------------------------------------------------
    def rows(self) -> list[dict]:
        return parse_rows(self.records.read(self.ledger_path) or b"")

    def journal(self) -> str:
        return (self.records.read(self.journal_path) or b"").decode("utf-8", errors="replace")

    def row(self, index: int) -> dict:
        rows = self.rows()
        for row in rows:
            if row.get("index") == index:
                return row
        last = len(rows) - 1
        raise LabError(f"no experiment {index} in this lab (experiments are 0..{last})" if rows
                       else "this lab has no experiments yet: start a run first")

    def best_row(self) -> dict | None:
        kept = [r for r in self.rows() if r.get("status") == "keep"]
        return kept[-1] if kept else None

    def baseline_row(self) -> dict | None:
        return next((r for r in self.rows() if r.get("role") == "baseline" and r.get("status") == "keep"), None)

    def file_at(self, index: int, relpath: str = "nanochat/train.py") -> str:
        row = self.row(index)
        if not row.get("commit"):
            raise LabError(f"experiment {index} was {row.get('status')} before it was committed: "
                           "it has no code to show")
        return self.file_at_commit(row["commit"], relpath)

    def diff(self, index: int, other: int | None = None) -> str:
        """Experiment `index` against its parent, or against experiment `other`."""
        row = self.row(index)
        if not row.get("commit"):
            return row.get("proposed_diff", "")
        base = self.row(other)["commit"] if other is not None else row.get("parent")
        if not base:
            return ""
        return self.diff_commits(base, row["commit"])

    def log_tail(self, index: int, lines: int = 40) -> str:
        row = next((r for r in self.rows() if r.get("index") == index), {})
        path = self.root / row["log"] if row.get("log") else self.log_path(index)
        if not path.exists():
            return ""
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def init_lab(path: str | Path = DEFAULT_DIR, profile: str = "auto", data: str = "builtin",
             budget: float | None = None) -> tuple[Lab, bool]:
    """Create a lab from the template. Returns (lab, created); an existing lab is left untouched."""
    root = Path(path).expanduser()
    if (root / STATE_DIR / "config.json").exists():
        return Lab.open(root), False
    if root.exists() and any(root.iterdir()):
        raise LabError(f"{root} exists and is not empty: choose a new directory for the lab")
    template = template_dir()
    root.mkdir(parents=True, exist_ok=True)
    for rel in TEMPLATE_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template / rel, root / rel)
    (root / ".gitignore").write_text(GITIGNORE)
    repo = git.Repo.init(root)
    with repo.config_writer() as writer:  # Colab and containers have no git identity
        for key, value in IDENTITY.items():
            section, option = key.split(".")
            writer.set_value(section, option, value)
    repo.git.checkout("-b", "main")
    repo.git.add("--", *TEMPLATE_FILES, ".gitignore")
    repo.git.commit("-m", "lab created from the autoresearch-nb template", "--no-verify")
    config = default_config(profile, data, budget)
    config["hashes"] = {rel: sha256(root / rel) for rel in config["locked"]}
    config["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    lab = Lab(root, config)
    lab.state_dir.mkdir(exist_ok=True)
    (lab.state_dir / "logs").mkdir(exist_ok=True)
    lab.save_config()
    return lab, True
