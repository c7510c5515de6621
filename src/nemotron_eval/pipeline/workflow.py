"""The functions Snakemake rules call, one per rule: each writes its rule's outputs from the plan or from files.

The compile chain (`write_config`, `resolve`, `compile_configs`, the task fingerprints, image references),
staging, the summary and the report run inside Snakemake's process (`run:` rules, local, in threads); the
deployment, the evaluation, the embedded models' conversion, squashing and the export run as `nemotron-step`
processes (`nemotron_eval.pipeline.steps`), which read everything from files.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from nemotron_eval.core import layout, secrets
from nemotron_eval.evaluate import progress
from nemotron_eval.core.errors import UserError
from nemotron_eval.core.io import sha256_bytes, write_text_atomic
from nemotron_eval.pipeline.plan import ModelPlan
from nemotron_eval.core.machine import available_cores
from nemotron_eval.pipeline.slots import Slot, task_slot

log = logging.getLogger("nemotron_eval")
# a harness with no answer from its deployment after this long frees its starting slot all the same (a task whose
# every request is in its cache, a harness that never posts its count)
STARTING_TIMEOUT_S = 120.0


class _ThisThread(logging.Filter):
    """Rules of one Snakemake process run in threads at once: each rule's log gets its own thread's lines, and
    those a helper thread says for it (logged with `extra={"for_thread": <the rule's thread ident>}`)."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "for_thread", record.thread) == self.thread


@contextmanager
def logged(path: str | Path, *, echo: bool = True) -> Iterator[None]:
    """Send this package's log lines to a rule's `log:` file (and stderr when `echo`) while a rule runs; an
    unexpected exception's traceback goes to the log too."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("")
    # Append mode: the harness's logging set-up closes every handler it finds, and a FileHandler in "w" mode
    # then drops records silently instead of reopening its file.
    handlers: list[logging.Handler] = [logging.FileHandler(path, mode="a")]
    if echo:
        handlers.append(logging.StreamHandler(sys.stderr))
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(_ThisThread())
        log.addHandler(h)
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
        for h in handlers:
            log.removeHandler(h)
            h.close()


# --- the compile chain: the plan's fields, written ------------------------------------------------------------


def write_config(mp: ModelPlan, which: str, out: str, log_file: str) -> None:
    """build/{model}/merged.yaml ("merged") from the plan."""
    with logged(log_file):
        write_text_atomic(Path(out), getattr(mp, f"{which}_text"))
        log.info("wrote %s (sha256 %s)", out, mp.digest(which)[:12])


def resolve(mp: ModelPlan, out: str, log_file: str) -> None:
    """build/{model}/resolved.yaml: the checkpoint made available here (a W&B download), then the plan's file."""
    from nemotron_eval.pipeline.compile import materialize

    with logged(log_file):
        materialize(mp.artifact, mp.merged)
        write_text_atomic(Path(out), mp.resolved_text)
        a = mp.artifact
        log.info("resolved %s -> %s %s (digest %s) at %s", mp.spec.spec, a.registry, a.version, str(a.digest)[:19], a.path)


def compile_configs(mp: ModelPlan, job_out: str, eval_out: str, log_file: str) -> None:
    """build/{model}/job.yaml and eval.yaml from the plan."""
    with logged(log_file):
        write_text_atomic(Path(job_out), mp.job_text)
        write_text_atomic(Path(eval_out), mp.eval_text)
        log.info("compiled %s and %s (eval.yaml sha256 %s)", job_out, eval_out, mp.digest("eval")[:12])


def write_task_fingerprint(mp: ModelPlan, task: str, out: str, log_file: str) -> None:
    """build/{model}/tasks/{task}.json: the task's entry of job.yaml's run.tasks (its fingerprint)."""
    with logged(log_file):
        write_text_atomic(Path(out), json.dumps({"task": task, **mp.tasks[task]}, indent=2) + "\n")
        log.info("%s: fingerprint %s", task, mp.tasks[task]["fingerprint"][:16])


# --- data, models, images -------------------------------------------------------------------------------------


def stage(short: str, mirror_dir: str, out: str, log_file: str) -> None:
    """data/{task}: the task's dataset staged from the mirror (or the hub when `mirror_dir` is empty)."""
    from nemotron_eval.data.stage import read_manifest, stage_dataset

    with logged(log_file):
        mirror = Path(mirror_dir) if mirror_dir else None
        log.info("staging %s from %s", short, mirror or "the Hugging Face hub")
        stage_dataset(short, Path(out), mirror=mirror)
        manifest = read_manifest(Path(out))
        log.info("staged %s: %s rows per split, digest %s", short, manifest["splits"], manifest["digest"][:19])
        for note in manifest.get("fallbacks", []):
            log.info("fallback: %s", note)


def prepare_model(name: str, receipt: Path) -> None:
    """models/{name}/ and models/{name}.json: an embedded model converted into a Hugging Face checkpoint."""
    from nemotron_eval.artifacts import embedded

    model = embedded.EMBEDDED[name]
    log.info("building %s: %s (about 30 s the first time)", name, model.description)
    done = embedded.build(name, model.folder, receipt)
    log.info("%s ready at %s (digest %s)", name, done["path"], done["digest"][:19])


def write_image_reference(reference: str, out: str, log_file: str) -> None:
    """build/images/{image}.json: the reference the squash job imports."""
    with logged(log_file):
        write_text_atomic(Path(out), json.dumps({"reference": reference}) + "\n")


def squash(reference_file: Path, out: Path, log_file: Path) -> None:
    """build/images/{image}.sqsh: enroot import of the image its reference file names."""
    from nemotron_eval.deploy.images import squash as enroot_squash
    from nemotron_eval.core.safeload import load_json

    reference = str(load_json(reference_file, "image reference file")["reference"])
    log.info("squashing %s into %s", reference, out)
    enroot_squash(reference, out, log=log_file.with_suffix(".enroot.log"))


# --- evaluation -------------------------------------------------------------------------------------------------


def task_params(eval_cfg: dict[str, Any], name: str, where: Path) -> dict[str, Any]:
    """The harness's config.params for one task: the global params with the task's own override on top."""
    from nemotron_eval.evaluate.overrides import deep_merge

    entries = [t for t in eval_cfg["evaluation"]["tasks"] if t.get("name") == name]
    if not entries:
        names = ", ".join(t.get("name", "?") for t in eval_cfg["evaluation"]["tasks"])
        raise UserError(f"{where}: task {name!r} is not in evaluation.tasks ({names})")
    base = (((eval_cfg["evaluation"].get("nemo_evaluator_config") or {}).get("config") or {}).get("params")) or {}
    own = (((entries[0].get("nemo_evaluator_config") or {}).get("config") or {}).get("params")) or {}
    return deep_merge(base, own)


def harness_environment(eval_cfg: dict[str, Any]) -> dict[str, str]:
    """Top-level `env_vars` and `evaluation.env_vars` (lit:/host:, as the launcher reads them) for the harness."""
    from nemotron_eval.deploy.types import parse_env_vars

    raw = {**(eval_cfg.get("env_vars") or {}), **((eval_cfg.get("evaluation") or {}).get("env_vars") or {})}
    plain, from_host, _ = parse_env_vars(raw, "evaluation.env_vars")
    return {**plain, **{name: os.environ[ref] for name, ref in from_host.items() if ref in os.environ}}


def evaluate(
    task_short: str, eval_yaml: Path, job_yaml: Path, data_dir: Path, endpoint_file: Path,
    deployment_log: Path, out: Path, items_out: Path,
) -> dict[str, Any]:
    """results/{model}/{task}.json and its per-item records (items.jsonl.gz): one task through NeMo Evaluator
    against the model's running deployment. `data_dir` is read when the task is staged (job.yaml says so), else the
    harness reads the hub."""
    from nemotron_eval.evaluate import results
    from nemotron_eval.data import tasks
    from nemotron_eval.data.stage import verify_staged
    from nemotron_eval.deploy import types
    from nemotron_eval.deploy.process import EndpointNotReady
    from nemotron_eval.core.io import log_tail
    from nemotron_eval.deploy.serve import LISTENING, POLL_S, deployment_gone, wait_for_service
    from nemotron_eval.evaluate.harness import HarnessAborted, HarnessContainer, run_harness
    from nemotron_eval.evaluate.output import HarnessError, parse_harness_output

    if str(endpoint_file) == "-":
        raise UserError(
            f"{task_short}: Snakemake reran this evaluation for a reason the plan did not foresee, without starting "
            f"its deployment (smk.evaluation_due); its old result is gone: run the same command again and the "
            f"deployment starts with it")
    eval_bytes = eval_yaml.read_bytes()  # the very bytes used, hashed as read
    cfg = yaml.safe_load(eval_bytes)
    job = yaml.safe_load(job_yaml.read_text())
    entry = job["run"]["tasks"].get(task_short)
    if entry is None:
        raise UserError(f"{job_yaml}: run.tasks has no {task_short!r}; compile it again")
    task = tasks.resolve(entry["name"])
    staged_dir = data_dir if entry["offline"] else None
    model = job["run"]["artifacts"]["model"]
    params = task_params(cfg, entry["name"], eval_yaml)
    extra = dict(params.get("extra") or {})
    tokenizer = Path(str(extra.pop("tokenizer", None) or cfg["deployment"]["checkpoint_path"]))
    params = {**params, "extra": extra}
    # what the deployment needs of the task and of the folder the harness tokenizes with (the local server:
    # a loadable checkpoint), checked again where the step runs
    types.get(cfg["deployment"]["type"]).check_task(task, tokenizer)
    if staged_dir is not None:
        verify_staged(staged_dir)  # before waiting for the deployment; again right before the harness reads it
    # the deployment's own readiness timeout, and a minute for its step to start
    timeout = types.get(cfg["deployment"]["type"]).readiness_timeout(cfg["deployment"]) + 60
    log.info("%s: waiting for the deployment (%s)", task.short, endpoint_file)
    try:  # a deployment that queues requests while it loads (`listening`) is not waited for: the harness starts
        endpoint = wait_for_service(endpoint_file, timeout, listening=True)
    except EndpointNotReady as e:
        raise UserError(f"deployment for {model['spec']} is not available: {e}") from None
    # One harness folder per (model content, task, task config), read from job.yaml: a rerun after an
    # interruption answers from its request cache; a changed model or config never reuses stale answers.
    raw = layout.harness_dir(out.parent.name, task.short, entry["fingerprint"])
    # The CPU server schedules its clients fairly: each task asks under its own name (/c/<task>/v1/completions).
    url = str(endpoint.get("client_completions_url") or endpoint["completions_url"]).replace("{client}", task.short)
    log.info("%s: deployment %s at %s%s; harness output in %s", task.short, endpoint["deployment_id"], url,
             " (loading: its requests wait until it serves)" if endpoint["state"] == LISTENING else "", raw)
    # The harness's adapter proxy probes from port 3825 up, check-then-bind: concurrent tasks race for the
    # same port. Give each run its own free port instead.
    os.environ["ADAPTER_PORT"] = str(_free_port())
    harness_env = harness_environment(cfg)
    os.environ.update(harness_env)
    # a harness that is not installed here runs in its container: the variables the config gives it and the
    # endpoint's key passed by name (none of the pipeline's other secrets)
    passed = [*harness_env, *(n for n in secrets.api_key_names(cfg) if n in os.environ)]
    container = HarnessContainer.of(entry["container"], cfg.get("execution") or {}, passed) if entry.get("container") else None
    kind = types.get(cfg["deployment"]["type"])
    at_once = job["run"].get("tasks_at_once") or kind.tasks_at_once(available_cores())
    starting_at_once = job["run"].get("tasks_starting_at_once") or kind.harnesses_starting_at_once(available_cores())
    names = [t.get("name") for t in cfg["evaluation"]["tasks"]]
    rank = names.index(entry["name"]) if entry["name"] in names else len(names)  # its place in the config
    said: list[str] = []

    def gone() -> str | None:
        """Why the deployment is gone, written to this task's log the moment it is seen (with the deployment's
        log tail): when a sibling task of the group fails first, Snakemake SIGKILLs this step before it could say
        it on the way out (after stopping the harness)."""
        reason = deployment_gone(endpoint_file)
        if reason and not said:
            said.append(reason)
            log.error("%s: stopped: %s", task.short, reason)
        return reason

    def stopped(reason: str) -> UserError:  # the step's last line: the reason's first line (its tail is above)
        return UserError(f"{task.short}: stopped: {reason.splitlines()[0]}")

    try:
        # the tasks take their slots in the config's order; those that found the deployment ready in the same poll
        # of its endpoint file queue within two polls (every task waits that long before it takes its slot)
        with (
            task_slot(endpoint_file.parent / "slots", at_once, gone=gone, rank=rank, settle_s=2 * POLL_S,
                      waiting=lambda: log.info("%s: waiting for a slot (%d task(s) at once against this deployment; "
                                               "tasks earlier in the config first)", task.short, at_once)),
            task_slot(endpoint_file.parent / "starting", starting_limit(endpoint_file, starting_at_once),
                      gone=gone, rank=rank,
                      waiting=lambda: log.info("%s: waiting for a starting slot (%d harness(es) start at once; "
                                               "tasks earlier in the config first)", task.short, starting_at_once)) as starting,
        ):
            started = results.now()
            # the staged data as it is right before the harness reads it: what the result records
            read = verify_staged(staged_dir) if staged_dir is not None else None
            with until_first_answer(starting, raw, task.short) as progress_url, _heartbeat(task.short, raw):
                run_harness(
                    task, staged_dir, endpoint_url=url, model_id=endpoint["model_id"],
                    tokenizer_dir=tokenizer, params=params, output_dir=raw, progress_url=progress_url,
                    abort=gone, container=container,
                    # a deployment that still loads as the harness starts: no probe that would time out on the
                    # load, and the harness's own start goes on meanwhile
                    capability_probe=not still_loading(endpoint_file),
                )
    except HarnessAborted as e:
        raise stopped(str(e)) from None
    except SystemExit:  # stopped from outside (SIGTERM): the run was cancelled, or its group failed
        reason = gone()
        if reason:  # ... because the deployment died under another task: this log says so too, with its tail
            raise stopped(reason) from None
        raise
    except HarnessError as e:
        raise HarnessError(f"{e}\nlast lines of the deployment's log {deployment_log}:\n{log_tail(deployment_log, 15)}") from None
    finished = results.now()
    if read is not None and verify_staged(staged_dir)["digest"] != read["digest"]:
        raise UserError(f"{staged_dir}: the staged data changed while the harness read it; stage it again: delete "
                        f"{staged_dir} and run again")
    parsed = parse_harness_output(raw, task)
    parsed["items"] = write_items(raw, items_out)
    data = {**read, "path": str(staged_dir)} if read is not None else {"source": "hub (as the harness reads it)"}
    result = results.build_result(
        task=task, parsed=parsed, model=model, config_sha256=sha256_bytes(eval_bytes), data=data,
        deployment=endpoint, params=params, started_at=started, finished_at=finished, raw=str(raw),
        task_config_sha256=entry["fingerprint"], server=server_figures(endpoint, task.short),
    )
    results.write_result(out, result)
    scores = ", ".join(f"{k} {v['value']:.4f}" for k, v in parsed["metrics"].items())
    log.info("%s: %s over %d samples in %.0f s -> %s", task.short, scores, parsed["n_samples"], result["duration_s"], out)
    return result


def still_loading(endpoint_file: Path) -> bool:
    """Whether the deployment takes requests but still loads its model (`listening`), as its endpoint file says now."""
    from nemotron_eval.core.io import read_json
    from nemotron_eval.deploy.serve import LISTENING

    try:
        return bool(read_json(endpoint_file).get("state") == LISTENING)
    except (OSError, ValueError):
        return False


def starting_limit(endpoint_file: Path, limit: int | None) -> int | None:
    """How many harnesses may start at once as one more starts: any number while the deployment still loads its
    model (nothing computes yet: a start takes no core from the server), else `limit`."""
    return None if still_loading(endpoint_file) else limit


def server_figures(endpoint: dict[str, Any], client: str) -> dict[str, Any] | None:
    """What the deployment did for this task (its client's figures) and in all so far (`GET /stats`), when it
    keeps statistics (the CPU server); None otherwise or when it no longer answers (the scores stand)."""
    from nemotron_eval.deploy.types import get_json

    if not endpoint.get("stats_url"):
        return None
    try:
        stats = get_json(str(endpoint["stats_url"]))
    except (OSError, ValueError) as e:
        log.warning("%s: no statistics from the deployment (%s)", client, e)
        return None
    totals = {k: v for k, v in stats.items() if k != "clients"}
    return {"task": (stats.get("clients") or {}).get(client), "deployment": totals}


def write_items(harness_dir: Path, out: Path) -> dict[str, Any]:
    """The task's per-item records (for paired comparisons across models); a task whose samples this project
    cannot read item by item gets an empty file and says why (its scores stand)."""
    from nemotron_eval.evaluate.items import extract_items, write_items as write_records

    try:
        summary = extract_items(harness_dir, out)
    except UserError as e:
        write_records(out, [])
        log.warning("no per-item records: %s", e)
        return {"file": out.name, "n": 0, "note": str(e)}
    return {"file": out.name, "n": summary["items"]}


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def until_first_answer(starting: Slot, harness_dir: Path, what: str, timeout_s: float = STARTING_TIMEOUT_S,
                       poll_s: float = 0.5) -> Iterator[str]:
    """Hold the task's starting slot until the deployment first answers its harness, then free it for the next
    task: at the interceptor's first post of a count (to the URL this yields), when its count file in
    `harness_dir` grows (a post that did not arrive), after `timeout_s` without either (said in the log), or when
    the harness ends."""
    before = progress.answered(harness_dir)  # a rerun's folder keeps the count of the run before
    stop = threading.Event()
    owner = threading.get_ident()  # the rule's log takes the watcher's line

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while not stop.wait(poll_s) and progress.answered(harness_dir) <= before:
            if time.monotonic() >= deadline:
                log.info("%s: no answer from the deployment after %g s; its starting slot goes to the next task",
                         what, timeout_s, extra={"for_thread": owner})
                break
        starting.release()

    thread = threading.Thread(target=watch, name="starting-slot", daemon=True)
    with progress.Receiver(on_answer=starting.release) as receiver:
        thread.start()
        try:
            yield receiver.url
        finally:
            stop.set()
            thread.join()


@contextmanager
def _heartbeat(what: str, harness_dir: Path, every_s: float = 30.0) -> Iterator[None]:
    """Long work shows progress: every `every_s`, the harness's requests answered / total, rate and ETA."""
    stop = threading.Event()
    owner = threading.get_ident()  # the rule's log takes the heartbeat's lines

    def beat() -> None:
        while not stop.wait(every_s):
            log.info("%s: %s", what, progress.read(harness_dir).line(), extra={"for_thread": owner})

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)  # a line it is writing reaches the rule's log before the log closes


def summarize(result_files: list[str], json_out: str, md_out: str, log_file: str) -> None:
    from nemotron_eval.evaluate.results import summarize as summarize_results

    with logged(log_file):
        summary = summarize_results([Path(p) for p in result_files], Path(json_out), Path(md_out))
        log.info("summary of %d tasks -> %s", len(summary["tasks"]), md_out)


def compare(inputs: list[str], html_out: str, log_file: str) -> None:
    """results/report.{html,json,csv}: every model's every task (inputs: result and items files, in model order,
    baseline first)."""
    from nemotron_eval.report import compare as build

    with logged(log_file):
        results_files = [p for p in inputs if p.endswith(".json")]
        items_files = [p for p in inputs if p.endswith(".items.jsonl.gz")]
        report = build(results_files, items_files, Path(html_out).parent)
        calls = [p for t in report["tasks"] for m in t["metrics"] for p in m["pairs"] if p["verdict"] in ("better", "worse")]
        log.info("%s: %d models, %d tasks, %d significant difference(s)", html_out, len(report["models"]),
                 len(report["tasks"]), len(calls))


def curve_inputs(plan: Any, name: str) -> dict[str, str]:
    """The result and items files of every version of `name` on the plan's tasks (the registry's versions), with
    their sha256: what the curve reads."""
    from nemotron_eval.core.io import sha256_file
    from nemotron_eval.pipeline.compile import registry_of
    from nemotron_eval.report.curve import input_files

    found = input_files(name, registry_of(plan.merged).history(name), plan.task_names)
    if not found:
        raise UserError(f"results/curve/{name}: no version of artifact {name!r} has results of "
                        f"{', '.join(plan.task_names)} yet; evaluate them (nemotron watch {name})")
    return {str(p): sha256_file(p) for p in found}


def training_curve(plan: Any, name: str, html_out: str, log_file: str) -> None:
    """results/curve/{name}.{json,csv,html} (`report.curve`)."""
    from nemotron_eval.pipeline.compile import registry_of
    from nemotron_eval.report.curve import write_curve

    with logged(log_file):
        paths = write_curve(name, registry_of(plan.merged).history(name), plan.task_names, Path(html_out).parent)
        log.info("%s: the training curve of %s", paths.get("html"), name)


# --- the launcher as the engine -------------------------------------------------------------------------------


def submit_to_launcher(eval_yaml: str | Path, out: str | Path, log_file: str | Path, *, dry_run: bool) -> dict[str, Any]:
    """Hand the compiled eval.yaml to NeMo Evaluator Launcher's `run_eval()` (its own executors) and record its
    invocation id beside job.yaml. `dry_run` prepares its scripts and submits nothing."""
    from nemo_evaluator_launcher.api.functional import run_eval
    from omegaconf import OmegaConf

    eval_yaml, out = Path(eval_yaml), Path(out)
    with logged(log_file):
        cfg = OmegaConf.create(yaml.safe_load(eval_yaml.read_text()))
        try:
            invocation = run_eval(cfg, dry_run=dry_run)
        except ValueError as e:  # the launcher's validation
            raise UserError(f"{eval_yaml}: NeMo Evaluator Launcher refused it: {str(e).splitlines()[0]}") from None
        record = {"engine": "launcher", "invocation_id": invocation, "dry_run": dry_run,
                  "eval_sha256": sha256_bytes(eval_yaml.read_bytes())}
        write_text_atomic(out, json.dumps(record, indent=2) + "\n")
        log.info("NeMo Evaluator Launcher %s invocation %s", "prepared (dry run)" if dry_run else "submitted", invocation)
    return record
