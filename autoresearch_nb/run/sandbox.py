"""The experiment's sandbox (bubblewrap where the kernel allows): no network, no home, writes only to its run dir."""
from __future__ import annotations

import functools
import glob
import os
import pwd
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..lab.ledger import make_folder

SWITCH = "AUTORESEARCH_SANDBOX"      # "none" runs experiments unconfined
OFF = ("none", "off", "0", "false", "no")
NAMESPACES = ("--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts")
# Hidden from the experiment besides the home directories: the host's /tmp (other programs' files)
# and /run (sockets: docker, dbus, ssh and gpg agents; a read-only mount does not stop a connect()).
PRIVATE_ROOTS = ("/home", "/tmp", "/run")
INSTALL_HINT = "install bubblewrap (`apt-get install bubblewrap`) to sandbox experiments"

# What a refused action looks like in the experiment's output (Python exception lines).
ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*: ")
READ_ONLY = re.compile(r"\[Errno 30\] Read-only file system(?:: '([^']*)')?")
NOT_FOUND = re.compile(r"\[Errno 2\] No such file or directory: '([^']*)'")
# ENETUNREACH (no route out), the resolver's EAI_AGAIN/EAI_NONAME/EAI_NODATA (no DNS server),
# ECONNREFUSED and EADDRNOTAVAIL (the private loopback has nothing listening, no host address).
NETWORK = re.compile(r"Network is unreachable|Temporary failure in name resolution|Name or service not known|"
                     r"No address associated with hostname|Connection refused|Cannot assign requested address")


@dataclass(frozen=True)
class Probe:
    """Which sandbox experiments run in: "bubblewrap", or "none" with the reason."""

    name: str
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.name == "bubblewrap"

    def __str__(self) -> str:
        return self.name if self.active else f"none ({self.reason})"


def probe() -> Probe:
    """The sandbox this machine allows, tried once per process (and again if PATH or the switch change)."""
    return _probe(os.environ.get(SWITCH, "").strip().lower(), shutil.which("bwrap"), sys.platform)


@functools.lru_cache(maxsize=None)
def _probe(switch: str, bwrap: str | None, platform: str) -> Probe:
    if switch in OFF:
        return Probe("none", f"turned off by {SWITCH}={switch}")
    if not platform.startswith("linux"):
        return Probe("none", f"bubblewrap needs Linux, this is {platform}")
    if not bwrap:
        return Probe("none", f"bubblewrap is not installed: {INSTALL_HINT}")
    trial = [bwrap, *NAMESPACES, "--die-with-parent", "--ro-bind", "/", "/", *_devices(), "--proc", "/proc",
             "--tmpfs", "/tmp", "true"]
    try:
        done = subprocess.run(trial, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        return Probe("none", f"bubblewrap could not run: {error}")
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return Probe("none", f"the kernel does not allow its namespaces here ({said})")
    return Probe("bubblewrap")


def _devices() -> list[str]:
    """A minimal /dev on a CPU; the host's /dev where there is a GPU (CUDA, ROCm, WSL), but never its /dev/shm."""
    if glob.glob("/dev/nvidia*") or os.path.exists("/dev/kfd") or os.path.exists("/dev/dxg"):
        return ["--dev-bind", "/dev", "/dev", "--tmpfs", "/dev/shm"]
    return ["--dev", "/dev"]


def homes(env: dict) -> list[Path]:
    """The person's home directories: the experiment's $HOME and the account's own."""
    found = {os.path.realpath(p) for p in (_account_home(), env.get("HOME")) if p}
    return [Path(p) for p in sorted(found) if p != "/"]


def _account_home() -> str | None:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:  # a container's arbitrary uid without an entry in /etc/passwd
        return None


def hidden_roots(env: dict) -> list[Path]:
    """Trees replaced by empty private ones inside the sandbox."""
    roots = set(homes(env)) | {Path(os.path.realpath(p)) for p in PRIVATE_ROOTS if os.path.isdir(p)}
    return sorted(p for p in roots if p != Path("/"))


def _runtime_paths(env: dict) -> set[Path]:
    """What the experiment's Python needs: its prefixes and import path (pyenv, conda and --user
    installs live in home), and the libraries it is told to load (a CUDA toolkit in home, say)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    paths.update(sys.path)
    paths.update(env.get("LD_LIBRARY_PATH", "").split(os.pathsep))
    paths.update(env.get(name, "") for name in ("CUDA_HOME", "CUDA_PATH", "ROCM_PATH"))
    return {Path(os.path.realpath(p)) for p in paths if p and os.path.isdir(p)}


def lab_reads(config: dict, env: dict, root: Path, train_paths=None) -> list[Path]:
    """What a nanochat experiment reads besides the lab and Python: the training split and tokenizer
    (`train_paths`, from `prepare.py --conditions`; never the validation split), else the whole
    prepared-data cache (prepare.CACHE_DIR, found the way prepare.py finds it), and a local data
    source, which prepare.py stats to name its cache."""
    home = env.get("HOME") or _account_home() or "/"
    cache = Path(env.get("AUTORESEARCH_CACHE") or os.path.join(home, ".cache", "autoresearch-nb"))
    reads = [Path(p) for p in train_paths] if train_paths else [cache / "prepared"]
    source = Path(str(config.get("data") or "builtin")).expanduser()
    source = source if source.is_absolute() else Path(root) / source
    if source.exists():  # a path source; "builtin" and the hub names are no files in the lab
        reads.append(source)
    return reads


def _under(path: Path, roots) -> bool:
    return any(path == root or root in path.parents for root in roots)


def wrap(argv: list[str], *, root: Path, run_dir: Path, readable=(), env: dict, writable=()) -> list[str]:
    """The command line that runs `argv` in the sandbox (unchanged where there is none).

    Inside: no network (a private loopback only), its own pid/ipc/uts namespaces, the whole file
    system read-only, empty private home directories, /tmp and /run, then read-only binds back of
    what the run needs under those (the lab, Python, `readable`), and `run_dir` and `writable`
    (the lab's compile cache) read-write.
    """
    run_dir = Path(run_dir)
    for folder in (run_dir, *map(Path, writable)):
        make_folder(folder)
    if not probe().active:
        return list(argv)
    hidden = hidden_roots(env)
    root = Path(os.path.realpath(root))
    extra = _runtime_paths(env) | {Path(os.path.realpath(Path(p).expanduser())) for p in readable}
    # Never bind back a whole hidden tree (a notebook's sys.path may hold the home directory itself).
    wanted = {root} | {p for p in extra if not any(h == p or p in h.parents for h in hidden)}
    candidates = {p for p in wanted if _under(p, hidden)}
    binds = [p for p in candidates if not _under(p, candidates - {p})]
    # Mounts are applied in order, and a later mount hides what an earlier one put below it: so the
    # shallower path first, and at equal depth the private tree before the binds back into it.
    order = [(p, 0) for p in hidden] + [(p, 1) for p in binds] + \
        [(Path(os.path.realpath(p)), 2) for p in (run_dir, *writable)]
    args = [shutil.which("bwrap") or "bwrap", *NAMESPACES, "--die-with-parent", "--new-session",
            "--ro-bind", "/", "/", *_devices(), "--proc", "/proc"]
    for path, kind in sorted(order, key=lambda item: (len(item[0].parts), item[1], str(item[0]))):
        args += (["--tmpfs", str(path)] if kind == 0 else ["--ro-bind-try", str(path), str(path)] if kind == 1
                 else ["--bind", str(path), str(path)])
    return args + ["--chdir", str(root), "--", *argv]


def exit_status(returncode: int) -> int:
    """bubblewrap reports a command killed by signal N as exit code 128 + N; give it back as -N, like Popen."""
    return 128 - returncode if 128 < returncode <= 128 + 64 else returncode


def refusal(tail: list[str], *, env: dict, cwd: Path) -> str | None:
    """Why the sandbox stopped the run, read from the exception lines it printed; None if it did not."""
    hidden = hidden_roots(env)
    for line in reversed([l.strip() for l in tail if ERROR_LINE.match(l)]):
        if line.startswith("bwrap: "):
            return f"the sandbox could not start the experiment ({line}); {SWITCH}=none runs it unconfined"
        match = READ_ONLY.search(line)
        if match:
            where = f": {match.group(1)}" if match.group(1) else ""
            return (f"the sandbox refused a write outside the run directory (read-only file system{where}); "
                    f"experiments write only under $AUTORESEARCH_RUN_DIR")
        if NETWORK.search(line):
            return f"the sandbox refused network access (no network during experiments): {line[:200]}"
        match = NOT_FOUND.search(line)
        if match:
            path = Path(os.path.realpath(os.path.join(cwd, match.group(1))))
            # Only a file that is there outside and hidden inside: a plain missing file is no refusal.
            if os.path.lexists(path) and _under(path, hidden) and not _under(path, [Path(os.path.realpath(cwd))]):
                if _under(path, homes(env)):
                    return f"the sandbox hides the home directory: a file under it is not visible ({path})"
                return f"the sandbox hides this file: the experiment has a private /tmp and /run ({path})"
    return None
