"""The experiment's sandbox, with real bubblewrap and real subprocesses: a train.py that reaches for the
network, writes outside its run directory or reads the home directory crashes with a clear reason and
leaves the lab unharmed; an honest run still trains; without a sandbox runs still work and say so.

The person's home here is a folder under /var/tmp (not /tmp, which the sandbox hides anyway), with a
secret in it and the lab inside it, as with ~/autoresearch-lab.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from autoresearch_nb.run import sandbox
from autoresearch_nb.lab.lab import Lab
from autoresearch_nb.lab.ledger import read_results_tsv
from autoresearch_nb.run.runner import Runner, clean_environment
from conftest import cli
from test_loop import ScriptedAgent, assert_consistent, run_loop, scored_lab
from test_resume import TRAIN as RESUMABLE_TRAIN
from test_resume import killed, run as run_cli
from test_runner import SUMMARY, run_guarded, wait_gone

SECRET = "-----BEGIN OPENSSH PRIVATE KEY----- not-a-real-key"


def installable() -> bool:
    """Where scripts/setup.sh installs bubblewrap itself: root on a machine with apt-get."""
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


@pytest.fixture
def bubblewrap():
    """The sandbox must be on where it can be: missing bubblewrap on a machine where the set-up
    installs it (CI) fails the test; a kernel that refuses its namespaces is a skip, with why."""
    found = sandbox.probe()
    if found.active:
        return found
    if not sys.platform.startswith("linux") or "turned off" in found.reason:
        pytest.skip(f"sandbox: {found}")
    if shutil.which("bwrap") is None and installable():
        pytest.fail(f"sandbox: {found}; scripts/setup.sh installs it on this machine: run it")
    pytest.skip(f"sandbox: {found}")


@pytest.fixture
def home():
    """A person's home directory with a key in it, outside /tmp."""
    root = Path(tempfile.mkdtemp(prefix="home-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    (root / ".ssh").mkdir()
    (root / ".ssh" / "id_ed25519").write_text(SECRET)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def confined(home: Path, body: str, timeout: float = 60.0, env: dict | None = None):
    """Run `body` as an experiment in the sandbox from a lab folder under `home`: (result, run dir, log)."""
    lab = home / "lab"
    lab.mkdir(exist_ok=True)
    (lab / "experiment.py").write_text(textwrap.dedent(body))
    run_dir = lab / ".autoresearch" / "runs" / "0001"
    env = clean_environment({"HOME": home, "AUTORESEARCH_RUN_DIR": run_dir, **(env or {})})
    argv = sandbox.wrap(["{python}", "experiment.py"], root=lab, run_dir=run_dir, env=env)
    log = lab / ".autoresearch" / "logs" / "0001.log"
    result = Runner(argv, lab, env, log, 5.0, timeout, sandbox=sandbox.probe()).run()
    return result, run_dir, log.read_text()


def unconfined(home: Path, body: str, timeout: float = 60.0):
    """The control: the same experiment, from the same lab folder, with no sandbox around it."""
    lab = home / "lab"
    lab.mkdir(exist_ok=True)
    (lab / "experiment.py").write_text(textwrap.dedent(body))
    env = clean_environment({"HOME": home})
    return Runner(["{python}", "experiment.py"], lab, env, lab / "unconfined.log", 5.0, timeout).run()


def reached_loopback(home: Path, run) -> list:
    """What a server on the host's loopback received while `run(home, body)` tried to send to it."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.settimeout(0.2)
    received = []

    def accept():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not received:
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            connection.settimeout(5)
            received.append(connection.recv(100))
            connection.close()

    listener = threading.Thread(target=accept, daemon=True)
    listener.start()
    try:
        result = run(home, f"""\
            import socket
            socket.create_connection(("127.0.0.1", {port}), timeout=5).sendall(b"the lab's secrets")
        """)
    finally:
        received.append(None)  # ends the listener
        listener.join()
        server.close()
    return received[:-1], result


def test_a_socket_to_a_server_on_the_hosts_loopback_is_refused(bubblewrap, home):
    # The control first: unconfined, the same code reaches the server, so a refusal below is the sandbox's.
    received, result = reached_loopback(home, unconfined)
    assert received == [b"the lab's secrets"] and result.returncode == 0, (received, result.reason)
    received, (result, _, log) = reached_loopback(home, confined)
    assert received == [], "the experiment reached a server outside its sandbox"
    assert (result.kind, result.ok) == ("sandbox", False), (result.kind, result.reason)
    assert result.reason.startswith("the sandbox refused network access (no network during experiments)")
    assert "Connection refused" in result.reason and "sandbox: bubblewrap" in log


INTERFACES = ('import socket\n'
              'print("interfaces:", sorted(name for _, name in socket.if_nameindex()), flush=True)\n')


@pytest.mark.parametrize("reach", ['socket.create_connection(("1.1.1.1", 53), timeout=5)',
                                   'socket.getaddrinfo("pypi.org", 443)'])
def test_the_internet_and_name_lookups_are_refused(bubblewrap, home, reach):
    # On a host without a route out these fail anyway: what proves the sandbox is that it has a network
    # namespace of its own, with a loopback and nothing else, where the host has more.
    outside = unconfined(home, INTERFACES)
    assert outside.returncode == 0, outside.reason
    host = outside.tail.split("interfaces:", 1)[1].strip()
    if host == "['lo']":
        pytest.skip("this host has no network interface but its loopback: nothing to take away")
    result, _, log = confined(home, INTERFACES + f"{reach}\n")
    assert "interfaces: ['lo']" in log, log
    assert result.kind == "sandbox", (result.kind, result.reason)
    assert result.reason.startswith("the sandbox refused network access")


def test_a_write_into_the_lab_is_refused(bubblewrap, home):
    planted = home / "lab" / "nanochat" / "planted.py"
    planted.parent.mkdir(parents=True)
    result, _, _ = confined(home, f"open({str(planted)!r}, 'w').write('print(42)')\n")
    assert result.kind == "sandbox", (result.kind, result.reason)
    assert result.reason == ("the sandbox refused a write outside the run directory (read-only file system: "
                             f"{planted}); experiments write only under $AUTORESEARCH_RUN_DIR")
    assert not planted.exists()


def test_a_file_under_the_home_directory_is_not_visible(bubblewrap, home):
    key = home / ".ssh" / "id_ed25519"
    result, _, log = confined(home, f"print(open({str(key)!r}).read())\n")
    assert result.kind == "sandbox", (result.kind, result.reason)
    assert result.reason == f"the sandbox hides the home directory: a file under it is not visible ({key})"
    assert SECRET not in log


def test_the_run_directory_keeps_its_files_and_tmp_and_home_stay_private(bubblewrap, home):
    name = f"left-by-the-experiment-{uuid.uuid4().hex}"
    result, run_dir, _ = confined(home, textwrap.dedent(f"""\
        import os
        for folder in ("/tmp", os.environ["HOME"], os.environ["AUTORESEARCH_RUN_DIR"]):
            with open(os.path.join(folder, {name!r}), "w") as handle:
                handle.write("written inside the sandbox")
        print("home holds", sorted(os.listdir(os.environ["HOME"])))
    """) + SUMMARY.format(seconds=1.0))
    assert result.ok, (result.kind, result.reason, result.tail)
    assert (run_dir / name).read_text() == "written inside the sandbox"
    assert not (Path("/tmp") / name).exists() and not (home / name).exists()
    # A home of its own: what the experiment wrote, the lab bound back into it, and no .ssh.
    assert f"home holds ['lab', '{name}']" in result.tail, result.tail


def test_libraries_the_run_is_told_to_load_from_home_stay_visible(bubblewrap, home):
    library = home / "cuda" / "lib64"
    library.mkdir(parents=True)
    (library / "libcudart.so.12").write_text("a library")
    result, _, _ = confined(home, textwrap.dedent(f"""\
        print(open({str(library / "libcudart.so.12")!r}).read())
    """) + SUMMARY.format(seconds=1.0), env={"LD_LIBRARY_PATH": str(library)})
    assert result.ok, (result.kind, result.reason)
    assert "a library" in result.tail


def test_a_missing_file_is_an_ordinary_crash_not_a_refusal(bubblewrap, home):
    result, _, _ = confined(home, "open('no-such-file.txt').read()\n")
    assert result.kind == "exception"
    assert result.reason == "FileNotFoundError: [Errno 2] No such file or directory: 'no-such-file.txt'"


def test_a_signal_still_reads_as_a_signal(bubblewrap, home):
    result, _, _ = confined(home, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    assert (result.kind, result.reason, result.returncode) == ("killed", "killed by signal SIGKILL", -9)


def test_the_timeout_ends_every_process_in_the_sandbox(bubblewrap, home):
    beat = home / "lab" / ".autoresearch" / "runs" / "0001" / "beat"
    result, _, _ = confined(home, f"""\
        import os, subprocess, sys, time
        # A worker that leaves the process group: outside the sandbox killpg would miss it.
        subprocess.Popen([sys.executable, "-c", "import os, time\\n"
                          "while True:\\n"
                          "    open({str(beat)!r}, 'w').write(str(time.time()))\\n"
                          "    time.sleep(0.1)"], start_new_session=True)
        while not os.path.exists({str(beat)!r}):  # the worker beats before the timeout can come
            time.sleep(0.05)
        time.sleep(300)
    """, timeout=10.0)
    assert result.kind == "timeout"
    time.sleep(0.5)
    last = beat.read_text()
    time.sleep(2.0)  # a survivor writes every 0.1 s: two seconds give it twenty chances, even on a busy machine
    assert beat.read_text() == last, "a process in the sandbox outlived the timeout"


def inside_processes(token: str) -> list[int]:
    """Processes whose command line holds `token`, seen from outside the sandbox."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def test_a_run_stopped_as_it_starts_leaves_nothing_in_the_sandbox(bubblewrap, home):
    # Stopped within milliseconds of bubblewrap's start, the sandbox's inside may not yet have asked to
    # die with its outer process: killing that one alone left the experiment running. Busy neighbours
    # slow bubblewrap's start-up, which widens that window (as on a loaded CI machine).
    lab = home / "lab"
    lab.mkdir(exist_ok=True)
    (lab / "experiment.py").write_text("import time\nwhile True:\n    time.sleep(1)\n")
    token = f"stopped-at-start-{uuid.uuid4().hex}"
    run_dir = lab / ".autoresearch" / "runs" / "0001"
    env = clean_environment({"HOME": home, "AUTORESEARCH_RUN_DIR": run_dir})
    argv = sandbox.wrap(["{python}", "experiment.py", token], root=lab, run_dir=run_dir, env=env)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        for attempt in range(60):
            delay = (attempt % 20) * 0.0003   # 0 to 6 ms after the start: through bubblewrap's own set-up
            holder = {}
            runner = Runner(argv, lab, env, lab / "x.log", 5.0, 120.0, sandbox=sandbox.probe(),
                            on_start=lambda pid: (time.sleep(delay), holder["runner"].stop()))
            holder["runner"] = runner
            result = run_guarded(runner)
            assert result.kind == "interrupted", (attempt, result.kind, result.reason)
            assert inside_processes(token) == [], f"the experiment outlived a stop {delay * 1000:.2f} ms after its start"
    finally:
        for process in busy:
            process.kill()
            process.wait()
        for pid in inside_processes(token):
            os.kill(pid, 9)


HOSTILE = {
    "socket": ("import socket\nsocket.create_connection(('1.1.1.1', 443), timeout=5)\n",
               "the sandbox refused network access"),
    "a locked file": ("open('nanochat/prepare.py', 'a').write('\\nTIME_BUDGET = 10**6\\n')\n",
                      "the sandbox refused a write outside the run directory "
                      "(read-only file system: nanochat/prepare.py)"),
    "the key": ("import os\nprint(open(os.path.expanduser('~/.ssh/id_ed25519')).read())\n",
                "the sandbox hides the home directory: a file under it is not visible"),
}


def test_a_hostile_train_py_crashes_with_a_clear_reason_and_the_lab_is_unharmed(bubblewrap, home, monkeypatch):
    monkeypatch.setenv("HOME", str(home))
    lab = scored_lab(home / "autoresearch-lab")
    prepare = (lab.root / "nanochat" / "prepare.py").read_bytes()
    proposals = [({"nanochat/train.py": f"SCORE = 0.5\n{code}"}, name) for name, (code, _) in HOSTILE.items()]
    # The audit would reject these outright; the sandbox is the wall behind it, so it is off here.
    run_loop(lab, ScriptedAgent(proposals), audit=False)
    rows = assert_consistent(lab)
    crashes = [r for r in rows if r["status"] == "crash"]
    assert [(r["description"], r["kind"]) for r in crashes] == [(name, "sandbox") for name in HOSTILE]
    for row, (_, expected) in zip(crashes, HOSTILE.values()):
        assert row["reason"].startswith(expected), row["reason"]
    assert {r["sandbox"] for r in rows if r["status"] != "rejected"} == {"bubblewrap"}
    assert [r["status"] for r in read_results_tsv(lab.results_path)] == ["keep", "crash", "crash", "crash"]
    assert (lab.root / "nanochat" / "prepare.py").read_bytes() == prepare and lab.locked_changes() == []
    logs = "".join(p.read_text() for p in (lab.state_dir / "logs").glob("*.log"))
    assert SECRET not in logs


@pytest.mark.slow
def test_an_honest_run_trains_in_the_sandbox(bubblewrap, home):
    # The data cache is the default one under the home directory: the sandbox must let it be read.
    env = {"HOME": str(home), "AUTORESEARCH_CACHE": ""}
    lab = home / "autoresearch-lab"
    assert cli("init", str(lab), "--profile", "tiny", env=env).returncode == 0
    done = cli("run", "--lab", str(lab), "--max-experiments", "1", "--budget", "1", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sandbox: bubblewrap" in done.stdout
    row = next(r for r in Lab.open(lab).rows() if r["status"] != "disturbed")  # slowed from outside: run again
    assert (row["status"], row["sandbox"]) == ("keep", "bubblewrap") and row["val_bpb"] > 0, row
    # the cpu clock is read from outside the sandbox's pid namespace: the training time is really counted
    # (at most the budget's limit, or the row would say "budget"; CPU time, so load does not move it)
    assert row["training_seconds"] >= 0.5, row["training_seconds"]
    assert (home / ".cache" / "autoresearch-nb" / "prepared").is_dir()
    log = (lab / row["log"]).read_text()
    assert log.startswith(f"$ {shutil.which('bwrap')} ") and "\nsandbox: bubblewrap\n" in log
    assert json.loads((lab / ".autoresearch" / "run.json").read_text())["sandbox"] == "bubblewrap"
    assert subprocess.run(["git", "-C", str(lab), "status", "--porcelain"], capture_output=True,
                          text=True).stdout == ""


@pytest.mark.slow
def test_a_killed_loop_takes_its_sandboxed_experiment_with_it(bubblewrap, tmp_path):
    lab = scored_lab(tmp_path / "lab", baseline=RESUMABLE_TRAIN)
    start = ("--policy", "greedy", "--budget", "1", "--max-experiments", "2", "--tag", "k")
    killed(run_cli(lab, *start, crash="during_experiment:1", sleep=120))
    tracks = json.loads(lab.inflight_path.read_text())["tracks"]
    pid = next(t["job"]["pid"] for t in tracks if t.get("job"))
    assert wait_gone(pid, patience=5.0), "the experiment outlived the loop that started it"
    done = run_cli(lab, "--resume", sleep=0)
    assert done.returncode == 0, done.stdout + done.stderr
    statuses = [r["status"] for r in assert_consistent(lab)]
    assert statuses[0] == "keep" and statuses[1] in ("keep", "discard")  # re-queued, and run to its end


@pytest.mark.slow
@pytest.mark.parametrize("why", ["turned off", "not installed"])
def test_without_a_sandbox_runs_still_work_and_say_so(tmp_path, why):
    lab = scored_lab(tmp_path / "lab")
    if why == "turned off":
        env, said = {"AUTORESEARCH_SANDBOX": "none"}, "sandbox: none (turned off by AUTORESEARCH_SANDBOX=none)"
    else:  # a PATH with git but no bwrap, like a machine without bubblewrap
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "git").symlink_to(shutil.which("git"))
        env, said = {"PATH": str(bin_dir)}, "sandbox: none (bubblewrap is not installed: install bubblewrap"
    done = cli("run", "--lab", str(lab.root), "--policy", "greedy", "--budget", "1", "--max-experiments", "1",
               env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(said) == 1, done.stdout
    row = assert_consistent(lab)[0]
    assert (row["status"], row["sandbox"]) == ("keep", "none")
    assert json.loads(lab.run_info_path.read_text())["sandbox"].startswith("none (")
    assert not (lab.root / row["log"]).read_text().startswith("$ " + (shutil.which("bwrap") or "bwrap"))


def test_wrap_leaves_the_command_alone_without_a_sandbox(tmp_path, monkeypatch):
    monkeypatch.setenv(sandbox.SWITCH, "none")
    run_dir = tmp_path / "runs" / "0001"
    assert sandbox.wrap(["{python}", "train.py"], root=tmp_path, run_dir=run_dir, env={}) == ["{python}", "train.py"]
    assert run_dir.is_dir()  # the run directory exists either way: the experiment may write there
