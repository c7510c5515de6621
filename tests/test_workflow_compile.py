"""The compilation chain through the real snakemake CLI: targets, no-op runs, what reruns, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import error_line, nemotron, snakemake

CHAIN = ("merged", "resolved", "job", "eval")


def ckpt(path: Path, content: str) -> Path:
    path.mkdir(parents=True)
    (path / "weights.bin").write_text(content)
    return path


def jobs_that_would_run(proc) -> list[str]:
    """Rule names from a dry run's job list ("rule X:" / "localrule X:" headers)."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    return [line.split()[-1].rstrip(":") for line in out.splitlines() if line.startswith(("rule ", "localrule "))]


def test_chain_noop_alias_move_and_override(workflow: Path, tmp_path: Path) -> None:
    add = nemotron(workflow, "artifacts", "add", "demo", str(ckpt(tmp_path / "ck1", "one")), "--alias", "latest")
    assert add.stdout.strip() == "v1"
    nemotron(workflow, "artifacts", "add", "other", str(ckpt(tmp_path / "ck3", "three")))

    built = snakemake(workflow, "build/demo_latest/eval.yaml", "build/other_latest/eval.yaml")
    assert built.returncode == 0, built.stderr
    for name in CHAIN:
        assert (workflow / f"build/demo_latest/{name}.yaml").is_file()
    ev_text = (workflow / "build/demo_latest/eval.yaml").read_text()
    ev = yaml.safe_load(ev_text)
    assert "run" not in ev and "${" not in ev_text
    assert ev["deployment"]["checkpoint_path"] == str(tmp_path / "ck1")
    resolved = yaml.safe_load((workflow / "build/demo_latest/resolved.yaml").read_text())
    record = resolved["run"]["artifacts"]["model"]
    assert (record["version"], record["registry"], len(record["digest"])) == ("v1", "local", 64)
    assert "run" in yaml.safe_load((workflow / "build/demo_latest/job.yaml").read_text())
    for rule in ("compose_config", "resolve_artifacts", "compile_eval"):
        assert (workflow / f"logs/{rule}/demo_latest.log").is_file()

    noop = snakemake(workflow, "-n", "build/demo_latest/eval.yaml", "build/other_latest/eval.yaml")
    assert "Nothing to be done" in noop.stdout + noop.stderr

    assert nemotron(workflow, "artifacts", "add", "demo", str(ckpt(tmp_path / "ck2", "two"))).stdout.strip() == "v2"
    moved = snakemake(workflow, "-n", "build/demo_latest/eval.yaml", "build/other_latest/eval.yaml")
    assert sorted(jobs_that_would_run(moved)) == ["compile_eval", "resolve_artifacts"]  # demo only, from resolve on
    assert "demo_latest" in moved.stdout and "other_latest" not in moved.stdout.split("Job stats")[-1]

    ov = snakemake(workflow, "build/demo_latest/eval.yaml", "--config",
                   'overrides=["evaluation.nemo_evaluator_config.config.params.parallelism=16"]')
    assert ov.returncode == 0, ov.stderr
    ev = yaml.safe_load((workflow / "build/demo_latest/eval.yaml").read_text())
    assert ev["evaluation"]["nemo_evaluator_config"]["config"]["params"]["parallelism"] == 16
    assert ev["deployment"]["checkpoint_path"] == str(tmp_path / "ck2")

    # Editing a task's override in the YAML reruns the chain from merged.yaml.
    local = workflow / "configs/local.yaml"
    local.write_text(local.read_text().replace("top_p: 0.0", "top_p: 0.5"))
    edited = snakemake(workflow, "-n", "build/demo_latest/eval.yaml", "--config",
                       'overrides=["evaluation.nemo_evaluator_config.config.params.parallelism=16"]')
    assert sorted(jobs_that_would_run(edited)) == ["compile_eval", "compose_config", "resolve_artifacts"]


def env_toml(workflow: Path, text: str) -> None:
    (workflow / "env.toml").write_text(text)


BAD = [
    ("malformed YAML", ["--config", "eval_config=bad.yaml"], {"bad.yaml": "run: [\n"}, "bad.yaml: malformed YAML at line"),
    ("unknown section", ["--config", "eval_config=extra.yaml"], {"extra.yaml": "run: {model: a:latest}\nexprot: {}\n"},
     "unknown top-level section 'exprot' (did you mean 'export'?)"),
    ("unknown task", ["--config", 'tasks=["hellaswag","mmmlu"]'], {}, "task filter: 'mmmlu' is not in the config's evaluation.tasks or the launcher's catalog (did you mean 'mmlu'?); tasks: mmlu,"),
    ("override without =", ["--config", 'overrides=["deployment.dtype"]'], {}, "override 'deployment.dtype': expected KEY=VALUE"),
    ("override unknown key", ["--config", 'overrides=["deployment.dtyp=bfloat16"]'], {}, "unknown key 'deployment.dtyp'"),
    ("invalid model spec", [], {}, "model 'demo' in the target path is not a valid artifact spec"),
    ("unknown artifact", [], {}, "no artifact named 'nope'"),
    ("unknown alias", [], {}, "demo has no version or alias 'best'"),
    ("unknown profile", ["--config", "env_profile=clustr"], {"env.toml": "[cluster]\naccount = 'a'\n"},
     "profile 'clustr' not found (did you mean 'cluster'?); profiles: cluster"),
    ("extends cycle", ["--config", "env_profile=a"], {"env.toml": "[a]\nextends = 'b'\n[b]\nextends = 'a'\n"},
     "extends' cycle: a -> b -> a"),
    ("missing run key", ["--config", 'overrides=["+deployment.x=${run.env.nothing}"]'], {}, "refers to ${run.env.nothing}, which is not defined"),
    ("unknown snakemake key", ["--config", "tsks=[mmlu]"], {}, "'tsks' was unexpected"),
]


@pytest.mark.parametrize(("what", "args", "files", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_fails_in_one_line_and_writes_nothing(workflow: Path, tmp_path: Path, what, args, files, expected) -> None:
    nemotron(workflow, "artifacts", "add", "demo", str(ckpt(tmp_path / "ck", "x")))
    for name, text in files.items():
        (workflow / name).write_text(text)
    target = {"invalid model spec": "build/demo/eval.yaml", "unknown artifact": "build/nope_latest/eval.yaml",
              "unknown alias": "build/demo_best/eval.yaml"}.get(what, "build/demo_latest/eval.yaml")
    proc = snakemake(workflow, target, *args)
    assert proc.returncode != 0
    assert expected in error_line(proc)
    assert not (workflow / "build").exists()


def test_any_launcher_task_compiles(workflow: Path, tmp_path: Path) -> None:
    """A task of the launcher's catalog that this project does not stage (ifeval): accepted, data from the hub."""
    nemotron(workflow, "artifacts", "add", "demo", str(ckpt(tmp_path / "ck", "x")))
    proc = snakemake(workflow, "build/demo_latest/eval.yaml", "--config", 'overrides=["evaluation.tasks=[{name: ifeval}]"]')
    assert proc.returncode == 0, proc.stderr[-2000:]
    ev = yaml.safe_load((workflow / "build/demo_latest/eval.yaml").read_text())
    assert ev["evaluation"]["tasks"] == [{"name": "ifeval"}]
    job = yaml.safe_load((workflow / "build/demo_latest/job.yaml").read_text())
    assert job["run"]["tasks"]["ifeval"]["offline"] is False
    # ifeval asks for a chat endpoint, which the local CPU server does not serve: said before anything runs
    dry = snakemake(workflow, "-n", "results/demo_latest/ifeval.json", "--config", 'overrides=["evaluation.tasks=[{name: ifeval}]"]')
    assert dry.returncode != 0 and "task 'ifeval' needs a chat endpoint" in error_line(dry)


def test_who_and_where_runs_it_recompiles_nothing(workflow: Path, tmp_path: Path) -> None:
    """NVIDIA's recipe config read ${oc.env:HOSTNAME}, USER and PWD: another login node, user or folder no longer
    changes a compiled file (the end-to-end test shows the same for evaluations with results)."""
    nemotron(workflow, "artifacts", "add", "demo", str(ckpt(tmp_path / "ck", "x")))
    assert snakemake(workflow, "build/demo_latest/eval.yaml", "--config", "eval_config=default").returncode == 0
    elsewhere = {"HOSTNAME": "login-other", "USER": "someone-else", "PWD": "/somewhere/else"}
    again = snakemake(workflow, "-n", "build/demo_latest/eval.yaml", "--config", "eval_config=default", env=elsewhere)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_nemotron_ls_tasks(workflow: Path) -> None:
    proc = nemotron(workflow, "ls", "tasks")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    assert len(rows) > 400 and {"ifeval", "gsm8k", "adlr_mmlu"} <= {r[0] for r in rows}
    staged = {r[0]: r[3] for r in rows if r[4] == "yes"}
    assert staged == {"adlr_mmlu": "mmlu", "adlr_arc_challenge_llama_25_shot": "arc_challenge",
                      "adlr_winogrande_5_shot": "winogrande", "hellaswag": "hellaswag", "openbookqa": "openbookqa"}
    offline = nemotron(workflow, "ls", "tasks", "--offline")
    assert len(offline.stdout.splitlines()) == 6
