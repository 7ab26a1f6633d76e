"""Fixed data, tokenizer, loader, training clock, hand-over and evaluator for nanochat. The agent never edits this file.

Usage: python nanochat/prepare.py [--data builtin|tinystories|fineweb-edu|PATH] [--profile auto|cpu|mps|cuda|tiny] [--byte-level]
       python nanochat/prepare.py --conditions       one JSON line: this lab's run conditions (data prepared if needed)
       python nanochat/prepare.py --evaluate RUN_DIR  val_bpb of the model train.py handed over in RUN_DIR
train.py imports from here; the harness hash-checks this file before every run.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import math
import operator
import os
import random
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PROCESS_START = time.time()
CACHE_DIR = Path(os.environ.get("AUTORESEARCH_CACHE") or "~/.cache/autoresearch-nb").expanduser()
HF_ENDPOINT = os.environ.get("AUTORESEARCH_HF_ENDPOINT", "https://huggingface.co")
LAB_CONFIG = Path(__file__).resolve().parent.parent / ".autoresearch" / "config.json"
BOS = "<|bos|>"
BUILTIN_VERSION = 2  # bump when the builtin corpus changes, so caches are rebuilt
SUMMARY_FIELDS = ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                  "total_tokens_M", "num_steps", "num_params_M", "depth", "overflow_steps")  # the last: float16 only
CLOCK_MARKER = "training clock started"  # the line the harness times training from

# ---------------------------------------------------------------------------------------------
# Settings of this lab: the harness's environment first, then the lab's own .autoresearch/config.json
# beside this file, then the defaults. Nothing machine-wide is read, so two labs never mix.


def lab_config() -> dict:
    try:
        return json.loads(LAB_CONFIG.read_text())
    except (OSError, ValueError):
        return {}


def settings() -> dict:
    """profile, data, byte_level, budget and the pinned data key, as this run sees them."""
    config = lab_config()
    byte_level = os.environ.get("AUTORESEARCH_BYTE_LEVEL")
    budget = os.environ.get("AUTORESEARCH_BUDGET") or config.get("budget")
    return {"profile": os.environ.get("AUTORESEARCH_PROFILE") or config.get("profile") or "auto",
            "data": os.environ.get("AUTORESEARCH_DATA") or config.get("data") or "builtin",
            "byte_level": byte_level.lower() in ("1", "true", "yes") if byte_level else bool(config.get("byte_level")),
            "budget": float(budget) if budget else None,
            "data_key": os.environ.get("AUTORESEARCH_DATA_KEY")}  # the harness pins the data it prepared


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
DTYPES = ("float32", "bfloat16", "float16")  # AUTORESEARCH_DTYPE's choices


def unsupported_card(name: str, capability: tuple[int, int], arch_list: list[str],
                     version: str = torch.__version__) -> str | None:
    """One line refusing a GPU this PyTorch has no kernels for, else None. The oldest entry of the
    build's arch list, sm_XY or compute_XY, is the oldest card it runs on (PTX compiles for newer
    cards only); an empty list (no CUDA build) refuses nothing."""
    built = [re.fullmatch(r"(?:sm|compute)_(\d+)(\d)[a-z]?", arch) for arch in arch_list]
    oldest = min(((int(m[1]), int(m[2])) for m in built if m), default=None)
    if oldest is None or tuple(capability) >= oldest:
        return None
    return (f"{name} (compute capability {capability[0]}.{capability[1]}) is too old for the installed PyTorch "
            f"{version}, which supports {oldest[0]}.{oldest[1]} and newer: on Colab choose a newer GPU "
            "(Runtime > Change runtime type), or train on the CPU with --profile cpu")


def cuda_profile() -> dict:
    """Scale the cuda profile to the GPU: bf16 on Ampere and newer, fp16 (with loss scaling) before."""
    profile = dict(PROFILES["cuda"])
    props = torch.cuda.get_device_properties(0)
    refused = unsupported_card(props.name, (props.major, props.minor), torch.cuda.get_arch_list())
    if refused:  # before any kernel runs: otherwise the first one fails with "no kernel image is available"
        raise SystemExit(refused)
    memory_gb = props.total_memory / 2**30
    if props.major < 8:
        profile["dtype"] = "float16"
    if memory_gb < 60 or props.major < 9:  # T4 / V100 / A10 / consumer cards
        profile.update(seq_len=1024, depth=6, n_embd=384, eval_tokens=2**21, total_batch=2**16,
                       device_batch=max(4, min(32, int(memory_gb // 2))))
    return profile


def profile_name(requested: str | None = None) -> str:
    name = (requested or settings()["profile"]).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name not in PROFILES:
        raise SystemExit(f"unknown profile {name!r}: choose auto, cpu, mps, cuda or tiny")
    return name


def cpu_cores() -> int:
    """Cores this machine gives a run: its affinity mask, capped by a cgroup CPU quota (containers).
    The cpu clock divides CPU time by this; the harness passes its own count as AUTORESEARCH_CPU_COUNT."""
    if os.environ.get("AUTORESEARCH_CPU_COUNT"):
        return max(1, int(os.environ["AUTORESEARCH_CPU_COUNT"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def get_profile(requested: str | None = None) -> dict:
    """The profile in force, with the budget override (AUTORESEARCH_BUDGET or the lab's budget), the
    depth override (AUTORESEARCH_DEPTH) and the dtype override (AUTORESEARCH_DTYPE) applied.
    The clock is CPU time on the CPU (a busy neighbour cannot steal it) and wall time on a GPU;
    AUTORESEARCH_CLOCK=wall keeps wall time on the CPU too (benchmarks/cpu_clock.py compares them)."""
    name = profile_name(requested)
    profile = cuda_profile() if name == "cuda" else dict(PROFILES[name])
    profile["name"] = name
    profile["device"] = {"cuda": "cuda", "mps": "mps"}.get(name, "cpu")
    profile["clock"] = "cpu" if profile["device"] == "cpu" and os.environ.get("AUTORESEARCH_CLOCK") != "wall" else "wall"
    if settings()["budget"]:
        profile["time_budget"] = settings()["budget"]
    if os.environ.get("AUTORESEARCH_DEPTH"):  # the transfer ladder's larger model (autoresearch-nb transfer --depth)
        profile["depth"] = int(os.environ["AUTORESEARCH_DEPTH"])
    forced = os.environ.get("AUTORESEARCH_DTYPE")
    if forced:  # e.g. float16 with loss scaling on a bf16 card or on the CPU, as an older card trains
        if forced not in DTYPES:
            raise SystemExit(f"AUTORESEARCH_DTYPE={forced!r} is not a choice: float32, bfloat16 or float16")
        profile["dtype"] = forced
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
    """Split by document: a stable hash sends one document in eight to validation and one in eight to
    the sealed holdout (read by the evaluator only, never selected on: the night's check on itself)."""
    bucket = hashlib.sha1(doc_id.encode()).digest()[0] % 8
    return "val" if bucket == 0 else "holdout" if bucket == 1 else "train"


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
    """{'train': [...], 'val': [...], 'holdout': [...]} for a data source (holdout may be empty)."""
    splits = {"train": [], "val": [], "holdout": []}
    if source in HUB_SOURCES:  # validation is the source's own file; the holdout comes out of training's
        for doc_id, text in hub_documents(source, shards):
            split = doc_id.split(":", 1)[0]
            splits["holdout" if split == "train" and split_of(doc_id) == "holdout" else split].append(text)
        return splits
    pairs = builtin_documents() if source == "builtin" else path_documents(Path(source).expanduser())
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
# Prepared data: tokens of each split as one array, every document starting with BOS. The training
# split (with the tokenizer) and the validation split live in folders of their own, so a sandbox can
# give the training process the one and hide the other.


SPLITS_VERSION = 2  # 2: a holdout split taken out of training; data prepared before it is not reused


def data_dir(source: str, vocab: int | str, key: str | None = None) -> Path:
    return CACHE_DIR / "prepared" / f"{key or source_key(source)}-v{vocab}-s{SPLITS_VERSION}"


def prepare(source: str = "builtin", profile: str | None = None, byte_level: bool = False,
            shards: int = 1, quiet: bool = False, key: str | None = None) -> Path:
    """Build (or find cached) the tokenizer and token arrays; return their folder (train/ and val/).
    `key`: the data the harness prepared for this run, pinned so that a changed source cannot swap it."""
    vocab = "bytes" if byte_level else get_profile(profile)["vocab_size"]
    out = data_dir(source, vocab, key)
    if (out / "train" / "meta.json").exists():
        return out
    if key:
        raise SystemExit(f"the prepared data {out} is missing: prepare it again with `autoresearch-nb prepare`")
    started = time.time()
    splits = documents(source, shards)
    tokenizer = Tokenizer(None) if byte_level else Tokenizer(train_tokenizer(splits["train"], vocab))
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    for split in splits:
        (tmp / split).mkdir(parents=True, exist_ok=True)
    if tokenizer.hf is not None:
        tokenizer.hf.save(str(tmp / "train" / "tokenizer.json"))
    dtype = np.uint16 if tokenizer.vocab_size < 2**16 else np.uint32
    meta = {"source": source, "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id}
    for split, texts in splits.items():
        ids = tokenizer.encode(texts)
        flat = np.fromiter((t for doc in ids for t in [tokenizer.bos_id] + doc), dtype=dtype)
        np.save(tmp / split / f"{split}.npy", flat)
        meta[f"{split}_tokens"] = int(flat.size)
        meta[f"{split}_documents"] = len(texts)
        meta[f"{split}_bytes"] = sum(len(t.encode("utf-8")) for t in texts)
    (tmp / "train" / "meta.json").write_text(json.dumps(meta, indent=1))  # written last: it marks the data ready
    try:
        tmp.rename(out)
    except OSError:  # another process finished first; theirs is as good as ours
        pass
    if not quiet:
        print(f"prepared {source}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, "
              f"vocab {tokenizer.vocab_size}, in {time.time() - started:.1f}s -> {out}")
    return out


def prepared() -> Path:
    """This lab's prepared data (built on first use outside the harness)."""
    chosen = settings()
    return prepare(chosen["data"], byte_level=chosen["byte_level"], quiet=True, key=chosen["data_key"])


def load_tokenizer() -> Tokenizer:
    path = prepared() / "train" / "tokenizer.json"
    if not path.exists():
        return Tokenizer(None)
    from tokenizers import Tokenizer as HFTokenizer

    return Tokenizer(HFTokenizer.from_file(str(path)))


def _load_split(split: str) -> np.ndarray:
    return np.load(prepared() / split / f"{split}.npy", mmap_mode="r")


def _row_starts(tokens: np.ndarray, bos_id: int, row_len: int) -> np.ndarray:
    starts = np.flatnonzero(tokens == bos_id)
    return starts[starts + row_len <= tokens.size]


_LOADER = {"before_clock": 0}
BATCHES_BEFORE_CLOCK = 2  # a compile warm-up and the first step's batch; training counts on the clock


def _count_batch() -> None:
    """Training data is for time on the clock. A first filter only: the harness's own timing is the rule."""
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


def validation_rows(seq_len: int, eval_tokens: int, split: str = "val") -> torch.Tensor:
    """The fixed validation stream: consecutive BOS-aligned rows until eval_tokens are covered.
    Only the evaluator reads it (and the holdout, split="holdout"); the training process is never
    given either folder."""
    tokens = _load_split(split)
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
        raise SystemExit(f"{'validation' if split == 'val' else split} data is shorter than one row")
    return torch.from_numpy(np.stack(rows))


def holdout_rows(seq_len: int, eval_tokens: int) -> torch.Tensor | None:
    """The sealed holdout's rows, or None where the data has none (prepared before it, or too small)."""
    if not (prepared() / "holdout" / "holdout.npy").exists():
        return None
    try:
        return validation_rows(seq_len, eval_tokens, "holdout")
    except SystemExit:
        return None


def autocast_context(device: str = DEVICE, dtype: str | None = None):
    """The profile's mixed precision: bf16 or fp16 autocast on any device (the CPU too, where
    AUTORESEARCH_DTYPE forces it), none for float32."""
    dtype = dtype or PROFILE["dtype"]
    if dtype in ("bfloat16", "float16"):
        return torch.autocast(device, dtype=getattr(torch, dtype))
    return torch.autocast(device_type="cpu", enabled=False)


# ---------------------------------------------------------------------------------------------
# The clock. On the CPU it counts the process's CPU time (all threads) over the machine's cores, so
# a busy neighbour does not shorten training; on a GPU it is wall time. The harness measures the same
# from outside, from the CLOCK_MARKER line to the hand-over, and that figure is the one judged.

CORES = cpu_cores()
_CLOCK_STARTS: dict[int, float] = {}  # the true start of each clock, for the first filter in finish()


def clock_now() -> float:
    if PROFILE["clock"] == "cpu":
        return time.process_time() / CORES
    return time.perf_counter()


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
            if os.environ.get("AUTORESEARCH_CLOCK_GATE") == "stdin":
                # This run started up beside the last one's evaluation; it trains once that has ended.
                sys.stdin.readline()
            self.started = clock_now()
            _CLOCK_STARTS[id(self)] = self.started
            sys.stdout.flush()
            os.write(1, f"{CLOCK_MARKER}\n".encode())  # below sys.stdout: a replaced sys.stdout cannot hold it back

    def stop(self):
        if self.stopped is None:
            self.stopped = clock_now()

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.stopped or clock_now()) - self.started

    @property
    def progress(self) -> float:
        return min(1.0, self.elapsed / self.budget)

    @property
    def done(self) -> bool:
        return self.elapsed >= self.budget


PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
              "T4": 65e12, "V100": 125e12}


def device_name() -> str:
    return torch.cuda.get_device_name(0) if DEVICE == "cuda" else DEVICE


def peak_flops() -> float:
    if DEVICE != "cuda":
        return 0.0
    return next((v for k, v in PEAK_FLOPS.items() if k in device_name()), 0.0)


def fail(cause: str) -> None:
    """The one way a run gives up: a FAIL line naming the cause, exit code 1."""
    print(f"FAIL: {cause}", flush=True)
    sys.exit(1)


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {text}"[:limit]


# ---------------------------------------------------------------------------------------------
# The end of every run: the trained model is handed over as a self-contained exported program (no
# Python from train.py in it), with the run's unjudged facts beside it.

EVAL_BATCH = 16  # rows per call of the model; it is exported for exactly this input shape
EXPORT_RULES = ("the model must export with torch.export: no Python branches on tensor values in forward, "
                "model(tokens) returns a plain tensor of logits, and nothing is kept from one call to the next")


def handover(model, run_dir: Path, clock: TrainingClock, tokens: int, steps: int, depth: int,
             flops_per_token: float | None = None, overflow_steps: int = 0) -> dict:
    """Export the eager module (never a torch.compile wrapper) in eval mode on a sample batch, under the
    profile's autocast, to run_dir/model.pt2; its facts go to run_dir/handover.json. `overflow_steps`:
    under float16, the steps loss scaling skipped (gradients overflowed), recorded for float16 only."""
    started = time.perf_counter()
    model = getattr(model, "_orig_mod", model)
    model.eval()
    sample = torch.randint(0, load_tokenizer().vocab_size, (EVAL_BATCH, SEQ_LEN), device=DEVICE)
    try:
        with torch.no_grad(), autocast_context():
            program = torch.export.export(model, (sample,))
            if PROFILE["dtype"] != "float32":  # the autocast casts become part of the graph
                program = program.run_decompositions({})
    except Exception as error:
        print(f"the exporter said: {error}", flush=True)
        fail(f"export: {_first_line(error)} ({EXPORT_RULES})")
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, run_dir / "model.pt2")
    num_params = sum(p.numel() for p in model.parameters())
    flops = (flops_per_token or 6 * num_params) * tokens
    peak = peak_flops()
    facts = dict(num_steps=steps, total_tokens_M=tokens / 1e6, num_params_M=num_params / 1e6, depth=depth,
                 peak_vram_mb=torch.cuda.max_memory_allocated() / 2**20 if DEVICE == "cuda" else 0.0,
                 mfu_percent=100 * flops / (clock.elapsed * peak) if peak and clock.elapsed > 0 else 0.0,
                 training_seconds=clock.elapsed, export_seconds=time.perf_counter() - started)
    if PROFILE["dtype"] == "float16":
        facts["overflow_steps"] = int(overflow_steps)
    (run_dir / "handover.json").write_text(json.dumps(facts))
    print(f"handover: model exported in {facts['export_seconds']:.1f}s", flush=True)
    return facts


def finish(model, clock: TrainingClock, tokens: int, steps: int, depth: int,
           flops_per_token: float | None = None, overflow_steps: int = 0) -> float | None:
    """Stop the clock and hand the model over. train.py calls this once, at the end. Under the harness
    that is all: the harness evaluates in a process of its own. Run by hand, the evaluator runs here as
    a subprocess and the summary is printed (a convenience, not what the harness trusts)."""
    true_start = _CLOCK_STARTS.get(id(clock))
    if type(clock) is not TrainingClock or true_start is None or clock.started != true_start \
            or clock.budget != float(TIME_BUDGET):
        fail("the training clock was tampered with: use prepare.TrainingClock as it is")
    clock.stopped = clock_now()
    if os.environ.get("AUTORESEARCH_RUN_DIR"):
        handover(model, Path(os.environ["AUTORESEARCH_RUN_DIR"]), clock, tokens, steps, depth, flops_per_token,
                 overflow_steps)
        sys.stdout.flush()
        os._exit(0)  # the harness's clock runs until this process ends: skip the interpreter's slow teardown
    with tempfile.TemporaryDirectory(prefix="nanochat-run-") as run_dir:
        facts = handover(model, Path(run_dir), clock, tokens, steps, depth, flops_per_token, overflow_steps)
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--evaluate", run_dir],
                              capture_output=True, text=True)
    found = re.search(r"^val_bpb:\s+(\S+)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or not found:
        print(done.stdout + done.stderr, end="", flush=True)
        fail(next((line[6:] for line in done.stdout.splitlines() if line.startswith("FAIL: ")), "the evaluator failed"))
    values = dict(val_bpb=found.group(1), training_seconds=f"{clock.elapsed:.1f}",
                  total_seconds=f"{time.time() - PROCESS_START:.1f}", peak_vram_mb=f"{facts['peak_vram_mb']:.1f}",
                  mfu_percent=f"{facts['mfu_percent']:.2f}", total_tokens_M=f"{facts['total_tokens_M']:.1f}",
                  num_steps=str(steps), num_params_M=f"{facts['num_params_M']:.1f}", depth=str(depth))
    if "overflow_steps" in facts:
        values["overflow_steps"] = str(facts["overflow_steps"])
    print("---\n" + "".join(f"{name + ':':<18}{values[name]}\n" for name in SUMMARY_FIELDS if name in values),
          end="", flush=True)
    return float(found.group(1))


# ---------------------------------------------------------------------------------------------
# The evaluator: `prepare.py --evaluate RUN_DIR`, a fresh process that never imports train.py. It reads
# the handed-over program as data, refusing anything in the file torch would run as code; checks that
# it is a pure, causal function of its input; and measures bits per byte on the validation split.
# Special tokens are excluded from the metric, so it does not depend on the vocabulary.

ARCHIVE_ENTRY = re.compile(r"[^/]+/(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|"
                           r"models/model\.json|data/sample_inputs/model\.pt|data/weights/weight_\d+|"
                           r"data/weights/model_weights_config\.json|data/constants/tensor_\d+|"
                           r"data/constants/model_constants_config\.json)")
ATEN_TARGET = re.compile(r"torch\.ops\.aten\.\w+\.\w+")
# What torch.export.load would turn into running code: symbolic shapes (sympify), subgraphs, custom objects.
UNSAFE_KEYS = {"expr_str", "as_graph", "as_custom_obj", "as_operator", "as_sym_int", "as_sym_ints",
               "as_sym_bool", "as_sym_bools", "as_sym_float", "as_sym_floats"}
SIDE_EFFECTS = {"from_file", "save", "_print", "warn"}  # aten operators that reach files or the output
CAUSAL_PROBES = 4   # evaluation batches that are run a second time with their futures changed


class Refused(Exception):
    """The handed-over model breaks a rule of the evaluation; the message says which."""


def _unsafe_key(tree) -> str | None:
    if isinstance(tree, dict):
        found = next((k for k in tree if k in UNSAFE_KEYS), None)
        return found or next((f for f in map(_unsafe_key, tree.values()) if f), None)
    if isinstance(tree, list):
        return next((f for f in map(_unsafe_key, tree) if f), None)
    return None


def _plain_graph(program: dict) -> dict:
    """The serialized program with nothing torch would run as Python: no symbolic shapes, subgraphs,
    custom objects or operators outside aten; guards and debug metadata dropped."""
    module, unsafe = program["graph_module"], _unsafe_key(program)
    if unsafe or program.get("range_constraints"):
        raise Refused(f"the exported model uses {unsafe or 'symbolic shapes'}: export with fixed shapes and torch's own operators")
    for node in module["graph"]["nodes"]:
        if not (ATEN_TARGET.fullmatch(node["target"]) or node["target"] == "_operator.getitem"):
            raise Refused(f"the exported model calls {node['target'][:80]}: only torch's aten operators are "
                          "evaluated, not custom operators or Python functions")
        node["metadata"] = {}
    inputs = [next(iter(spec)) for spec in module["signature"]["input_specs"]]
    outputs = module["signature"]["output_specs"]
    if inputs.count("user_input") != 1 or not set(inputs) <= {"parameter", "buffer", "tensor_constant", "user_input"} \
            or len(outputs) != 1 or "as_tensor" not in outputs[0].get("user_output", {}).get("arg", {}):
        raise Refused("the exported model must take one tensor of tokens and return one tensor of logits")
    if module.get("treespec_namedtuple_fields") or module["graph"].get("custom_obj_values"):
        raise Refused("the exported model carries Python objects: it must take and return plain tensors")
    module["module_call_graph"] = [entry for entry in module["module_call_graph"] if entry.get("fqn") == ""]
    program["guards_code"] = []
    return program


def readable_program(path: Path, sample: torch.Tensor) -> Path:
    """A checked copy of the archive that torch.export.load may read. Loading a file as it is would run
    the pickles, compiled libraries and Python strings it may hold; a plain model needs none of them."""
    try:
        archive = zipfile.ZipFile(path)
        names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as error:
        raise Refused(f"the handed-over model {path.name} is not a readable archive ({error})")
    odd = [n for n in names if not ARCHIVE_ENTRY.fullmatch(n) or n.split("/")[0] != names[0].split("/")[0]]
    if odd:
        raise Refused(f"the exported model holds {odd[0][:80]}, which a plain model does not need")
    checked = path.with_name("checked.pt2")
    with archive, zipfile.ZipFile(checked, "w", zipfile.ZIP_STORED) as copy:
        for name in names:
            if name.endswith("_config.json"):
                for entry in json.loads(archive.read(name)).get("config", {}).values():
                    if entry.get("use_pickle") or not str(entry.get("path_name")).startswith(("weight_", "tensor_")):
                        raise Refused("the exported model stores a weight as a pickled object: only plain tensors are read")
                copy.writestr(name, archive.read(name))
            elif name.endswith("models/model.json"):
                copy.writestr(name, json.dumps(_plain_graph(json.loads(archive.read(name)))))
            elif name.endswith("sample_inputs/model.pt"):  # ours, not the file's: torch.load never sees its bytes
                buffer = io.BytesIO()
                torch.save(((sample.cpu(),), {}), buffer)
                copy.writestr(name, buffer.getvalue())
            else:
                with archive.open(name) as source, copy.open(name, "w") as target:
                    while block := source.read(1 << 24):
                        target.write(block)
    return checked


def check_program(program) -> torch.nn.Module:
    """aten operators only, none touching files; nothing written in place that outlives a call."""
    ops = [n.target for n in program.graph.nodes if n.op == "call_function"]
    if any(isinstance(op, torch._ops.OpOverload) and op._schema.is_mutable for op in ops):
        try:  # writes into intermediate tensors are fine: functionalize, then see what is still mutated
            program = program.run_decompositions({})
        except Exception as error:
            raise Refused(f"the model changes its own tensors when called ({_first_line(error)}): "
                          "state carried from one call to the next is refused")
        ops = [n.target for n in program.graph.nodes if n.op == "call_function"]
    signature = program.graph_signature
    if signature.buffers_to_mutate or signature.user_inputs_to_mutate:
        changed = ", ".join(list(signature.buffers_to_mutate.values()) + list(signature.user_inputs_to_mutate.values()))
        raise Refused(f"the model changes {changed} when called: state carried from one call to the next is refused")
    for op in ops:
        if op is operator.getitem:
            continue
        if not isinstance(op, torch._ops.OpOverload) or op.namespace != "aten" or op._schema.is_mutable \
                or op._schema.name.split("::")[-1] in SIDE_EFFECTS:
            raise Refused(f"the model calls {op}, which the evaluator does not run (it writes, or reaches outside the model)")
    return program.module()


def _plain(logits, x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The evaluator does its own arithmetic on a plain tensor of logits of the right shape."""
    if type(logits) is not torch.Tensor:
        raise Refused(f"the model returned a {type(logits).__name__}, not a plain torch.Tensor of logits")
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(x.shape) or logits.size(-1) < vocab_size \
            or not logits.is_floating_point():
        raise Refused(f"the model returned {logits.dtype} logits of shape {tuple(logits.shape)} for tokens of "
                      f"shape {tuple(x.shape)}: expected floating-point logits of shape (B, T, {vocab_size} or more)")
    return logits.float()


def _relative_change(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    change = (a - b).abs()
    if mask is not None:
        change = change * mask
    return float(change.max() / (a.abs().mean() + 1e-6))


@torch.no_grad()
def evaluate_bpb(model, rows: torch.Tensor | None = None, batch_size: int = EVAL_BATCH, device: str = DEVICE,
                 checks: bool = False):
    """Bits per byte of `model` (model(x) -> logits (B, T, vocab)) over the validation rows, always
    called with exactly `batch_size` rows (the last batch is padded with its own rows, not counted).

    With checks=True also returns (leak, drift), measured on the evaluation's own batches so a model
    cannot tell a check from the real thing: `leak` is how far logits moved when only later tokens
    changed (each row of a few random batches gets its own random split point); `drift` is how far
    a batch's logits moved when it was shown again after all the others (state kept between calls)."""
    rows = validation_rows(SEQ_LEN, PROFILE["eval_tokens"]) if rows is None else rows
    tokenizer = load_tokenizer()
    token_bytes = tokenizer.token_bytes().to(device)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    starts = list(range(0, rows.size(0), batch_size))
    chooser = random.SystemRandom()  # unpredictable: a model cannot know which batches are probed
    probes = set(chooser.sample(range(len(starts)), min(CAUSAL_PROBES, len(starts))))
    recheck = chooser.choice(sorted(probes))
    projection, leak, seen = None, 0.0, None
    for n, i in enumerate(starts):
        real = min(batch_size, rows.size(0) - i)
        batch = rows[i:i + batch_size]
        if real < batch_size:
            batch = torch.cat([batch, batch[:1].expand(batch_size - real, -1)])
        batch = batch.to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        logits = _plain(model(x), x, tokenizer.vocab_size)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        nbytes = token_bytes[y[:real].reshape(-1)]
        nats += (loss[:real * y.size(1)] * (nbytes > 0)).double().sum()
        total_bytes += nbytes.sum()
        if checks and n in probes:
            if projection is None:
                generator = torch.Generator(device).manual_seed(chooser.randrange(2**31))
                projection = torch.randn(logits.size(-1), device=device, generator=generator)
            signature = logits @ projection
            leak = max(leak, _future_leak(model, x, signature, projection, chooser, tokenizer.vocab_size))
            if n == recheck:
                seen = (x, signature)
    drift = 0.0
    if checks and seen is not None:
        again = _plain(model(seen[0]), seen[0], tokenizer.vocab_size) @ projection
        drift = _relative_change(seen[1], again)
    bpb = float(nats / (math.log(2) * total_bytes.clamp(min=1)))
    return (bpb, leak, drift) if checks else bpb


def _future_leak(model, x, signature, projection, chooser, vocab_size: int) -> float:
    """Each row keeps its first p tokens (p random per row) and gets random tokens after them;
    a causal model's outputs before p cannot change."""
    changed = x.clone()
    splits = torch.tensor([chooser.randrange(1, x.size(1)) for _ in range(x.size(0))], device=x.device)
    positions = torch.arange(x.size(1), device=x.device)[None, :]
    after = positions >= splits[:, None]
    noise = torch.randint_like(x, 0, int(x.max()) + 1)
    changed[after] = noise[after]
    other = _plain(model(changed), changed, vocab_size) @ projection
    return _relative_change(signature, other, mask=~after)


def _warm_up_loading() -> None:
    """Export, save and load a trivial model once, so the real load pays no first-call costs."""
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),)), buffer)
    buffer.seek(0)
    torch.export.load(buffer).module()(torch.zeros(1, 2))


def evaluate_run(run_dir: Path, wait: bool = False) -> None:
    """The evaluator's main: the val_bpb block, or a FAIL line saying why the model is refused.
    `wait`: read a line from standard input first (the harness starts the evaluator beside the
    training, so its start-up is done by the hand-over; "go" means evaluate, anything else: exit)."""
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"  # torch.load reads tensors, never pickled objects
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    rows = validation_rows(SEQ_LEN, PROFILE["eval_tokens"])
    sealed = holdout_rows(SEQ_LEN, PROFILE["eval_tokens"])
    _warm_up_loading()
    if wait and sys.stdin.readline().strip() != "go":
        return
    started = time.perf_counter()
    path = run_dir / "model.pt2"
    if not path.exists():
        fail(f"no model was handed over ({path} is missing): train.py ends with finish(model, ...)")
    try:
        checked = readable_program(path, rows[:EVAL_BATCH, :-1])
        try:
            program = torch.export.load(checked)
        except Exception as error:  # a malformed program: its author's to fix, not the evaluator's
            raise Refused(f"the exported model could not be loaded ({_first_line(error)})")
        model = check_program(program)
        loaded = time.perf_counter() - started
        val_bpb, leak, drift = evaluate_bpb(model, rows, checks=True)
    except Refused as error:
        fail(str(error))
    except Exception as error:  # raised by the model's own graph (a shape error, out of memory, ...)
        fail(f"the model failed when the evaluator called it ({_first_line(error)})")
    tolerance = 1e-3 if PROFILE["dtype"] == "float32" else 2e-2
    if not math.isfinite(leak) or leak > tolerance:
        fail(f"the model is not causal: its outputs moved by {leak:.3g} when only later tokens changed")
    if not math.isfinite(drift) or drift > tolerance:
        fail(f"the model's output for the same tokens changed between calls (by {drift:.3g}): "
             "state carried from one call to the next is refused")
    if not math.isfinite(val_bpb):
        fail("nan val_bpb")
    print(f"evaluator: loaded and checked in {loaded:.2f}s, evaluated {rows.size(0)} rows in "
          f"{time.perf_counter() - started - loaded:.2f}s (leak {leak:.2g}, repeat {drift:.2g})")
    print(f"---\nval_bpb:          {val_bpb:.6f}", flush=True)
    if sealed is not None:  # after the verdict's number; the harness keeps this line out of every log
        print(f"holdout_bpb:      {evaluate_bpb(model, sealed):.6f}", flush=True)
    os._exit(0)  # nothing is left to do: skip the interpreter's teardown (half a second with torch loaded)


# ---------------------------------------------------------------------------------------------
# The run's conditions and the command line.


def conditions(profile: str | None = None, data: str | None = None, byte_level: bool | None = None) -> dict:
    """What a verdict compares under (prepares the data if needed), and the paths the training process
    reads: the tokenizer and the training split, never the validation split."""
    chosen = settings()
    data = data or chosen["data"]
    byte_level = chosen["byte_level"] if byte_level is None else byte_level
    key = chosen["data_key"] or source_key(data)
    folder = prepare(data, profile, byte_level, quiet=True, key=chosen["data_key"])
    tokenizer = folder / "train" / "tokenizer.json"
    facts = get_profile(profile)
    facts.update(profile=facts["name"], cpu_count=CORES, data=data, data_key=key, byte_level=byte_level,
                 tokenizer=hashlib.sha256(tokenizer.read_bytes()).hexdigest() if tokenizer.exists() else "bytes",
                 device_name=device_name() if facts["device"] == DEVICE else facts["device"],
                 torch=torch.__version__, train_paths=[str(folder / "train")])
    return facts


def main(argv=None):
    parser = argparse.ArgumentParser(description="Prepare data and tokenizer for nanochat; report conditions; evaluate.")
    parser.add_argument("--data", default=None, help="builtin, tinystories, fineweb-edu, or a path (default: the lab's)")
    parser.add_argument("--profile", default=None, help="auto, cpu, mps, cuda or tiny (default: the lab's)")
    parser.add_argument("--byte-level", action="store_true", help="raw bytes instead of BPE")
    parser.add_argument("--shards", type=int, default=1, help="training shards to download (hub sources)")
    parser.add_argument("--conditions", action="store_true", help="print this run's conditions as one JSON line")
    parser.add_argument("--evaluate", metavar="RUN_DIR", help="evaluate the model handed over in RUN_DIR")
    parser.add_argument("--wait", action="store_true", help="with --evaluate: start up, then wait for 'go' on stdin")
    args = parser.parse_args(argv)
    if args.evaluate:
        return evaluate_run(Path(args.evaluate), args.wait)
    byte_level = args.byte_level or settings()["byte_level"]
    if args.conditions:
        print(json.dumps(conditions(args.profile, args.data, byte_level)), flush=True)
        return None
    out = prepare(args.data or settings()["data"], args.profile, byte_level, args.shards)
    meta = json.loads((out / "train" / "meta.json").read_text())
    profile = get_profile(args.profile)
    print(f"profile {profile['name']}: budget {profile['time_budget']}s, seq_len {profile['seq_len']}, "
          f"vocab {meta['vocab_size']}, eval tokens {profile['eval_tokens']:,}")
    return out


if __name__ == "__main__":
    main()
