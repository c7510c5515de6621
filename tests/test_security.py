"""No config value reaches a shell, no secret reaches a file: payloads and sentinels through the real snakemake CLI.

Two profiles: `profiles/local` (run: jobs in Snakemake's own threads) and the same without `force-use-threads`,
with which Snakemake's local executor re-invokes itself through /bin/sh for every job, pasting its --config values
into that command line (snakemake/snakemake#2981): the path where a quote in a value used to run. Each payload
either works literally (the compiled files hold it byte for byte) or is refused in one line, and the marker file
the payload would create never appears. Refusals happen when the Snakefile is loaded, before any job exists, so
they run with the re-invoking profile only.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import SHARED_BENCHMARKS, copy_workflow, error_line, make_checkpoint, nemotron, snakemake

MARK = "PWNED"
# Every shell metacharacter of the issue: quotes, command substitution both ways, a separator, a comment, a newline.
PAYLOAD = f"q'; touch {MARK} #\"`touch {MARK}`$(touch {MARK});touch {MARK}\nnl"
ONE_LINE = PAYLOAD.replace("\n", " ")  # for file and folder names the registry and a target path must take


def no_threads_profile(work: Path) -> str:
    """profiles/local without force-use-threads: every job is a Snakemake re-invoked through /bin/sh."""
    profile = work / "profiles" / "reinvoke"
    profile.mkdir()
    text = (work / "profiles" / "local" / "config.v8+.yaml").read_text()
    assert "force-use-threads: true" in text
    (profile / "config.v8+.yaml").write_text("\n".join(l for l in text.splitlines() if "force-use-threads" not in l) + "\n")
    return "profiles/reinvoke"


def mirror_copy(folder: Path) -> Path:
    """A data mirror at `folder`: links to the shared mirror's benchmark folders."""
    if not SHARED_BENCHMARKS.is_dir():
        pytest.skip(f"no benchmark mirror at {SHARED_BENCHMARKS}")
    folder.mkdir()
    for entry in SHARED_BENCHMARKS.iterdir():
        (folder / entry.name).symlink_to(entry)
    return folder


def assert_nothing_ran(work: Path) -> None:
    assert not list(work.rglob(MARK)) and not (work.parent / MARK).exists(), "a payload ran"


@pytest.mark.parametrize("reinvoke", [False, True], ids=["threads", "reinvoked"])
def test_payloads_work_literally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reinvoke: bool) -> None:
    """Config path, env.toml profile name, an override's value, the mirror path and a manifest's `source`."""
    monkeypatch.delenv("NEMOTRON_DATA_MIRROR", raising=False)
    work = copy_workflow(tmp_path)
    profile = no_threads_profile(work) if reinvoke else "profiles/local"
    config = work / f"cfg{PAYLOAD}.yaml"
    shutil.copy(work / "configs" / "local.yaml", config)
    profile_name = f"prof{PAYLOAD}"
    (work / "env.toml").write_text(f"[{json.dumps(profile_name)}]\nnote = {json.dumps(PAYLOAD)}\n")
    mirror = mirror_copy(work / f"mirror{ONE_LINE}")
    overrides = [f"+run.env.other={PAYLOAD}", f"data.mirror={mirror}"]

    # --config strips quotes and cuts a plain YAML value at ' #': values like these travel in a --configfile
    # (or in the request file `nemotron eval` writes); lists survive --config as JSON.
    values = work / "values.yaml"
    values.write_text(yaml.safe_dump({"eval_config": str(config), "env_profile": profile_name}))
    proc = snakemake(work, "build/smollm2_latest/eval.yaml", "data/openbookqa", "--configfile", str(values), "--config",
                     f"overrides={json.dumps(overrides)}", "tasks=[openbookqa]", profile=profile)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_nothing_ran(work)
    job = yaml.safe_load((work / "build/smollm2_latest/job.yaml").read_text())
    assert job["run"]["env"]["note"] == PAYLOAD and job["run"]["env"]["other"] == PAYLOAD
    assert job["run"]["compose"]["eval_config"] == str(config) and job["run"]["compose"]["env_profile"] == profile_name
    assert job["data"]["mirror"] == str(mirror)
    manifest_file = work / "data/openbookqa/manifest.json"
    assert json.loads(manifest_file.read_text())["source"] == f"mirror:{mirror}"
    if reinvoke:  # the jobs were Snakemakes started through a shell, handed a request file
        requests = list((work / ".snakemake/nemotron/requests").iterdir())
        assert len(requests) == 1 and yaml.safe_load(requests[0].read_text())["overrides"] == overrides

    # An edited manifest names where the data came from: with no mirror configured, its files are the staging's
    # inputs (a dry run: Snakemake deletes the staged folder, manifest included, before a forced job starts).
    other = mirror_copy(work / f"other{ONE_LINE}")
    manifest = json.loads(manifest_file.read_text())
    manifest_file.write_text(json.dumps({**manifest, "source": f"mirror:{other}"}))
    proc = snakemake(work, "-n", "data/openbookqa", "--forcerun", "stage_dataset", "--configfile", str(values),
                     profile=profile)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{other}/openbookqa/Main/train.jsonl" in proc.stdout
    assert_nothing_ran(work)


REFUSED = [
    # (what, eval_config, overrides/config args, target, the one line names)
    ("image reference", "default", {"overrides": [f"deployment.image=nvcr.io/x:{PAYLOAD}"]}, "build/demo_latest/eval.yaml", "deployment.image="),
    ("explicit checkpoint path", "local", {"overrides": ["deployment.checkpoint_path={ck}"]}, "build/demo_latest/eval.yaml", "deployment.checkpoint_path="),
    ("task filter", "local", {"tasks": [f"hellaswag{PAYLOAD}"]}, "build/smollm2_latest/eval.yaml", "task filter: 'hellaswag"),
    ("task name", "local", {"overrides": [f"evaluation.tasks.0.name=mmlu{PAYLOAD}"]}, "build/smollm2_latest/eval.yaml", "evaluation.tasks.0.name: unknown task"),
    ("artifact name in the target", "local", {}, f"build/demo{ONE_LINE}_latest/eval.yaml", "is not a valid artifact spec"),
    ("alias in the target", "local", {}, f"build/demo_latest{ONE_LINE}/eval.yaml", "is not a valid artifact spec"),
    ("run.model", "local", {"overrides": [f"run.model=demo{PAYLOAD}:latest"]}, "build/smollm2_latest/eval.yaml", "run.model="),
    ("unquoted eval_config", None, {}, "build/smollm2_latest/eval.yaml", "eval_config: "),
]


@pytest.mark.parametrize(("what", "eval_config", "args", "target", "expected"), REFUSED, ids=[r[0] for r in REFUSED])
def test_payloads_are_refused_in_one_line(tmp_path: Path, what: str, eval_config: str | None, args: dict, target: str, expected: str) -> None:
    work = copy_workflow(tmp_path)
    profile = no_threads_profile(work)
    ck = make_checkpoint(tmp_path / f"ck{ONE_LINE}")
    nemotron(work, "artifacts", "add", "demo", str(make_checkpoint(tmp_path / "plain")))
    config = [f"eval_config={eval_config}"] if eval_config else [f"eval_config={work}/cfg{ONE_LINE}.yaml"]
    if eval_config is None:
        shutil.copy(work / "configs/local.yaml", work / f"cfg{ONE_LINE}.yaml")  # unquoted, YAML cuts it at ' #'
    for key, value in args.items():
        config.append(f"{key}={json.dumps([v.format(ck=ck) for v in value])}")
    proc = snakemake(work, target, "--config", *config, profile=profile)
    assert proc.returncode != 0
    assert expected in error_line(proc)
    assert not (work / "build").exists()
    assert_nothing_ran(work)


def test_registry_refuses_payload_names_and_aliases(tmp_path: Path) -> None:
    ck = make_checkpoint(tmp_path / "ck")
    for args, expected in ((["add", f"demo{PAYLOAD}", str(ck)], "artifact name: "),
                           (["add", "demo", str(ck), "--alias", f"a{PAYLOAD}"], "alias "),
                           (["add", "demo", str(make_checkpoint(tmp_path / f"ck{ONE_LINE}"))], "is not an absolute path of letters"),
                           (["add", "demo", str(make_checkpoint(tmp_path / "a,b"))], "is not an absolute path of letters")):
        proc = nemotron(tmp_path, "artifacts", *args)
        assert proc.returncode != 0 and expected in error_line(proc)
    assert not (tmp_path / "artifacts").exists()
    assert not list(tmp_path.rglob(MARK))


# --- secrets ----------------------------------------------------------------------------------------------------

SECRET_VARS = ("WANDB_API_KEY", "HF_TOKEN", "OPENAI_API_KEY", "DB_PASSWORD", "OPENAI_KEY", "DB_PASS", "PGPASSWORD", "CI_JOB_JWT")


def files_holding(roots: list[Path], needles: list[str]) -> list[str]:
    found = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*") if root.exists() else []:
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                found += [f"{path}: {n[:12]}..." for n in needles if n.encode() in data]
    return found


def test_secrets_by_name_reach_no_file(tmp_path: Path) -> None:
    """The four variables set to unique values; the config names them (host:, runtime:); compile with re-invoked
    jobs and a dry run of the results: no file under build/, results/, logs/, runs/ or .snakemake/ holds a value."""
    sentinels = {name: f"sentinel-{name.lower()}-{uuid.uuid4().hex}" for name in SECRET_VARS}
    work = copy_workflow(tmp_path)
    profile = no_threads_profile(work)
    by_name = ["+deployment.env_vars.HF_TOKEN=host:HF_TOKEN", "+env_vars.DB_PASSWORD=host:DB_PASSWORD",
               "+evaluation.env_vars.OPENAI_API_KEY=runtime:OPENAI_API_KEY"]
    args = ("--config", f"overrides={json.dumps(by_name)}")
    built = snakemake(work, "build/smollm2_latest/eval.yaml", *args, profile=profile, env=sentinels)
    assert built.returncode == 0, built.stderr[-3000:]
    dry = snakemake(work, "-n", "results/smollm2_latest/summary.json", *args, profile=profile, env=sentinels)
    assert dry.returncode == 0, dry.stderr[-3000:]
    job = yaml.safe_load((work / "build/smollm2_latest/job.yaml").read_text())
    assert job["deployment"]["env_vars"]["HF_TOKEN"] == "host:HF_TOKEN"  # the name travels, not the value
    looked_at = [work / d for d in ("build", "results", "logs", "runs", ".snakemake")]
    assert list((work / ".snakemake/metadata").iterdir()) and list((work / ".snakemake/nemotron/requests").iterdir())
    assert list((work / ".snakemake/log").iterdir()) and list((work / "logs").rglob("*.log"))
    assert files_holding(looked_at, list(sentinels.values())) == []
    for proc in (built, dry):
        assert not any(s in proc.stdout + proc.stderr for s in sentinels.values())


SPELLINGS = [
    ("oc.env with a space", ["+run.env.k=${oc.env: WANDB_API_KEY}"], None, "${oc.env:WANDB_API_KEY}"),
    ("oc.env quoted", ["+run.env.k=${oc.env:'HF_TOKEN'}"], None, "${oc.env:HF_TOKEN}"),
    ("oc.env nested", ["+run.env.n=DB_PASSWORD", "+run.env.k=${oc.env:${run.env.n}}"], None, "${oc.env:DB_PASSWORD}"),
    ("oc.env in a default", ["+run.env.k=${oc.env:UNSET_VAR_X,${oc.env:OPENAI_API_KEY}}"], None, "${oc.env:OPENAI_API_KEY}"),
    ("literal under a secret key", ["+run.env.password={DB_PASSWORD}"], None, "config key run.env.password holds a secret value"),
    ("lit: in deployment.env_vars", ["+deployment.env_vars.HF_TOKEN=lit:{HF_TOKEN}"], None, "deployment.env_vars.HF_TOKEN=host:HF_TOKEN"),
    ("lit: in top-level env_vars", ["+env_vars.HF_TOKEN=lit:{HF_TOKEN}"], None, "env_vars.HF_TOKEN=host:HF_TOKEN"),
    ("lit: in evaluation.env_vars", ["+evaluation.env_vars.OPENAI_API_KEY=lit:{OPENAI_API_KEY}"], None,
     "evaluation.env_vars.OPENAI_API_KEY=host:OPENAI_API_KEY"),
    ("env.toml [wandb] api_key", [], '[wandb]\napi_key = "{WANDB_API_KEY}"\n', "env.toml: [wandb] api_key holds a secret value"),
    ("env.toml profile token", [], '[p]\ntoken = "{HF_TOKEN}"\n', "env.toml: [p] token holds a secret value"),
    # names no list of secret names held: read from the environment only from an allowlist, or found by shape
    ("oc.env CI_JOB_JWT", ["+run.env.k=x${oc.env:CI_JOB_JWT}"], None, "env_vars: CI_JOB_JWT: host:CI_JOB_JWT"),
    ("env.toml URL with a password", [], '[p]\nregistry = "https://me:{PGPASSWORD}@r.example.org"\n',
     "env.toml: [p] registry holds a secret value"),
]


@pytest.mark.parametrize(("what", "overrides", "env_toml", "expected"), SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_each_secret_spelling_is_refused_in_one_line(tmp_path: Path, what: str, overrides: list[str], env_toml: str | None, expected: str) -> None:
    sentinels = {name: f"sentinel-{name.lower()}-{uuid.uuid4().hex}" for name in SECRET_VARS}
    work = copy_workflow(tmp_path)
    values = [o if "${" in o else o.format(**sentinels) for o in overrides]  # literal spellings hold the value itself
    args = ["--config", f"overrides={json.dumps(values)}"]
    if env_toml is not None:
        (work / "env.toml").write_text(env_toml.format(**sentinels))
        args.append("env_profile=p" if "[p]" in env_toml else "env_profile=null")
    proc = snakemake(work, "build/smollm2_latest/eval.yaml", *args, profile=no_threads_profile(work), env=sentinels)
    assert proc.returncode != 0
    line = error_line(proc)
    assert expected in line, line
    assert not (work / "build").exists() and not (work / ".snakemake/nemotron").exists()
    assert not any(s in proc.stdout + proc.stderr for s in sentinels.values())
    assert files_holding([work / d for d in ("logs", "results", "runs", ".snakemake")], list(sentinels.values())) == []
