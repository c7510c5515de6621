"""How far a task's evaluation is, from the harness's own counters: requests answered / total, rate, ETA.

- answered: NeMo Evaluator's progress-tracking interceptor counts every non-cached response that came back from
  the deployment and writes the count to `<harness output>/progress` (enabled by `evaluate.harness.run_harness`; it also
  posts the count to a URL, which `Receiver` takes on the evaluation step's side);
- total: lm-eval says, once per request type, how many requests it still has to send after its cache
  ("Cached requests: C, Requests remaining: R", with the time it said it), in the harness log.
The evaluation step prints it every 30 s; `nemotron status` reads the same files.
"""

from __future__ import annotations

import datetime as dt
import http.server
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROGRESS_FILE = "progress"
log = logging.getLogger("nemotron_eval")
_REMAINING = re.compile(rb"^(\d{4}-\d\d-\d\d:\d\d:\d\d:\d\d) .*Cached requests: (\d+), Requests remaining: (\d+)", re.M)


@dataclass(frozen=True)
class Progress:
    answered: int
    total: int | None  # None until lm-eval has said how many requests it sends
    started: float | None  # epoch seconds lm-eval started sending
    updated: float | None  # epoch seconds of the last answer counted

    @property
    def rate(self) -> float | None:
        """Answers per second since lm-eval started sending."""
        if self.started is None or self.updated is None or self.answered == 0 or self.updated <= self.started:
            return None
        return self.answered / (self.updated - self.started)

    @property
    def eta_s(self) -> float | None:
        if self.total is None or not self.rate:
            return None
        return max(self.total - self.answered, 0) / self.rate

    def line(self) -> str:
        """`120/400 requests (30%), 3.1/s, ETA 1m30s` (what is known so far)."""
        if self.total is None:
            return "starting the harness" if not self.answered else f"{self.answered} requests answered"
        pct = f" ({100 * self.answered // self.total}%)" if self.total else ""
        parts = [f"{self.answered}/{self.total} requests{pct}"]
        if self.rate:
            parts.append(f"{self.rate:.1f}/s")
        if self.eta_s is not None and self.answered < self.total:
            parts.append(f"ETA {duration(self.eta_s)}")
        return ", ".join(parts)


def duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def answered(harness_dir: Path) -> int:
    """The interceptor's count of answers in `harness_dir` (0 before its first)."""
    return _counter(Path(harness_dir))[0]


def _counter(harness_dir: Path) -> tuple[int, float | None]:
    counter = harness_dir / PROGRESS_FILE
    try:
        return int(counter.read_text().strip() or 0), counter.stat().st_mtime
    except (OSError, ValueError):
        return 0, None


def read(harness_dir: Path, log: Path | None = None) -> Progress:
    """The progress of the harness run in `harness_dir` (its log: `harness_dir/harness.log` by default)."""
    harness_dir = Path(harness_dir)
    answered, updated = _counter(harness_dir)
    total, started = None, None
    try:
        text = (log or harness_dir / "harness.log").read_bytes()
    except OSError:
        text = b""
    for when, _cached, remaining in _REMAINING.findall(text):
        total = (total or 0) + int(remaining)
        if started is None:
            started = dt.datetime.strptime(when.decode(), "%Y-%m-%d:%H:%M:%S").timestamp()
    return Progress(answered=answered, total=total, started=started, updated=updated)


class Receiver:
    """A local endpoint for the interceptor's progress posts (it posts every count to a URL; without a listener
    each post would fail and be logged). Runs on a free port of 127.0.0.1 in a thread while the harness runs;
    `on_answer` is called after each post that counts at least one answer (after the reply: a slow or failing
    callback never holds the harness's post; its failure is logged)."""

    def __init__(self, on_answer: Callable[[], None] = lambda: None) -> None:
        self.count = 0
        owner = threading.get_ident()  # a rule's log (pipeline.workflow.logged) takes what its handlers say
        self.last = time.time()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 10  # a client that stalls mid-post cannot hold the receiver's close (it waits for its posts)

            def _take(self) -> None:
                import json

                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                    count = int(body.get("samples_processed", 0))
                except (ValueError, TypeError, AttributeError):
                    count = 0
                self.send_response(204)
                self.end_headers()
                if count <= 0:
                    return
                receiver.count = max(receiver.count, count)
                receiver.last = time.time()
                try:
                    on_answer()
                except Exception:  # noqa: BLE001 - the harness goes on; the callback's failure is in the log
                    log.exception("progress receiver: the callback after an answer failed", extra={"for_thread": owner})

            do_POST = do_PATCH = do_PUT = _take

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = False  # leaving waits for the posts in flight (and their callbacks)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/progress"
        self._thread = threading.Thread(target=self._server.serve_forever, name="progress-receiver", daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
