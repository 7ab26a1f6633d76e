"""Every card people have: a dtype forced with AUTORESEARCH_DTYPE (float16 with loss scaling runs on the
CPU too, so its whole path is tested here), the steps loss scaling skipped counted and shown, and a card
too old for the installed PyTorch refused in one line."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from test_prepare import make_lab_dir, outside_the_harness

from autoresearch_nb.judge import conditions
from autoresearch_nb.report.tables import summary_markdown
from autoresearch_nb.ui.text import experiment_text

REPO = Path(__file__).resolve().parent.parent

# Arch lists of real PyTorch wheels (torch.cuda.get_arch_list()): CUDA 12.1 builds, and CUDA 12.8
# builds, which dropped Maxwell and Pascal and carry PTX for the newest cards.
CU121 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
CU128 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
SCALER = 'scaler = torch.amp.GradScaler(DEVICE, enabled=PROFILE["dtype"] == "float16")'


def test_a_card_older_than_the_installed_pytorch_is_refused_in_one_line():
    spec = importlib.util.spec_from_file_location("template_prepare", REPO / "nanochat" / "prepare.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)  # on a machine without a GPU, importing it touches none
    unsupported_card = prepare.unsupported_card
    refused = unsupported_card("Tesla K80", (3, 7), CU121, version="2.1.0+cu121")
    assert refused and "\n" not in refused
    for words in ("Tesla K80", "3.7", "2.1.0+cu121", "5.0 and newer", "Runtime > Change runtime type", "--profile cpu"):
        assert words in refused, words
    assert "7.5 and newer" in unsupported_card("Tesla P100-PCIE-16GB", (6, 0), CU128)
    for card, capability in (("Tesla T4", (7, 5)), ("NVIDIA H100 80GB HBM3", (9, 0)), ("NVIDIA B200", (10, 0))):
        assert unsupported_card(card, capability, CU121) is None
        assert unsupported_card(card, capability, CU128) is None
    assert unsupported_card("Tesla K80", (3, 7), []) is None  # a CPU build's empty list refuses nothing
    assert unsupported_card("Tesla K80", (3, 7), ["compute_50"]) is not None  # PTX runs on newer cards only
    assert unsupported_card("NVIDIA H100", (9, 0), ["sm_90a"]) is None


def probe(lab: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "nanochat/prepare.py", "--conditions"], cwd=lab, capture_output=True,
                          text=True, env={**outside_the_harness(), **env})


def test_a_forced_dtype_is_in_the_conditions_so_its_runs_are_not_compared_with_float32(tmp_path, data_cache):
    lab = make_lab_dir(tmp_path / "lab", {"profile": "tiny", "data": "builtin"})
    plain, forced = probe(lab), probe(lab, AUTORESEARCH_DTYPE="float16")
    assert plain.returncode == 0 and forced.returncode == 0, plain.stderr + forced.stderr
    before, now = (conditions.of(json.loads(done.stdout.splitlines()[-1]), 4, {}) for done in (plain, forced))
    assert (before["dtype"], now["dtype"]) == ("float32", "float16")
    assert conditions.differences(before, now) == ["dtype float32 -> float16"]
    wrong = probe(lab, AUTORESEARCH_DTYPE="fp16")
    assert wrong.returncode != 0
    assert wrong.stderr.strip().splitlines() == [
        "AUTORESEARCH_DTYPE='fp16' is not a choice: float32, bfloat16 or float16"]


def result_fields(result):
    from autoresearch_nb.engine.records import result_fields as fields

    return fields(result)


def harness_run(lab: Path, dtype: str | None, name: str):
    """One run of the lab's train.py as the harness runs it: the training process hands over, the fixed
    evaluator measures it in a process of its own."""
    from autoresearch_nb.lab.lab import Lab
    from autoresearch_nb.run import boundary
    from autoresearch_nb.run.runner import Runner, clean_environment

    env = {"AUTORESEARCH_BUDGET": 1, "AUTORESEARCH_PROFILE": "tiny", "AUTORESEARCH_SEED": 42,
           "AUTORESEARCH_DTYPE": dtype}
    facts = json.loads(subprocess.run([sys.executable, "nanochat/prepare.py", "--conditions"], cwd=lab, text=True,
                                      capture_output=True, env=clean_environment(env)).stdout.splitlines()[-1])
    assert facts["dtype"] == (dtype or "float32")
    run_dir = Lab.open(lab).state_dir / "runs" / name
    result = Runner(["{python}", "nanochat/train.py"], lab, clean_environment(env), lab / f"{name}.log", 1.0, 120.0,
                    **boundary.for_lab(Lab.open(lab), run_dir, facts, 1.0)).run()
    assert result.ok, (result.kind, result.reason, result.tail)
    assert math.isfinite(result.summary["val_bpb"])
    return result, json.loads((run_dir / "handover.json").read_text()), (lab / f"{name}.log").read_text()


@pytest.mark.slow
def test_float16_on_the_cpu_trains_is_evaluated_and_counts_the_steps_loss_scaling_skipped(tiny_lab):
    result, handed, log = harness_run(tiny_lab, "float16", "fp16")
    assert result.summary["overflow_steps"] == handed["overflow_steps"] < result.summary["num_steps"]
    assert "overflow_steps:" in log  # in the run's summary block, where a person reads the log
    assert result_fields(result)["overflow_steps"] == handed["overflow_steps"]  # the ledger's row keeps it
    # A scaler that starts absurdly high overflows at once: those steps are skipped and counted, until
    # its scale has come down to where float16 gradients fit and the remaining steps train.
    train = tiny_lab / "nanochat" / "train.py"
    assert train.read_text().count(SCALER) == 1
    train.write_text(train.read_text().replace(SCALER, SCALER[:-1] + ", init_scale=2.0**60, backoff_factor=2.0**-20)"))
    result, handed, _ = harness_run(tiny_lab, "float16", "overflowing")
    assert 1 <= result.summary["overflow_steps"] == handed["overflow_steps"] < result.summary["num_steps"]


@pytest.mark.slow
def test_a_float32_run_records_no_overflow_count(tiny_lab):
    result, handed, log = harness_run(tiny_lab, None, "fp32")
    assert "overflow_steps" not in result.summary and "overflow_steps" not in handed
    assert "overflow_steps" not in log
    assert "overflow_steps" not in result_fields(result)


def test_the_overflow_count_is_shown_for_a_float16_run_and_not_for_others():
    common = {"status": "keep", "val_bpb": 3.64, "role": "experiment", "training_seconds": 2.0, "num_steps": 120}
    fp16 = {**common, "index": 1, "description": "fp16", "overflow_steps": 3, "conditions": {"dtype": "float16"}}
    fp32 = {**common, "index": 2, "description": "fp32", "conditions": {"dtype": "float32"}}
    assert "training_seconds 2.0 · num_steps 120 · overflow steps 3 of 120" in experiment_text(fp16)
    assert "overflow" not in experiment_text(fp32)
    assert "overflow steps 3 of 120 over 1 run" in summary_markdown({"rows": [fp16, fp32]})
    assert "overflow" not in summary_markdown({"rows": [fp32]})
