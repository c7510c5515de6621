"""Shared fixtures: a copy of the workflow in a temp folder, and a way to run snakemake there."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nemotron_eval.artifacts import model
from nemotron_eval.artifacts.model import convert_gguf, sha256_file

from support.smollm2 import find_smollm2_gguf, seed_models

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARED_BENCHMARKS = REPO.parent / "shared" / "benchmarks"
SSHD = Path("/usr/sbin/sshd")


STRICT_SKIPS = os.environ.get("NEMOTRON_TESTS_STRICT") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under NEMOTRON_TESTS_STRICT=1 (scripts/run-tests, which installs and starts everything the tests need) a
    skip is a failure: a test that did not run did not pass. The one allowed skip is a missing benchmark mirror
    when NEMOTRON_DATA_MIRROR is not set (CI sets it)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not (STRICT_SKIPS and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if "no benchmark mirror" in reason and not os.environ.get("NEMOTRON_DATA_MIRROR"):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped under NEMOTRON_TESTS_STRICT=1, which counts a skip as a failure: {reason}"


def pytest_configure(config: pytest.Config) -> None:
    """One NeMo-Run home per test process, set before anything imports NeMo-Run: it reads NEMORUN_HOME once, at
    import (its job-folder constants are made then), so whichever test imported it first would otherwise decide for
    every later one in the same process (tests may point NEMORUN_HOME elsewhere for the commands they run)."""
    # each process its own, pytest-xdist's workers too (they inherit the environment of the process that started
    # them): tests list the runs in it
    home = tempfile.mkdtemp(prefix="nemorun-home-")
    os.environ["_NEMOTRON_TESTS_NEMORUN_HOME"] = os.environ["NEMORUN_HOME"] = home
    config.add_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))
    importlib.import_module("nemo_run.config")  # it reads NEMORUN_HOME now


# `-m fast` (README, Development): the unit tests and one run of the whole DAG against the stub deployment
# (test_fast_dag), a few minutes on 2 cores. Every test is fast unless it is marked slow, slurm or browser, or its
# module runs the snakemake or nemotron command for most of its tests (listed here).
NOT_FAST_MARKS = ("slow", "slurm", "browser")
PIPELINE_MODULES = (
    "test_artifacts", "test_bad_input", "test_bench", "test_deploy_types", "test_executors", "test_export_local",
    "test_front", "test_images", "test_launcher", "test_profiles", "test_remote", "test_results_agree", "test_security",
    "test_serve", "test_serve_cluster", "test_workflow_compile",
)


# Under pytest-xdist (`scripts/run-tests` runs `-n 3 --dist loadgroup`) the Slurm lane runs in order on one worker:
# the tests of the local Slurm (one node: a test may hold all its CPUs) and of the SSH server whose host key they
# add to ~/.ssh; it mostly waits on the scheduler and the tunnel. A module's slow tests (the real model, the long
# runs) stay together on one worker, so that a module-scoped fixture (a converted model, a finished run) is
# built once; the modules and every other test go to whichever worker is free. This hook runs before
# xdist's own, which reads the groups (after it, a group added here is not seen and every test goes anywhere).
SLURM_LANE = "slurm"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(m) for m in NOT_FAST_MARKS):
            assert not item.get_closest_marker("fast"), f"{item.nodeid} is marked fast and {NOT_FAST_MARKS}"
        elif item.module is not None and item.module.__name__.rpartition(".")[2] not in PIPELINE_MODULES:
            item.add_marker(pytest.mark.fast)
        if item.get_closest_marker("slurm") or "sshd" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(SLURM_LANE))
        elif item.get_closest_marker("slow") and item.module is not None:
            item.add_marker(pytest.mark.xdist_group(f"slow-{item.module.__name__.rpartition('.')[2]}"))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test sees the developer's env.toml, W&B login or telemetry; no test leaves a W&B service address in
    the worker's environment (every later subprocess of the worker would inherit it, after its service is gone)."""
    monkeypatch.delenv("NEMOTRON_ENV_FILE", raising=False)
    monkeypatch.setenv("NEMO_EVALUATOR_TELEMETRY_LEVEL", "0")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    yield
    left = os.environ.pop("WANDB_SERVICE", None)
    assert left is None, f"the test left WANDB_SERVICE={left} in the environment (wandb.setup() without wandb.teardown())"


@pytest.fixture
def said() -> Iterator[list[str]]:
    """What the package's logger says at INFO and above during the test, caught at the logger itself: a run's log
    set-up (pipeline.workflow.log_to) turns its propagation off, so caplog, at the root, hears nothing after one."""
    import logging

    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage() + (f"\n{record.exc_info[1]}" if record.exc_info else ""))  # type: ignore[method-assign]
    logger = logging.getLogger("nemotron_eval")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def copy_workflow(parent: Path) -> Path:
    """The workflow (Snakefile, rules, configs, profiles) copied into an empty working directory."""
    work = parent / "work"
    work.mkdir()
    for name in ("Snakefile", "rules", "configs", "profiles", "report"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    return work


@pytest.fixture
def workflow(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path)


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def snakemake(cwd: Path, *args: str, profile: str = "profiles/local", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "snakemake"), "--profile", profile, *args], cwd, env)


def nemotron(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "nemotron"), *args], cwd, env)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one `nemotron: error:` line of a failed run (asserting there is exactly one)."""
    lines = [l for l in proc.stderr.splitlines() + proc.stdout.splitlines() if l.startswith("nemotron: error:")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    return lines[0]


@contextlib.contextmanager
def _cache_lock(root: Path) -> Iterator[None]:
    """One builder at a time for a cached folder: pytest-xdist's workers share the pytest cache."""
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def converted_smollm2(request: pytest.FixtureRequest) -> tuple[Path, dict[str, Any]]:
    """SmolLM2 converted by `convert_gguf` (fp32), cached under the pytest cache by GGUF and model.py digests:
    a change to the conversion code converts again (about 25 s). Without the cache plugin: a temp folder."""
    gguf = find_smollm2_gguf()
    key = hashlib.sha256(sha256_file(gguf).encode() + Path(model.__file__).read_bytes()).hexdigest()[:16]
    if key not in _CONVERTED:
        cache: pytest.Cache | None = getattr(request.config, "cache", None)
        root = cache.mkdir(f"smollm2-{key}") if cache else request.getfixturevalue("tmp_path_factory").mktemp("smollm2")
        checkpoint, info_file = root / "checkpoint", root / "info.json"
        with _cache_lock(root):
            if not info_file.is_file():
                info = convert_gguf(gguf, checkpoint, dtype="float32", overwrite=True)
                info_file.write_text(json.dumps(info))
        _CONVERTED[key] = checkpoint, json.loads(info_file.read_text())
    return _CONVERTED[key]


_CONVERTED: dict[str, tuple[Path, dict[str, Any]]] = {}


def seed_smollm2(request: pytest.FixtureRequest, work: Path) -> None:
    """models/smollm2/ in a working directory as the prepare_model rule leaves it (checkpoint and lineage, not the
    receipt), hard-linked from one `embedded.build` per session (cached like `converted_smollm2`): the rule then
    runs and keeps the folder (same identity) instead of converting for ~25 s. For tests whose point is not the
    conversion; test_e2e_local, the report's two checkpoints and the random kills still convert."""
    from nemotron_eval.artifacts import embedded

    key = hashlib.sha256(embedded.EMBEDDED["smollm2"].identity().encode() + Path(model.__file__).read_bytes()).hexdigest()[:16]
    if key not in _BUILT:
        cache: pytest.Cache | None = getattr(request.config, "cache", None)
        root = cache.mkdir(f"embedded-smollm2-{key}") if cache else request.getfixturevalue("tmp_path_factory").mktemp("embedded")
        with _cache_lock(root):
            if not (root / "smollm2.json").is_file():
                embedded.build("smollm2", root / "smollm2", root / "smollm2.json")
        _BUILT[key] = root
    seed_models(_BUILT[key], work / "models")


STUB = ("deployment=stub", "run.model=stub:latest")  # the overrides of a run against the stub deployment


def register_stub(work: Path) -> None:
    """A stub checkpoint (deploy.stub: config and byte tokenizer, no weights) registered as `stub` in a working
    directory: with the overrides STUB a run deploys the stub, for tests whose point is not the model's numbers."""
    from nemotron_eval.artifacts import LocalRegistry
    from nemotron_eval.deploy.stub import write_checkpoint

    LocalRegistry(work / "artifacts").add("stub", write_checkpoint(work.parent / "stub-checkpoint"))


_BUILT: dict[str, Path] = {}


def make_checkpoint(path: Path, content: str = "weights") -> Path:
    """A checkpoint folder with one file (enough for the registry and the compile chain)."""
    path.mkdir(parents=True)
    (path / "weights.bin").write_text(content)
    return path


@pytest.fixture
def planner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Plans as the Snakefile makes them, in a working directory with a registered `demo` checkpoint:
    `planner(eval_config, overrides=[...], env_toml="...", env_profile=..., tasks=[...])` -> Plan."""
    from nemotron_eval.artifacts import LocalRegistry
    from nemotron_eval.pipeline.plan import Plan
    from nemotron_eval.pipeline.request import Request

    monkeypatch.chdir(tmp_path)
    LocalRegistry(tmp_path / "artifacts").add("demo", make_checkpoint(tmp_path / "ckpt" / "demo"))

    def make(eval_config: str = "default", overrides: list[str] | None = None, *, env_toml: str | None = None,
             env_profile: str | None = None, tasks: list[str] | None = None) -> Plan:
        if env_toml is not None:
            (tmp_path / "env.toml").write_text(env_toml)
        request = Request(eval_config=eval_config, env_profile=env_profile, overrides=tuple(overrides or ()),
                          tasks=tuple(tasks) if tasks is not None else None)
        return Plan(request, REPO / "configs")

    return make


# --- the local Slurm and a real SSH server, for the remote and front-door tests ------------------------------


def slurm_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "Slurm is not installed (start it with scripts/local-slurm up)"
    try:
        res = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s (start Slurm with scripts/local-slurm up)"
    if res.returncode != 0 or "debug" not in res.stdout:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the local Slurm does not answer ({last}); start it with scripts/local-slurm up"
    return None


@pytest.fixture
def slurm() -> Iterator[None]:
    """The local Slurm answers (scripts/local-slurm up), or the test is skipped saying why (a failure under
    NEMOTRON_TESTS_STRICT). Jobs the test added and left queued or running (one that failed midway) are cancelled
    after it: they would hold the node's CPUs and stall the next Slurm test (the Slurm lane runs one at a time)."""
    problem = slurm_problem()
    if problem:
        pytest.skip(problem)

    def queued() -> set[str]:
        me = ["-u", pwd.getpwuid(os.getuid()).pw_name]
        return set(subprocess.run(["squeue", "-h", "-o", "%i", *me], capture_output=True, text=True, timeout=30).stdout.split())

    before = queued()  # only what the test adds is cancelled: on a real cluster's login node, the user's jobs stay
    yield
    left = queued() - before
    if left:
        subprocess.run(["scancel", *sorted(left)], capture_output=True, timeout=30)
        wait_for(lambda: not (queued() & left), 90, 1)


@pytest.fixture(scope="session")
def nemorun_home() -> Path:
    """The test process's NeMo-Run home (run records, experiment folders), set by pytest_configure."""
    return Path(os.environ["_NEMOTRON_TESTS_NEMORUN_HOME"])


@pytest.fixture
def runs() -> Iterator[list[str]]:
    """Run ids of NeMo-Run submissions a test made; any still queued or running at the end is scancel'ed."""
    from nemotron_eval.executors.remote import records

    ids: list[str] = []
    yield ids
    for run_id in ids:
        subprocess.run(["scancel", records.load(run_id).job_id], capture_output=True, timeout=30)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small project folder to ship (not a git work tree: every file but caches goes)."""
    root = tmp_path / "project"
    (root / "__pycache__").mkdir(parents=True)
    (root / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    (root / "data.txt").write_text(f"shipped-{os.getpid()}-{time.time_ns()}\n")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _known_hosts() -> Path:
    """The file OpenSSH reads: in the passwd home directory, whatever $HOME says."""
    return Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ssh" / "known_hosts"


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A throwaway sshd on 127.0.0.1:<free port> with its own host key and one authorized client key.

    The host key is added to the real ~/.ssh/known_hosts for `[127.0.0.1]:<port>` and that line is
    removed afterwards: NeMo-Run's rsync runs plain `ssh`, which reads only that file (from the passwd
    home, not $HOME) and takes no extra options, and a real user's first `ssh` to the cluster does the same.
    """
    if not SSHD.is_file():
        pytest.skip("openssh-server is not installed; run scripts/ssh-test-deps (as root)")
    folder = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"nemotron-test-{name}", "-f", str(folder / name)], check=True
        )
    shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
    port = free_port()
    (folder / "sshd_config").write_text(
        textwrap.dedent(f"""\
            ListenAddress 127.0.0.1
            HostKey {folder}/host_key
            PidFile {folder}/sshd.pid
            AuthorizedKeysFile {folder}/authorized_keys
            AuthenticationMethods publickey
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PermitRootLogin prohibit-password
            UsePAM no
            StrictModes no
        """)
    )  # StrictModes no: the key files live under /tmp, which is world-writable
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    log = open(folder / "sshd.log", "w")  # noqa: SIM115  # closed in the finally below
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(folder / "sshd_config"), "-p", str(port)], stdout=log, stderr=log)
    known = _known_hosts()
    created_dir, created_file = not known.parent.exists(), not known.exists()
    entry = f"[127.0.0.1]:{port} " + " ".join((folder / "host_key.pub").read_text().split()[:2]) + "\n"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (folder / "sshd.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "sshd did not listen within 20 s"
                time.sleep(0.1)
        known.parent.mkdir(mode=0o700, exist_ok=True)
        with open(known, "a") as f:
            f.write(entry)
        yield {"port": port, "identity": str(folder / "client_key"), "log": folder / "sshd.log"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        if known.exists():
            kept = [line for line in known.read_text().splitlines(keepends=True) if line != entry]
            if kept or not created_file:
                tmp = known.with_name(f".known_hosts.{os.getpid()}")
                tmp.write_text("".join(kept))
                os.chmod(tmp, known.stat().st_mode & 0o777)
                os.replace(tmp, known)
            else:
                known.unlink()
        if created_dir and known.parent.is_dir() and not any(known.parent.iterdir()):
            known.parent.rmdir()


def wait_for(predicate: Any, timeout_s: float, poll_s: float = 0.5) -> Any:
    """The predicate's first truthy value, polled every `poll_s`; fails the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"not within {timeout_s} s")
