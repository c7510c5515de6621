"""Shared fixtures: a copy of the workflow in a temp folder, and a way to run snakemake there."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nemotron_eval import model
from nemotron_eval.model import convert_gguf, find_smollm2_gguf, sha256_file

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHARED_BENCHMARKS = REPO.parent / "shared" / "benchmarks"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's env.toml, W&B login or telemetry."""
    monkeypatch.delenv("NEMOTRON_ENV_FILE", raising=False)
    monkeypatch.setenv("NEMO_EVALUATOR_TELEMETRY_LEVEL", "0")
    monkeypatch.setenv("WANDB_MODE", "offline")


def copy_workflow(parent: Path) -> Path:
    """The workflow (Snakefile, rules, configs, profiles) copied into an empty working directory."""
    work = parent / "work"
    work.mkdir()
    for name in ("Snakefile", "rules", "configs", "profiles"):
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


def converted_smollm2(request: pytest.FixtureRequest) -> tuple[Path, dict[str, Any]]:
    """SmolLM2 converted by `convert_gguf` (fp32), cached under the pytest cache by GGUF and model.py digests:
    a change to the conversion code converts again (about 25 s). Without the cache plugin: a temp folder."""
    gguf = find_smollm2_gguf()
    key = hashlib.sha256(sha256_file(gguf).encode() + Path(model.__file__).read_bytes()).hexdigest()[:16]
    if key not in _CONVERTED:
        cache: pytest.Cache | None = getattr(request.config, "cache", None)
        root = cache.mkdir(f"smollm2-{key}") if cache else request.getfixturevalue("tmp_path_factory").mktemp("smollm2")
        checkpoint, info_file = root / "checkpoint", root / "info.json"
        if not info_file.is_file():
            info = convert_gguf(gguf, checkpoint, dtype="float32", overwrite=True)
            info_file.write_text(json.dumps(info))
        _CONVERTED[key] = checkpoint, json.loads(info_file.read_text())
    return _CONVERTED[key]


_CONVERTED: dict[str, tuple[Path, dict[str, Any]]] = {}


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
    from nemotron_eval.plan import Plan
    from nemotron_eval.request import Request

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
