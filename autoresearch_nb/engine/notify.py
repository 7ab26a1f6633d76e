"""`--notify URL`: a short message when a change is kept, when the night ends and when it stops on failures.

One JSON body for every service: {"text", "content", "message", "title"} - Slack's incoming webhooks read
"text", Discord's webhooks "content", ntfy (2.10 and later) fills a topic URL's templates from it
(`https://ntfy.sh/TOPIC?tpl=1&t={{.title}}&m={{.message}}`). Messages are posted from a thread of their
own, so a slow or dead endpoint never holds the loop; a failure is written to .autoresearch/notify.log
and otherwise ignored. The URL is a secret (a Slack webhook URL is a key): it is never printed, logged or
kept in the lab, so a resumed night needs it again.
"""
from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import LabError
from ..judge import facts
from ..lab.ledger import now_iso
from ..lab.words import count

TIMEOUT_S = 10.0
FAILURE_WORDS = ("in a row", "failed", "error")


def check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise LabError("--notify takes a webhook URL (https://hooks.slack.com/..., https://discord.com/api/webhooks/..., "
                       "or an ntfy topic: https://ntfy.sh/TOPIC?tpl=1&t={{.title}}&m={{.message}})")


def body(title: str, text: str) -> bytes:
    return json.dumps({"title": title, "text": f"{title}: {text}", "content": f"{title}: {text}",
                       "message": text}).encode("utf-8")


class Notifier:
    """Turns the session's events into messages and posts them in the background."""

    def __init__(self, url: str, tag: str, rows, log: Path, metric: str = "val_bpb", direction: str = "lower"):
        check_url(url)
        self._url, self.title, self._rows, self._log = url, f"autoresearch-nb {tag}", rows, log
        self.metric, self.direction = metric, direction
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._post_all, name="autoresearch-notify", daemon=True)
        self._thread.start()

    def handle(self, event) -> None:
        if event.kind == "experiment_finished":
            row = event.data.get("row") or {}
            if row.get("status") == "keep" and row.get("role") == "experiment":
                self.send(self._kept(row))
        elif event.kind == "run_finished":
            self.send(self._ended(str(event.data.get("reason") or "")))

    def send(self, text: str) -> None:
        self._queue.put(text)

    def close(self, wait: float = TIMEOUT_S) -> None:
        """Post what is queued (the night's last message among it), for at most `wait` seconds."""
        self._queue.put(None)
        self._thread.join(timeout=wait)

    def _kept(self, row: dict) -> str:
        found = facts.summary(self._rows(), None, self.metric, self.direction)
        value = row.get(self.metric)
        said = f"kept #{row.get('index')}: {row.get('description', '')}"
        if isinstance(value, (int, float)):
            said += f" ({self.metric} {value:.4f})"
        if found.get("gain") is not None:
            spread = f" ± {found['gain_half_width']:.4f}" if found.get("gain_half_width") is not None else ""
            said += f"; the night's gain so far {found['gain']:+.4f}{spread}"
        return said

    def _ended(self, reason: str) -> str:
        rows = self._rows()
        found = facts.summary(rows, None, self.metric, self.direction)
        kept = found["changes"]
        head = ("stopped on failures" if any(word in reason.lower() for word in FAILURE_WORDS)
                else "the night ended")
        said = f"{head}: {reason or 'done'}. {count(found['done'], 'run')}, {count(kept, 'change kept')}"
        if found.get("best") is not None and found.get("gain") is not None:
            said += f"; best {self.metric} {found['best'].mean:.4f}, gain {found['gain']:+.4f}"
        return said

    def _post_all(self) -> None:
        while True:
            text = self._queue.get()
            if text is None:
                return
            self._post(text)

    def _post(self, text: str) -> None:
        request = urllib.request.Request(self._url, data=body(self.title, text), method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "User-Agent": "autoresearch-nb"})
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
                answer.read(4096)
        except urllib.error.HTTPError as error:
            self._note(f"HTTP {error.code} after {time.monotonic() - started:.1f}s", text)
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            self._note(f"{type(error).__name__}: {reason}", text)

    def _note(self, what: str, text: str) -> None:
        """A failed post, without the URL (it is a secret)."""
        try:
            self._log.parent.mkdir(parents=True, exist_ok=True)
            with open(self._log, "a", encoding="utf-8") as handle:
                handle.write(f"[{now_iso()}] not delivered ({what}): {text[:200]}\n")
        except OSError:
            pass
