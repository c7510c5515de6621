"""W&B export: the real wandb library offline (read back with wandb's own reader), lineage against a fake
run, secrets, skipping, and bad input.

No W&B server is reachable here: online behaviour (use_artifact of the model artifact, a rejected API key)
is tested with a fake run object and a monkeypatched `wandb.login`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nemotron_eval.core.errors import UserError
from nemotron_eval.exporters import wandb as export
from nemotron_eval.evaluate.results import summarize
from nemotron_eval.core.secrets import api_key_names, looks_secret, redact, scrub_env_values, secret_env_names

FIXTURES = Path(__file__).parent / "fixtures" / "results"
MODEL = "smollm2_latest"
TASKS = ("hellaswag", "openbookqa")
BIN = Path(sys.executable).parent
WANDB_CFG = {"entity": "nemotron-team", "project": "evals", "tags": ["nightly"]}
AUTO_EXPORT = {"enabled": True, "destinations": ["wandb"]}
# Sentinels: a W&B key in a valid format (wandb checks the format), an HF token, an endpoint key.
WANDB_KEY = "sentinelwandbkey" + "0123456789abcdef" * 3
HF_TOKEN = "hf_sentinelHFtoken4242424242"
ENDPOINT_KEY = "sentinel-endpoint-key-777777"


# --- helpers -------------------------------------------------------------------------------------


def workdir(tmp_path: Path, registry: str = "wandb") -> Path:
    """A pipeline working directory: results/{model}/{task}.json + summary, and the harness folders `raw` names."""
    work = tmp_path / "work"
    shutil.copytree(FIXTURES / "raw", work / "raw")
    out = work / "results" / MODEL
    out.mkdir(parents=True)
    for task in TASKS:
        result = json.loads((FIXTURES / MODEL / f"{task}.json").read_text())
        result["model"]["registry"] = registry
        if registry != "wandb":
            result["model"]["qualified_name"] = None
        (out / f"{task}.json").write_text(json.dumps(result, indent=2))
    summarize(result_paths(work), out / "summary.json", out / "summary.md")
    return work


def result_paths(work: Path) -> list[Path]:
    return [work / "results" / MODEL / f"{t}.json" for t in TASKS]


def eval_config(work: Path, destinations: list[str] | None = None, wandb: dict[str, Any] | None = None, enabled: bool = True) -> Path:
    cfg = {
        "execution": {"auto_export": {"enabled": enabled, "destinations": ["wandb"] if destinations is None else destinations}},
        "target": {"api_endpoint": {"api_key_name": "MY_ENDPOINT_KEY"}},
        "export": {"wandb": WANDB_CFG if wandb is None else wandb},
    }
    path = work / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli_args(work: Path) -> list[str]:
    """The export step's arguments, as the export_model rule passes them."""
    out = work / "results" / MODEL
    return ["export", "--dest", "wandb", "--config", str(work / "eval.yaml"), "--summary", str(out / "summary.json"),
            "--out", str(out / "wandb.json"), "--log", str(work / "logs" / "export.log"), *[str(p) for p in result_paths(work)]]


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No credentials, every wandb folder (HOME's included) under tmp_path."""
    drop = ("WANDB_", "HF_TOKEN", "NETRC")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(HOME=str(tmp_path / "home"), WANDB_DIR=str(tmp_path / "wandb"), NETRC=str(tmp_path / "no-netrc"),
               NEMO_EVALUATOR_TELEMETRY_LEVEL="0")
    (tmp_path / "wandb").mkdir(exist_ok=True)
    env.update(extra)
    return env


def run_cli(work: Path, env: dict[str, str], code: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh process (wandb keeps process-wide state; every test gets its own)."""
    cmd = [str(BIN / "nemotron-step"), *cli_args(work)] if code is None else [sys.executable, "-c", code]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)


def leet(run_dir: str, *flags: str) -> str:
    """wandb's own reader of an offline run's transaction log (.wandb): `wandb leet inspect`."""
    proc = subprocess.run([str(BIN / "wandb"), "leet", "inspect", *flags, run_dir], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def read_offline_run(run_dir: str) -> dict[str, Any]:
    run: dict[str, Any] = json.loads(leet(run_dir, "--summary", "--json"))
    records = [json.loads(line) for line in leet(run_dir, "--json").splitlines() if line.strip()]
    run["artifacts"] = [r["artifact"] for r in records if r["type"] == "artifact"]
    return run


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the real wandb, offline ---------------------------------------------------------------------


def test_offline_export_logs_every_result_value(tmp_path: Path) -> None:
    work = workdir(tmp_path)
    eval_config(work)
    results_before = tree_bytes(work / "results")
    t0 = time.monotonic()
    proc = run_cli(work, clean_env(tmp_path))  # no credentials, no WANDB_MODE: offline by default
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr

    receipt = json.loads((work / "results" / MODEL / "wandb.json").read_text())
    run_dir = receipt["run"]["dir"]
    assert receipt["exported"] and receipt["mode"] == "offline"
    assert "no W&B credentials" in receipt["mode_reason"]
    assert receipt["offline_dirs"] == [run_dir] and Path(run_dir, f"run-{receipt['run']['id']}.wandb").is_file()
    assert receipt["sync_command"] == f"wandb sync {run_dir}"
    assert receipt["run"]["name"] == "eval-smollm2-v1" and receipt["run"]["url"] is None
    assert receipt["lineage"] == {
        "model_artifact": "nemotron-team/checkpoints/smollm2:v1", "linked": False,
        "reason": receipt["lineage"]["reason"],
    } and "offline" in receipt["lineage"]["reason"]
    # One line on stderr: offline, and the command to upload later.
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "offline" in lines[0] and lines[0].endswith(f"wandb sync {run_dir}"), proc.stderr
    # The results were only read.
    assert {k: v for k, v in tree_bytes(work / "results").items() if not k.endswith("wandb.json")} == results_before

    run = read_offline_run(run_dir)
    assert (run["entity"], run["project"], run["name"], run["state"]) == ("nemotron-team", "evals", "eval-smollm2-v1", "finished")
    summary = run["summary"]
    for path in result_paths(work):
        result = json.loads(path.read_text())
        task = result["task"]
        for metric, score in result["metrics"].items():
            assert summary[f"{task}/{metric}"] == score["value"]
            assert summary[f"{task}/{metric}_stderr"] == score["stderr"]
            assert summary[f"{task}_{metric}"] == score["value"]  # the launcher exporter's name for it
        assert summary[f"{task}/n_samples"] == result["n_samples"]
        assert summary[f"{task}/duration_s"] == result["duration_s"]
        provenance = run["config"]["tasks"][task]
        for key in ("config_sha256", "data", "deployment", "params", "versions", "started_at", "finished_at", "raw"):
            assert provenance[key] == result[key], key
        assert run["config"]["model"] == result["model"]
    assert summary["results_table"]["_type"] == "table-file" and summary["results_table"]["nrows"] == len(TASKS)

    (evaluation,) = [a for a in run["artifacts"] if a["type"] == "evaluation"]
    assert evaluation["name"] == "eval-smollm2"
    files = {c["path"]: c["local_path"] for c in evaluation["manifest"]["contents"]}
    assert set(files) >= {"results/hellaswag.json", "results/openbookqa.json", "summary.json",
                          "harness/hellaswag/results.yml", "harness/openbookqa/run_config.yml"}
    assert Path(files["results/hellaswag.json"]).read_bytes() == (work / "results" / MODEL / "hellaswag.json").read_bytes()
    assert json.loads(evaluation["metadata"])["model_artifact"] == "nemotron-team/checkpoints/smollm2:v1"
    print(f"offline export of {len(TASKS)} tasks: {receipt['duration_s']} s inside export_model, {elapsed:.1f} s for the CLI process")


def test_no_secret_reaches_any_file(tmp_path: Path) -> None:
    """User-set WANDB_MODE=offline with a key present: offline (respected), and no sentinel in any file."""
    work = workdir(tmp_path)
    eval_config(work)
    # A harness log that echoes a secret: copied into the artifact, it must come out scrubbed.
    raw_config = work / "raw" / MODEL / "hellaswag" / "run_config.yml"
    raw_config.write_text(raw_config.read_text() + f"# token seen: {HF_TOKEN} {ENDPOINT_KEY}\n")
    env = clean_env(tmp_path, WANDB_MODE="offline", WANDB_API_KEY=WANDB_KEY, HF_TOKEN=HF_TOKEN, MY_ENDPOINT_KEY=ENDPOINT_KEY)
    proc = run_cli(work, env)
    assert proc.returncode == 0, proc.stderr
    receipt = json.loads((work / "results" / MODEL / "wandb.json").read_text())
    assert receipt["mode"] == "offline" and receipt["mode_reason"] == "WANDB_MODE=offline is set"
    assert Path(receipt["run"]["dir"]).is_relative_to(tmp_path)

    checked = 0
    for path in tmp_path.rglob("*"):
        if path.is_file() and path != raw_config:
            data = path.read_bytes()
            checked += 1
            for sentinel in (WANDB_KEY, HF_TOKEN, ENDPOINT_KEY):
                assert sentinel.encode() not in data, f"{sentinel[:12]}... found in {path}"
    for text in (proc.stdout, proc.stderr):
        assert WANDB_KEY not in text and HF_TOKEN not in text
    assert checked > 20  # the run folder, logs, artifact staging, receipt were all looked at


def test_a_w_and_b_service_address_inherited_from_an_ended_process_is_not_joined(tmp_path: Path) -> None:
    """wandb puts the address of the service it starts into WANDB_SERVICE for children to join; a step started
    by a process that has ended since (the submitting `nemotron`, a test worker) inherits a dead address. The
    export starts its own service and says nothing of it."""
    work = workdir(tmp_path)
    eval_config(work)
    dead = tmp_path / "gone" / "socket"
    proc = run_cli(work, clean_env(tmp_path, WANDB_SERVICE=f"3-{os.getpid()}-unix-{dead}"))
    assert proc.returncode == 0, proc.stderr
    receipt = json.loads((work / "results" / MODEL / "wandb.json").read_text())
    assert receipt["exported"] and receipt["mode"] == "offline"
    assert read_offline_run(receipt["run"]["dir"])["state"] == "finished"


def test_export_twice_resumes_the_same_run(tmp_path: Path) -> None:
    work = workdir(tmp_path)
    eval_config(work)
    receipts = []
    for _ in range(2):
        assert run_cli(work, clean_env(tmp_path)).returncode == 0
        receipts.append(json.loads((work / "results" / MODEL / "wandb.json").read_text()))
    assert receipts[0]["run"]["id"] == receipts[1]["run"]["id"]
    assert receipts[0]["run"]["dir"] != receipts[1]["run"]["dir"]  # two offline folders; `wandb sync` merges them


# --- lineage, against a fake run (no server: wandb refuses use_artifact offline) ---------------------


class FakeArtifact:
    def __init__(self, name: str, type: str, metadata: dict[str, Any], description: str) -> None:
        self.name, self.type, self.metadata = name, type, metadata
        self.files: dict[str, bytes] = {}

    def add_file(self, local_path: str, name: str) -> None:
        self.files[name] = Path(local_path).read_bytes()


class FakeTable:
    def __init__(self, columns: list[str], data: list[list[Any]]) -> None:
        self.columns, self.data = columns, data


class FakeWandb:
    Artifact = FakeArtifact
    Table = FakeTable


class FakeRun:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def use_artifact(self, name: str) -> None:
        self.calls.append(("use_artifact", name))

    def log(self, data: dict[str, Any]) -> None:
        self.calls.append(("log", data))

    def log_artifact(self, artifact: FakeArtifact) -> None:
        self.calls.append(("log_artifact", artifact))


def payload_for(work: Path) -> export.Payload:
    paths = result_paths(work)
    summary = work / "results" / MODEL / "summary.json"
    return export.build_payload(export.load_results(paths), json.loads(summary.read_text()), paths, summary,
                                export.parse_config(WANDB_CFG))


def test_lineage_uses_the_model_artifact_then_logs_the_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = workdir(tmp_path)
    monkeypatch.chdir(work)
    run = FakeRun()
    out = export.log_evaluation(run, FakeWandb, payload_for(work), offline=False, staging=tmp_path / "staging")
    assert [c[0] for c in run.calls] == ["use_artifact", "log", "log_artifact"]
    assert run.calls[0] == ("use_artifact", "nemotron-team/checkpoints/smollm2:v1")
    logged, artifact = run.calls[1][1], run.calls[2][1]
    assert logged["hellaswag/acc"] == 0.45 and logged["openbookqa/acc_norm_stderr"] == 0.10513149660756933
    table = logged[export.TABLE_KEY]
    assert table.columns[:4] == ["task", "harness_task", "n_samples", "duration_s"]
    assert [row[0] for row in table.data] == list(TASKS) and table.data[0][table.columns.index("acc")] == 0.45
    assert (artifact.name, artifact.type) == ("eval-smollm2", "evaluation")
    assert artifact.metadata["model_artifact"] == "nemotron-team/checkpoints/smollm2:v1"
    assert artifact.files["results/hellaswag.json"] == (work / "results" / MODEL / "hellaswag.json").read_bytes()
    assert out["lineage"] == {"model_artifact": "nemotron-team/checkpoints/smollm2:v1", "linked": True}
    assert out["logged"]["artifact"]["uses"] == "nemotron-team/checkpoints/smollm2:v1"


@pytest.mark.parametrize(("registry", "offline"), [("wandb", True), ("local", False), ("explicit", False)])
def test_no_use_artifact_offline_or_for_non_wandb_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: str, offline: bool) -> None:
    work = workdir(tmp_path, registry=registry)
    monkeypatch.chdir(work)
    run = FakeRun()
    out = export.log_evaluation(run, FakeWandb, payload_for(work), offline=offline, staging=tmp_path / "staging")
    assert [c[0] for c in run.calls] == ["log", "log_artifact"]
    assert out["lineage"]["linked"] is False and out["lineage"]["reason"]


def test_a_missing_model_artifact_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = workdir(tmp_path)
    monkeypatch.chdir(work)

    class Missing(FakeRun):
        def use_artifact(self, name: str) -> None:
            raise ValueError(f"artifact {name} not found\nmore detail")

    with pytest.raises(UserError, match=r"model.qualified_name='nemotron-team/checkpoints/smollm2:v1'.*not found$"):
        export.log_evaluation(Missing(), FakeWandb, payload_for(work), offline=False, staging=tmp_path / "staging")


def test_without_harness_folders_the_result_json_is_still_exported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = workdir(tmp_path)
    shutil.rmtree(work / "raw")
    monkeypatch.chdir(work)
    payload = payload_for(work)
    assert "hellaswag/acc" in payload.metrics and "hellaswag_acc" not in payload.metrics
    assert not any(name.startswith("harness/") for name in payload.files)
    assert len(payload.notes) == 2 and "raw='raw/smollm2_latest/hellaswag'" in payload.notes[0]


# --- skipping: no wandb code runs -------------------------------------------------------------------


SKIP_PROBE = textwrap.dedent(
    """
    import json, sys
    from nemotron_eval.pipeline.steps import main
    rc = main(sys.argv[1:])
    print(json.dumps({"rc": rc, "imported": sorted(m for m in sys.modules if m.split(".")[0] in ("wandb", "nemo_evaluator_launcher"))}))
    """
)


@pytest.mark.parametrize(
    ("destinations", "enabled", "mode", "reason"),
    [
        ([], True, None, "'wandb' is not in execution.auto_export.destinations ([])"),
        (["mlflow"], True, None, "'wandb' is not in execution.auto_export.destinations (['mlflow'])"),
        (["wandb"], False, None, "execution.auto_export.enabled is false"),
        (["wandb"], True, "disabled", "WANDB_MODE=disabled is set"),
    ],
)
def test_skipped_export_imports_no_wandb(tmp_path: Path, destinations: list[str], enabled: bool, mode: str | None, reason: str) -> None:
    work = workdir(tmp_path)
    eval_config(work, destinations=destinations, enabled=enabled, wandb={})  # no entity/project needed when skipped
    env = clean_env(tmp_path, **({"WANDB_MODE": mode} if mode else {}))
    proc = subprocess.run([sys.executable, "-c", SKIP_PROBE, *cli_args(work)], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"rc": 0, "imported": []}
    receipt = json.loads((work / "results" / MODEL / "wandb.json").read_text())
    assert receipt["exported"] is False and receipt["mode"] is None and receipt["reason"] == reason
    assert not any((tmp_path / "wandb").iterdir()) and "Traceback" not in proc.stderr and "Warning" not in proc.stderr


# --- bad input ------------------------------------------------------------------------------------


def export_in_process(work: Path, wandb_section: dict[str, Any] | None = None) -> dict[str, Any]:
    out = work / "results" / MODEL
    return export.export_model(result_paths(work), out / "summary.json", out / "wandb.json",
                               WANDB_CFG if wandb_section is None else wandb_section, AUTO_EXPORT,
                               wandb_dir=work.parent / "wandb")


@pytest.mark.parametrize("key", ["entity", "project"])
def test_missing_entity_or_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    work = workdir(tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)  # checked before wandb is needed
    section = {**WANDB_CFG, key: None}
    with pytest.raises(UserError, match=rf"^export\.wandb\.{key} is not set"):
        export_in_process(work, section)
    assert not (work / "results" / MODEL / "wandb.json").exists()


def test_config_errors_name_the_key() -> None:
    with pytest.raises(UserError, match=r"export\.wandb\.entitiy: unknown key \(did you mean 'entity'\?\)"):
        export.parse_config({**WANDB_CFG, "entitiy": "x"})
    with pytest.raises(UserError, match=r"export\.wandb\.tags=.*list of strings"):
        export.parse_config({**WANDB_CFG, "tags": [1]})
    with pytest.raises(UserError, match=r"export\.wandb\.name='\{model\}-\{task\}': unknown placeholder \{task\}; valid: \{model\}"):
        export.render("{model}-{task}", export.name_fields({"spec": "rl:latest"}), "export.wandb.name")
    cfg = export.parse_config({**WANDB_CFG, "log_mode": "multi_task"})  # the launcher's key: accepted, unused
    assert cfg.ignored == ("log_mode",) and cfg.name == export.DEFAULT_NAME
    fields = export.name_fields({"spec": "rl:latest", "name": "rl", "version": "v3", "digest": "sha256:abcdef0123456789"})
    assert export.render("{model}-{version}-{digest}", fields, "export.wandb.name") == "rl_latest-v3-abcdef012345"


def test_invalid_api_key_online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], wandb_in_process: Any) -> None:
    """A key the server rejects (simulated: no server here, so wandb.login is monkeypatched to fail as it does)."""
    from wandb.errors import AuthenticationError

    wandb = wandb_in_process

    work = workdir(tmp_path)
    eval_config(work)
    before = tree_bytes(work / "results")
    monkeypatch.delenv("WANDB_MODE")  # the user did not choose: a key is there, so online
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)

    def rejected(**kwargs: Any) -> bool:
        assert kwargs.get("verify") is True
        raise AuthenticationError(f"API key verification failed for key {WANDB_KEY}: invalid API key")

    def no_init(**kwargs: Any) -> None:
        raise AssertionError("wandb.init must not run after a rejected key")

    monkeypatch.setattr(wandb, "login", rejected)
    monkeypatch.setattr(wandb, "init", no_init)
    from nemotron_eval.pipeline.steps import main

    assert main(cli_args(work)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("nemotron:")]
    assert len(lines) == 1 and lines[0].startswith("nemotron: error: W&B did not accept the credentials from WANDB_API_KEY")
    assert WANDB_KEY not in err and "***" in lines[0]
    assert WANDB_KEY not in (work / "logs" / "export.log").read_text()
    assert tree_bytes(work / "results") == before  # untouched, and no receipt: the export reruns next time
    assert not (work / "results" / MODEL / "wandb.json").exists()
    assert os.environ["WANDB_API_KEY"] == WANDB_KEY and "WANDB_MODE" not in os.environ  # environment restored


def test_wandb_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = workdir(tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(UserError, match=r"destinations has 'wandb' but the wandb package is not installed: pip install"):
        export_in_process(work)
    assert not (work / "results" / MODEL / "wandb.json").exists()


def test_bad_wandb_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = workdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "ofline")
    with pytest.raises(UserError, match=r"^WANDB_MODE='ofline': not a W&B mode; valid: online, offline"):
        export_in_process(work)


def test_results_of_two_models_are_refused(tmp_path: Path) -> None:
    work = workdir(tmp_path)
    other = json.loads(result_paths(work)[1].read_text())
    other["model"]["spec"] = "rl:latest"
    result_paths(work)[1].write_text(json.dumps(other))
    with pytest.raises(UserError, match=r"mix models \['rl:latest', 'smollm2:latest'\]"):
        export_in_process(work)


# --- secrets helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["api_key", "apiKey", "WANDB_API_KEY", "hf_token", "HF_TOKEN", "password", "client_secret", "x-api-key", "access_token", "Authorization"])
def test_secret_keys(key: str) -> None:
    assert looks_secret(key)


@pytest.mark.parametrize("key", ["api_key_name", "tokenizer", "tokenizer_backend", "max_tokens", "eos_token_id", "token_file", "key", "model"])
def test_keys_that_are_not_secrets(key: str) -> None:
    assert not looks_secret(key)


def test_redact_nested() -> None:
    cfg: dict[str, Any] = {
        "target": {"api_endpoint": {"api_key_name": "NGC_API_KEY", "api_key": "abc", "url": "http://x"}},
        "env": [{"HF_TOKEN": "hf_x", "other": 1}, "plain"],
        "params": {"extra": {"tokenizer": "/ckpt", "password": None}},
    }
    assert redact(cfg) == {
        "target": {"api_endpoint": {"api_key_name": "NGC_API_KEY", "api_key": "***", "url": "http://x"}},
        "env": [{"HF_TOKEN": "***", "other": 1}, "plain"],
        "params": {"extra": {"tokenizer": "/ckpt", "password": None}},
    }
    assert cfg["target"]["api_endpoint"]["api_key"] == "abc"  # a copy


def test_scrub_env_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    monkeypatch.setenv("MY_ENDPOINT_KEY", ENDPOINT_KEY)
    monkeypatch.setenv("ENDPOINT_CRED_VAR", "an-innocent-looking-name-value")
    monkeypatch.setenv("DB_PASS", "sekret-db-value")
    monkeypatch.setenv("SHORT_TOKEN", "1")
    text = f"key={WANDB_KEY} hf={HF_TOKEN} endpoint={ENDPOINT_KEY} db=sekret-db-value n=1 other=an-innocent-looking-name-value"
    # every name the pipeline refuses to read as a secret is scrubbed (the same rule); others when named
    assert scrub_env_values(text) == "key=*** hf=*** endpoint=*** db=*** n=1 other=an-innocent-looking-name-value"
    assert scrub_env_values(text, ["ENDPOINT_CRED_VAR"]).endswith("other=***")
    assert {"WANDB_API_KEY", "HF_TOKEN", "MY_ENDPOINT_KEY", "SHORT_TOKEN"} <= secret_env_names(["MY_ENDPOINT_KEY"])
    assert api_key_names({"target": {"api_endpoint": {"api_key_name": "NGC_API_KEY"}}, "x": [{"api_key_name": "B"}]}) == ["NGC_API_KEY", "B"]


def test_run_id_follows_content(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text("1")
    b.write_text("2")
    first = export.run_id([a, b])
    assert export.run_id([b, a]) == first and len(first) == 16
    b.write_text("3")
    assert export.run_id([a, b]) != first


@pytest.fixture
def wandb_in_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The real wandb module in this process, its process-wide state (service, settings) undone afterwards."""
    import wandb

    monkeypatch.setenv("WANDB_SERVICE", "")
    monkeypatch.delenv("WANDB_SERVICE")  # wandb.setup() sets it; the monkeypatch unsets it again
    yield wandb
    wandb.teardown()


def test_credentials_from_env_or_netrc_choose_online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wandb_in_process: Any) -> None:
    """The sources `wandb.api.api_key` reads: WANDB_API_KEY, else the netrc login for the W&B host."""
    wandb = wandb_in_process
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    assert export.choose_mode(wandb, None) == ("offline", "no W&B credentials (no WANDB_API_KEY, no netrc login)", None)
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {WANDB_KEY}\n")
    assert export.choose_mode(wandb, None) == ("online", "W&B credentials from netrc", "netrc")
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    assert export.choose_mode(wandb, None)[2] == "WANDB_API_KEY"
    assert export.choose_mode(wandb, "offline") == ("offline", "WANDB_MODE=offline is set", None)


def test_a_run_exports_when_auto_export_asks_and_says_early_what_is_missing(planner) -> None:
    """As in the recipe, a run's targets include the W&B export when execution.auto_export names wandb; its
    settings are checked when the plan is made, not after the evaluation."""
    on = ["execution.auto_export.destinations=[wandb]"]
    assert planner("local").targets() == ["results/smollm2_latest/summary.json"]
    with pytest.raises(UserError, match="export.wandb.entity is not set .*set \\[wandb\\] entity in env.toml"):
        planner("local", on).targets()
    plan = planner("local", [*on, "export.wandb.entity=team", "export.wandb.project=evals"], tasks=["openbookqa"])
    assert plan.targets(per_task=True) == ["results/smollm2_latest/openbookqa.json", "results/smollm2_latest/wandb.json"]
    for key in ("name", "group"):
        with pytest.raises(UserError, match=rf"export.wandb.{key}='eval-{{foo}}': unknown placeholder {{foo}}; valid: "):
            planner("local", [*on, "export.wandb.entity=team", "export.wandb.project=evals",
                              f"+export.wandb.{key}=eval-{{foo}}"]).targets()
