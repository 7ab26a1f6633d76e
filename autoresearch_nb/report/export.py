"""Export a lab as a results notebook that stands on its own, executed so every output shows."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat

from ..judge.facts import best_row
from .figures import kept_changes, metric_of
from .record import lab_record
from ..errors import LabError
from .export_cells import RECORD_TAG, build_notebook

CELL_TIMEOUT_S = 300
DEFAULT_ALLOWED = ["nanochat/train.py"]


def export_lab(lab_dir, out_path=None, html: bool = False, run: bool = True) -> Path:
    """Write LAB-results.ipynb (next to the lab unless out_path says otherwise), executed and
    validated; with html=True also the .html beside it. Works while a run is still going. With
    run=False the cells are not executed (a second's work, for a copy kept up to date during the night:
    the record is in it, Run All draws the rest)."""
    root = Path(lab_dir).expanduser().resolve()
    record = collect_record(root)
    out = output_path(root, out_path)
    notebook = build_notebook(record)
    if run:
        execute(notebook)
    nbformat.validate(notebook)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # a killed export never leaves half a notebook
    nbformat.write(notebook, str(partial))
    os.replace(partial, out)
    if html:
        write_html(notebook, out.with_suffix(".html"))
    return out


def output_path(root: Path, out_path) -> Path:
    """The notebook's path: a given file, a given directory, or LAB-results.ipynb beside the
    lab (not inside it: the lab's tree belongs to the loop)."""
    if out_path is None:
        return root.parent / f"{root.name}-results.ipynb"
    out = Path(out_path).expanduser()
    if out.is_dir():
        return out / f"{root.name}-results.ipynb"
    if out.suffix != ".ipynb":
        raise LabError(f"{out} should end in .ipynb (or name a directory)")
    return out


def collect_record(root: Path) -> dict:
    """The lab's record plus what only git knows: each kept change's diff and the final files.
    Only reads from git (no index or working-tree writes), so a running loop is undisturbed."""
    if not root.is_dir():
        raise LabError(f"no lab at {root}: create one with `autoresearch-nb init {root}`")
    if not (root / ".autoresearch").is_dir():
        raise LabError(f"{root} is not an autoresearch lab (no .autoresearch/): "
                       "create one with `autoresearch-nb init`")
    record = lab_record(root)
    metric, direction = metric_of(record)
    rows = record["rows"]
    repo = open_repo(root)
    by_index = {row.get("index"): row for row in rows}
    allowed = record["config"].get("allowed") or DEFAULT_ALLOWED
    for change in kept_changes(rows, metric, direction):
        row = by_index.get(change["index"], {})
        record["diffs"][str(change["index"])] = change_diff(repo, row, allowed)
    best = best_row(rows)
    record["best_index"] = best.get("index") if best else None
    # the best kept commit; before any keep, what experiment 0 ran (never the working tree,
    # which holds the in-flight experiment's code while a run is going)
    source = (best or {}).get("commit") or next(
        (row.get("commit") for row in rows if row.get("commit")), "HEAD")
    for path in allowed:
        text = file_at(repo, root, source, path)
        if text is not None:
            record["files"][path] = text
    return record


def open_repo(root: Path):
    import git

    try:
        return git.Repo(root)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise LabError(f"{root} is not a git repository; is it a lab made by "
                       "`autoresearch-nb init`?") from None


def change_diff(repo, row: dict, paths: list[str]) -> str:
    """The unified diff a kept experiment made against its parent commit."""
    import git

    commit = row.get("commit")
    if not commit:
        return ""
    parent = row.get("parent") or f"{commit}~1"
    try:
        return repo.git.diff(parent, commit, "--no-color", "--no-ext-diff", "--", *paths)
    except git.GitCommandError:
        return ""  # a commit lost to history rewriting: the section says no change recorded


def file_at(repo, root: Path, commit: str, path: str) -> str | None:
    """A file's contents at a commit; the working copy when git cannot say."""
    import git

    try:
        return repo.git.show(f"{commit}:{path}", strip_newline_in_stdout=False)
    except (git.GitCommandError, ValueError):
        working = root / path
        return working.read_text(encoding="utf-8") if working.exists() else None


def this_python_specs():
    """Kernel specs that always start this interpreter, so the notebook runs where
    autoresearch_nb is importable whatever 'python3' means elsewhere on the machine."""
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f",
                                    "{connection_file}"],
                              display_name="Python 3", language="python", name="python3")

    return ThisPython()


def execute(notebook: nbformat.NotebookNode, cwd: str | Path | None = None) -> None:
    """Run every cell in a fresh kernel of this interpreter, in cwd (default: a scratch
    directory, so an export leaves nothing behind); a failing cell raises."""
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    with tempfile.TemporaryDirectory(prefix="autoresearch-export-") as scratch:
        # local sockets where they exist (no TCP port to open, no plain-text warning); their
        # paths must be absolute since the kernel starts in another directory
        local = {}
        if os.name == "posix":
            local = {"transport": "ipc", "ip": os.path.join(scratch, "kernel")}
        manager = KernelManager(kernel_name="python3", kernel_spec_manager=this_python_specs(),
                                **local)
        client = NotebookClient(notebook, km=manager, timeout=CELL_TIMEOUT_S,
                                resources={"metadata": {"path": str(cwd or scratch)}})
        try:
            # nbclient only cleans up kernels it made itself unless told to: without this
            # every export would leave a kernel behind (in a long-lived notebook, for good)
            client.execute(cleanup_kc=True)
        finally:
            if manager.has_kernel:
                manager.shutdown_kernel(now=True)


def write_html(notebook: nbformat.NotebookNode, path: Path) -> Path:
    try:
        from nbconvert import HTMLExporter
    except ImportError:
        raise LabError("--html needs nbconvert: pip install 'autoresearch-nb[html]'") from None
    from traitlets.config import Config

    config = Config()  # the record is data for re-running, not something to read: no input shown
    config.TagRemovePreprocessor.remove_input_tags = {RECORD_TAG}
    config.TagRemovePreprocessor.enabled = True
    body, _ = HTMLExporter(config=config).from_notebook_node(notebook)
    path.write_text(body, encoding="utf-8")
    return path
