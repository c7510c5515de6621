"""The run registry trusts nothing it reads back: a process is the run's only while it is the one recorded (PID and
start time), and every record (run.json, NeMo-Run's run records, the checkpoint registry's metadata) is type-checked,
its names checked as a user's, a bad one reported in one line naming the file and the field."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import BIN, SHARED_BENCHMARKS, STUB, copy_workflow, error_line, register_stub, run, wait_for
from nemotron_eval.artifacts import LocalRegistry
from nemotron_eval.core.errors import UserError
from nemotron_eval.deploy.process import is_ours, signal_if_ours, started
from nemotron_eval.executors.remote import records
from nemotron_eval.front import cli, launch, runs

RUN_ID = "20261202-101500-ab12"
MIRROR = Path(os.environ.get("NEMOTRON_DATA_MIRROR") or SHARED_BENCHMARKS)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder to hold runs/ (the registry is relative to the working directory)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A real process that has nothing to do with any run. SIGINT has its default action in it, as in a run's own
    process (which handles it): a test session started in the background of a non-interactive shell ignores SIGINT,
    and `sleep` would inherit that."""
    proc = subprocess.Popen(["sleep", "120"], preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def record(project: Path, **fields: Any) -> Path:
    """runs/<RUN_ID>/run.json of a local run still marked running, with `fields` replacing its own."""
    run = runs.Run(id=RUN_ID, created_at="2026-12-02T10:15:00+00:00", command=["nemotron", "eval"], config="local",
                   mode="local", models=["stub_latest"], tasks=["openbookqa"], targets=["results/stub_latest/openbookqa.json"])
    run.save()
    path = project / "runs" / RUN_ID / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    return path


def other_start(pid: int) -> str:
    """The identity a run recorded for a process that ran under `pid` before (same boot, an earlier start)."""
    identity = started(pid)
    assert identity is not None
    boot, _, ticks = identity.rpartition(":")
    return f"{boot}:{int(ticks) - 1}"


# --- whose process ----------------------------------------------------------------------------------------------


def test_a_process_identity_is_its_start_not_its_pid(stranger: subprocess.Popen[bytes]) -> None:
    identity = started(stranger.pid)
    assert identity is not None and started(stranger.pid) == identity  # stable while it lives
    assert is_ours(stranger.pid, identity) and not is_ours(stranger.pid, other_start(stranger.pid))
    assert not is_ours(stranger.pid, None)  # a record without a start time cannot tell
    assert started(os.getpid()) != identity
    assert not signal_if_ours(stranger.pid, other_start(stranger.pid), signal.SIGTERM)
    assert stranger.poll() is None
    assert signal_if_ours(stranger.pid, identity, signal.SIGTERM)
    assert stranger.wait(timeout=10) == -signal.SIGTERM
    assert started(stranger.pid) is None and not signal_if_ours(stranger.pid, identity, signal.SIGTERM)


def test_kill_never_signals_a_process_that_took_the_runs_pid(project: Path, stranger: subprocess.Popen[bytes]) -> None:
    """The acceptance case: a dead run's PID now belongs to an unrelated process. `nemotron kill` (the command,
    in a process of its own) reports the run ended and signals nothing; `status` and `runs` agree."""
    record(project, pid=stranger.pid, pid_started=other_start(stranger.pid))
    killed = run([str(BIN / "nemotron"), "kill", RUN_ID], project)
    assert killed.returncode == 0 and f"run {RUN_ID}: failed" in killed.stdout, killed.stdout + killed.stderr
    time.sleep(0.5)
    assert stranger.poll() is None  # still running: never signalled
    assert f"run {RUN_ID}: failed" in run([str(BIN / "nemotron"), "status", RUN_ID], project).stdout
    assert run([str(BIN / "nemotron"), "runs"], project).stdout.splitlines()[1].split()[-1] == "failed"
    assert runs.live() == []


def test_a_record_without_a_start_time_signals_nothing(project: Path, stranger: subprocess.Popen[bytes]) -> None:
    """A record written before start times were kept: its PID alone proves nothing."""
    record(project, pid=stranger.pid)
    assert launch.kill(RUN_ID, wait=False) == "failed"
    time.sleep(0.3)
    assert stranger.poll() is None


def test_kill_signals_the_runs_own_process(project: Path, stranger: subprocess.Popen[bytes]) -> None:
    """The same check lets the run's own process be cancelled (SIGINT, as the supervisor expects)."""
    record(project, pid=stranger.pid, pid_started=started(stranger.pid))
    assert runs.state(runs.load(RUN_ID)) == "running" and [r.id for r in runs.live()] == [RUN_ID]
    assert launch.kill(RUN_ID, grace_s=10) == "failed"  # `sleep` dies of SIGINT without recording an end
    assert stranger.wait(timeout=10) == -signal.SIGINT


# --- run.json ---------------------------------------------------------------------------------------------------

CORRUPT = [
    ("truncated", '{"id": "' + RUN_ID + '", "created_', "is not valid JSON"),
    ("a list", "[1, 2]", "not a run record (a JSON object of id, created_at"),
    ("pid as text", {"pid": "123"}, "field 'pid' = '123' is not a whole number or null"),
    ("pid as true", {"pid": True}, "field 'pid' = True is not a whole number or null"),
    ("state unknown", {"state": "zombie"}, "field 'state' = 'zombie' is not one of running, submitted, done, failed, cancelled"),
    ("mode unknown", {"mode": "remote"}, "field 'mode' = 'remote' is not one of local, run, batch"),
    ("model outside", {"models": ["../../etc/passwd"]}, "field 'models' = '../../etc/passwd' is not a model's folder name"),
    ("model with a slash", {"models": ["a/b_latest"]}, "field 'models' = 'a/b_latest' is not a model's folder name"),
    ("task outside", {"tasks": ["../../../x"]}, "field 'tasks' = '../../../x' is not a task's name"),
    ("tasks as text", {"tasks": "openbookqa"}, "field 'tasks' = 'openbookqa' is not a list of strings"),
    ("job id as option", {"jobs": ["--signal=KILL"]}, "field 'jobs' = '--signal=KILL' is not a job id"),
    ("target as option", {"targets": ["--delete-all-output"]}, "field 'targets' = '--delete-all-output' is not a file of this project"),
    ("target outside", {"targets": ["results/../../x.json"]}, "field 'targets' = 'results/../../x.json' is not a file of this project"),
    ("profile outside", {"snakemake_profile": "../../elsewhere"}, "field 'snakemake_profile' = '../../elsewhere' is not a profile"),
    ("another run's id", {"id": "20261202-101500-ffff"}, "field 'id' = '20261202-101500-ffff' is not its folder's name"),
    ("bad time", {"created_at": "yesterday"}, "field 'created_at' = 'yesterday' is not a date and time"),
    ("config as null", {"config": None}, "field 'config' = None is not a string"),
    ("missing field", {"models": None}, "field 'models' is missing from this run record"),
    ("unknown field", {"owner": "me"}, "unknown field 'owner' in this run record"),
    ("negative pid", {"pid": -1}, "field 'pid' = -1 is not a process id"),
    ("invocation as option", {"invocations": {"stub_latest": "--all"}}, "field 'invocations' = '--all' is not an invocation id"),
    ("invocation of another model", {"invocations": {"rl_latest": "ab12"}},
     "field 'invocations' = 'rl_latest' is not one of the run's models"),
]


@pytest.mark.parametrize(("what", "change", "expected"), CORRUPT, ids=[c[0] for c in CORRUPT])
def test_a_bad_run_record_is_one_line_naming_file_and_field(project: Path, capsys: pytest.CaptureFixture[str], what: str,
                                                           change: Any, expected: str) -> None:
    path = record(project)
    if isinstance(change, str):
        path.write_text(change)
    elif what == "missing field":
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k not in change}))
    else:
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(UserError) as e:
        runs.load(RUN_ID)
    assert str(e.value).startswith(f"runs/{RUN_ID}/run.json: ") and expected in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    for command in (["status", RUN_ID], ["logs", RUN_ID, "--task", "openbookqa"], ["kill", RUN_ID]):
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("nemotron: error: ") and expected in err, (command, err)


def test_logs_never_print_a_file_outside_the_project(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model `../..` would make `logs --task` read logs/evaluate_task/../../<file>: refused before any read."""
    (project / "outside.log").write_text("NOT THE PROJECT'S\n")
    (project / "logs" / "evaluate_task" / "x").mkdir(parents=True)
    record(project, models=["../.."], tasks=["outside"])
    assert cli.main(["logs", RUN_ID, "--task", "outside"]) == 2
    out = capsys.readouterr()
    assert "NOT THE PROJECT'S" not in out.out + out.err and "field 'models'" in out.err


def test_one_bad_record_does_not_hide_the_live_runs(project: Path, stranger: subprocess.Popen[bytes]) -> None:
    path = record(project, pid=stranger.pid, pid_started=started(stranger.pid))
    bad = project / "runs" / "20261202-101501-0000" / "run.json"
    bad.parent.mkdir()
    bad.write_text("{")
    assert [r.id for r in runs.live()] == [RUN_ID] and path.is_file()


# --- NeMo-Run's run records ---------------------------------------------------------------------------------------


def nemorun_record(home: Path, **fields: Any) -> Path:
    rec = records.RunRecord(
        id="nemotron-eval-1", job_id="4242", profile={"name": "cluster", "executor": "slurm", "tunnel": "local"},
        task_dir="/lustre/x/experiments/e/nemotron-eval-1/head", job_name="head", exp_dir="/tmp/exp", argv=["snakemake"],
        submitted_at="2026-12-02T10:15:00+00:00", shipped_files=3, shipped_bytes=100,
    )
    path = records.save(rec)
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    return path


NEMORUN_CORRUPT = [
    ("job id as a number", {"job_id": 4242}, "field 'job_id' = 4242 is not a string"),
    ("job id as an option", {"job_id": "--all"}, "field 'job_id' = '--all' is not a Slurm job id"),
    ("profile as a list", {"profile": ["cluster"]}, "field 'profile' = ['cluster'] is not an object"),
    ("profile without a name", {"profile": {"executor": "slurm"}}, "field 'profile' = {'executor': 'slurm'} is not an env.toml profile"),
    ("argv as text", {"argv": "snakemake -n"}, "field 'argv' = 'snakemake -n' is not a list of strings"),
    ("shipped as text", {"shipped_files": "3"}, "field 'shipped_files' = '3' is not a whole number"),
    ("another id", {"id": "other"}, "field 'id' = 'other' is not the file's name"),
    ("job name with a glob", {"job_name": "*"}, "field 'job_name' = '*' is not a Slurm job name"),
    ("job folder with a shell word", {"task_dir": "/x/$(id)"}, "field 'task_dir' = '/x/$(id)' is not a folder path"),
    ("job folder outside", {"task_dir": "/lustre/x/../../etc"}, "field 'task_dir' = '/lustre/x/../../etc' is not a folder path"),
    ("experiment folder with a space", {"exp_dir": "/tmp/a b"}, "field 'exp_dir' = '/tmp/a b' is not a folder path"),
]


@pytest.mark.parametrize(("what", "change", "expected"), NEMORUN_CORRUPT, ids=[c[0] for c in NEMORUN_CORRUPT])
def test_a_bad_nemorun_record_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str, change: dict[str, Any],
                                          expected: str) -> None:
    monkeypatch.setenv("NEMORUN_HOME", str(tmp_path))
    path = nemorun_record(tmp_path, **change)
    for read in (lambda: records.load("nemotron-eval-1"), records.list_runs):
        with pytest.raises(UserError) as e:
            read()
        assert str(e.value).startswith(f"{path}: ") and expected in str(e.value), str(e.value)


def test_a_truncated_nemorun_record_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEMORUN_HOME", str(tmp_path))
    path = nemorun_record(tmp_path)
    assert records.load("nemotron-eval-1").job_id == "4242"
    path.write_text(path.read_text()[:40])
    with pytest.raises(UserError, match=r"NeMo-Run run record is not valid JSON .*truncated\?\); restore it, or remove"):
        records.load("nemotron-eval-1")


# --- the checkpoint registry's metadata -------------------------------------------------------------------------

REGISTRY_CORRUPT = [
    ("files as text", {"files": "many"}, "field 'files' = 'many' is not a whole number"),
    ("lineage as a list", {"lineage": ["a"]}, "field 'lineage' = ['a'] is not an object"),
    ("another name", {"name": "../other"}, "field 'name' = '../other' is not 'demo' (its folder)"),
    ("another version", {"version": "v9"}, "field 'version' = 'v9' is not 'v1' (its folder)"),
    ("relative path", {"path": "ckpt"}, "field 'path' = 'ckpt' is not an absolute path"),
    ("digest missing", {"digest": None}, "field 'digest' = None is not a string"),
]


@pytest.mark.parametrize(("what", "change", "expected"), REGISTRY_CORRUPT, ids=[c[0] for c in REGISTRY_CORRUPT])
def test_a_bad_registry_version_is_one_line(tmp_path: Path, what: str, change: dict[str, Any], expected: str) -> None:
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    registry = LocalRegistry(tmp_path / "artifacts")
    registry.add("demo", checkpoint)
    path = tmp_path / "artifacts" / "demo" / "v1" / "metadata.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(UserError) as e:
        registry.listing()
    assert str(e.value).startswith(f"{path}: ") and expected in str(e.value), str(e.value)


# --- two runs in one project ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not (MIRROR / "SOURCES.md").is_file(), reason=f"no benchmark mirror at {MIRROR}")
def test_a_second_run_names_the_live_one_instead_of_unlock(tmp_path: Path) -> None:
    """Two `nemotron eval` of the same files in one project: the second fails in one line naming the live run and
    how to wait for it or stop it, never Snakemake's advice to --unlock (which would break the live run)."""
    work = copy_workflow(tmp_path)
    register_stub(work)
    env = {"NEMOTRON_DATA_MIRROR": str(MIRROR)}
    argv = [str(BIN / "nemotron"), "eval", "-t", "openbookqa", "evaluation.nemo_evaluator_config.config.params.limit_samples=60",
            *STUB, "deployment.latency_ms=300"]
    first = subprocess.Popen(argv, cwd=work, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        locks = work / ".snakemake" / "locks"
        wait_for(lambda: locks.is_dir() and any(locks.iterdir()), 120)
        [first_id] = os.listdir(work / "runs")
        second = run(argv, work, env, timeout=300)
        assert second.returncode != 0
        line = error_line(second)
        assert f"run {first_id} is running in this project" in line and f"nemotron kill {first_id}" in line, line
        assert "--unlock" not in second.stdout + second.stderr
        assert json.loads((work / "runs" / first_id / "run.json").read_text())["state"] == "running"
        assert run([str(BIN / "nemotron"), "kill", first_id], work).returncode == 0
    finally:
        if first.poll() is None:
            first.kill()
        first.wait(timeout=120)


