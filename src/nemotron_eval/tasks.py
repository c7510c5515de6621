"""The benchmarks this project knows: short names used in paths, and NeMo Evaluator's task names."""

from __future__ import annotations

from dataclasses import dataclass

from nemotron_eval.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Task:
    short: str  # used in results/{model}/{short}.json
    harness: str  # NeMo Evaluator's task name (lm-evaluation-harness image)
    dataset: str  # folder name under the data mirror and under data/


TASKS: dict[str, Task] = {
    t.short: t
    for t in (
        Task("mmlu", "adlr_mmlu", "mmlu"),
        Task("arc_challenge", "adlr_arc_challenge_llama_25_shot", "arc_challenge"),
        Task("winogrande", "adlr_winogrande_5_shot", "winogrande"),
        Task("hellaswag", "hellaswag", "hellaswag"),
        Task("openbookqa", "openbookqa", "openbookqa"),
    )
}
BY_HARNESS: dict[str, Task] = {t.harness: t for t in TASKS.values()}


def by_short(name: str, where: str = "task") -> Task:
    if name not in TASKS:
        raise UserError(
            f"{where}: unknown task {name!r}{did_you_mean(name, TASKS)}; valid: {', '.join(TASKS)}"
        )
    return TASKS[name]


def by_harness(name: str, where: str = "evaluation.tasks") -> Task:
    if name not in BY_HARNESS:
        raise UserError(
            f"{where}: unknown task {name!r}{did_you_mean(name, BY_HARNESS)}; "
            f"valid: {', '.join(BY_HARNESS)}"
        )
    return BY_HARNESS[name]
