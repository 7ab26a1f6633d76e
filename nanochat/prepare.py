"""Fixed data, tokenizer, dataloader, evaluator and summary for nanochat. The agent never edits this file.

Usage: python nanochat/prepare.py [--data builtin|tinystories|fineweb-edu|PATH] [--profile auto|cpu|mps|cuda]
train.py imports from here; the harness hash-checks this file before every run.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import random
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PROCESS_START = time.time()
STDOUT_FILE = os.fstat(1)  # the summary goes to this file and no other (see finish)
CACHE_DIR = Path(os.environ.get("AUTORESEARCH_CACHE") or "~/.cache/autoresearch-nb").expanduser()
HF_ENDPOINT = os.environ.get("AUTORESEARCH_HF_ENDPOINT", "https://huggingface.co")
BOS = "<|bos|>"
BUILTIN_VERSION = 2  # bump when the builtin corpus changes, so caches are rebuilt
SUMMARY_FIELDS = ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                  "total_tokens_M", "num_steps", "num_params_M", "depth")

# ---------------------------------------------------------------------------------------------
# Hardware profiles: each fixes the budget, sequence length, vocabulary, evaluation tokens and the
# starting model size. Picked from the hardware; AUTORESEARCH_PROFILE or --profile overrides.

PROFILES = {
    "cpu": dict(time_budget=60, seq_len=256, vocab_size=2048, eval_tokens=2**15, depth=4,
                n_embd=128, device_batch=16, total_batch=2**12, dtype="float32"),
    "mps": dict(time_budget=120, seq_len=512, vocab_size=4096, eval_tokens=2**18, depth=6,
                n_embd=384, device_batch=16, total_batch=2**14, dtype="float32"),
    # tiny: for tests and smoke checks of the harness; it learns little, but it learns.
    "tiny": dict(time_budget=5, seq_len=64, vocab_size=512, eval_tokens=2**12, depth=1,
                 n_embd=32, device_batch=8, total_batch=2**9, dtype="float32"),
    # cuda is sized from the GPU by cuda_profile(); these are the H100-class values, comparable
    # to autoresearch's (sequence 2048, vocab 8192, depth 8 / width 512, ~0.5M-token batches).
    "cuda": dict(time_budget=300, seq_len=2048, vocab_size=8192, eval_tokens=2**23, depth=8,
                 n_embd=512, device_batch=64, total_batch=2**19, dtype="bfloat16"),
}


def cuda_profile() -> dict:
    """Scale the cuda profile to the GPU: bf16 on Ampere and newer, fp16 (with loss scaling) before."""
    profile = dict(PROFILES["cuda"])
    props = torch.cuda.get_device_properties(0)
    memory_gb = props.total_memory / 2**30
    if props.major < 8:
        profile["dtype"] = "float16"
    if memory_gb < 60 or props.major < 9:  # T4 / V100 / A10 / consumer cards
        profile.update(seq_len=1024, depth=6, n_embd=384, eval_tokens=2**21, total_batch=2**16,
                       device_batch=max(4, min(32, int(memory_gb // 2))))
    return profile


def last_prepared() -> dict:
    """What the person's last `prepare` chose (data, profile, byte_level), {} if none."""
    path = CACHE_DIR / "last_prepared.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return {}


def profile_name(requested: str | None = None) -> str:
    name = (requested or os.environ.get("AUTORESEARCH_PROFILE") or last_prepared().get("profile")
            or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name not in PROFILES:
        raise SystemExit(f"unknown profile {name!r}: choose auto, cpu, mps, cuda or tiny")
    return name


def get_profile(requested: str | None = None) -> dict:
    """The profile in force, with the harness's budget override (AUTORESEARCH_BUDGET) applied."""
    name = profile_name(requested)
    profile = cuda_profile() if name == "cuda" else dict(PROFILES[name])
    profile["name"] = name
    profile["device"] = {"cuda": "cuda", "mps": "mps"}.get(name, "cpu")
    if os.environ.get("AUTORESEARCH_BUDGET"):
        profile["time_budget"] = float(os.environ["AUTORESEARCH_BUDGET"])
    return profile


PROFILE = get_profile()
TIME_BUDGET = PROFILE["time_budget"]
SEQ_LEN = PROFILE["seq_len"]
DEVICE = PROFILE["device"]
SEED = int(os.environ.get("AUTORESEARCH_SEED", "42"))

# The harness owns randomness: identical code with another seed measures the noise floor.
random.seed(SEED)
np.random.seed(SEED % 2**32)
torch.manual_seed(SEED)

# ---------------------------------------------------------------------------------------------
# Data sources. Each yields documents (strings) for a split; the validation split is fixed.


def builtin_documents() -> list[tuple[str, str]]:
    """An English corpus from text that ships with every CPython: the language reference topics
    (pydoc_data) and the stdlib's docstrings, read with ast (nothing is imported or executed)."""
    from pydoc_data.topics import topics

    docs = [(f"topic:{name}", text.strip()) for name, text in sorted(topics.items())]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo"}
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if skip.intersection(rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        parts = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node)
                if text and len(text) >= 80:
                    parts.append(text.strip())
        if parts:
            docs.append((f"module:{rel.as_posix()}", "\n\n".join(parts)))
    seen, unique = set(), []
    for doc_id, text in docs:  # some stdlib modules repeat others' text: keep it out of both splits
        if text not in seen:
            seen.add(text)
            unique.append((doc_id, text))
    return unique


def split_of(doc_id: str) -> str:
    """Split by document: a stable hash sends one document in eight to validation."""
    return "val" if hashlib.sha1(doc_id.encode()).digest()[0] % 8 == 0 else "train"


def text_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".txt", ".md", ".parquet"))


def parquet_texts(path: Path, column: str = "text") -> list[str]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=[column])
    return [t for t in table.column(column).to_pylist() if t]


def path_documents(root: Path) -> list[tuple[str, str]]:
    """A user's text file, folder of text files, or parquet with a text column."""
    if not root.exists():
        raise SystemExit(f"data path {root} does not exist: give a .txt file, a folder, or parquet")
    docs = []
    for path in text_files(root):
        if path.suffix == ".parquet":
            docs += [(f"{path.name}:{i}", t) for i, t in enumerate(parquet_texts(path))]
        else:
            text = path.read_text(encoding="utf-8", errors="replace")
            # A single big file is split into documents at blank-line paragraphs groups.
            chunks = [c.strip() for c in text.split("\n\n\n") if c.strip()] or [text]
            if len(chunks) == 1 and len(text) > 20000:
                paras = [p for p in text.split("\n\n") if p.strip()]
                chunks = ["\n\n".join(paras[i:i + 20]) for i in range(0, len(paras), 20)]
            docs += [(f"{path.name}:{i}", c) for i, c in enumerate(chunks)]
    if not docs:
        raise SystemExit(f"no text found under {root}: expected .txt, .md or .parquet files")
    return docs


# Hugging Face sources: parquet shards, the last one pinned as validation.
HUB_SOURCES = {
    "tinystories": dict(repo="roneneldan/TinyStories", revision="refs%2Fconvert%2Fparquet",
                        train=["default/train/0000.parquet"],
                        val="default/validation/0000.parquet"),
    "fineweb-edu": dict(repo="HuggingFaceFW/fineweb-edu", revision="main",
                        train=[f"sample/10BT/{i:03d}_00000.parquet" for i in range(13)],
                        val="sample/10BT/013_00000.parquet"),
}


def download(url: str, dest: Path, chunk: int = 1 << 20) -> Path:
    """Download with a progress bar; an interrupted download resumes from its .part file."""
    import urllib.request

    from tqdm import tqdm

    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        if have and response.status != 206:  # the server ignored Range: start over
            have = 0
        total = int(response.headers.get("Content-Length") or 0) + have
        with open(part, "ab" if have else "wb") as out, tqdm(
                total=total or None, initial=have, unit="B", unit_scale=True, desc=dest.name) as bar:
            while block := response.read(chunk):
                out.write(block)
                bar.update(len(block))
    part.rename(dest)
    return dest


def hub_documents(name: str, shards: int = 1) -> list[tuple[str, str]]:
    source = HUB_SOURCES[name]
    base = f"{HF_ENDPOINT}/datasets/{source['repo']}/resolve/{source['revision']}"
    docs = []
    files = [(f, "train") for f in source["train"][:shards]] + [(source["val"], "val")]
    for remote, split in files:
        local = download(f"{base}/{remote}", CACHE_DIR / "downloads" / name / remote)
        docs += [(f"{split}:{remote}:{i}", t) for i, t in enumerate(parquet_texts(local))]
    return docs


def documents(source: str, shards: int = 1) -> dict[str, list[str]]:
    """{'train': [...], 'val': [...]} for a data source."""
    if source == "builtin":
        pairs = builtin_documents()
        splits = {"train": [], "val": []}
        for doc_id, text in pairs:
            splits[split_of(doc_id)].append(text)
        return splits
    if source in HUB_SOURCES:
        pairs = hub_documents(source, shards)
        return {split: [t for d, t in pairs if d.startswith(split + ":")] for split in ("train", "val")}
    pairs = path_documents(Path(source).expanduser())
    splits = {"train": [], "val": []}
    for doc_id, text in pairs:
        splits[split_of(doc_id)].append(text)
    if not splits["val"]:  # tiny inputs: keep at least one validation document
        splits["val"].append(splits["train"].pop())
    return splits


def source_key(source: str) -> str:
    if source == "builtin":
        return f"builtin{BUILTIN_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}"
    if source in HUB_SOURCES:
        return source
    path = Path(source).expanduser().resolve()
    stamp = "".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in text_files(path))
    return f"path-{path.name}-{hashlib.sha1(stamp.encode()).hexdigest()[:10]}"


# ---------------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE trained on the training split (Hugging Face tokenizers), or raw bytes.


class Tokenizer:
    """encode/decode, the BOS id, and each token's length in bytes (for bits per byte)."""

    def __init__(self, hf=None):
        self.hf = hf
        if hf is None:  # byte-level: ids 0..255 are bytes, 256 is BOS
            self.vocab_size, self.bos_id = 257, 256
            self._bytes = [1] * 256 + [0]
        else:
            self.vocab_size = hf.get_vocab_size()
            self.bos_id = hf.token_to_id(BOS)
            # Byte-level BPE maps every byte to one character, so a token's length is its byte count.
            self._bytes = [0 if i == self.bos_id else len(hf.id_to_token(i)) for i in range(self.vocab_size)]

    def encode(self, texts: list[str]) -> list[list[int]]:
        if self.hf is None:
            return [list(t.encode("utf-8")) for t in texts]
        return [e.ids for e in self.hf.encode_batch(texts)]

    def decode(self, ids: list[int]) -> str:
        if self.hf is None:
            return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
        return self.hf.decode(ids)

    def token_bytes(self) -> torch.Tensor:
        return torch.tensor(self._bytes, dtype=torch.int64)


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer=trainer)
    return hf


# ---------------------------------------------------------------------------------------------
# Prepared data: tokens of each split as one array, every document starting with BOS.


def data_dir(source: str, vocab: int | str) -> Path:
    return CACHE_DIR / "data" / f"{source_key(source)}-v{vocab}"


def prepare(source: str = "builtin", profile: str | None = None, byte_level: bool = False,
            shards: int = 1, quiet: bool = False) -> Path:
    """Build (or find cached) the tokenizer and token arrays; return their folder."""
    vocab = "bytes" if byte_level else get_profile(profile)["vocab_size"]
    out = data_dir(source, vocab)
    if (out / "meta.json").exists():
        return out
    started = time.time()
    splits = documents(source, shards)
    if byte_level:
        tokenizer = Tokenizer(None)
    else:
        tokenizer = Tokenizer(train_tokenizer(splits["train"], vocab))
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    if tokenizer.hf is not None:
        tokenizer.hf.save(str(tmp / "tokenizer.json"))
    dtype = np.uint16 if tokenizer.vocab_size < 2**16 else np.uint32
    meta = {"source": source, "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id}
    for split, texts in splits.items():
        ids = tokenizer.encode(texts)
        flat = np.fromiter((t for doc in ids for t in [tokenizer.bos_id] + doc), dtype=dtype)
        np.save(tmp / f"{split}.npy", flat)
        meta[f"{split}_tokens"] = int(flat.size)
        meta[f"{split}_documents"] = len(texts)
        meta[f"{split}_bytes"] = sum(len(t.encode("utf-8")) for t in texts)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        tmp.rename(out)
    except OSError:  # another process finished first; theirs is as good as ours
        pass
    if not quiet:
        print(f"prepared {source}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, "
              f"vocab {tokenizer.vocab_size}, in {time.time() - started:.1f}s -> {out}")
    return out


def settings() -> dict:
    """What the harness (or the person's last `prepare`) chose: data source and byte-level flag."""
    chosen = last_prepared()
    data = os.environ.get("AUTORESEARCH_DATA") or chosen.get("data") or "builtin"
    byte_level = os.environ.get("AUTORESEARCH_BYTE_LEVEL", str(chosen.get("byte_level", ""))) in ("1", "True")
    return {"data": data, "byte_level": byte_level}


def load_tokenizer() -> Tokenizer:
    folder = prepare(settings()["data"], byte_level=settings()["byte_level"], quiet=True)
    path = folder / "tokenizer.json"
    if not path.exists():
        return Tokenizer(None)
    from tokenizers import Tokenizer as HFTokenizer

    return Tokenizer(HFTokenizer.from_file(str(path)))


def _load_split(split: str) -> np.ndarray:
    folder = prepare(settings()["data"], byte_level=settings()["byte_level"], quiet=True)
    return np.load(folder / f"{split}.npy", mmap_mode="r")


def _row_starts(tokens: np.ndarray, bos_id: int, row_len: int) -> np.ndarray:
    starts = np.flatnonzero(tokens == bos_id)
    return starts[starts + row_len <= tokens.size]


_LOADER = {"before_clock": 0, "finishing": False}
BATCHES_BEFORE_CLOCK = 2  # a compile warm-up and the first step's batch; training counts on the clock


def _count_batch() -> None:
    """Training data is only for time on the clock: not before it starts, not during evaluation."""
    if _LOADER["finishing"]:
        fail("training data was read during evaluation")
    if not _CLOCK_STARTS:
        _LOADER["before_clock"] += 1
        if _LOADER["before_clock"] > BATCHES_BEFORE_CLOCK:
            fail(f"more than {BATCHES_BEFORE_CLOCK} training batches were read before the training clock started")


def make_train_loader(batch_size: int, seq_len: int = SEQ_LEN, device: str = DEVICE):
    """Endless (x, y) batches: each row starts at a document's BOS and runs on through the next
    documents (BOS-aligned packing, no padding)."""
    tokens = _load_split("train")
    bos_id = load_tokenizer().bos_id
    starts = _row_starts(tokens, bos_id, seq_len + 1)
    if starts.size == 0:
        raise SystemExit("training data is shorter than one row; use more data or a shorter SEQ_LEN")
    rng = np.random.default_rng(SEED)
    pin = device == "cuda"
    while True:
        _count_batch()
        picks = rng.choice(starts, size=batch_size)
        rows = np.stack([tokens[s:s + seq_len + 1] for s in picks]).astype(np.int64)
        batch = torch.from_numpy(rows)
        if pin:
            batch = batch.pin_memory()
        batch = batch.to(device, non_blocking=pin)
        yield batch[:, :-1], batch[:, 1:]


def validation_rows(seq_len: int, eval_tokens: int) -> torch.Tensor:
    """The fixed validation stream: consecutive BOS-aligned rows until eval_tokens are covered."""
    tokens = _load_split("val")
    bos_id = load_tokenizer().bos_id
    rows, position, want = [], 0, max(1, eval_tokens // seq_len)
    for start in _row_starts(tokens, bos_id, seq_len + 1):
        if start < position:
            continue
        rows.append(np.asarray(tokens[start:start + seq_len + 1], dtype=np.int64))
        position = start + seq_len + 1
        if len(rows) == want:
            break
    if not rows:
        raise SystemExit("validation data is shorter than one row")
    return torch.from_numpy(np.stack(rows))


# ---------------------------------------------------------------------------------------------
# The metric: bits per byte over the fixed validation stream. Special tokens are excluded, so the
# number does not depend on the vocabulary.


def autocast_context(device: str = DEVICE, dtype: str | None = None):
    dtype = dtype or PROFILE["dtype"]
    if device == "cuda" and dtype in ("bfloat16", "float16"):
        return torch.autocast("cuda", dtype=getattr(torch, dtype))
    return torch.autocast(device_type="cpu", enabled=False)


CAUSAL_PROBES = 4   # evaluation batches that are run a second time with their futures changed


@torch.no_grad()
def evaluate_bpb(model, batch_size: int = 16, seq_len: int = SEQ_LEN,
                 eval_tokens: int = PROFILE["eval_tokens"], device: str = DEVICE, checks: bool = False):
    """Bits per byte of `model` (called as model(x) -> logits of shape (B, T, vocab)).

    With checks=True also returns (leak, drift), measured on the evaluation's own batches so a
    model cannot tell a check from the real thing: `leak` is how far logits moved when only
    later tokens changed (each row of a few random batches gets its own random split point);
    `drift` is how far a batch's logits moved when it was shown again after all the others
    (a model learning from the validation stream as it goes)."""
    rows = validation_rows(seq_len, eval_tokens)
    token_bytes = load_tokenizer().token_bytes().to(device)
    was_training = model.training
    model.eval()
    nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    starts = list(range(0, rows.size(0), batch_size))
    chooser = random.SystemRandom()  # unpredictable: train.py cannot know which batches are probed
    probes = set(chooser.sample(range(len(starts)), min(CAUSAL_PROBES, len(starts))))
    recheck = chooser.choice(sorted(probes))
    projection, leak, seen = None, 0.0, None
    for n, i in enumerate(starts):
        batch = rows[i:i + batch_size].to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        with autocast_context(device):
            logits = _plain(model(x)).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        nbytes = token_bytes[y.reshape(-1)]
        nats += (loss * (nbytes > 0)).double().sum()
        total_bytes += nbytes.sum()
        if checks and n in probes:
            if projection is None:
                projection = torch.randn(logits.size(-1), device=device, generator=torch.Generator(device).manual_seed(chooser.randrange(2**31)))
            signature = logits @ projection
            leak = max(leak, _future_leak(model, x, signature, projection, chooser))
            if n == recheck:
                seen = (x, signature)
    drift = 0.0
    if checks and seen is not None:
        with autocast_context(device):
            again = _plain(model(seen[0])).float() @ projection
        drift = _relative_change(seen[1], again)
    model.train(was_training)
    bpb = float(nats / (math.log(2) * total_bytes.clamp(min=1)))
    return (bpb, leak, drift) if checks else bpb


def _plain(logits) -> torch.Tensor:
    """The evaluator does its own arithmetic on a plain tensor: a Tensor subclass could rewrite it."""
    if type(logits) is not torch.Tensor:
        fail(f"the model returned a {type(logits).__name__}, not a plain torch.Tensor of logits")
    return logits


def _relative_change(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    change = (a - b).abs()
    if mask is not None:
        change = change * mask
    return float(change.max() / (a.abs().mean() + 1e-6))


def _future_leak(model, x, signature, projection, chooser) -> float:
    """Each row keeps its first p tokens (p random per row) and gets random tokens after them;
    a causal model's outputs before p cannot change."""
    changed = x.clone()
    splits = torch.tensor([chooser.randrange(1, x.size(1)) for _ in range(x.size(0))], device=x.device)
    positions = torch.arange(x.size(1), device=x.device)[None, :]
    after = positions >= splits[:, None]
    noise = torch.randint_like(x, 0, int(x.max()) + 1)
    changed[after] = noise[after]
    with autocast_context(x.device.type):
        other = _plain(model(changed)).float() @ projection
    return _relative_change(signature, other, mask=~after)


@torch.no_grad()
def check_causal(model, seq_len: int = SEQ_LEN, device: str = DEVICE) -> float:
    """How far a model's outputs move when only later tokens change (0 for a causal model)."""
    x = validation_rows(seq_len, 4 * seq_len)[:, :-1].to(device)
    was_training = model.training
    model.eval()
    chooser = random.SystemRandom()
    with autocast_context(device):
        logits = _plain(model(x)).float()
    projection = torch.randn(logits.size(-1), device=device)
    leak = _future_leak(model, x, logits @ projection, projection, chooser)
    model.train(was_training)
    return leak


# ---------------------------------------------------------------------------------------------
# The clock and the end of every run.


_CLOCK_STARTS: dict[int, float] = {}  # the true start of each clock, out of train.py's reach


class TrainingClock:
    """Training time against the budget; start() after compiling, so start-up does not count."""

    def __init__(self):
        self.budget = float(TIME_BUDGET)
        self.started = None
        self.stopped = None

    def start(self):
        if _CLOCK_STARTS and id(self) not in _CLOCK_STARTS:
            fail("a second training clock was started: a run has one clock, the one finish() reads")
        if self.started is None:
            self.started = time.perf_counter()
            _CLOCK_STARTS[id(self)] = self.started

    def stop(self):
        if self.stopped is None:
            self.stopped = time.perf_counter()

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.stopped or time.perf_counter()) - self.started

    @property
    def progress(self) -> float:
        return min(1.0, self.elapsed / self.budget)

    @property
    def done(self) -> bool:
        return self.elapsed >= self.budget


PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
              "T4": 65e12, "V100": 125e12}


def peak_flops() -> float:
    if DEVICE != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), 0.0)


def fail(cause: str) -> None:
    """The one way a run gives up: a FAIL line naming the cause, exit code 1."""
    print(f"FAIL: {cause}", flush=True)
    sys.exit(1)


def finish(model, clock: TrainingClock, tokens: int, steps: int, depth: int,
           flops_per_token: float | None = None) -> float:
    """Evaluate and print the summary block. train.py calls this once, at the end."""
    _LOADER["finishing"] = True
    true_start = _CLOCK_STARTS.get(id(clock))
    if type(clock) is not TrainingClock or true_start is None or clock.started != true_start \
            or clock.budget != float(TIME_BUDGET):
        fail("the training clock was tampered with: use prepare.TrainingClock as it is")
    clock.stopped = time.perf_counter()  # measured here, whatever train.py did with stop()
    num_params = sum(p.numel() for p in model.parameters())
    val_bpb, leak, drift = evaluate_bpb(model, checks=True)
    tolerance = 1e-3 if PROFILE["dtype"] == "float32" else 2e-2
    if not math.isfinite(leak) or leak > tolerance:
        fail(f"the model is not causal: its outputs moved by {leak:.3g} when only later tokens changed")
    if not math.isfinite(drift) or drift > tolerance:
        fail(f"the model changed during evaluation (by {drift:.3g}): it may not learn from validation data")
    if not math.isfinite(val_bpb):
        fail("nan val_bpb")
    flops = (flops_per_token or 6 * num_params) * tokens
    peak = peak_flops()
    mfu = 100 * flops / (clock.elapsed * peak) if peak and clock.elapsed > 0 else 0.0
    vram = torch.cuda.max_memory_allocated() / 2**20 if DEVICE == "cuda" else 0.0
    values = dict(val_bpb=f"{val_bpb:.6f}", training_seconds=f"{clock.elapsed:.1f}",
                  total_seconds=f"{time.time() - PROCESS_START:.1f}", peak_vram_mb=f"{vram:.1f}",
                  mfu_percent=f"{mfu:.2f}", total_tokens_M=f"{tokens / 1e6:.1f}", num_steps=str(steps),
                  num_params_M=f"{num_params / 1e6:.1f}", depth=str(depth))
    block = "---\n" + "".join(f"{name + ':':<18}{values[name]}\n" for name in SUMMARY_FIELDS)
    sys.stdout.flush()
    now = os.fstat(1)
    if (now.st_dev, now.st_ino) != (STDOUT_FILE.st_dev, STDOUT_FILE.st_ino):
        fail("standard output was redirected: the summary goes where the run started")
    os.write(1, block.encode())  # below sys.stdout, so a replaced sys.stdout cannot catch it
    return val_bpb


def main(argv=None):
    parser = argparse.ArgumentParser(description="Prepare data and tokenizer for nanochat.")
    parser.add_argument("--data", default="builtin", help="builtin, tinystories, fineweb-edu, or a path")
    parser.add_argument("--profile", default=None, help="auto, cpu, mps, cuda or tiny (tests)")
    parser.add_argument("--byte-level", action="store_true", help="raw bytes instead of BPE")
    parser.add_argument("--shards", type=int, default=1, help="training shards to download (hub sources)")
    args = parser.parse_args(argv)
    out = prepare(args.data, args.profile, args.byte_level, args.shards)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    (CACHE_DIR / "last_prepared.json").write_text(json.dumps({"data": args.data, "byte_level": args.byte_level,
                                                            "profile": args.profile}))
    meta = json.loads((out / "meta.json").read_text())
    profile = get_profile(args.profile)
    print(f"profile {profile['name']}: budget {profile['time_budget']}s, seq_len {profile['seq_len']}, "
          f"vocab {meta['vocab_size']}, eval tokens {profile['eval_tokens']:,}")
    return out


if __name__ == "__main__":
    main()
