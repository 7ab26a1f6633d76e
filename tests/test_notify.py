"""--notify: a message when a change is kept and when the night ends or stops on failures, posted to a
loopback webhook as one JSON body; a dead or slow endpoint never holds the loop and never loses a row."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from autoresearch_nb.agents.base import ProposalError
from autoresearch_nb.engine.session import RunOptions, Session
from conftest import cli, lab_check
from test_loop import ScriptedAgent, score, scored_lab

SECRET = "T000/B000/canary-webhook-secret"


class Webhook:
    """A loopback endpoint that records what it is sent; `status` answers, `hold` blocks the first post."""

    def __init__(self, status: int = 200, hold: threading.Event | None = None):
        self.posts: list[dict] = []
        self.arrived = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.posts.append({"path": self.path, "json": json.loads(data),
                                    "type": self.headers.get("Content-Type")})
                outer.arrived.set()
                if hold is not None:
                    hold.wait(30)
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/{SECRET}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def night(lab, agent, url, **options):
    session = Session(RunOptions(lab=str(lab.root), budget=1.0, depth=0, tag="test", resume=True, notify=url,
                                 **options), agent=agent)
    session.start()
    session.wait()
    assert session.error is None, session.error
    return lab.rows()


def test_a_kept_change_and_the_end_of_the_night_are_posted(tmp_path):
    lab = scored_lab(tmp_path / "lab")
    hook = Webhook()
    try:
        night(lab, ScriptedAgent([(score(0.9), "a better score"), (score(1.2), "a worse one")]), hook.url,
              policy="greedy", max_experiments=3)
    finally:
        hook.close()
    texts = [post["json"]["text"] for post in hook.posts]
    assert len(texts) == 2 and "kept #" in texts[0] and "a better score" in texts[0], texts
    assert "the night ended" in texts[1] and "1 change kept" in texts[1] and "3 runs" in texts[1], texts
    for post in hook.posts:  # one body every service reads: Slack "text", Discord "content", ntfy's templates
        assert set(post["json"]) == {"title", "text", "content", "message"} and post["type"] == "application/json"
        assert post["json"]["content"] == post["json"]["text"] and post["json"]["message"] in post["json"]["text"]
    # the URL is a secret: nowhere in the lab
    assert not [p for p in lab.root.rglob("*") if p.is_file() and ".git" not in p.parts
                and SECRET in p.read_text(errors="replace")]
    lab_check(lab.root)


def test_a_night_that_stops_on_failures_says_so(tmp_path):
    lab = scored_lab(tmp_path / "lab")
    hook = Webhook()
    failing = [ProposalError("the model said nothing useful") for _ in range(20)]
    try:
        night(lab, ScriptedAgent(failing), hook.url, policy="greedy", max_experiments=10)
    finally:
        hook.close()
    assert hook.posts[-1]["json"]["text"].split(": ", 1)[1].startswith("stopped on failures"), hook.posts
    assert "in a row" in hook.posts[-1]["json"]["text"]


def test_a_dead_endpoint_is_logged_without_its_url_and_a_slow_one_never_holds_the_loop(tmp_path):
    lab = scored_lab(tmp_path / "lab")
    dead = Webhook(status=500)
    try:
        rows = night(lab, ScriptedAgent([(score(0.9), "better")]), dead.url, policy="greedy", max_experiments=2)
    finally:
        dead.close()
    assert [r["status"] for r in rows if r["role"] == "experiment"] == ["keep"]
    log = (lab.state_dir / "notify.log").read_text()
    assert "HTTP 500" in log and "kept #" in log and SECRET not in log and "127.0.0.1" not in log

    lab2 = scored_lab(tmp_path / "lab2")
    release = threading.Event()
    slow = Webhook(hold=release)
    agent = ScriptedAgent([(score(0.9), "better"), (score(0.95), "no better"), (score(0.97), "worse still")])
    session = Session(RunOptions(lab=str(lab2.root), budget=1.0, depth=0, tag="test", resume=True, notify=slow.url,
                                 policy="greedy", max_experiments=4), agent=agent)
    try:
        session.start()
        assert slow.arrived.wait(120)           # the keep's message is in flight, and held there
        kept_at = len(lab2.rows())
        while session.alive and len(lab2.rows()) < kept_at + 2:
            session.wait(0.2)
        # the loop went on with its experiments while the webhook held the message
        assert len(lab2.rows()) >= kept_at + 2 and len(slow.posts) == 1, (kept_at, lab2.rows())
    finally:
        release.set()
        session.wait()
        slow.close()
    assert session.error is None
    lab_check(lab2.root)


@pytest.mark.parametrize("url", ["hooks.slack.com/services/x", "ftp://example.com/hook", "not a url"])
def test_a_url_that_is_not_a_webhook_is_one_line_with_the_fix(tmp_path, url):
    lab = scored_lab(tmp_path / "lab")
    done = cli("run", "--lab", str(lab.root), "--resume", "--notify", url)
    assert done.returncode == 2 and "--notify takes a webhook URL" in done.stderr and "Traceback" not in done.stderr


def test_no_run_starts_that_could_not_end_before_until(tmp_path):
    from autoresearch_nb.engine.session import deadline_of

    lab = scored_lab(tmp_path / "lab")
    # a deadline a minute away: the baseline's runs fit; once they show what a run takes (score.py: about a
    # second), runs go on until the next could pass it. Here: a deadline already too close for any run.
    options = RunOptions(lab=str(lab.root), budget=1.0, depth=0, tag="test", resume=True, policy="greedy",
                         max_experiments=50, hours=1e-4)  # 0.36 s
    session = Session(options, agent=ScriptedAgent([(score(0.9), "better")] * 5))
    session.start()
    session.wait()
    assert session.error is None and "could not end by" in session.snapshot()["message"]
    assert not [r for r in lab.rows() if r.get("role") == "experiment"]  # not even the first experiment began
    lab_check(lab.root)
    now = 1_000_000.0
    assert deadline_of(RunOptions(hours=2.0), now) == now + 7200.0
    later = deadline_of(RunOptions(until="07:30"), now)
    assert now < later <= now + 86400.0


@pytest.mark.parametrize("args, words", [(["--hours", "0"], "--hours must be a positive"),
                                         (["--until", "25:00"], "--until takes a local time"),
                                         (["--hours", "1", "--until", "07:00"], "not both")])
def test_bad_deadlines_are_one_line(tmp_path, args, words):
    lab = scored_lab(tmp_path / "lab")
    done = cli("run", "--lab", str(lab.root), "--resume", *args)
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr


def test_the_results_notebook_is_kept_beside_the_lab_after_every_kept_change(tmp_path):
    from autoresearch_nb.front.keep_report import KeepReport
    from autoresearch_nb.report.record import notebook_record

    lab = scored_lab(tmp_path / "lab")
    session = Session(RunOptions(lab=str(lab.root), budget=1.0, depth=0, tag="test", resume=True, policy="greedy",
                                 max_experiments=4), agent=ScriptedAgent([(score(0.9), "better"), (score(0.8), "better still")]))
    report = KeepReport(lab.root)
    session.subscribe(report.handle)
    session.start()
    session.wait()
    report.close()
    assert report.error == "" and report.written >= 1
    written = lab.root.parent / "lab-results.ipynb"
    # the notebook carries the record of the night up to the last keep (a reset after it loses nothing)
    record = notebook_record(written)
    kept = [r["description"] for r in record["rows"] if r["status"] == "keep" and r["role"] == "experiment"]
    assert kept == ["better", "better still"], kept
    assert not list(lab.root.parent.glob(".lab-results.ipynb.*.tmp"))
