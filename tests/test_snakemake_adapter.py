"""Every Snakemake internal the pipeline uses (nemotron_eval.pipeline.snakemake_adapter), exercised on real Snakemake runs
of a tiny Snakefile: a real workflow object in the main process and in a job Snakemake spawns, its real DAG
settings and its real persistence (a finished job's record, a job killed mid-run). When a Snakemake release
renames or changes one of them, the failure names the attribute."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from conftest import BIN, run

# each adapter function and the Snakemake attributes it reads
READS = {
    "given_config": "workflow.config_settings.config",
    "hand_jobs_a_request": "workflow.config_settings.config_args",
    "is_main_process": "workflow.is_main_process",
    "dry_run": "workflow.output_settings.dryrun",
    "forced": "workflow.dag_settings.forceall/forcetargets/forcerun/target_jobs",
    "rerun_triggers": "workflow.dag_settings.rerun_triggers",
    "cores": "workflow.resource_settings.cores",
    "completed_record": "workflow.persistence._read_record/_filter_incomplete_keys",
    "force": "workflow.dag.forcefiles",
    "end_rescheduling": "snakemake.scheduling.job_scheduler.JobScheduler._schedule_reevalutation's threading.Timer",
}
SNAKEFILE = textwrap.dedent("""\
    import json, os
    from nemotron_eval.pipeline import snakemake_adapter as a

    def note(name, fn, *args):
        try:
            value = fn(workflow, *args)
            value = sorted(value) if isinstance(value, frozenset) else value
        except Exception as e:  # recorded, so that the test names what changed
            value = {"error": f"{type(e).__name__}: {e}"}
        with open("notes.jsonl", "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "name": name, "args": list(args), "value": value}) + "\\n")
        return value

    note("given_config", a.given_config)
    if note("is_main_process", a.is_main_process) is True:
        note("hand_jobs_a_request", a.hand_jobs_a_request, "handed=yes")

    def probe(wildcards):
        note("forced", a.forced)
        note("dry_run", a.dry_run)
        note("rerun_triggers", a.rerun_triggers)
        note("cores", a.cores)
        for path in ("made.txt", "half.txt", "never.txt"):
            note("completed_record", a.completed_record, path)
        return []

    rule probe:
        input: probe
        output: "probe.txt"
        shell: "touch {output}"

    rule made:
        output: "made.txt"
        shell: "touch {output}"

    def forcing(wildcards):  # as rules/common.smk forces a stale result: from an input function
        note("force", a.force, "made.txt")
        return ["made.txt"]

    rule uses_made:
        input: forcing
        output: "uses-made.txt"
        shell: "touch {output}"

    rule half:  # once kill-me exists, killed after writing its output: its record and an incomplete marker stay
        output: "half.txt"
        shell: "touch {output}; if [ -e kill-me ]; then sleep 1; kill -9 $PPID; fi"

    def ended(log):  # the run's end, as the pipeline's Snakefile ends it
        import threading
        note("end_rescheduling", lambda _: {"cancelled": a.end_rescheduling(), "timers_left": [
            t.function.__qualname__ for t in threading.enumerate() if isinstance(t, threading.Timer)]})

    onsuccess: ended(log)
    onerror: ended(log)

    rule job:  # a run: rule, spawned as a Snakemake process of its own (no --force-use-threads)
        output: "job.txt"
        run:
            note("in_job_given_config", a.given_config)
            note("in_job_is_main_process", a.is_main_process)
            open(output[0], "w").close()
    """)


def snakemake(work: Path, *args: str):
    return run([str(BIN / "snakemake"), "--workflow-profile", "none", "--cores", "1", *args], work)


def notes(work: Path) -> list[dict]:
    path = work / "notes.jsonl"
    found = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    path.unlink(missing_ok=True)
    return found


def first(found: list[dict], name: str, *args: str) -> object:
    values = [n["value"] for n in found if n["name"] == name and n["args"][len(n["args"]) - len(args):] == list(args)]
    assert values, f"no call of {name}{args} was recorded"
    value = values[0]
    assert not (isinstance(value, dict) and "error" in value), (
        f"Snakemake changed {READS[name.removeprefix('in_job_')]}, which snakemake_adapter.{name.removeprefix('in_job_')} "
        f"reads: {value['error']}")
    return value


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("adapter")
    (work / "Snakefile").write_text(SNAKEFILE)
    return work


def test_config_values_and_the_request_jobs_get_instead(work: Path) -> None:
    proc = snakemake(work, "made.txt", "job.txt", "probe.txt", "--config", "answer=42")
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = notes(work)
    assert first(found, "dry_run") is False  # a run that starts jobs
    job_pid = next(n["pid"] for n in found if n["name"] == "in_job_given_config")
    main = [n for n in found if n["pid"] != job_pid]
    assert first(main, "given_config") == {"answer": 42}
    assert first(main, "is_main_process") is True
    first(main, "hand_jobs_a_request")
    # the run: job is a Snakemake process of its own: it got what was handed, not the values
    assert first(found, "in_job_given_config") == {"handed": "yes"}
    assert first(found, "in_job_is_main_process") is False


def test_dag_settings_and_the_records_of_finished_and_killed_jobs(work: Path) -> None:
    if not (work / "made.txt").exists():
        assert snakemake(work, "made.txt").returncode == 0
    assert snakemake(work, "half.txt").returncode == 0  # finished: recorded
    (work / "kill-me").touch()
    killed = snakemake(work, "--force", "half.txt")  # run again and killed mid-job
    assert killed.returncode != 0 and (work / "half.txt").exists()
    for lock in (work / ".snakemake" / "locks").iterdir():
        lock.unlink()
    notes(work)
    assert snakemake(work, "-n", "--nolock", "probe.txt", "--rerun-triggers", "mtime", "params").returncode == 0
    found = notes(work)
    assert first(found, "forced") is False
    assert first(found, "dry_run") is True
    assert first(found, "rerun_triggers") == ["mtime", "params"]
    assert first(found, "cores") == 1
    assert first(found, "completed_record", "made.txt") is True
    assert first(found, "completed_record", "half.txt") is False  # recorded once, and now marked incomplete
    assert first(found, "completed_record", "never.txt") is False
    assert snakemake(work, "-n", "--nolock", "--forceall", "probe.txt").returncode == 0
    found = notes(work)
    assert first(found, "forced") is True
    assert first(found, "rerun_triggers") == ["code", "input", "mtime", "params", "software-env"]  # Snakemake's default


def test_a_file_forced_from_an_input_function_is_made_again(work: Path) -> None:
    """`force` while the DAG is built: the job writing the file runs although Snakemake finds no reason of its own
    (its output and the job using it exist and are recorded), and so does the job using it."""
    assert snakemake(work, "uses-made.txt").returncode == 0
    notes(work)
    proc = snakemake(work, "-n", "uses-made.txt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first(notes(work), "force", "made.txt")
    out = proc.stdout + proc.stderr
    assert "rule made:" in out and "Forced execution" in out and "rule uses_made:" in out, out[-3000:]


def test_the_schedulers_last_timer_is_ended_with_the_run(work: Path) -> None:
    """A run that starts jobs leaves Snakemake's re-evaluation timer (non-daemon, 1 s) pending at its end:
    `end_rescheduling` finds it by what it runs and cancels it, so the process need not wait for it."""
    (work / "made.txt").unlink(missing_ok=True)
    notes(work)
    assert snakemake(work, "made.txt").returncode == 0
    value = first(notes(work), "end_rescheduling")
    assert isinstance(value, dict)
    assert value["cancelled"] >= 1, (f"no timer of {READS['end_rescheduling']} was pending at the run's end: "
                                      "Snakemake changed how it re-evaluates")
    assert value["timers_left"] == []
