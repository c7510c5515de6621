"""Task slots: at most N harnesses at once against a deployment, a dead holder frees its slot, waiting ends
when the deployment is gone."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nemotron_eval.core.errors import UserError
from nemotron_eval.pipeline.slots import task_slot


def test_at_most_n_hold_a_slot(tmp_path: Path) -> None:
    holding, most, lock = [0], [0], threading.Lock()
    waited: list[int] = []

    def task(i: int) -> None:
        with task_slot(tmp_path, 2, gone=lambda: None, poll_s=0.01, waiting=lambda: waited.append(i)) as slot:
            assert slot in (0, 1)
            with lock:
                holding[0] += 1
                most[0] = max(most[0], holding[0])
            time.sleep(0.1)
            with lock:
                holding[0] -= 1

    threads = [threading.Thread(target=task, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 2 and len(waited) >= 3


def test_a_killed_holder_frees_its_slot(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from nemotron_eval.pipeline.slots import task_slot\n"
        f"with task_slot(Path({str(tmp_path)!r}), 1, gone=lambda: None):\n"
        "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        threading.Timer(0.3, holder.kill).start()
        started = time.monotonic()
        with task_slot(tmp_path, 1, gone=lambda: None, poll_s=0.05) as slot:
            assert slot == 0 and 0.2 < time.monotonic() - started < 10
    finally:
        holder.kill()
        holder.wait()


def test_waiting_ends_when_the_deployment_is_gone(tmp_path: Path) -> None:
    with task_slot(tmp_path, 1, gone=lambda: None):
        with pytest.raises(UserError, match="waiting for a task slot: the deployment failed"):
            with task_slot(tmp_path, 1, gone=lambda: "the deployment failed", poll_s=0.01):
                pass


def test_no_limit_locks_nothing(tmp_path: Path) -> None:
    with task_slot(tmp_path / "slots", None, gone=lambda: None) as slot:
        assert slot is None
    assert not (tmp_path / "slots").exists()
