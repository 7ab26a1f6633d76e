"""nanochat/prepare.py: data sources, tokenizer, loader, the bits-per-byte metric and the summary block."""
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
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["vocab_size"] == 512
    import numpy as np

    val = np.load(folder / "val.npy")
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


def test_check_causal_catches_a_model_that_sees_the_future(prepare_module):
    import torch

    class Peeking(Uniform):
        def __call__(self, x):  # logits at t depend on the token at t+1
            out = torch.zeros(x.size(0), x.size(1), self.vocab)
            out[:, :-1].scatter_(2, x[:, 1:, None], 10.0)
            return out

    assert prepare_module.check_causal(Uniform(512)) == 0.0
    assert prepare_module.check_causal(Peeking(512)) > 1.0


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
        meta = json.loads(next((cache / "data").glob("tinystories-vbytes/meta.json")).read_text())
        assert meta["train_documents"] == 300 and meta["val_documents"] == 60
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
