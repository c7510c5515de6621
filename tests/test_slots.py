"""Task slots: at most N harnesses at once against a deployment, a slot released early is free while its block
still runs, a dead holder frees its slot, waiting ends when the deployment is gone."""

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
            assert slot.number in (0, 1)
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
            assert slot.number == 0 and 0.2 < time.monotonic() - started < 10
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
        assert slot.number is None
        slot.release()
    assert not (tmp_path / "slots").exists()


def test_a_released_slot_is_free_while_its_block_runs(tmp_path: Path) -> None:
    """A harness keeps its starting slot only until its first answer: the next one starts then, not at its end."""
    with task_slot(tmp_path, 1, gone=lambda: None) as first:
        with pytest.raises(UserError):  # taken: waiting ends at once with the reason gone() gives
            with task_slot(tmp_path, 1, gone=lambda: "taken", poll_s=0.01):
                pass
        first.release()
        first.release()  # again: nothing happens
        with task_slot(tmp_path, 1, gone=lambda: "taken", poll_s=0.01) as second:
            assert second.number == 0
    with task_slot(tmp_path, 1, gone=lambda: "taken", poll_s=0.01) as third:  # both ended: free
        assert third.number == 0


def test_waiting_tasks_take_slots_in_the_order_of_their_rank(tmp_path: Path) -> None:
    """The config's order decides which waiting task starts next (list the longest task first), whichever
    process polls first; a rank that waits no more (took its slot, or died) holds no one back."""
    order: list[int] = []
    lock = threading.Lock()

    def task(rank: int) -> None:
        with task_slot(tmp_path, 1, gone=lambda: None, poll_s=0.01, rank=rank):
            with lock:
                order.append(rank)
            time.sleep(0.05)

    with task_slot(tmp_path, 1, gone=lambda: None, rank=9):  # every slot taken while they queue
        threads = [threading.Thread(target=task, args=(rank,)) for rank in (3, 1, 2, 0)]
        for t in threads:
            t.start()
            time.sleep(0.05)  # rank 3 queues first, rank 0 last
    for t in threads:
        t.join()
    assert order == [0, 1, 2, 3]
    with task_slot(tmp_path, 1, gone=lambda: None, rank=5) as slot:  # the queue markers left behind: nobody waits
        assert slot.number == 0
