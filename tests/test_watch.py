"""`nemotron watch`: each new version evaluated once, through the runs of `nemotron eval`; state in files that a
restarted watcher trusts; a stop that leaves no process behind. The end-to-end test runs the real pipeline against
the stub deployment (its answers do not matter here); the others drive the watcher's parts on real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import BIN, SHARED_BENCHMARKS, copy_workflow, error_line, nemotron, wait_for
from nemotron_eval.artifacts import LocalRegistry
from nemotron_eval.core.errors import UserError
from nemotron_eval.deploy.stub import write_checkpoint
from nemotron_eval.front import runs, watch

MIRROR = Path(os.environ.get("NEMOTRON_DATA_MIRROR") or SHARED_BENCHMARKS)
# deployment.latency_ms holds each request a second, 2 at a time: a run is still going when the test stops it
ARGS = ("-t", "openbookqa", "deployment=stub", "deployment.latency_ms=1000",
        "evaluation.nemo_evaluator_config.config.params.limit_samples=2",
        "evaluation.nemo_evaluator_config.config.params.parallelism=2")


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = copy_workflow(tmp_path)
    (work / "env.toml").write_text("")
    monkeypatch.setenv("NEMOTRON_ENV_FILE", str(work / "env.toml"))
    if MIRROR.is_dir():
        monkeypatch.setenv("NEMOTRON_DATA_MIRROR", str(MIRROR))
    else:
        monkeypatch.delenv("NEMOTRON_DATA_MIRROR", raising=False)
    return work


def state(work: Path) -> dict:
    found = list((work / ".nemotron" / "watch").glob("ck-*.json"))
    return json.loads(found[0].read_text())["versions"] if found else {}


def processes_in(work: Path) -> list[str]:
    """Every process working in `work` (Snakemake, the supervisor, the deployment, the harness)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and Path(os.readlink(proc / "cwd")).is_relative_to(work):
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append(f"{proc.name}: {command[:200]}")
        except OSError:
            continue
    return found


@pytest.fixture
def watchers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The watchers a test starts: stopped (and their runs with them) if the test ends before it stops them."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=180)


def start_watcher(work: Path, log: Path, watchers: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    watchers.append(subprocess.Popen([str(BIN / "nemotron"), "watch", "ck", "--interval", "1", *ARGS], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"), start_new_session=True))
    return watchers[-1]


def runs_of(work: Path, model: str) -> list[str]:
    return [p.parent.name for p in (work / "runs").glob("*/run.json") if json.loads(p.read_text())["models"] == [model]]


@pytest.mark.slow
@pytest.mark.skipif(not (MIRROR / "SOURCES.md").is_file(), reason=f"no benchmark mirror at {MIRROR} (set NEMOTRON_DATA_MIRROR)")
def test_versions_evaluated_once_across_a_crash_and_a_stop(work: Path, tmp_path: Path, watchers: list[subprocess.Popen[bytes]]) -> None:
    for n in (1, 2):
        write_checkpoint(tmp_path / f"stub{n}")
    assert nemotron(work, "artifacts", "add", "ck", str(tmp_path / "stub1")).returncode == 0
    first = start_watcher(work, tmp_path / "w1.log", watchers)
    v1 = work / "results/ck_v1/openbookqa.json"
    wait_for(lambda: (work / "results/curve/ck.json").is_file(), 300)  # written once v1's run is done
    assert v1.is_file() and state(work)["v1"]["state"] == "done"
    v1_mtime = v1.stat().st_mtime_ns

    # a crash mid-run: the run goes on; the next watcher adopts it instead of starting another
    assert nemotron(work, "artifacts", "add", "ck", str(tmp_path / "stub2")).returncode == 0
    wait_for(lambda: state(work).get("v2", {}).get("state") == "running", 120)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    second = start_watcher(work, tmp_path / "w2.log", watchers)
    wait_for(lambda: "watched to its end" in (tmp_path / "w2.log").read_text(), 120)
    assert len(runs_of(work, "ck_v2")) == 1 and processes_in(work)

    # Ctrl-C: the watcher and everything it watches stop; the version stays pending
    second.send_signal(signal.SIGINT)
    assert second.wait(timeout=120) == 130, (tmp_path / "w2.log").read_text()[-3000:]
    assert processes_in(work) == []
    assert (state(work)["v2"]["state"], state(work)["v2"]["attempts"]) == ("pending", 0)  # not a failed attempt

    # --once: what is pending is evaluated, nothing else; then nothing at all
    once = nemotron(work, "watch", "ck", "--once", *ARGS)
    assert once.returncode == 0, once.stderr[-3000:]
    assert (work / "results/ck_v2/openbookqa.json").is_file() and v1.stat().st_mtime_ns == v1_mtime
    assert len(runs_of(work, "ck_v1")) == 1 and len(runs_of(work, "ck_v2")) == 2
    again = nemotron(work, "watch", "ck", "--once", *ARGS)
    assert again.returncode == 0 and "evaluating" not in again.stderr and len(list((work / "runs").iterdir())) == 3
    curve = json.loads((work / "results/curve/ck.json").read_text())
    assert [v["spec"] for v in curve["versions"]] == ["ck:v1", "ck:v2"]
    points = curve["tasks"][0]["metrics"][0]["points"]
    assert all(p["ci_low"] <= p["value"] <= p["ci_high"] for p in points) and len(points) == 2
    assert 'class="chart chart-curve"' in (work / "results/curve/ck.html").read_text()


def watcher(work: Path, retries: int = 2, source: tuple[str, str] | None = None) -> watch.Watcher:
    setup = watch.Setup(None, None, ("openbookqa",), ())
    watched = [watch.Watched("ck", None, work / ".nemotron/watch/ck-x.json")]
    return watch.Watcher(setup, LocalRegistry(work / "artifacts"), watched, max_parallel=1, retries=retries,
                         source=source, curve_tasks=["openbookqa"])


def test_folders_with_the_marker_are_registered_once_with_their_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for step in (2000, 1000, 3000):
        write_checkpoint(tmp_path / "ckpts" / f"iter_{step:07d}")
    for step in (2000, 1000):
        (tmp_path / "ckpts" / f"iter_{step:07d}" / "done").write_text("")
    w = watcher(tmp_path, source=(str(tmp_path / "ckpts" / "iter_*"), "done"))
    w.look()
    reg = LocalRegistry(tmp_path / "artifacts")
    assert [(v.version, v.lineage["step"]) for v in reg.history("ck")] == [("v1", 1000), ("v2", 2000)]  # by step
    assert reg.history("ck")[0].lineage["source"] == str(tmp_path / "ckpts" / "iter_0001000")
    assert set(w.watched[0].versions) == {"v1", "v2"}  # no marker yet: iter_0003000 waits
    (tmp_path / "ckpts" / "iter_0003000" / "done").write_text("")
    w.look()
    w.look()
    assert [v.version for v in reg.history("ck")] == ["v1", "v2", "v3"] and set(w.watched[0].versions) == {"v1", "v2", "v3"}
    saved = json.loads((tmp_path / ".nemotron/watch/ck-x.json").read_text())
    assert saved["folders"][str(tmp_path / "ckpts" / "iter_0003000")] == "v3"


def test_a_failed_version_is_retried_then_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    LocalRegistry(tmp_path / "artifacts").add("ck", write_checkpoint(tmp_path / "stub"))
    w = watcher(tmp_path, retries=1)
    w.look()
    entry = w.watched[0].versions["v1"]
    for attempt in (1, 2):
        run = runs.Run(id=runs.new_id(), created_at=runs.now(), command=["nemotron", "eval"],
                       config="local", mode="local", models=["ck_v1"], tasks=["openbookqa"], targets=[])
        runs.create(run, "", {})
        runs.finish(run, 1)
        entry.update(state="running", runs=[*entry["runs"], run.id])
        w.reap()
        assert entry["attempts"] == attempt and entry["error"].startswith(f"run {run.id} failed")
    assert entry["state"] == "failed"  # one retry, then reported and left alone
    w.start_next()
    assert entry["state"] == "failed" and len(entry["runs"]) == 2


@pytest.mark.parametrize("argv, says", [
    (["ck", "run.model=ck:v1"], "the watcher sets run.model to each version"),
    (["ck", "--dir", "x/*"], "--dir GLOB and --marker FILE go together"),
    (["ck", "other", "--dir", "x/*", "--marker", "done"], "--dir registers folders as versions of one NAME"),
    (["ck", "ck"], "name each artifact once"),
    (["ck", "--max-parallel", "0"], "--max-parallel 0: must be at least 1"),
])  # fmt: skip
def test_bad_arguments_are_one_line(work: Path, argv: list[str], says: str) -> None:
    proc = nemotron(work, "watch", "--once", *argv)
    assert proc.returncode == 2 and says in error_line(proc)
    assert not (work / ".nemotron").exists() and not (work / "runs").exists()


def test_a_damaged_state_file_and_a_second_watcher_are_one_line(work: Path) -> None:
    folder = work / ".nemotron" / "watch"
    folder.mkdir(parents=True)
    proc = nemotron(work, "watch", "--once", "ck", *ARGS)  # nothing registered: looks once, nothing to do
    assert proc.returncode == 0, proc.stderr
    (path,) = folder.glob("ck-*.json")
    whole = json.loads(path.read_text())
    entry = {"state": "done", "attempts": 1, "runs": ["20261202-101500-ab12"], "error": None}
    for damaged, says in [
        ({"versions": {"v1": entry}}, "field 'schema' is missing"),
        ({**whole, "versions": {"v1": {**entry, "state": "maybe"}}}, "field 'versions.v1.state' = 'maybe' is not one of"),
        ({**whole, "versions": {"v1": {**entry, "runs": [5]}}}, "field 'versions.v1.runs' = [5] is not a list of strings"),
        ({**whole, "versions": {"v1": {**entry, "runs": ["../../etc"]}}}, "field 'versions.v1.runs' = '../../etc' is not a run id"),
        ({**whole, "conversions": {"x": {"attempts": "2"}}}, "field 'conversions.x.attempts' = '2' is not a whole number"),
        ({**whole, "versions": {"v1": {**entry, "state": "running", "runs": []}}}, "field 'versions.v1.runs' = [] is not the running"),
    ]:  # fmt: skip
        path.write_text(json.dumps(damaged))
        proc = nemotron(work, "watch", "--once", "ck", *ARGS)
        assert proc.returncode == 2 and error_line(proc).startswith(f"nemotron: error: {path.relative_to(work)}: ")
        assert says in error_line(proc) and "delete it to evaluate every version again" in error_line(proc), error_line(proc)
    path.unlink()
    import fcntl

    with open(path.with_suffix(".lock"), "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = nemotron(work, "watch", "--once", "ck", *ARGS)
    assert proc.returncode == 2 and "another watcher" in error_line(proc)


def test_wandb_history_lists_the_collection_oldest_first() -> None:
    """A fake wandb.Api() (no W&B server can run here), answering the two calls `history` makes."""
    from types import SimpleNamespace

    from nemotron_eval.artifacts.wandb import WandbRegistry

    versions = [SimpleNamespace(version=f"v{n}", created_at=f"2026-01-0{n}", metadata={"step": 100 * n}) for n in (3, 1, 2)]

    class Api:
        def artifact(self, ref: str) -> SimpleNamespace:
            if ref != "team/evals/sft:latest":
                raise ValueError(f"artifact {ref} not found")
            return SimpleNamespace(type="model")

        def artifacts(self, kind: str, name: str) -> list[SimpleNamespace]:
            assert (kind, name) == ("model", "team/evals/sft")
            return versions

    reg = WandbRegistry("team", "evals", api_factory=Api)
    assert [(v.version, v.lineage["step"]) for v in reg.history("sft")] == [("v1", 100), ("v2", 200), ("v3", 300)]
    assert reg.history("rl") == []  # no version yet: the watcher waits

    class NoProject(Api):  # wandb's words for a project that does not exist (wandb/sdk/artifacts/artifact.py)
        def artifact(self, ref: str) -> SimpleNamespace:
            raise ValueError("project 'evals' not found under entity 'team'")

    with pytest.raises(UserError, match="project 'evals' not found"):  # not "no version yet": said at once
        WandbRegistry("team", "evals", api_factory=NoProject).history("sft")
