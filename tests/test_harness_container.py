"""A task whose harness is not installed here runs in its harness's container: planned (not refused) where a
container runner starts one, its image squashed like the deployment's, job.yaml naming it, the exact argv per
runner, and `run_harness` driving it with the settings of the container's own harness.

No container runs here: pyxis, enroot and apptainer are not installable on this machine. The argv tests check
what the evaluation step would run; the run test puts a stand-in `enroot` on PATH that records what it was given
and writes the results file the harness in the container would."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from nemotron_eval.core.errors import UserError
from nemotron_eval.data.tasks import resolve
from nemotron_eval.evaluate import harness
from nemotron_eval.pipeline import compile as compile_

from test_cluster_path import GPU

SIMPLE_EVALS = resolve("AIME_2025").container  # the launcher catalog's image of the simple_evals harness
PROGRAM = ("sh", "-c", 'if command -v nemo-evaluator >/dev/null 2>&1; then exec nemo-evaluator "$@"; else exec eval-factory "$@"; fi',
           "sh", "run_eval", "--run_config", "/h/run.yml")
SLURM_PYXIS = {"type": "slurm", "container_runner": "pyxis"}


def test_a_task_with_no_container_anywhere_is_refused() -> None:
    task = replace(resolve("AIME_2025"), container="")
    assert harness.refusal(task, SLURM_PYXIS, has_data=False) == (
        "task 'AIME_2025' cannot run: its harness simple_evals is not installed here and neither its "
        "evaluation.tasks entry nor the launcher's catalog names its container (set `container`)")
    assert harness.refusal(task, SLURM_PYXIS, has_data=False, entry={"container": "nvcr.io/me/evals:1"}) is None


def test_enroot_without_a_squashed_harness_image_is_refused_by_the_plan(planner) -> None:
    """On this machine's executor nothing is squashed, and enroot starts only a .sqsh file: refused when the plan
    is made (as the deployment's image is), not when the evaluation starts after the deployment."""
    with pytest.raises(UserError) as e:
        planner("local", ["deployment=vllm", "deployment.image=/images/vllm.sqsh", "execution.container_runner=enroot"],
                tasks=["AIME_2025"])
    assert str(e.value).startswith("task 'AIME_2025' cannot run in its harness container: execution.container_runner=enroot "
                                   f"starts a squashed image; evaluation.tasks.AIME_2025.container={SIMPLE_EVALS} is not a .sqsh file")


def test_a_catalog_task_runs_in_its_harness_container_squashed_with_the_deployment_image(planner) -> None:
    """On the recipe's cluster config (Slurm, pyxis), a task whose harness is not installed here is planned: its
    container from the launcher's catalog is squashed like the deployment's image (the deployment job waits for
    every image of the plan), and job.yaml tells its evaluation step where its harness runs."""
    plan = planner("default", env_toml=GPU, env_profile="gpu", tasks=["AIME_2025", "mmlu"])
    image = compile_.harness_image(plan.execution, SIMPLE_EVALS)
    assert image is not None and plan.images[image.name] == image
    assert image.path.name.startswith("nvcr.io+nvidia+eval-factory+simple-evals") and len(plan.images) == 2  # and the deployment's
    tasks = plan.model("demo_latest").tasks
    assert tasks["AIME_2025"]["container"] == {"runner": "pyxis", "image": str(image.path), "source_image": SIMPLE_EVALS}
    assert "container" not in tasks["mmlu"]  # lm-eval is installed here: it runs in this environment


def test_the_launcher_engine_keeps_its_fingerprints_and_squashes_no_harness_image(planner) -> None:
    """With run.engine: launcher, the launcher's jobs start task containers themselves: job.yaml names none, the
    fingerprint is what it was before containers were planned, and no harness image is squashed."""
    plan = planner("default", ["run.engine=launcher"], tasks=["AIME_2025"])
    entry = plan.model("demo_latest").tasks["AIME_2025"]
    assert "container" not in entry and len(plan.images) == 1  # the deployment's
    no_runner = planner("default", ["run.engine=launcher", "execution.container_runner=none"], tasks=["AIME_2025"])
    assert entry["fingerprint"] == no_runner.model("demo_latest").tasks["AIME_2025"]["fingerprint"]


def test_the_harness_container_is_part_of_what_the_scores_depend_on() -> None:
    cfg = {"deployment": {"type": "vllm"}, "evaluation": {"tasks": [{"name": "AIME_2025"}]}}
    plain = compile_.fingerprint(cfg, "AIME_2025", "d")
    assert compile_.fingerprint(cfg, "AIME_2025", "d", None) == plain  # a task that runs here: as before
    assert len({plain, compile_.fingerprint(cfg, "AIME_2025", "d", "a:1"), compile_.fingerprint(cfg, "AIME_2025", "d", "a:2")}) == 3


@pytest.mark.parametrize(
    ("runner", "expected"),
    [
        ("pyxis", ["srun", "--overlap", "--mem=0", "--nodes", "1", "--ntasks", "1", "--ntasks-per-node", "1",
                   "--kill-on-bad-exit=1", "--container-image=<sqsh>", "--container-mounts=/h:/h,/lustre:/lustre",
                   "--container-env=ADAPTER_PORT,HF_TOKEN,NEMO_EVALUATOR_TELEMETRY_LEVEL", "--no-container-mount-home",
                   *PROGRAM]),
        ("enroot", ["enroot", "start", "--mount", "/h:/h", "--mount", "/lustre:/lustre", "--env", "ADAPTER_PORT",
                    "--env", "HF_TOKEN", "--env", "NEMO_EVALUATOR_TELEMETRY_LEVEL", "<sqsh>", *PROGRAM]),
        ("apptainer", ["apptainer", "exec", "--no-home", "--bind", "/h:/h", "--bind", "/lustre:/lustre",
                       f"docker://{SIMPLE_EVALS}", *PROGRAM]),
    ],
)
def test_the_harness_command_line_for_each_runner_from_the_compiled_plan(planner, runner: str, expected: list[str]) -> None:
    """The exact argv the evaluation step runs, from job.yaml's task entry and eval.yaml's execution as the plan
    compiles them, with the names `run_harness` passes: pyxis and enroot start the squashed file, apptainer the
    registry image (it passes the environment itself); the harness folder is mounted at its own path, then the
    evaluation's mounts; no GPU, no home."""
    plan = planner("default", [f"execution.container_runner={runner}"], tasks=["AIME_2025"])
    mp = plan.model("demo_latest")
    container = harness.HarnessContainer.of(mp.tasks["AIME_2025"]["container"], mp.eval["execution"], ["HF_TOKEN"])
    env_names = [*harness.in_container(resolve("AIME_2025")).env, "ADAPTER_PORT"]
    argv = container.argv(Path("/h/run.yml"), binds=(Path("/h"),), env_names=env_names)
    sqsh = str(compile_.harness_image(plan.execution, SIMPLE_EVALS).path) if runner != "apptainer" else ""
    assert argv == [a.replace("<sqsh>", sqsh) for a in expected]


RECORDER = """#!{python}
import json, os, pathlib, sys
import yaml
config = sys.argv[sys.argv.index("--run_config") + 1]
out = pathlib.Path(yaml.safe_load(open(config))["config"]["output_dir"])
pathlib.Path({seen!r}).write_text(json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ)}}))
(out / "results.yml").write_text("results: {{}}\\n")
"""


def test_run_harness_starts_the_container_with_its_own_harness_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run_harness` with a container: the run config asks the container's harness for the task as it defines it
    (no lm-eval args, no tokenizer from here), the harness folder is mounted, the variables go by name (not
    this environment's PATH, which would hide the image's programs), no hub check here."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "enroot").write_text(RECORDER.format(python=sys.executable, seen=str(tmp_path / "seen.json")))
    (bin_dir / "enroot").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub is off here: the container's harness decides
    container = harness.HarnessContainer("enroot", "/images/simple-evals.sqsh", mounts={"/lustre": "/lustre"}, env_names=("JUDGE_API_KEY",))
    out = tmp_path / "harness"
    harness.run_harness(
        resolve("AIME_2025"), None, endpoint_url="http://127.0.0.1:9/v1/chat/completions", model_id="m",
        tokenizer_dir=tmp_path / "no-tokenizer-here", params={"limit_samples": 2, "extra": {}}, output_dir=out,
        container=container,
    )
    seen = json.loads((tmp_path / "seen.json").read_text())
    config = str(out / harness.RUN_CONFIG)
    assert seen["argv"] == ["start", "--mount", f"{out}:{out}", "--mount", "/lustre:/lustre", "--env", "ADAPTER_PORT",
                            "--env", "JUDGE_API_KEY", "--env", "NEMO_EVALUATOR_TELEMETRY_LEVEL", "/images/simple-evals.sqsh",
                            *harness.IN_CONTAINER, config]
    run = yaml.safe_load(Path(config).read_text())
    assert run["config"]["type"] == "AIME_2025" and run["config"]["params"] == {"limit_samples": 2, "extra": {}}
    assert run["target"]["api_endpoint"]["type"] == "chat"
    assert seen["env"]["NEMO_EVALUATOR_TELEMETRY_LEVEL"] == "0"
