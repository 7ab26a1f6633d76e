"""notebooks/: quickstart runs end to end headless; analysis reads labs and autoresearch's files."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from test_export import outputs_text

from autoresearch_nb.judge import facts
from autoresearch_nb.report.export import execute
from autoresearch_nb.lab.lab import Lab

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# autoresearch's results.tsv, byte for byte its format: tab-separated, crash rows 0.000000 / 0.0
AUTORESEARCH_TSV = (
    "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
    "a1b2c3d\t0.997900\t44.0\tkeep\tbaseline\n"
    "b2c3d4e\t0.993200\t44.2\tkeep\tincrease LR to 0.04\n"
    "c3d4e5f\t1.005000\t44.0\tdiscard\tswitch to GeLU activation\n"
    "d4e5f6a\t0.000000\t0.0\tcrash\tdouble model width (OOM)\n"
    "e5f6a7b\t0.986100\t44.1\tkeep\tadd warmup of 200 steps\n"
    "f6a7b8c\t0.000000\t0.0\tcrash\tfused attention kernel typo\n"
    "a7b8c9d\t0.990000\t44.1\tdiscard\trandom seed 42 -> 137\n"
)


def run_notebook(path: Path, cwd: Path, monkeypatch, **env) -> nbformat.NotebookNode:
    """Execute a notebook in a real kernel, in cwd, with env variables set for its kernel."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(path, as_version=4)
    execute(notebook, cwd=cwd)
    nbformat.validate(notebook)
    return notebook


def has_image(notebook) -> bool:
    return any("image/png" in output.get("data", {}) for cell in notebook.cells
               for output in cell.get("outputs", []))


def test_analysis_notebook_reads_a_bare_autoresearch_results_tsv(tmp_path, monkeypatch):
    tsv = tmp_path / "results.tsv"
    tsv.write_text(AUTORESEARCH_TSV)
    notebook = run_notebook(NOTEBOOKS / "analysis.ipynb", tmp_path, monkeypatch,
                            AUTORESEARCH_SOURCE=str(tsv))
    text = outputs_text(notebook)
    assert "7 experiments from" in text and "(results.tsv)" in text
    assert "baseline 0.997900 (1 run) → best 0.986100 (1 run) (#4)" in text
    assert has_image(notebook)
    ranked = text[text.index("gain %"):]
    # warmup gained 0.007100 over 0.993200, the LR change 0.004700 over the baseline: warmup first
    assert ranked.index("add warmup of 200 steps") < ranked.index("increase LR to 0.04")
    assert "0.007100" in ranked and "0.004700" in ranked
    assert "the top 2 give 100% of the total gain 0.011800" in text
    crashes = text[text.index("last reason"):]
    assert "oom" in crashes and "double model width (OOM)" in crashes
    assert "2 of 7 experiments produced no result" in text
    assert "carries no timings or costs" in text


def test_analysis_notebook_names_a_missing_source(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_SOURCE", str(tmp_path / "missing"))
    notebook = nbformat.read(NOTEBOOKS / "analysis.ipynb", as_version=4)
    with pytest.raises(Exception, match="does not exist: give a lab directory"):
        execute(notebook, cwd=tmp_path)


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """quickstart.ipynb executed unchanged, headless, with the offline agent and a tiny budget."""
    workdir = tmp_path_factory.mktemp("quickstart")
    with pytest.MonkeyPatch.context() as monkeypatch:
        notebook = run_notebook(NOTEBOOKS / "quickstart.ipynb", workdir, monkeypatch,
                                AUTORESEARCH_AGENT="heuristic", AUTORESEARCH_BUDGET="2", AUTORESEARCH_PROFILE="tiny",
                                AUTORESEARCH_MAX_EXPERIMENTS="2", AUTORESEARCH_POLICY="greedy")
    return workdir, notebook


@pytest.mark.slow
def test_quickstart_runs_end_to_end_and_exports(quickstart_run):
    workdir, notebook = quickstart_run
    text = outputs_text(notebook)
    assert "agent: heuristic" in text
    assert (workdir / "autoresearch-lab" / "program.md").read_text().startswith("# Goal")
    widgets = [output for cell in notebook.cells for output in cell.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in output.get("data", {})]
    assert widgets, "start shows the dashboard"
    assert "Run ended" in text
    exported = workdir / "autoresearch-lab-results.ipynb"
    results = nbformat.read(exported, as_version=4)
    nbformat.validate(results)
    rows = Lab.open(workdir / "autoresearch-lab").rows()
    assert facts.counted(rows) == 2  # a run disturbed by other work on the machine is run again, uncounted
    assert f"{len(rows)} experiments" in outputs_text(results)


@pytest.mark.slow
def test_analysis_notebook_reads_the_quickstart_lab(quickstart_run, monkeypatch):
    workdir, _ = quickstart_run
    notebook = run_notebook(NOTEBOOKS / "analysis.ipynb", workdir, monkeypatch)  # default SOURCE
    text = outputs_text(notebook)
    rows = Lab.open(workdir / "autoresearch-lab").rows()
    assert facts.counted(rows) == 2 and f"{len(rows)} experiments from autoresearch-lab (lab)" in text
    assert "heuristic baseline" in text and has_image(notebook)
    assert "training and evaluation" in text    # a lab's ledger has timings
