"""The extension in a real Jupyter kernel driven by nbclient: charter, run, work meanwhile, stop,
restart (the run is stopped cleanly), resume; outputs and saved widget state are checked."""
from __future__ import annotations

import pytest
from jupyter_core.utils import run_sync
from nbclient import NotebookClient

from autoresearch_nb.judge import facts
from autoresearch_nb.lab.lab import Lab
from notebook_fixtures import SHORT_RUN, kernel_env, notebook, text_of

CHARTER = "# Goal\nLower val_bpb on this CPU.\n\nPrefer small, simple changes.\n"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
# A cell that returns once an experiment is training (or the run is over).
UNTIL_TRAINING = """import time
from autoresearch_nb.front.magics import CURRENT
deadline = time.time() + 300
while time.time() < deadline and CURRENT.session.alive and not CURRENT.session.snapshot()["current"]:
    time.sleep(0.1)
print("training:", (CURRENT.session.snapshot()["current"] or {}).get("description"))"""
UNTIL_ROWS = """import time
from autoresearch_nb.front.magics import CURRENT
deadline = time.time() + 300
while time.time() < deadline and CURRENT.session.alive and len(CURRENT.session.snapshot()["rows"]) < {n}:
    time.sleep(0.1)
print("rows:", len(CURRENT.session.snapshot()["rows"]))"""

FIRST_JUDGED = """from autoresearch_nb.lab.lab import Lab
n = next(r["index"] for r in Lab.open("autoresearch-lab").rows()
         if r["role"] == "experiment" and r["status"] in ("keep", "discard"))"""

FIRST_KERNEL = [
    "%load_ext autoresearch_nb",
    f"%%program\n{CHARTER}",
    f"%autoresearch start {SHORT_RUN} --max-experiments 6 --tag nb",
    UNTIL_TRAINING,
    # the kernel answers while an experiment trains: which one, and when, checked against the ledger
    "import time\nlane = CURRENT.session.snapshot()['current'] or {}\nprint(6 * 7, CURRENT.alive, lane.get('job'), time.time())",
    UNTIL_ROWS.format(n=2),
    "%autoresearch stop",
    "%autoresearch wait --timeout 300",
    # the first experiment judged (row 1 may be the baseline run again, when its first run was disturbed)
    FIRST_JUDGED + "\n%autoresearch show {n}",
    "%autoresearch apply {n}",
    "%autoresearch status",
]
SECOND_KERNEL = [                                   # resumed, then the kernel restarts mid-experiment
    "%load_ext autoresearch_nb",
    f"%autoresearch start --resume {SHORT_RUN} --max-experiments 6",
    UNTIL_ROWS.format(n=3),
    UNTIL_TRAINING,
]
THIRD_KERNEL = [
    "%load_ext autoresearch_nb",
    "%autoresearch status",
    f"%autoresearch start --resume {SHORT_RUN} --max-experiments 5",
    # What Colab looks like to the extension: `wait` then shows the dashboard again.
    "import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')",
    "%autoresearch wait --timeout 300",
    "%autoresearch status",
]


def widget_models(nb) -> list[dict]:
    states = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    return list(states.values())


@pytest.mark.slow
def test_a_run_in_a_real_kernel_survives_a_restart(tmp_path):
    nb = notebook(*FIRST_KERNEL, *SECOND_KERNEL, *THIRD_KERNEL)
    replies = {}

    def on_cell_executed(cell, cell_index, execute_reply):
        replies[cell_index] = execute_reply

    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}},
                            on_cell_executed=on_cell_executed)
    second, third = len(FIRST_KERNEL), len(FIRST_KERNEL) + len(SECOND_KERNEL)
    with client.setup_kernel(env=kernel_env()):
        for index in range(len(nb.cells)):
            if index in (second, third):
                # A graceful restart: ipykernel's shutdown must stop the run and record it.
                run_sync(client.km.restart_kernel)()
                run_sync(client.kc.wait_for_ready)(timeout=120)
            client.execute_cell(nb.cells[index], index)
        client.set_widgets_metadata()

    cells = nb.cells
    out = [text_of(cell) for cell in cells]
    for index, text in enumerate(out):
        assert "Error" not in text and "Traceback" not in text, (index, text)
    lab = Lab.open(tmp_path / "autoresearch-lab")

    # The charter cell wrote program.md and showed what changed.
    assert "Created a lab in" in out[1] and "Wrote the charter" in out[1]
    assert any("Lower val_bpb on this CPU." in o.get("data", {}).get("text/html", "")
               for o in cells[1].outputs)
    # start shows the dashboard widget and returns while the run goes on.
    assert any(WIDGET_VIEW in o.get("data", {}) for o in cells[2].outputs)
    assert out[3].startswith("training: ") and out[3].strip() != "training: None", out[3]
    answer, alive, job, answered_at = out[4].split()
    assert (answer, alive) == ("42", "True") and job != "None", out[4]
    training = next(r for r in lab.rows() if r.get("job") == int(job))
    started, finished = facts.timestamp(training["started_at"]), facts.timestamp(training["finished_at"])
    assert started <= float(answered_at) <= finished + 1, (training["started_at"], answered_at, training["finished_at"])
    assert "Stopping after the current experiment" in out[6]
    assert "Run ended (finished: stopped)" in out[7]
    n = next(r["index"] for r in lab.rows() if r["role"] == "experiment" and r["status"] in ("keep", "discard"))
    shown = "".join(o.get("data", {}).get("text/html", "") for o in cells[8].outputs)
    assert f"<b>#{n}</b>" in shown and "Rationale" in shown and "Change" in shown
    payload = replies[9]["content"]["payload"]
    assert payload and payload[0]["source"] == "set_next_input"
    assert payload[0]["text"].startswith(f"# %autoresearch apply {n}: nanochat/train.py")
    assert lab.file_at(n, "nanochat/train.py") in payload[0]["text"]
    assert any(WIDGET_VIEW in o.get("data", {}) for o in cells[10].outputs)

    # The first kernel stopped gracefully after the experiment it was running.
    first_rows = int(out[5].split()[-1])
    rows = lab.rows()
    assert [r["index"] for r in rows] == list(range(len(rows))), "no gap, no duplicate"
    assert lab.charter_path.read_text() == CHARTER
    assert "charter updated by the person" in lab.repo.git.log("--format=%s")

    # Second kernel: resumed, then restarted while an experiment trained.
    assert any(WIDGET_VIEW in o.get("data", {}) for o in cells[second + 1].outputs)
    assert out[second + 3].startswith("training: ")
    interrupted = [r for r in rows if r["status"] == "interrupted"]
    assert interrupted, f"the restart must record the experiment it killed: {rows}"
    assert interrupted[0]["index"] >= first_rows

    # Third kernel: status reads the lab without a run; resume finishes the bounded run.
    assert "no run in this kernel" in out[third + 1] and "interrupted" in out[third + 1]
    assert "Run ended (finished: reached --max-experiments 5)" in out[third + 4]
    assert any(WIDGET_VIEW in o.get("data", {}) for o in cells[third + 4].outputs)
    assert not any(WIDGET_VIEW in o.get("data", {}) for o in cells[7].outputs), \
        "outside Colab, wait leaves the dashboard where it is"
    ran = [r for r in rows if r["status"] in ("keep", "discard", "crash", "interrupted")]
    assert len(ran) == 5
    assert rows[-1]["index"] > interrupted[0]["index"] and rows[-1]["status"] != "interrupted", \
        "the resumed run went on past the experiment the restart killed"
    assert lab.branch() == "autoresearch/nb"

    # The dashboard's state is saved in the notebook: table rows, header, buttons, chart.
    models = widget_models(nb)
    tables = [m["state"] for m in models if m["state"].get("_model_name") == "DropdownModel"]
    assert tables and max(len(t.get("_options_labels", [])) for t in tables) == len(rows)
    final = max(tables, key=lambda t: len(t.get("_options_labels", [])))
    assert "baseline" in final["_options_labels"][-1]
    headers = [m["state"].get("value", "") for m in models
               if m["state"].get("_model_name") == "HTMLModel"]
    done = facts.ran(rows)  # a run disturbed from outside is run again and not counted
    assert any(("5/5 runs" if done == 5 else f"{done} (5/5 counted) runs") in value for value in headers)
    buttons = {m["state"].get("description") for m in models
               if m["state"].get("_model_name") == "ButtonModel"}
    assert {"Stop", "Pause"} <= buttons
    images = [m for m in models if m["state"].get("_model_name") == "ImageModel"]
    assert images and any(m.get("buffers") for m in images), "chart PNGs are saved as buffers"
