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
    queued = {rank: threading.Event() for rank in (3, 1, 2, 0)}

    def task(rank: int) -> None:
        with task_slot(tmp_path, 1, gone=lambda: None, poll_s=0.01, rank=rank, waiting=queued[rank].set):
            with lock:
                order.append(rank)

    with task_slot(tmp_path, 1, gone=lambda: None, rank=9):  # every slot taken while they queue
        threads = [threading.Thread(target=task, args=(rank,)) for rank in queued]
        for t, event in zip(threads, queued.values()):
            t.start()
            assert event.wait(10)  # rank 3 queues first, rank 0 last
    for t in threads:
        t.join()
    assert order == [0, 1, 2, 3]
    with task_slot(tmp_path, 1, gone=lambda: None, rank=5) as slot:  # the queue markers left behind: nobody waits
        assert slot.number == 0


def _free(folder: Path, within_s: float) -> bool:
    """Whether the one slot of `folder` can be taken within `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            with task_slot(folder, 1, gone=lambda: "taken", poll_s=0.01):
                return True
        except UserError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


def test_a_starting_slot_is_held_until_the_first_answer(tmp_path: Path) -> None:
    """A harness holds its starting slot until the deployment first answers it: the interceptor's post of a
    count (not a post of 0), a count file grown past what an earlier run left in the folder (a post lost), or,
    with neither, the timeout, which the log says."""
    import httpx

    from nemotron_eval.pipeline.workflow import logged, until_first_answer

    slots, harness = tmp_path / "starting", tmp_path / "harness"
    harness.mkdir()
    with task_slot(slots, 1, gone=lambda: None) as slot, until_first_answer(slot, harness, "mmlu", poll_s=0.01) as url:
        with httpx.Client(trust_env=False, timeout=10) as client:
            client.post(url, json={"samples_processed": 0})
            assert not _free(slots, 0.3)
            client.post(url, json={"samples_processed": 1})
            assert _free(slots, 5)

    (harness / "progress").write_text("7")  # the count of an interrupted run before: not this run's answer
    with task_slot(slots, 1, gone=lambda: None) as slot, until_first_answer(slot, harness, "mmlu", poll_s=0.01):
        assert not _free(slots, 0.3)
        (harness / "progress").write_text("8")
        assert _free(slots, 5)

    rule_log = tmp_path / "arc.log"
    with logged(rule_log, echo=False), task_slot(slots, 1, gone=lambda: None) as slot, \
            until_first_answer(slot, harness, "arc", timeout_s=0.5, poll_s=0.01):
        assert not _free(slots, 0.2)
        assert _free(slots, 5)
    # said by the watcher's thread, in the log of the rule it works for
    assert "arc: no answer from the deployment after 0.5 s; its starting slot goes to the next task" in rule_log.read_text()
    with task_slot(slots, 1, gone=lambda: None) as slot:  # the harness ended: free in any case
        with until_first_answer(slot, harness, "arc", poll_s=0.01):
            pass
        assert _free(slots, 0.1)


def test_a_rule_log_takes_its_helpers_lines_and_no_other_rules(tmp_path: Path) -> None:
    """Each rule's log keeps its own thread's lines (rules of one Snakemake process run in threads at once) and
    what helper threads say for it: the heartbeat's progress lines reach it, another rule's lines do not."""
    import logging

    from nemotron_eval.pipeline.workflow import _heartbeat, logged

    ours, theirs = tmp_path / "ours.log", tmp_path / "theirs.log"
    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "progress").write_text("3")
    entered, leave = threading.Event(), threading.Event()

    def other_rule() -> None:
        with logged(theirs, echo=False):
            entered.set()
            logging.getLogger("nemotron_eval").info("hellaswag: the other rule's line")
            leave.wait(10)

    other = threading.Thread(target=other_rule)
    other.start()
    assert entered.wait(10)
    with logged(ours, echo=False), _heartbeat("mmlu", tmp_path / "harness", every_s=0.05):
        time.sleep(0.5)
    leave.set()
    other.join()
    text = ours.read_text()
    assert "mmlu: 3 requests answered" in text and "the other rule's line" not in text, text
    assert "mmlu:" not in theirs.read_text()


def test_harnesses_starting_while_the_deployment_loads_take_no_starting_slot(tmp_path: Path) -> None:
    """While the deployment is `listening` (its model loading, nothing computing) any number of harnesses start;
    once it is ready, or when its state cannot be read, the configured number."""
    import json

    from nemotron_eval.pipeline.workflow import starting_limit

    endpoint = tmp_path / "endpoint.json"
    assert starting_limit(endpoint, 1) == 1  # not published yet
    for state, expected in (("starting", 1), ("listening", None), ("ready", 1), ("failed", 1)):
        endpoint.write_text(json.dumps({"state": state}))
        assert starting_limit(endpoint, 1) == expected, state
    endpoint.write_text("{not json")
    assert starting_limit(endpoint, 1) == 1
