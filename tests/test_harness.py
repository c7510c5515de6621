"""The harness's settings for a task, wrapper task YAMLs, the run wrapper (harness faked) and result parsing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from nemotron_eval.data.stage import stage_dataset
from nemotron_eval.data.tasks import MMLU_SUBJECTS, STAGED
from nemotron_eval.core.errors import UserError
from nemotron_eval.evaluate import harness
from nemotron_eval.evaluate.context import ContextOverflowError, check_context, context_length
from nemotron_eval.evaluate.framework import framework_defaults, lm_eval_tasks_dir, load_task_yaml
from nemotron_eval.evaluate.harness import run_harness
from nemotron_eval.evaluate.output import HarnessError, parse_harness_output
from nemotron_eval.evaluate.overrides import harness_overrides
from nemotron_eval.evaluate.task_yamls import write_task_yamls

FIXTURES = Path(__file__).parent / "fixtures"
MIRROR = FIXTURES / "benchmarks"
RESULTS = FIXTURES / "harness"


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All five tasks staged from the fixture mirror (its MMLU subject copied to all 57)."""
    root = tmp_path_factory.mktemp("harness")
    mirror = root / "mirror"
    shutil.copytree(MIRROR, mirror)
    for folder in ("dev", "val", "test"):
        src = MIRROR / "mmlu" / folder / f"abstract_algebra_{folder}.csv"
        for subject in MMLU_SUBJECTS:
            shutil.copyfile(src, mirror / "mmlu" / folder / f"{subject}_{folder}.csv")
    for task in ("mmlu", "arc_challenge", "winogrande", "hellaswag", "openbookqa"):
        stage_dataset(task, root / "data" / task, mirror=mirror)
    return root / "data"


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    return ckpt


# --- overrides ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "eval_type", "lm_name"),
    [
        ("mmlu", "adlr_mmlu", "staged_mmlu_str"),
        ("arc_challenge", "adlr_arc_challenge_llama_25_shot", "staged_adlr_arc_challenge_llama"),
        ("winogrande", "adlr_winogrande_5_shot", "staged_winogrande"),
        ("hellaswag", "hellaswag", "staged_hellaswag"),
        ("openbookqa", "openbookqa", "staged_openbookqa"),
    ],
)
def test_harness_overrides(task: str, eval_type: str, lm_name: str, tmp_path: Path) -> None:
    run = harness_overrides(STAGED[task], tmp_path / "inc", tokenizer_dir=Path("/ckpt"), max_length=4096)
    assert (run.eval_type, run.lm_eval_task) == (eval_type, lm_name)
    assert run.is_group == (task == "mmlu")
    assert run.params["task"] == lm_name
    extra = run.params["extra"]
    assert extra["args"].endswith(f"--include_path {tmp_path / 'inc'}")
    assert extra["tokenizer"] == "/ckpt"
    assert extra["tokenizer_backend"] == "huggingface,max_length=4096"
    assert run.env["NEMO_EVALUATOR_TELEMETRY_LEVEL"] == "0"
    assert run.env["HF_HUB_OFFLINE"] == "1" and run.env["HF_DATASETS_OFFLINE"] == "1"


def test_overrides_keep_framework_args_unless_replaced(tmp_path: Path) -> None:
    run = harness_overrides(STAGED["mmlu"], tmp_path, tokenizer_dir=Path("/c"), max_length=10)
    assert run.params["extra"]["args"] == f"--trust_remote_code --include_path {tmp_path}"
    run = harness_overrides(
        STAGED["mmlu"], tmp_path, tokenizer_dir=Path("/c"), max_length=10, extra_args="--seed 1"
    )
    assert run.params["extra"]["args"] == f"--seed 1 --include_path {tmp_path}"


def test_context_length(tmp_path: Path) -> None:
    cfg = {"text_config": {"max_position_embeddings": 77}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert context_length(tmp_path) == 77
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(UserError, match="config.json: none of max_position_embeddings"):
        context_length(tmp_path)


# --- wrapper YAMLs --------------------------------------------------------------------------


def _yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def test_wrapper_includes_the_harness_yaml(staged: Path, tmp_path: Path) -> None:
    name = write_task_yamls(STAGED["openbookqa"], staged / "openbookqa", tmp_path)
    assert name == "staged_openbookqa"
    (path,) = tmp_path.iterdir()
    cfg = _yaml(path)
    assert Path(cfg["include"]) == lm_eval_tasks_dir() / "openbookqa/openbookqa.yaml"
    assert Path(cfg["include"]).is_file()
    assert cfg["task"] == "staged_openbookqa"
    assert (cfg["dataset_path"], cfg["dataset_name"]) == ("json", None)
    files = cfg["dataset_kwargs"]["data_files"]
    assert set(files) == {"train", "validation", "test"}
    assert files["test"] == str((staged / "openbookqa/main/test.jsonl").resolve())
    # Everything else (prompt, metrics, splits) comes from the included file.
    assert set(cfg) == {"include", "task", "dataset_path", "dataset_name", "dataset_kwargs"}


def test_hellaswag_without_train_draws_shots_from_validation(staged: Path, tmp_path: Path) -> None:
    write_task_yamls(STAGED["hellaswag"], staged / "hellaswag", tmp_path)
    cfg = _yaml(tmp_path / "staged_hellaswag.yaml")
    assert cfg["test_split"] == cfg["fewshot_split"] == "validation"
    assert cfg["training_split"] is None and cfg["validation_split"] is None
    assert cfg["tag"] == []  # not a member of the harness's `multiple_choice` tag
    merged = load_task_yaml(tmp_path / "staged_hellaswag.yaml")
    assert merged["process_docs"] == "utils.process_docs" and merged["doc_to_text"] == "{{query}}"


@pytest.mark.parametrize("task", ["winogrande", "arc_challenge"])
def test_no_split_overrides_when_splits_are_staged(task: str, staged: Path, tmp_path: Path) -> None:
    name = write_task_yamls(STAGED[task], staged / task, tmp_path)
    cfg = _yaml(tmp_path / f"{name}.yaml")
    assert not {"training_split", "test_split", "fewshot_split"} & set(cfg)


def test_mmlu_group_and_subjects(staged: Path, tmp_path: Path) -> None:
    assert write_task_yamls(STAGED["mmlu"], staged / "mmlu", tmp_path) == "staged_mmlu_str"
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 58
    group = _yaml(tmp_path / "staged_mmlu_str.yaml")
    assert group["group"] == "staged_mmlu_str"
    assert sorted(group["task"]) == sorted(
        f"staged_mmlu_str_{c}" for c in ("stem", "other", "social_sciences", "humanities")
    )
    assert group["aggregate_metric_list"] == [{"metric": "exact_match", "weight_by_size": True}]
    anatomy = _yaml(tmp_path / "staged_mmlu_str_anatomy.yaml")
    assert anatomy["tag"] == "staged_mmlu_str_stem"
    assert anatomy["dataset_kwargs"]["data_files"]["dev"].endswith("mmlu/anatomy/dev.jsonl")
    merged = load_task_yaml(tmp_path / "staged_mmlu_str_anatomy.yaml")
    assert merged["fewshot_split"] == "dev" and merged["test_split"] == "test"
    assert merged["dataset_path"] == "json"


def test_wrapper_paths_as_the_harness_sees_them(staged: Path, tmp_path: Path) -> None:
    """E.g. the harness in a container: its lm_eval and the data mounted elsewhere."""
    write_task_yamls(
        STAGED["winogrande"], staged / "winogrande", tmp_path,
        tasks_dir=Path("/opt/lm_eval/tasks"), data_dir=Path("/data/winogrande"),
    )  # fmt: skip
    cfg = _yaml(tmp_path / "staged_winogrande.yaml")
    assert cfg["include"] == "/opt/lm_eval/tasks/winogrande/default.yaml"
    train = cfg["dataset_kwargs"]["data_files"]["train"]
    assert train == "/data/winogrande/winogrande_xl/train.jsonl"


def test_wrapper_refuses_data_staged_for_another_task(staged: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="staged for task 'winogrande', not 'hellaswag'"):
        write_task_yamls(STAGED["hellaswag"], staged / "winogrande", tmp_path)
    with pytest.raises(UserError, match="no staged dataset here"):
        write_task_yamls(STAGED["hellaswag"], tmp_path / "nothing", tmp_path / "inc")


# --- run (harness faked) --------------------------------------------------------------------


def test_run_harness_failure_shows_log_tail(
    staged: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake_run(cmd: list[str], **kw: Any) -> int:
        seen.update(cmd=cmd, **kw)
        kw["log"].write_bytes(b"starting\nprogress 1%\rprogress 99%\nConnectionError: refused\n")
        return 1

    monkeypatch.setattr(harness, "_run_child", fake_run)
    out = tmp_path / "out"
    params = {"parallelism": 4, "limit_samples": 3, "extra": {"num_fewshot": 2}}
    with pytest.raises(HarnessError, match="exited with status 1") as err:
        run_harness(
            STAGED["winogrande"],
            staged / "winogrande",
            endpoint_url="http://127.0.0.1:1/v1/completions",
            model_id="m",
            tokenizer_dir=checkpoint,
            params=params,
            output_dir=out,
        )
    assert "progress 99%\nConnectionError: refused" in str(err.value)
    assert "progress 1%" not in str(err.value)
    assert seen["env"]["NEMO_EVALUATOR_TELEMETRY_LEVEL"] == "0"
    assert seen["env"]["HF_DATASETS_OFFLINE"] == "1"
    assert seen["env"]["ADAPTER_SERVER_THREADS"] == "16"  # the adapter proxy's threads: 2 x parallelism, at least 16
    assert seen["cwd"] != out and not seen["cwd"].exists()  # a throwaway folder, removed after
    assert seen["cmd"][-2:] == ["--run_config", str(out / "nemotron_run_config.yml")]
    cfg = _yaml(out / "nemotron_run_config.yml")
    assert cfg["config"]["type"] == "adlr_winogrande_5_shot"
    p = cfg["config"]["params"]
    assert (p["parallelism"], p["limit_samples"], p["task"]) == (4, 3, "staged_winogrande")
    assert p["extra"]["num_fewshot"] == 2  # the pipeline's nested extra survives the merge
    assert p["extra"]["tokenizer_backend"] == "huggingface,max_length=4096"
    assert cfg["target"]["api_endpoint"] == {
        "url": "http://127.0.0.1:1/v1/completions", "model_id": "m", "type": "completions",
        "adapter_config": {"use_progress_tracking": True, "progress_tracking_interval": 1,
                           "progress_tracking_url": "http://127.0.0.1:9/progress"},  # the harness counts its answers
    }  # fmt: skip
    assert (out / "lm_eval_tasks" / "staged_winogrande.yaml").is_file()


def test_without_the_capability_probe_the_run_config_asks_for_none(
    staged: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`capability_probe=False` (the deployment still loads): the run config clears the task's required
    capabilities, so NeMo Evaluator sends no probe; by default the key is absent and the harness's own list holds."""
    monkeypatch.setattr(harness, "_run_child", lambda cmd, **kw: 1)
    configs = []
    for probe in (True, False):
        out = tmp_path / f"probe-{probe}"
        with pytest.raises(HarnessError):
            run_harness(STAGED["openbookqa"], staged / "openbookqa", endpoint_url="http://127.0.0.1:1/v1/completions",
                        model_id="m", tokenizer_dir=checkpoint, params={}, output_dir=out, capability_probe=probe)
        configs.append(_yaml(out / "nemotron_run_config.yml")["config"])
    assert "required_capabilities" not in configs[0] and configs[1]["required_capabilities"] == []


@pytest.mark.slow
def test_a_first_answer_after_30_s_fails_the_probe_not_the_harness_without_it(staged: Path, tmp_path: Path) -> None:
    """The real harness (NeMo Evaluator, its adapter, lm-eval) against a deployment whose answers take 31 s, as a
    model still loading makes the first ones wait: with NeMo Evaluator's capability probe (30 s timeout) the
    harness fails before it starts; without it the task completes. The deployment is the stub server (a model
    that loads for over 30 s cannot be had here), `--latency-ms` holding each answer."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from nemotron_eval.deploy import stub
    from nemotron_eval.deploy.process import start as start_process
    from support.server_process import stop_server, wait_for_endpoint

    ckpt = stub.write_checkpoint(tmp_path / "stub-checkpoint")
    endpoint, stub_log = tmp_path / "endpoint.json", tmp_path / "stub.log"
    proc = start_process([sys.executable, "-m", "nemotron_eval.deploy.stub", "--checkpoint", str(ckpt),
                          "--endpoint-file", str(endpoint), "--served-model-name", "m", "--latency-ms", "31000"],
                         log_file=stub_log, env=dict(os.environ))
    try:
        url = wait_for_endpoint(endpoint, pid=proc.pid, log_file=stub_log, timeout_s=30)["completions_url"]

        def outcome(probe: bool) -> str | int:
            out = tmp_path / f"probe-{probe}"
            try:
                run_harness(STAGED["openbookqa"], staged / "openbookqa", endpoint_url=url, model_id="m",
                            tokenizer_dir=ckpt, params={"limit_samples": 1, "parallelism": 8}, output_dir=out,
                            capability_probe=probe)
            except HarnessError as e:
                return str(e)
            return int(parse_harness_output(out, STAGED["openbookqa"])["n_samples"])

        with ThreadPoolExecutor(2) as pool:  # side by side: the probe fails before any adapter starts
            outcomes = list(pool.map(outcome, (True, False)))
    finally:
        stop_server(proc)
    assert "Read timed out" in str(outcomes[0]), str(outcomes[0])[-2000:]
    assert outcomes[1] == 1


def test_incomplete_answers_of_an_interrupted_run_are_dropped_before_a_rerun(tmp_path: Path) -> None:
    """NeMo Evaluator's response cache (its own storage class, as its caching interceptor writes it) after a kill
    can hold an empty answer; a rerun in the same harness folder drops it (and its headers) and keeps the whole ones,
    so the request is asked again instead of failing lm-eval on every retry."""
    from nemo_evaluator.adapters.caching.diskcaching import Cache

    from nemotron_eval.evaluate.harness import drop_incomplete_answers

    cache = tmp_path / "cache"
    assert drop_incomplete_answers(cache) == 0  # a first run: no cache yet
    whole = json.dumps({"choices": [{"text": " x", "logprobs": None}]}).encode()
    answers, headers = Cache(directory=str(cache / "responses")), Cache(directory=str(cache / "headers"))
    for key, body in (("a" * 64, whole), ("b" * 64, b""), ("c" * 64, whole[:-3])):
        answers[key] = body
        headers[key] = {"Content-Type": "application/json"}
    answers.close()
    headers.close()
    assert drop_incomplete_answers(cache) == 2
    assert drop_incomplete_answers(cache) == 0
    answers, headers = Cache(directory=str(cache / "responses")), Cache(directory=str(cache / "headers"))
    assert list(answers) == ["a" * 64] and list(headers) == ["a" * 64] and json.loads(answers["a" * 64]) == json.loads(whole)
    answers.close()
    headers.close()



def test_a_rerun_drops_the_incomplete_answer_and_says_so(
    staged: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through `run_harness` (the harness faked): the folder's empty cached answer is gone before the harness
    starts, and the step's log says how many were dropped (read from the logger the rule's log takes, which does
    not reach pytest's capture once a step's logging is set up)."""
    import logging

    from nemo_evaluator.adapters.caching.diskcaching import Cache

    out = tmp_path / "out"
    answers = Cache(directory=str(out / "cache" / "responses"))
    answers["b" * 64] = b""
    answers.close()
    seen: list[int] = []
    monkeypatch.setattr(harness, "_run_child",
                        lambda cmd, **kw: seen.append(len(Cache(directory=str(out / "cache" / "responses")))) or 1)
    said: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("nemotron_eval").addHandler(handler)
    try:
        with pytest.raises(HarnessError):
            run_harness(STAGED["openbookqa"], staged / "openbookqa", endpoint_url="http://127.0.0.1:1/v1/completions",
                        model_id="m", tokenizer_dir=checkpoint, params={}, output_dir=out)
    finally:
        logging.getLogger("nemotron_eval").removeHandler(handler)
    assert seen == [0]
    assert any(m.startswith("openbookqa: dropped 1 incomplete answer(s)") for m in said), said


def test_adapter_threads_follow_the_requests_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """NeMo Evaluator's adapter proxy gets twice the harness's parallelism in threads (its default, 2,048, costs
    a harness ~0.5-1 s to start), at least 16; a value set in the environment stays."""
    from nemotron_eval.evaluate.overrides import adapter_env

    monkeypatch.delenv("ADAPTER_SERVER_THREADS", raising=False)
    assert adapter_env({"parallelism": 64}) == {"ADAPTER_SERVER_THREADS": "128"}
    assert adapter_env({"parallelism": 2}) == adapter_env({}) == {"ADAPTER_SERVER_THREADS": "16"}
    monkeypatch.setenv("ADAPTER_SERVER_THREADS", "300")
    assert adapter_env({"parallelism": 64}) == {}


def test_child_and_its_children_are_stopped_on_timeout(tmp_path: Path) -> None:
    import subprocess
    import sys

    import psutil

    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    log = tmp_path / "log"
    with pytest.raises(subprocess.TimeoutExpired):
        harness._run_child([sys.executable, "-c", script], cwd=tmp_path, env=dict(os.environ),
                           log=log, timeout_s=3)  # fmt: skip
    grandchild = int(log.read_text().split()[0])
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == "zombie"


# --- context check --------------------------------------------------------------------------


def _samples(out: Path, requests: list[dict[str, Any]]) -> None:
    (out / "m").mkdir(parents=True)
    args = {f"gen_args_{i}": r for i, r in enumerate(requests)}
    sample = json.dumps({"doc_id": 7, "arguments": args})
    (out / "m" / "samples_t_2026.jsonl").write_text(sample + "\n")


def test_context_check_reads_lm_eval_truncation_warning(tmp_path: Path) -> None:
    log = tmp_path / "harness.log"
    log.write_text(
        "WARNING Context length (900) + continuation length (3) > max_length (511). "
        "Left truncating context.\n"
    )
    with pytest.raises(ContextOverflowError, match="left-truncated 1 request"):
        check_context("t", tmp_path, log, tokenizer_dir=tmp_path, n_ctx=512)


def test_context_check_short_prompts_need_no_tokenizer(tmp_path: Path) -> None:
    generate = {"until": ["\n\n"], "max_gen_toks": 2}
    loglikelihood = {"arg_0": "Question: 1+1?", "arg_1": " 2"}
    _samples(tmp_path, [loglikelihood, {"arg_0": "Q", "arg_1": generate}])
    check_context("t", tmp_path, tmp_path / "none.log", tokenizer_dir=tmp_path / "absent", n_ctx=64)


def _word_tokenizer(path: Path) -> Path:
    """A tiny whitespace word-level tokenizer that AutoTokenizer can load."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path.mkdir()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"})
    )
    return path


def test_context_check_tokenizes_long_prompts(tmp_path: Path) -> None:
    tok = _word_tokenizer(tmp_path / "tok")
    out = tmp_path / "out"
    # 30 words + 1 generated, 38 words + 2 generated: both over the byte bound, one over 32 tokens.
    _samples(out, [{"arg_0": "a " * 29, "arg_1": "a"},
                   {"arg_0": "a " * 38, "arg_1": {"until": [], "max_gen_toks": 2}}])  # fmt: skip
    expected = r"1 of 2 request\(s\) .* 32 tokens \(longest 40: t doc 7\)"
    with pytest.raises(ContextOverflowError, match=expected):
        check_context("t", out, tmp_path / "none.log", tokenizer_dir=tok, n_ctx=32)
    check_context("t", out, tmp_path / "none.log", tokenizer_dir=tok, n_ctx=40)


# --- results --------------------------------------------------------------------------------


def test_parse_single_task() -> None:
    parsed = parse_harness_output(RESULTS / "openbookqa", STAGED["openbookqa"])
    assert parsed == {
        "metrics": {
            "acc": {"value": 0.0, "stderr": 0.0},
            "acc_norm": {"value": 0.2, "stderr": 0.2},
        },
        "n_samples": 5,
        "lm_eval_task": "staged_openbookqa",
        "raw": "results.yml",
    }


def test_parse_mmlu_takes_the_group_score() -> None:
    parsed = parse_harness_output(RESULTS / "mmlu", STAGED["mmlu"])
    assert parsed["lm_eval_task"] == "staged_mmlu_str"
    assert set(parsed["metrics"]) == {"exact_match"}
    em = parsed["metrics"]["exact_match"]
    assert 0.0 <= em["value"] <= 1.0
    raw = yaml.safe_load((RESULTS / "mmlu/results.yml").read_text())
    group = raw["results"]["groups"]["staged_mmlu_str"]["metrics"]["exact_match"]["scores"]
    assert em["value"] == group["exact_match"]["value"]
    assert parsed["n_samples"] == 57


def test_parse_refuses_results_of_another_task() -> None:
    with pytest.raises(HarnessError, match="not 'hellaswag'"):
        parse_harness_output(RESULTS / "openbookqa", STAGED["hellaswag"])


def test_parse_missing_results(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="results.yml: cannot read"):
        parse_harness_output(tmp_path, STAGED["openbookqa"])


# --- the real harness, offline, on staged fixture data ---------------------------------------


@pytest.mark.slow
def test_lm_eval_reads_the_staged_data(
    staged: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lm-eval resolves every wrapper and builds prompts from the staged rows, offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    from lm_eval.tasks import TaskManager, get_task_dict

    for task, shots in [("hellaswag", 2), ("mmlu", 2), ("arc_challenge", 2), ("winogrande", 2),
                        ("openbookqa", 0)]:  # fmt: skip
        inc = tmp_path / task
        name = write_task_yamls(STAGED[task], staged / task, inc)
        tasks = get_task_dict([name], TaskManager(include_path=str(inc)))

        def leaves(d: dict[Any, Any]) -> list[Any]:
            return [x for v in d.values() for x in (leaves(v) if isinstance(v, dict) else [v])]

        objs = leaves(tasks)
        assert len(objs) == (57 if task == "mmlu" else 1)
        t = objs[0]
        t.set_config("num_fewshot", shots)
        t.set_fewshot_seed(1234)
        doc = next(iter(t.eval_docs))
        prompt = t.fewshot_context(doc, shots)
        if task == "hellaswag":
            assert prompt.endswith("Washing dishes: A woman stands at a sink full of plates. She")
            assert prompt.count("Washing dishes") == 1  # the asked item is never its own shot
        if task == "openbookqa":
            assert prompt == "Which of these conducts electricity best?"
        if task == "mmlu":
            assert prompt.endswith("\nA. 1\nB. 2\nC. 3\nD. 6\nAnswer:")


# --- tasks of the launcher's catalog: data from the hub -------------------------------------------------------


def test_a_hub_task_runs_as_the_harness_defines_it(tmp_path: Path) -> None:
    from nemotron_eval.data.tasks import resolve

    gsm8k = resolve("gsm8k")
    assert (gsm8k.short, gsm8k.offline, gsm8k.harness) == ("gsm8k", False, "lm-evaluation-harness")
    run = harness_overrides(gsm8k, None, tokenizer_dir=Path("/ckpt"), max_length=2048)
    assert run.lm_eval_task == framework_defaults("gsm8k")["task"] and run.include_dir is None
    assert "HF_HUB_OFFLINE" not in run.env and "--include_path" not in run.params["extra"]["args"]


def test_a_hub_task_without_the_hub_fails_in_one_line(tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network here: HF_HUB_OFFLINE, or a hub endpoint that does not answer, is said at once."""
    import socket

    from nemotron_eval.data.tasks import resolve

    monkeypatch.setattr(harness, "_run_child", lambda *a, **k: pytest.fail("the harness must not start"))
    kwargs = dict(endpoint_url="http://127.0.0.1:1/v1/completions", model_id="m", tokenizer_dir=checkpoint, params={},
                  output_dir=tmp_path / "out")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"task 'gsm8k' has no offline data .*HF_HUB_OFFLINE is set") as e:
        run_harness(resolve("gsm8k"), None, **kwargs)
    assert "\n" not in str(e.value)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed}")
    with pytest.raises(UserError, match=rf"task 'gsm8k' has no offline data .*127.0.0.1:{closed} does not answer"):
        run_harness(resolve("gsm8k"), None, **kwargs)


def test_the_progress_receiver_counts_answers_and_says_so(said: list[str]) -> None:
    """The interceptor posts its count after each answer: the receiver keeps the largest and calls `on_answer`
    (which frees the task's starting slot); a body it cannot read or a count of 0 calls nothing, and a callback
    that fails is logged while the harness still gets its reply."""
    import httpx

    from nemotron_eval.evaluate.progress import Receiver

    calls: list[int] = []
    with Receiver(on_answer=lambda: calls.append(1)) as receiver, httpx.Client(trust_env=False, timeout=10) as c:
        assert c.post(receiver.url, content=b"not json").status_code == 204
        assert c.post(receiver.url, json={"samples_processed": 0}).status_code == 204
        assert c.post(receiver.url, json=["a list"]).status_code == 204
        assert receiver.count == 0 and not calls
        for n in (1, 3, 2):
            assert c.post(receiver.url, json={"samples_processed": n}).status_code == 204
    assert receiver.count == 3 and len(calls) == 3

    def fails() -> None:
        raise RuntimeError("the slot is gone")

    with Receiver(on_answer=fails) as receiver, httpx.Client(trust_env=False, timeout=10) as c:
        assert c.post(receiver.url, json={"samples_processed": 1}).status_code == 204
    assert receiver.count == 1
    assert any("the callback after an answer failed" in line and "the slot is gone" in line for line in said), said
