"""The results notebook: built from a lab, executed, valid, and re-runnable with the lab gone."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from autoresearch_nb.report import analysis
from autoresearch_nb.judge import facts
from autoresearch_nb.errors import LabError
from autoresearch_nb.report.export import execute, export_lab
from autoresearch_nb.lab.ledger import append_row, write_results

TRAIN_V0 = "LEARNING_RATE = 0.01\nDEPTH = 4\n"
TRAIN_V1 = "LEARNING_RATE = 0.02\nDEPTH = 4\n"
TRAIN_V2 = "LEARNING_RATE = 0.01\nDEPTH = 6\n"
AWKWARD = 'three quotes """ a raw r"""\\ backslash \\" é ✓ \n newline'  # the record survives it


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                          text=True)
    return done.stdout.strip()


def commit(root: Path, text: str, message: str) -> str:
    (root / "nanochat" / "train.py").write_text(text)
    git(root, "commit", "-qam", message)
    return git(root, "rev-parse", "HEAD")


@pytest.fixture
def hand_lab(tmp_path) -> Path:
    """A lab written by hand: a real git history (baseline, a discarded and a kept change, a
    crash) and the ledger rows the loop would have appended for it."""
    root = tmp_path / "lab"
    (root / "nanochat").mkdir(parents=True)
    git(root, "init", "-q", "-b", "autoresearch/hand")
    git(root, "config", "user.email", "lab@example.invalid")
    git(root, "config", "user.name", "lab")
    (root / "program.md").write_text("# Goal\n\nLower val_bpb on the CPU profile.\n")
    (root / "nanochat" / "train.py").write_text(TRAIN_V0)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "baseline")
    c0 = git(root, "rev-parse", "HEAD")
    c1 = commit(root, TRAIN_V1, "lr")
    git(root, "reset", "-q", "--hard", c0)
    c2 = commit(root, TRAIN_V2, "depth")
    state = root / ".autoresearch"
    state.mkdir()
    (state / "config.json").write_text(json.dumps({
        "allowed": ["nanochat/train.py"], "locked": ["nanochat/prepare.py"],
        "metric": "val_bpb", "direction": "lower", "budget": 5, "profile": "cpu",
        "data": "builtin"}))
    (state / "run.json").write_text(json.dumps({
        "tag": "hand", "agent": "heuristic", "agent_label": "heuristic baseline",
        "profile": {"name": "cpu"}, "device": "cpu", "budget": 5, "policy": "greedy",
        "max_experiments": 6, "started_at": 1_700_000_000.0}))
    rows = [
        dict(index=0, commit=c0, parent=None, status="keep", role="baseline", val_bpb=2.5,
             memory_gb=0.1, description="baseline", timings=dict(run_s=10.0, total_s=10.2),
             finished_at=1_700_000_010.0),
        dict(index=1, commit=c1, parent=c0, status="discard", role="experiment", val_bpb=2.6,
             description="LEARNING_RATE 0.01 -> 0.02", rationale=AWKWARD,
             timings=dict(propose_s=1.0, total_s=12.0),
             usage=dict(input_tokens=1200, output_tokens=300, cost_usd=0.0123),
             finished_at=1_700_000_022.0),
        dict(index=2, commit=c2, parent=c0, status="keep", role="experiment", val_bpb=2.4,
             description="DEPTH 4 -> 6", rationale="A deeper model uses the budget better.",
             timings=dict(total_s=11.0), finished_at=1_700_000_033.0),
        dict(index=3, commit="", parent=c2, status="crash", kind="oom",
             reason="CUDA out of memory", description="width x8", timings=dict(total_s=3.0),
             finished_at=1_700_000_036.0),
    ]
    for row in rows:
        append_row(state / "ledger.jsonl", row)
    write_results(root / "results.tsv", rows)
    return root


def outputs_text(notebook) -> str:
    """Every text and HTML output of the notebook, joined (what a reader sees)."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            data = output.get("data", {})
            for mime in ("text/plain", "text/markdown", "text/html"):
                parts.append(data.get(mime, ""))
    return "\n".join(parts)


def images(notebook) -> list[str]:
    return [output["data"]["image/png"] for cell in notebook.cells
            for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]


def errors(notebook) -> list[dict]:
    return [output for cell in notebook.cells for output in cell.get("outputs", [])
            if output.get("output_type") == "error"]


def kernels_of_this_process() -> list[str]:
    """Kernel processes this test process started that are still alive (Linux /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid() and b"ipykernel_launcher" in command:
            found.append(proc.name)
    return found


def test_hand_lab_exports_a_notebook_with_every_section(hand_lab, tmp_path):
    out = export_lab(hand_lab, tmp_path / "out" / "results.ipynb")
    notebook = nbformat.read(out, as_version=4)
    nbformat.validate(notebook)
    assert not errors(notebook)
    text = outputs_text(notebook)
    assert "baseline 2.500000 (1 run) → best 2.400000 (1 run) (#2)" in text
    assert "2 kept, 1 discarded, 1 crashed" in text
    assert "heuristic baseline" in text and "profile `cpu`" in text
    assert "$0.0123" in text                                   # the cost, from usage rows
    assert "-DEPTH = 4" in text and "+DEPTH = 6" in text        # the kept change's diff
    assert "LEARNING_RATE 0.01 -> 0.02" in text                 # the table lists discards too
    assert len(images(notebook)) == 1                           # the progress chart
    sources = "\n".join(cell.source for cell in notebook.cells)
    assert "### #2: DEPTH 4 -> 6" in sources and "A deeper model" in sources
    assert "### #1" not in sources                              # a discard has no section
    # the final train.py is the kept one, shown as code
    final = [cell for cell in notebook.cells if "RECORD['files']" in cell.source]
    assert "DEPTH = 6" in outputs_text(nbformat.v4.new_notebook(cells=final))
    assert "(skipped: set REPRODUCE = True" in text
    if Path("/proc").is_dir():
        assert not kernels_of_this_process()                    # the export's kernel is gone


def test_cli_export_writes_beside_the_lab_and_renders_html(hand_lab):
    done = subprocess.run([sys.executable, "-m", "autoresearch_nb", "export", "--lab",
                           str(hand_lab), "--html"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = hand_lab.parent / "lab-results.ipynb"
    assert str(out) in done.stdout
    nbformat.validate(nbformat.read(out, as_version=4))
    page = out.with_suffix(".html").read_text()
    assert "+DEPTH = 6" in page and "data:image/png;base64" in page
    # the embedded record is data for re-running, not for reading: its cell shows no input
    assert "analysis.record_from_json" not in page and "analysis.record_from_json" in out.read_text()
    assert not list(hand_lab.rglob("*.ipynb"))                  # the lab's tree is the loop's


def test_cli_export_of_a_missing_lab_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "autoresearch_nb", "export", "--lab",
                           str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert done.returncode == 2
    assert "autoresearch-nb init" in done.stderr and "Traceback" not in done.stderr


def test_export_while_a_run_is_going_says_how_far_it_got(hand_lab, tmp_path):
    (hand_lab / ".autoresearch" / "inflight.json").write_text(json.dumps(
        {"format": 2, "next_id": 9, "drafts": [],
         "tracks": [{"id": 7, "role": "experiment", "commit": "c", "parent": "p", "description": "DEPTH 6 -> 8",
                     "seed": 42, "job": {"id": 8, "track": 7, "commit": "c", "seed": 42, "worker": "w0"}}]}))
    out = export_lab(hand_lab, tmp_path / "running.ipynb")
    notebook = nbformat.read(out, as_version=4)
    assert "still going when this was exported" in notebook.cells[0].source
    text = outputs_text(notebook)
    assert "4 experiments finished (4 of at most 6 runs counted); running now: DEPTH 6 -> 8 (w0)" in text


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A real short offline run on the CPU (init, then three experiments of the heuristic
    agent), exported once while experiment 1 was training. Returns (lab, mid-run export)."""
    base = tmp_path_factory.mktemp("run")
    root = base / "lab"
    cli = [sys.executable, "-m", "autoresearch_nb"]
    subprocess.run(cli + ["init", str(root), "--profile", "tiny"], check=True, capture_output=True)
    run = subprocess.Popen(cli + ["run", "--lab", str(root), "--budget", "5",
                                  "--max-experiments", "3", "--policy", "greedy"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    midrun = None
    try:
        inflight = root / ".autoresearch" / "inflight.json"
        while run.poll() is None and midrun is None:
            state = analysis.read_json(inflight)
            if any(t.get("job") and t.get("role") == "experiment" for t in state.get("tracks", [])):
                out = export_lab(root, base / "midrun.ipynb")
                # the experiment may have ended between the look and the export: look again
                if analysis.load(out)["inflight"]:
                    midrun = out
            time.sleep(0.2)
        _, stderr = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stderr.decode()[-2000:]
    return root, midrun


@pytest.mark.slow
def test_export_during_a_run_says_how_far_it_got_and_leaves_the_run_alone(finished_run):
    root, midrun = finished_run
    assert midrun is not None, "experiment 1 was never seen running"
    notebook = nbformat.read(midrun, as_version=4)
    nbformat.validate(notebook)
    assert "still going when this was exported" in notebook.cells[0].source
    # a run disturbed by other work is run again, uncounted: look for the counted figure
    assert re.search(r"\d+ experiments? finished \(1 of at most 3 runs counted\); running now: ",
                     outputs_text(notebook))
    rows = analysis.load(root)["rows"]
    assert sum(facts.charged(r) for r in rows) == 3              # the run went on to the end
    assert git(root, "status", "--porcelain") == ""             # with a clean tree


@pytest.mark.slow
def test_finished_run_exports_and_reexecutes_from_its_record_alone(finished_run, tmp_path,
                                                                   monkeypatch):
    finished_run = shutil.copytree(finished_run[0], tmp_path / "lab")  # this test deletes it
    rows = analysis.load(finished_run)["rows"]
    assert sum(facts.charged(r) for r in rows) == 3
    out = export_lab(finished_run, tmp_path / "results.ipynb")
    exported = nbformat.read(out, as_version=4)
    nbformat.validate(exported)
    assert not errors(exported) and len(images(exported)) == 1
    text = outputs_text(exported)
    assert "heuristic baseline" in text and "policy `greedy`" in text
    for row in rows:                                            # the table has every experiment
        assert row["description"] in text
    kept = [row for row in rows if row["status"] == "keep" and row["role"] == "experiment"]
    sources = "\n".join(cell.source for cell in exported.cells)
    for row in kept:                                            # a section and a diff for each
        assert f"### #{row['index']}: {row['description']}" in sources
        assert git(finished_run, "diff", row["parent"], row["commit"]) in text
    best = (kept or rows[:1])[-1]
    best_source = git(finished_run, "show", f"{best['commit']}:nanochat/train.py")

    shutil.rmtree(finished_run)                                 # the lab is gone
    for cell in exported.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    monkeypatch.setenv("AUTORESEARCH_REPRODUCE", "1")          # and the best run is trained again
    execute(exported)
    assert not errors(exported) and len(images(exported)) == 1
    again = outputs_text(exported)
    assert "val_bpb:" in again and "recorded val_bpb" in again  # prepare.py's summary block
    record = analysis.load(out)                                 # the record reads back as data
    # every row the lab had, disturbed re-runs included when the machine was busy
    assert [row["index"] for row in record["rows"]] == [row["index"] for row in rows]
    assert record["files"]["nanochat/train.py"].strip() == best_source.strip()


def test_hand_lab_record_reads_back_from_the_notebook(hand_lab, tmp_path):
    out = export_lab(hand_lab, tmp_path / "results.ipynb")
    record = analysis.load(out)
    assert [row["index"] for row in record["rows"]] == [0, 1, 2, 3]
    assert record["files"]["nanochat/train.py"] == TRAIN_V2
    assert "+DEPTH = 6" in record["diffs"]["2"]
    assert record["rows"][1]["rationale"] == AWKWARD


def test_bad_lab_or_path_gets_one_clear_line(tmp_path, hand_lab):
    with pytest.raises(LabError, match="autoresearch-nb init"):
        export_lab(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(LabError, match="not an autoresearch lab"):
        export_lab(tmp_path / "plain")
    with pytest.raises(LabError, match=r"\.ipynb"):
        export_lab(hand_lab, tmp_path / "results.txt")


def test_kept_changes_are_measured_against_the_best_before_them():
    rows = [dict(index=0, status="keep", role="baseline", val_bpb=2.0),
            dict(index=1, status="keep", val_bpb=1.9, description="a"),
            dict(index=2, status="discard", val_bpb=1.8, description="b"),
            dict(index=3, status="keep", val_bpb=1.6, description="c"),
            dict(index=4, status="crash", val_bpb=0.0, kind="oom", description="d")]
    changes = analysis.kept_changes(rows)
    assert [(c["index"], round(c["gain"], 6)) for c in changes] == [(1, 0.1), (3, 0.3)]
    assert [c["index"] for c in analysis.ranked_by_gain(changes)] == [3, 1]
    higher = [dict(status="keep", val_bpb=0.5, role="baseline"), dict(status="keep", val_bpb=0.7)]
    assert round(analysis.kept_changes(higher, direction="higher")[0]["gain"], 6) == 0.2


def test_a_notebook_exported_by_release_0_1_0_still_re_executes(tmp_path):
    """Notebooks people keep were written by earlier versions: they call the flat
    `from autoresearch_nb import analysis` and its old signatures (best_row with a metric and direction)."""
    exported = nbformat.read(Path(__file__).parent / "fixtures" / "results-0.1.0.ipynb", as_version=4)
    sources = "\n".join(cell.source for cell in exported.cells)
    assert "from autoresearch_nb import analysis" in sources and "best_row(RECORD[\"rows\"], METRIC, DIRECTION)" in sources
    assert "autoresearch-nb 0.1.0" in sources
    execute(exported)
    assert not errors(exported), errors(exported)
    assert len(images(exported)) == 1
    text = outputs_text(exported)
    record = analysis.load(Path(__file__).parent / "fixtures" / "results-0.1.0.ipynb")
    for row in record["rows"]:
        assert row["description"] in text
    assert "(skipped: set REPRODUCE = True to train it)" in text
