"""Shared pieces for the notebook tests: notebooks from cell sources, kernel env, JupyterLab on loopback."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
# Tiny offline runs: the heuristic agent, a 2 s budget, greedy keep (no noise re-runs).
SHORT_RUN = "--agent heuristic --budget 2 --policy greedy"


def notebook(*sources: str) -> nbformat.NotebookNode:
    """A notebook whose cells are these code sources."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    return nb


def kernel_env() -> dict:
    """The kernel's environment: this checkout importable even before `pip install -e`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def text_of(cell) -> str:
    """All stream and text/plain output of an executed cell."""
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif output.get("output_type") == "error":
            parts.append(f"{output.get('ename')}: {output.get('evalue')}")
        else:
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JupyterLabServer:
    """`jupyter lab` on 127.0.0.1 with a token, serving `root`; stopped with its process group."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "jupyterlab.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> "JupyterLabServer":
        command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
                   f"--port={self.port}", f"--IdentityProvider.token={self.token}",
                   f"--ServerApp.root_dir={self.root}", "--ServerApp.open_browser=False",
                   "--allow-root", "--ServerApp.terminals_enabled=False",
                   # Nothing may reach the internet: no news, no update checks, no PyPI lookups.
                   "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                   "--LabApp.extension_manager=readonly"]
        env = kernel_env()
        env["JUPYTER_CONFIG_DIR"] = str(self.root / ".jupyter-config")  # no user settings leak in
        env["JUPYTER_RUNTIME_DIR"] = str(self.root / ".jupyter-runtime")
        self.process = subprocess.Popen(command, cwd=self.root, env=env,
                                        stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=5):
                    return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"jupyter lab did not answer in {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # SIGINT twice is jupyter's own clean shutdown: it shuts its kernels down first.
        for _ in range(2):
            os.killpg(self.process.pid, signal.SIGINT)
            time.sleep(0.5)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture
def jupyter_lab(tmp_path):
    server = JupyterLabServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()
