"""nanochat/prepare.py: settings pinned per lab, data sources, tokenizer, loader, the clock, the hand-over,
the evaluator and its checks, the conditions of a run."""
from __future__ import annotations

import http.server
import importlib
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NANOCHAT = REPO / "nanochat"


def run_prepare(*args, env=None):
    return subprocess.run([sys.executable, str(NANOCHAT / "prepare.py"), *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def prepare_module(data_cache):
    """prepare.py imported in-process on the tiny profile, its data built once."""
    os.environ["AUTORESEARCH_PROFILE"] = "tiny"
    sys.path.insert(0, str(NANOCHAT))
    try:
        sys.modules.pop("prepare", None)
        module = importlib.import_module("prepare")
        module.prepare("builtin", "tiny", quiet=True)
        yield module
    finally:
        sys.path.remove(str(NANOCHAT))
        sys.modules.pop("prepare", None)
        os.environ.pop("AUTORESEARCH_PROFILE", None)


def test_builtin_corpus_is_deterministic_and_split_by_document(prepare_module):
    docs = prepare_module.builtin_documents()
    assert docs == prepare_module.builtin_documents()
    total = sum(len(text) for _, text in docs)
    assert total > 1_000_000, "the builtin corpus should be a few MB of English"
    splits = prepare_module.documents("builtin")
    assert splits["val"] and splits["train"]
    val_ids = {doc_id for doc_id, _ in docs if prepare_module.split_of(doc_id) == "val"}
    assert 0.05 < len(val_ids) / len(docs) < 0.25
    assert not set(splits["val"]) & set(splits["train"]) - {""}


def test_prepare_builds_cached_arrays_with_bos_at_every_document(prepare_module, data_cache):
    folder = prepare_module.prepare("builtin", "tiny", quiet=True)
    meta = json.loads((folder / "train" / "meta.json").read_text())
    assert meta["vocab_size"] == 512
    import numpy as np

    # the validation split in a folder of its own: a sandbox gives training train/ and hides val/
    assert sorted(p.name for p in (folder / "train").iterdir()) == ["meta.json", "tokenizer.json", "train.npy"]
    assert sorted(p.name for p in (folder / "val").iterdir()) == ["val.npy"]
    val = np.load(folder / "val" / "val.npy")
    assert val[0] == meta["bos_id"]
    assert (val == meta["bos_id"]).sum() == meta["val_documents"]
    assert str(folder).startswith(str(data_cache))
    # a second call finds the cache
    assert prepare_module.prepare("builtin", "tiny", quiet=True) == folder


def test_tokenizer_round_trip_bpe_and_bytes(prepare_module):
    tokenizer = prepare_module.load_tokenizer()
    text = "The quick brown fox — naïve café, 3.14 ≠ π.\n\tdef f(x): return x**2"
    ids = tokenizer.encode([text])[0]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8"))  # BPE merges bytes
    assert tokenizer.token_bytes()[tokenizer.bos_id] == 0
    raw = prepare_module.Tokenizer(None)
    assert raw.decode(raw.encode([text])[0]) == text
    assert raw.vocab_size == 257


class Uniform:
    """A 'model' that predicts every token with equal probability."""

    training = False

    def __init__(self, vocab):
        self.vocab = vocab

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def __call__(self, x):
        import torch

        return torch.zeros(x.size(0), x.size(1), self.vocab)


def test_evaluate_bpb_of_a_uniform_model_matches_the_hand_computation(prepare_module):
    tokenizer = prepare_module.load_tokenizer()
    rows = prepare_module.validation_rows(prepare_module.SEQ_LEN, prepare_module.PROFILE["eval_tokens"])
    targets = rows[:, 1:].reshape(-1).tolist()
    byte_lengths = tokenizer.token_bytes().tolist()
    counted = [t for t in targets if byte_lengths[t] > 0]
    total_bytes = sum(byte_lengths[t] for t in targets)
    expected = len(counted) * math.log2(tokenizer.vocab_size) / total_bytes
    measured = prepare_module.evaluate_bpb(Uniform(tokenizer.vocab_size))
    assert measured == pytest.approx(expected, rel=1e-6)
    assert len(counted) < len(targets), "BOS targets must be excluded"


def test_the_probes_catch_a_model_that_sees_the_future(prepare_module):
    import torch

    class Peeking(Uniform):
        def __call__(self, x):  # logits at t depend on the token at t+1
            out = torch.zeros(x.size(0), x.size(1), self.vocab)
            out[:, :-1].scatter_(2, x[:, 1:, None], 10.0)
            return out

    _, leak, drift = prepare_module.evaluate_bpb(Uniform(512), checks=True)
    assert leak == 0.0 and drift == 0.0
    _, leak, _ = prepare_module.evaluate_bpb(Peeking(512), checks=True)
    assert leak > 1.0


def test_the_repeat_catches_a_model_that_changes_between_calls(prepare_module):
    import torch

    class Counting(Uniform):
        calls = 0

        def __call__(self, x):
            self.calls += 1
            return torch.full((x.size(0), x.size(1), self.vocab), float(self.calls))

    _, leak, drift = prepare_module.evaluate_bpb(Counting(512), checks=True)
    assert drift > 0.1


def test_logits_of_the_wrong_shape_or_kind_are_refused(prepare_module):
    import torch

    class Short(Uniform):
        def __call__(self, x):
            return torch.zeros(x.size(0), x.size(1), 10)

    class Pair(Uniform):
        def __call__(self, x):
            return torch.zeros(x.size(0), x.size(1), self.vocab), None

    for model, words in ((Short(512), "expected floating-point logits"), (Pair(512), "not a plain torch.Tensor")):
        with pytest.raises(prepare_module.Refused, match=words):
            prepare_module.evaluate_bpb(model)


def test_train_loader_rows_start_at_documents(prepare_module):
    prepare_module.TrainingClock().start()  # training data is for time on the clock
    loader = prepare_module.make_train_loader(4, seq_len=32, device="cpu")
    bos = prepare_module.load_tokenizer().bos_id
    for _ in range(3):
        x, y = next(loader)
        assert x.shape == (4, 32) and y.shape == (4, 32)
        assert (x[:, 0] == bos).all()
        assert (x[:, 1:] == y[:, :-1]).all()


def write_train_copy(tmp_path: Path, edit=None) -> Path:
    target = tmp_path / "nanochat"
    target.mkdir()
    (target / "prepare.py").write_text((NANOCHAT / "prepare.py").read_text())
    source = (NANOCHAT / "train.py").read_text()
    if edit:
        source = edit(source)
    (target / "train.py").write_text(source)
    return target / "train.py"


@pytest.mark.slow
def test_a_short_cpu_run_prints_the_whole_summary_below_uniform(tmp_path, prepare_module):
    script = write_train_copy(tmp_path)
    env = {**os.environ, "AUTORESEARCH_PROFILE": "tiny", "AUTORESEARCH_BUDGET": "8", "AUTORESEARCH_SEED": "1"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("step ") and "| loss " in line and "| progress " in line for line in lines)
    summary = dict(line.split(":", 1) for line in lines[lines.index("---") + 1:])
    names = ["val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
             "total_tokens_M", "num_steps", "num_params_M", "depth"]
    assert list(summary) == names
    val_bpb = float(summary["val_bpb"])
    uniform = prepare_module.evaluate_bpb(Uniform(prepare_module.load_tokenizer().vocab_size))
    assert math.isfinite(val_bpb) and val_bpb < uniform
    assert float(summary["training_seconds"]) <= 8 * 1.1 + 5


@pytest.mark.slow
def test_nan_in_training_fails_fast_with_exit_code_1(tmp_path, prepare_module):
    poisoned = write_train_copy(tmp_path, lambda s: s.replace(
        "        x = norm(self.wte(idx))", "        x = norm(self.wte(idx)) * float('nan')"))
    env = {**os.environ, "AUTORESEARCH_PROFILE": "tiny", "AUTORESEARCH_BUDGET": "30"}
    done = subprocess.run([sys.executable, str(poisoned)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1
    assert any(line.startswith("FAIL: nan loss") for line in done.stdout.splitlines()), done.stdout
    assert "val_bpb" not in done.stdout


def test_user_path_sources_text_folder_and_parquet(tmp_path, data_cache):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(12):
        (folder / f"doc{i}.txt").write_text(f"Document {i}. " + "The cat sat on the mat. " * 40)
    done = run_prepare("--data", str(folder), "--byte-level")
    assert done.returncode == 0, done.stderr
    assert "prepared" in done.stdout
    table = pa.table({"text": [f"Story {i}: once upon a time a robot learned to read." * 5 for i in range(40)]})
    pq.write_table(table, tmp_path / "stories.parquet")
    done = run_prepare("--data", str(tmp_path / "stories.parquet"), "--byte-level")
    assert done.returncode == 0, done.stderr
    missing = run_prepare("--data", str(tmp_path / "nope.txt"))
    assert missing.returncode != 0 and "does not exist" in missing.stderr


class HubHandler(http.server.BaseHTTPRequestHandler):
    """Serves files like the Hugging Face hub's resolve URLs, honouring Range requests."""

    files: dict = {}
    seen: list = []

    def do_GET(self):
        data = self.files.get(self.path)
        self.seen.append((self.path, self.headers.get("Range")))
        if data is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


def test_hub_download_from_a_local_fixture_resumes_and_caches(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def shard(name, n):
        path = tmp_path / name
        pq.write_table(pa.table({"text": [f"{name} story {i}: Tom and Sue went to the park." * 3 for i in range(n)]}), path)
        return path.read_bytes()

    base = "/datasets/roneneldan/TinyStories/resolve/refs%2Fconvert%2Fparquet"
    HubHandler.files = {f"{base}/default/train/0000.parquet": shard("train", 300),
                        f"{base}/default/validation/0000.parquet": shard("val", 60)}
    HubHandler.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cache = tmp_path / "cache"
    partial = cache / "downloads" / "tinystories" / "default" / "train" / "0000.parquet.part"
    partial.parent.mkdir(parents=True)
    train_bytes = HubHandler.files[f"{base}/default/train/0000.parquet"]
    partial.write_bytes(train_bytes[:1000])  # an interrupted earlier download
    env = {"AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}"}
    try:
        done = run_prepare("--data", "tinystories", "--byte-level", env=env)
        assert done.returncode == 0, done.stderr
        assert (f"{base}/default/train/0000.parquet", "bytes=1000-") in HubHandler.seen
        assert (partial.parent / "0000.parquet").read_bytes() == train_bytes
        assert "100%" in done.stderr  # the progress bar ran to the end
        meta = json.loads(next((cache / "prepared").glob("tinystories-vbytes-s*/train/meta.json")).read_text())
        # validation is the source's own file; the sealed holdout is one training story in eight
        assert meta["val_documents"] == 60 and meta["train_documents"] + meta["holdout_documents"] == 300
        assert 20 < meta["holdout_documents"] < 60
        requests = len(HubHandler.seen)
        again = run_prepare("--data", "tinystories", "--byte-level", env=env)
        assert again.returncode == 0 and len(HubHandler.seen) == requests  # cached: nothing fetched
    finally:
        server.shutdown()


def test_profiles_fix_budget_sequence_vocab_eval_and_size(prepare_module):
    for name, profile in prepare_module.PROFILES.items():
        for key in ("time_budget", "seq_len", "vocab_size", "eval_tokens", "depth", "n_embd"):
            assert key in profile, (name, key)
    cuda = prepare_module.PROFILES["cuda"]
    assert (cuda["seq_len"], cuda["vocab_size"], cuda["depth"], cuda["n_embd"], cuda["time_budget"]) == (2048, 8192, 8, 512, 300)
    env = {"AUTORESEARCH_PROFILE": "cpu"}
    probe = subprocess.run([sys.executable, "-c", "import prepare; print(prepare.PROFILE['name'], prepare.TIME_BUDGET)"],
                           cwd=NANOCHAT, capture_output=True, text=True, env={**os.environ, **env})
    assert probe.stdout.split() == ["cpu", "60"]
    probe = subprocess.run([sys.executable, "-c", "import prepare; print(prepare.TIME_BUDGET)"], cwd=NANOCHAT,
                           capture_output=True, text=True, env={**os.environ, **env, "AUTORESEARCH_BUDGET": "12"})
    assert probe.stdout.strip() == "12.0"


# -- settings: each lab pins its own; nothing machine-wide is read -----------------------------------

def make_lab_dir(root: Path, config: dict) -> Path:
    """A lab as prepare.py sees it: nanochat/prepare.py beside .autoresearch/config.json."""
    (root / "nanochat").mkdir(parents=True)
    (root / "nanochat" / "prepare.py").write_text((NANOCHAT / "prepare.py").read_text())
    (root / ".autoresearch").mkdir()
    (root / ".autoresearch" / "config.json").write_text(json.dumps(config))
    return root


def outside_the_harness() -> dict:
    """This environment without the harness's settings (the test cache kept), as a person's shell has it."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_") or k == "AUTORESEARCH_CACHE"}


def profile_seen(lab: Path, **env) -> list[str]:
    done = subprocess.run([sys.executable, "-c", "import prepare; print(prepare.PROFILE['name'], prepare.TIME_BUDGET)"],
                          cwd=lab / "nanochat", capture_output=True, text=True, env={**outside_the_harness(), **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_each_lab_reads_its_own_settings_and_the_harness_env_comes_first(tmp_path, data_cache):
    cpu = make_lab_dir(tmp_path / "a", {"profile": "cpu", "data": "builtin", "budget": None})
    tiny = make_lab_dir(tmp_path / "b", {"profile": "tiny", "data": "builtin", "budget": 7})
    assert profile_seen(cpu) == ["cpu", "60"]
    assert profile_seen(tiny) == ["tiny", "7.0"]
    # preparing for another profile elsewhere changes nothing here (once there was a machine-wide file)
    assert run_prepare("--profile", "tiny").returncode == 0
    assert profile_seen(cpu) == ["cpu", "60"]
    assert not list(data_cache.glob("*.json"))
    assert profile_seen(cpu, AUTORESEARCH_PROFILE="tiny", AUTORESEARCH_BUDGET="3") == ["tiny", "3.0"]


def test_conditions_name_everything_a_verdict_depends_on(tmp_path, data_cache):
    lab = make_lab_dir(tmp_path / "lab", {"profile": "tiny", "data": "builtin"})
    done = subprocess.run([sys.executable, "nanochat/prepare.py", "--conditions"], cwd=lab, capture_output=True,
                          text=True, env={**outside_the_harness(), "AUTORESEARCH_BUDGET": "4"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    facts = json.loads(lines[-1])
    for key in ("name", "profile", "seq_len", "vocab_size", "eval_tokens", "depth", "n_embd", "device_batch",
                "total_batch", "dtype", "time_budget", "clock", "data", "data_key", "tokenizer", "byte_level",
                "device", "device_name", "torch", "cpu_count", "train_paths"):
        assert key in facts, key
    assert (facts["name"], facts["profile"], facts["time_budget"], facts["clock"]) == ("tiny", "tiny", 4.0, "cpu")
    assert facts["data_key"].startswith("builtin") and len(facts["tokenizer"]) == 64 and not facts["byte_level"]
    train = Path(facts["train_paths"][0])
    assert facts["train_paths"] == [str(train)] and (train / "train.npy").exists() and (train / "tokenizer.json").exists()
    assert not (train / "val.npy").exists() and (train.parent / "val" / "val.npy").exists()
    byte_level = subprocess.run([sys.executable, "nanochat/prepare.py", "--conditions", "--byte-level"], cwd=lab,
                                capture_output=True, text=True, env=outside_the_harness())
    assert json.loads(byte_level.stdout.splitlines()[-1])["tokenizer"] == "bytes"


@pytest.mark.slow
def test_two_labs_with_different_profiles_prepare_at_once(tmp_path, data_cache):
    labs = [make_lab_dir(tmp_path / name, {"profile": name}) for name in ("cpu", "tiny")]
    running = [subprocess.Popen([sys.executable, "nanochat/prepare.py", "--conditions"], cwd=lab, text=True,
                                env=outside_the_harness(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for lab in labs]
    facts = [json.loads(p.communicate(timeout=600)[0].splitlines()[-1]) for p in running]
    assert [(f["name"], f["vocab_size"]) for f in facts] == [("cpu", 2048), ("tiny", 512)]
    assert facts[0]["train_paths"] != facts[1]["train_paths"]


# -- the clock ---------------------------------------------------------------------------------------

def test_the_cpu_clock_counts_cpu_time_not_waiting(prepare_module):
    import time

    assert prepare_module.PROFILE["clock"] == "cpu"
    before = prepare_module.clock_now()
    time.sleep(0.4)
    slept = prepare_module.clock_now() - before
    until = time.process_time() + 0.4
    while time.process_time() < until:
        pass
    worked = prepare_module.clock_now() - before - slept
    assert slept < 0.05
    assert worked == pytest.approx(0.4 / prepare_module.CORES, rel=0.2)


# -- the evaluator's checks on exported programs -------------------------------------------------------

def exported_file(tmp_path: Path, module, vocab: int = 512) -> Path:
    import torch

    x = torch.randint(0, vocab, (16, 64))
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(module.eval(), (x,)), path)
    return path


def load_checked(prepare_module, path: Path):
    import torch

    sample = torch.zeros(16, 64, dtype=torch.long)
    return prepare_module.check_program(torch.export.load(prepare_module.readable_program(path, sample)))


def small_models():
    import torch

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(512, 512)

        def forward(self, idx):
            return self.embed(idx)

    class InPlace(Plain):  # writes into an intermediate: fine once functionalized
        def forward(self, idx):
            out = self.embed(idx).clone()
            out.mul_(2.0)
            return out

    class Counting(Plain):  # a buffer that counts calls
        def __init__(self):
            super().__init__()
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, idx):
            self.calls += 1
            return self.embed(idx) + self.calls

    class Hidden(Plain):  # a plain tensor attribute written in place
        def __init__(self):
            super().__init__()
            self.calls = torch.zeros(())

        def forward(self, idx):
            self.calls.add_(1)
            return self.embed(idx) + self.calls

    class Two(Plain):
        def forward(self, idx):
            return self.embed(idx), idx

    return Plain, InPlace, Counting, Hidden, Two


def test_the_evaluator_runs_plain_programs_and_refuses_state(prepare_module, tmp_path):
    import torch

    Plain, InPlace, Counting, Hidden, Two = small_models()
    x = torch.randint(0, 512, (16, 64))
    for model in (Plain(), InPlace()):
        module = load_checked(prepare_module, exported_file(tmp_path, model))
        assert torch.allclose(module(x), model(x))
    for model, words in ((Counting(), "changes calls when called"), (Hidden(), "changes its own tensors"),
                         (Two(), "one tensor of logits")):
        with pytest.raises(prepare_module.Refused, match=words):
            load_checked(prepare_module, exported_file(tmp_path, model))


@pytest.mark.slow
def test_a_model_that_cannot_be_exported_is_an_export_crash_with_the_exporters_message(tiny_lab):
    from autoresearch_nb.run import boundary
    from autoresearch_nb.lab.lab import Lab
    from autoresearch_nb.run.runner import Runner, clean_environment

    train = tiny_lab / "nanochat" / "train.py"
    source = train.read_text()
    branch = "        x = norm(self.wte(idx))\n"
    assert source.count(branch) == 1
    train.write_text(source.replace(branch, branch + "        if idx.float().mean() > 200:  # a branch on data\n"
                                                     "            x = x * 2\n"))
    facts = json.loads(subprocess.run([sys.executable, "nanochat/prepare.py", "--conditions"], cwd=tiny_lab,
                                      capture_output=True, text=True).stdout.splitlines()[-1])
    env = clean_environment({"AUTORESEARCH_BUDGET": 1, "AUTORESEARCH_PROFILE": "tiny", "AUTORESEARCH_SEED": 42})
    result = Runner(["{python}", "nanochat/train.py"], tiny_lab, env, tiny_lab / "run.log", 1.0, 120.0,
                    **boundary.for_lab(Lab.open(tiny_lab), Lab.open(tiny_lab).state_dir / "runs" / "0000", facts, 1.0)).run()
    assert not result.ok and result.kind == "export", (result.kind, result.reason)
    assert "data-dependent" in result.reason and "torch.export" in result.reason
    assert "the exporter said:" in (tiny_lab / "run.log").read_text()


def test_the_holdout_is_disjoint_from_training_and_validation(prepare_module):
    splits = prepare_module.documents("builtin")
    train, val, holdout = (set(splits[name]) for name in ("train", "val", "holdout"))
    assert holdout and val and train
    assert not (holdout & train) and not (holdout & val) and not (train & val)
    # about one document in eight each, by a hash of the document's id
    assert 0.08 < len(holdout) / (len(train) + len(val) + len(holdout)) < 0.18
