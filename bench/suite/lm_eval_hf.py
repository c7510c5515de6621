"""Upstream lm-eval's `hf` backend in-process on the pipeline's tasks: the reference run of bench P3.

    <lm-eval venv>/bin/python bench/suite/lm_eval_hf.py JOB.json OUT.json

Runs in the throwaway venv of upstream `lm_eval` 0.4.x (not this project's: nvidia-lm-eval's own `hf` backend does
not run), so it imports nothing from the project. JOB.json: {"checkpoint", "batch_size", "tasks": {short: {"task",
"include_path", "limit", "num_fewshot"?, "gen_kwargs"?, "fewshot_as_multiturn"?, "apply_chat_template"?}}}, as
bench/suite/peers.py reads them from the commands NeMo Evaluator ran. The model is loaded once; each task runs with
its own limit. Writes per task its wall and metrics, and the model's load time, to OUT.json.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any


def say(text: str) -> None:
    print(f"lm_eval_hf: {text}", flush=True)


def upstream_task_config() -> set[str]:
    """The task YAMLs NeMo Evaluator ran come from nvidia-lm-eval, whose TaskConfig has keys upstream's lacks (e.g.
    `instruction`, used only with its `add_instruction` option, which the run's commands do not pass): upstream
    refuses unknown keys, so they are dropped here. Returns the set the run dropped (reported in OUT.json)."""
    import dataclasses

    import lm_eval.api.task as task_module

    base = task_module.TaskConfig
    known = {f.name for f in dataclasses.fields(base)}
    dropped: set[str] = set()

    class UpstreamTaskConfig(base):  # type: ignore[misc, valid-type]
        def __init__(self, **config: Any) -> None:
            dropped.update(k for k in config if k not in known)
            super().__init__(**{k: v for k, v in config.items() if k in known})

    task_module.TaskConfig = UpstreamTaskConfig
    return dropped


def main() -> int:
    job = json.loads(Path(sys.argv[1]).read_text())
    started = time.monotonic()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    dropped = upstream_task_config()
    imported = time.monotonic()
    lm = HFLM(pretrained=job["checkpoint"], dtype="float32", batch_size=job["batch_size"], device="cpu")
    loaded = time.monotonic()
    say(f"model loaded in {loaded - imported:.1f} s")
    accepted = set(inspect.signature(simple_evaluate).parameters)
    out: dict[str, Any] = {"import_s": round(imported - started, 2), "model_load_s": round(loaded - imported, 2),
                           "tasks": {}}
    for n, (short, spec) in enumerate(job["tasks"].items(), 1):
        t0 = time.monotonic()
        kwargs = {"model": lm, "tasks": [spec["task"]], "limit": spec.get("limit"),
                  "task_manager": TaskManager(include_path=spec["include_path"]), "log_samples": False,
                  "num_fewshot": spec.get("num_fewshot"), "gen_kwargs": spec.get("gen_kwargs"),
                  "fewshot_as_multiturn": spec.get("fewshot_as_multiturn", False),
                  "apply_chat_template": spec.get("apply_chat_template", False)}
        result = simple_evaluate(**{k: v for k, v in kwargs.items() if k in accepted})
        wall = time.monotonic() - t0
        scores = (result or {}).get("results", {})
        top = scores.get(spec["task"], {})
        metrics = {k: v for k, v in top.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        out["tasks"][short] = {"wall_s": round(wall, 2), "metrics": metrics,
                               "n_samples": (result or {}).get("n-samples", {}).get(spec["task"])}
        say(f"{short} done ({n}/{len(job['tasks'])}) in {wall:.1f} s: {metrics}")
    out["total_s"] = round(time.monotonic() - started, 2)
    out["dropped_task_keys"] = sorted(dropped)
    Path(sys.argv[2]).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
