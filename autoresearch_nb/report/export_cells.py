"""The cells of a results notebook, built from a lab's record (analysis.lab_record + git)."""
from __future__ import annotations

import json
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from ..version import __version__
from ..judge import facts, ladder
from ..judge.facts import best_row
from .figures import kept_changes, metric_of
from .record import RECORD_CLOSE, RECORD_OPEN
from .tables import number, progress_note

RECORD_TAG = "autoresearch-record"

SETUP = '''\
# The package draws the chart and tables; install it where it is missing (Colab, a fresh env).
try:
    import autoresearch_nb
except ImportError:
    get_ipython().run_line_magic("pip", "install -q autoresearch-nb")
from IPython.display import Code, Image, Markdown, display
from autoresearch_nb import analysis'''

REPRODUCE = '''\
# Train the best train.py again in a fresh lab. Off by default so this notebook re-runs in
# seconds: set REPRODUCE = True (or AUTORESEARCH_REPRODUCE=1 in the environment) to run it.
import os, pathlib, subprocess, sys, tempfile
REPRODUCE = os.environ.get("AUTORESEARCH_REPRODUCE") == "1"
run_info, config = RECORD["run"], RECORD["config"]
best = analysis.best_row(RECORD["rows"]) or {}
profile = analysis.profile_name(run_info.get("profile") or config.get("profile"))
prepare_args = ["--data", str(config.get("data") or "builtin")] + (
    ["--profile", profile] if profile else []) + (["--byte-level"] if config.get("byte_level") else [])
settings = {"AUTORESEARCH_BUDGET": str(run_info.get("budget") or config.get("budget") or ""),
            "AUTORESEARCH_PROFILE": profile, "AUTORESEARCH_DATA": str(config.get("data") or ""),
            "AUTORESEARCH_SEED": str(best.get("seed") if best.get("seed") is not None else ""),
            "AUTORESEARCH_BYTE_LEVEL": "1" if config.get("byte_level") else ""}
settings = {name: value for name, value in settings.items() if value}
print("autoresearch-nb init LAB && cd LAB   # then put the final train.py above in nanochat/train.py")
print("python nanochat/prepare.py", " ".join(prepare_args))
print(" ".join(f"{name}={value}" for name, value in settings.items()), "python nanochat/train.py")


def step(command, cwd=None):
    done = subprocess.run(command, cwd=cwd, env={**os.environ, **settings}, text=True,
                          capture_output=True)
    print(done.stdout[-3000:] + done.stderr[-3000:])
    done.check_returncode()


if REPRODUCE:
    lab = pathlib.Path(tempfile.mkdtemp(prefix="reproduce-")) / "lab"
    step([sys.executable, "-m", "autoresearch_nb", "init", str(lab)])
    (lab / "nanochat" / "train.py").write_text(RECORD["files"]["nanochat/train.py"])
    step([sys.executable, "nanochat/prepare.py", *prepare_args], cwd=lab)
    step([sys.executable, "nanochat/train.py"], cwd=lab)
    print(f"recorded {METRIC}: {best.get(METRIC)}")
else:
    print("(skipped: set REPRODUCE = True to train it)")'''


def build_notebook(record: dict) -> nbformat.NotebookNode:
    """The whole results notebook, unexecuted."""
    metric, direction = metric_of(record)
    rows = record.get("rows") or []
    best = best_row(rows)
    run = record.get("run") or {}
    title = f"# autoresearch results: {record.get('lab', 'lab')}"
    if run.get("tag"):
        title += f" (`autoresearch/{run['tag']}`)"
    intro = [title, "",
             f"Exported by autoresearch-nb {__version__} at {record.get('exported_at')}. "
             "Every figure below is computed from the record embedded in the next cell, so this "
             "notebook re-runs anywhere, with or without the lab."]
    if record.get("inflight"):
        intro += ["", f"**The run was still going when this was exported**: "
                      f"{progress_note(record)}."]
    cells = [new_markdown_cell("\n".join(intro)),
             new_code_cell(SETUP),
             record_cell(record),
             new_markdown_cell("## Summary"),
             new_code_cell("display(Markdown(analysis.summary_markdown(RECORD)))"),
             new_markdown_cell(charter_markdown(record.get("charter", ""))),
             new_markdown_cell("## Progress\n\nThe dashboard's chart: discarded grey, kept "
                               "green, disturbed runs (run again) hollow orange, the value to beat "
                               "(the mean of the best code's runs) as a step line, crashes as red "
                               "ticks, comparison segments dashed."),
             new_code_cell("display(Image(analysis.progress_png(RECORD)))"),
             new_markdown_cell("## All experiments"),
             new_code_cell("display(analysis.experiments_table(RECORD), raw=True)")]
    cells += kept_cells(record, metric, direction)
    if facts.ablation_table(rows, metric, direction):
        cells += [new_markdown_cell("## Ablation\n\nThe best without each kept change, measured with "
                                    "repeats beside the best itself: a change's contribution now is "
                                    f"{metric} without it minus with it, signed so positive means it helps."),
                  new_code_cell("display(analysis.ablation_display(RECORD), raw=True)")]
    if ladder.scales(rows):
        cells += [new_markdown_cell("## Transfer ladder\n\nThe baseline, the best and the best without each kept "
                                    "change, run again at a larger scale with runs of their own, paired by seed. A "
                                    "change's value there is set against its value at the screen: it holds, shrinks "
                                    "(under half), vanishes (within the noise) or reverses (the best is better "
                                    "without it)."),
                  new_code_cell("display(analysis.transfer_display(RECORD), raw=True)")]
    cells += final_cells(record, best)
    notebook = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python",
                          "version": ".".join(map(str, sys.version_info[:3]))},
        "autoresearch_nb": {"version": __version__, "lab": record.get("lab"),
                            "exported_at": record.get("exported_at")}})
    return notebook


def record_cell(record: dict) -> nbformat.NotebookNode:
    """The embedded record: ASCII JSON on one line in a raw string, its source hidden.
    JSON writes every quote inside a string as \\" (which never ends a raw string) and never
    puts three of its own quotes in a row, so any text survives the round trip."""
    text = json.dumps(record, ensure_ascii=True, sort_keys=True, default=str)
    source = ("#@title The lab's record (ledger rows, config, charter, diffs, final files)\n"
              + RECORD_OPEN + text + RECORD_CLOSE
              + "\nMETRIC, DIRECTION = analysis.metric_of(RECORD)\n"
              + 'print(f"{len(RECORD[\'rows\'])} experiment{\'\' if len(RECORD[\'rows\']) == 1 else \'s\'} from lab {RECORD[\'lab\']!r}")')
    # hidden where each front end lets a notebook say so: JupyterLab (source_hidden), Colab (a form
    # cell shows its title only), the HTML export (write_html drops the input of this tag)
    return new_code_cell(source, metadata={"tags": [RECORD_TAG],
                                           "jupyter": {"source_hidden": True}, "cellView": "form"})


def charter_markdown(charter: str) -> str:
    """The charter quoted, its headings pushed two levels down so they sit inside this section."""
    if not charter.strip():
        return "### The charter\n\n_(no program.md)_"
    lines, fenced = [], False
    for line in charter.splitlines():
        fenced ^= line.lstrip().startswith("```")
        if not fenced and line.startswith("#"):
            line = "##" + line if line.startswith(("# ", "## ", "### ", "#### ")) else line
        lines.append("> " + line if line.strip() else ">")
    return "### The charter (`program.md`)\n\n" + "\n".join(lines)


def kept_cells(record: dict, metric: str, direction: str) -> list:
    changes = kept_changes(record.get("rows") or [], metric, direction)
    cells = [new_markdown_cell("## Kept changes\n\nEach change the judge kept, in order, with "
                               f"its gain in {metric} over the best before it (positive is better): "
                               "the difference of the means of both codes' runs, ± a 95% interval."),
             new_code_cell("CHANGES = analysis.kept_changes(RECORD['rows'], METRIC, DIRECTION)\n"
                           "display(analysis.kept_table(CHANGES), raw=True)")]
    if not changes:
        cells.append(new_markdown_cell("_No change beat the baseline._"))
    for change in changes:
        index = change["index"]
        text = [f"### #{index}: {change['description']}", ""]
        if change.get("rationale"):
            text += [change["rationale"], ""]
        spread = f" ± {number(change['half_width'])}" if change.get("half_width") is not None else ""
        text.append(f"{metric} {number(change['before'])} ({change.get('before_runs') or '?'} runs) → "
                    f"{number(change['value'])} ({change.get('value_runs')} runs), "
                    f"gain **{number(change['gain'])}**{spread}"
                    + (f" ({change['gain_pct']:.2f}%)" if change["gain_pct"] is not None else ""))
        verdict = change.get("judge") or {}
        if verdict.get("z") is not None:
            text[-1] += (f"; kept by the `{verdict.get('policy')}` rule at {verdict['z']:.1f} standard "
                         f"errors (needed {verdict.get('threshold')}) after {verdict.get('runs')} run(s)")
        elif verdict.get("policy") == "greedy":
            text[-1] += "; kept by the `greedy` rule (any improvement of the mean)"
        if change.get("holds") is False:
            text[-1] += ". With every run of both codes so far, the gain no longer stands clear of the noise."
        cells.append(new_markdown_cell("\n".join(text)))
        cells.append(new_code_cell(
            f"display(analysis.diff_display(RECORD['diffs'].get('{index}', '')), raw=True)"))
    return cells


def final_cells(record: dict, best: dict | None) -> list:
    files = record.get("files") or {}
    which = f"experiment #{best.get('index')}" if best else "the lab's branch"
    cells = []
    for path in files:
        cells.append(new_markdown_cell(f"## Final `{path}`\n\nAs kept in {which}."))
        cells.append(new_code_cell(f"display(Code(RECORD['files'][{path!r}], language='python'))"))
    cells.append(new_markdown_cell("## Reproduce the best run\n\nA fresh lab from the package's "
                                   "template, the best files put in, one training run."))
    cells.append(new_code_cell(REPRODUCE))
    cells.append(new_markdown_cell(
        "## The record\n\n`RECORD['rows']` holds every ledger row (see `autoresearch_nb/ledger.py`"
        " for the fields); `analysis.load(path)` reads the same shape from a lab, a "
        "`results.tsv` or this notebook."))
    return cells
