"""End to end through the real local Slurm (scripts/local-slurm up, started by the test command): the embedded
model, one task with a tiny limit, the deployment job allocated GPU GRES, and a second run that submits nothing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import SHARED_BENCHMARKS, copy_workflow, error_line, nemotron, seed_smollm2, snakemake

MIRROR = Path(os.environ.get("NEMOTRON_DATA_MIRROR") or SHARED_BENCHMARKS)


def slurm_up() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(not slurm_up(), reason="sinfo does not answer; start the cluster with scripts/local-slurm up"),
]
LIMIT = 'overrides=["evaluation.nemo_evaluator_config.config.params.limit_samples=3"]'


@pytest.mark.slow
@pytest.mark.skipif(not (MIRROR / "SOURCES.md").is_file(), reason=f"no benchmark mirror at {MIRROR}")
def test_evaluates_on_slurm_with_gpu_gres_then_submits_nothing(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    work = copy_workflow(tmp_path)
    seed_smollm2(request, work)  # the model's conversion (a local rule) is not this test's point
    env = {"NEMOTRON_DATA_MIRROR": str(MIRROR)}
    proc = snakemake(work, "--config", LIMIT, "--", "results/smollm2_latest/openbookqa.json", profile="profiles/slurm-local", env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    result = json.loads((work / "results/smollm2_latest/openbookqa.json").read_text())
    assert result["n_samples"] == 3 and 0 <= result["metrics"]["acc"]["value"] <= 1
    job_ids = [line.split("SLURM jobid ")[1].split()[0] for line in out.splitlines() if "SLURM jobid" in line]
    assert len(job_ids) == 1  # one job: the deployment and its task (compile and staging ran on the submit host)
    tres = subprocess.run(["sacct", "-j", job_ids[0], "-X", "-n", "-P", "-o", "AllocTRES,State"], capture_output=True, text=True).stdout
    assert "gres/gpu=2" in tres and "COMPLETED" in tres, tres
    # Another login node, user or folder (the cluster configs read HOSTNAME, USER and PWD once): nothing reruns.
    elsewhere = {**env, "HOSTNAME": "login-other", "USER": "someone-else", "PWD": "/somewhere/else"}
    again = snakemake(work, "--config", LIMIT, "--", "results/smollm2_latest/openbookqa.json", profile="profiles/slurm-local", env=elsewhere)
    assert "Nothing to be done" in again.stdout + again.stderr and "SLURM jobid" not in again.stdout + again.stderr


def test_gpu_request_larger_than_any_node_is_refused_before_submitting(tmp_path: Path) -> None:
    work = copy_workflow(tmp_path)
    proc = snakemake(work, "--config", 'overrides=["execution.gres=gpu:16"]', "--", "results/smollm2_latest/openbookqa.json",
                     profile="profiles/slurm-local")
    assert proc.returncode != 0
    assert "execution.gres=gpu:16: no node of partition 'debug' has more than gpu:8" in error_line(proc)
    assert not (work / "build").exists() and "SLURM jobid" not in proc.stdout + proc.stderr


def test_cluster_dry_run_lists_the_whole_chain(tmp_path: Path) -> None:
    work = copy_workflow(tmp_path)
    ck = tmp_path / "rl-ckpt"
    ck.mkdir()
    (ck / "weights").write_text("w")
    assert nemotron(work, "artifacts", "add", "rl", str(ck)).stdout.strip() == "v1"
    proc = snakemake(work, "-n", "results/rl_latest/mmlu.json", profile="profiles/slurm")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for rule in ("compose_config", "resolve_artifacts", "compile_eval", "squash_image", "stage_dataset", "serve_model", "evaluate_task"):
        assert f"rule {rule}:" in out, rule
    assert "gres=gpu:8" in out and "build/images/nvcr.io+nvidia+nemo+25.11.nemotron_3_nano.sqsh" in out
