"""The benchmarks: one table for the five this project stages offline, and the launcher's catalog for the rest.

A `Task` knows everything the pipeline needs about a benchmark, so adding one touches this file only:

- `short`: the name in paths (`results/{model}/{short}.json`, `data/{short}/`);
- `launcher`: NeMo Evaluator's task name (`evaluation.tasks[].name`), e.g. `adlr_mmlu`;
- `lm_eval` / `lm_eval_yaml`: the lm-eval task (or group) the harness runs for it and its YAML under
  `lm_eval/tasks/` (the wrapper YAMLs of `evaluate.task_yamls.write_task_yamls` include it);
- `group`: whether `lm_eval` is a group whose aggregate is the score (MMLU);
- `dataset`: where its rows come from offline: the hub dataset the harness's YAML names, its configs, the files
  of the original release on the mirror with their readers, and the row schema the readers must produce.

Any other task of the installed launcher's catalog (`nemo-evaluator-launcher ls tasks`, about 420) is accepted
too: `resolve` turns its name into a `Task` without `dataset` (the harness reads the hub as it always does) and
with the harness and endpoint type the catalog gives. Names may be qualified (`lm-evaluation-harness.ifeval`)
where the catalog has the same name in several harnesses.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemotron_eval.data import readers
from nemotron_eval.core.errors import UserError, did_you_mean

LM_EVAL = "lm-evaluation-harness"


@dataclass(frozen=True)
class MirrorFile:
    """One split of one config, read from one file of the mirror (relative to the mirror root)."""

    config: str
    split: str
    path: str
    reader: Callable[[Path], Iterable[readers.Row]]


@dataclass(frozen=True)
class Dataset:
    hub_id: str  # `dataset_path` of the harness's task YAML
    configs: tuple[str, ...]
    mirror_files: tuple[MirrorFile, ...]
    fields: tuple[str, ...]  # the hub schema: every staged row has exactly these fields, in this order
    fallbacks: tuple[str, ...] = field(default=())  # what the mirror lacks, said once per staging


@dataclass(frozen=True)
class Task:
    short: str
    launcher: str
    lm_eval: str | None = None
    lm_eval_yaml: str | None = None
    group: bool = False
    dataset: Dataset | None = None
    harness: str = LM_EVAL
    endpoint_type: str = "completions"
    container: str = ""  # the launcher catalog's image of its harness (a catalog task's)

    @property
    def offline(self) -> bool:
        """Whether its data is staged from the mirror (else the harness reads the hub)."""
        return self.dataset is not None


# --- the five staged benchmarks --------------------------------------------------------------------------

# The 57 MMLU subjects: configs of hails/mmlu_no_train, tasks of the harness's mmlu_str group.
MMLU_SUBJECTS: tuple[str, ...] = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations",
    "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)  # fmt: skip


def _mmlu_files() -> tuple[MirrorFile, ...]:
    return tuple(
        MirrorFile(s, split, f"mmlu/{folder}/{s}_{folder}.csv", readers.read_mmlu_csv)
        for s in MMLU_SUBJECTS
        for split, folder in (("test", "test"), ("validation", "val"), ("dev", "dev"))
    )


TABLE: tuple[Task, ...] = (
    Task(
        "mmlu", "adlr_mmlu", "mmlu_str", "mmlu/str_default/mmlu_str.yaml", group=True,
        dataset=Dataset(
            "hails/mmlu_no_train", MMLU_SUBJECTS, _mmlu_files(),
            fields=("question", "subject", "choices", "answer"),
        ),
    ),
    Task(
        "arc_challenge", "adlr_arc_challenge_llama_25_shot", "adlr_arc_challenge_llama",
        "custom/adlr_arc/adlr_arc_challenge_llama.yaml",
        dataset=Dataset(
            "allenai/ai2_arc", ("ARC-Challenge",),
            (
                MirrorFile("ARC-Challenge", "train", "arc_challenge/ARC-Challenge-Train.jsonl", readers.read_arc_jsonl),
                MirrorFile("ARC-Challenge", "validation", "arc_challenge/ARC-Challenge-Dev.jsonl", readers.read_arc_jsonl),
                MirrorFile("ARC-Challenge", "test", "arc_challenge/arc_challenge.jsonl", readers.read_arc_converted),
            ),
            fields=("id", "question", "choices", "answerKey"),
            fallbacks=(
                "ARC-Challenge test split read from the third-party converted arc_challenge.jsonl, "
                "not the original release: ids are synthesized (ARC-Challenge-Test-<line>), choice "
                "labels rebuilt as letters; per SOURCES.md 1142 of 1150 checkable rows match the "
                "original test file",
            ),
        ),
    ),
    Task(
        "winogrande", "adlr_winogrande_5_shot", "winogrande", "winogrande/default.yaml",
        dataset=Dataset(
            "winogrande", ("winogrande_xl",),
            (
                MirrorFile("winogrande_xl", "train", "winogrande/train_l.jsonl", readers.read_winogrande_jsonl),
                MirrorFile("winogrande_xl", "validation", "winogrande/dev.jsonl", readers.read_winogrande_jsonl),
                MirrorFile("winogrande_xl", "test", "winogrande/test.jsonl", readers.read_winogrande_jsonl),
            ),
            fields=("sentence", "option1", "option2", "answer"),
            fallbacks=(
                "Winogrande train split (the few-shot pool) is train_l.jsonl (10234 rows), not "
                "train_xl (40398 rows, absent from the mirror): 5-shot examples differ from a hub run",
            ),
        ),
    ),
    Task(
        "hellaswag", "hellaswag", "hellaswag", "hellaswag/hellaswag.yaml",
        dataset=Dataset(
            "hellaswag", ("default",),
            (MirrorFile("default", "validation", "hellaswag/hellaswag_val_full.txt.bz2", readers.read_hellaswag_txt),),
            fields=("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split", "split_type", "label"),
            fallbacks=(
                "HellaSwag has no train split on the mirror: the 10-shot examples are drawn from the "
                "other validation items (never the item being asked), not from train",
                "HellaSwag ctx_a/ctx_b are not on the mirror (only the joined, cleaned context): "
                "ctx_b is taken as the unfinished text after the last sentence end, so the harness's "
                "capitalization of ctx_b applies as upstream (heuristic); ind is the position in the "
                "file, source_id and split_type are empty",
            ),
        ),
    ),
    Task(
        "openbookqa", "openbookqa", "openbookqa", "openbookqa/openbookqa.yaml",
        dataset=Dataset(
            "openbookqa", ("main",),
            (
                MirrorFile("main", "train", "openbookqa/Main/train.jsonl", readers.read_obqa_jsonl),
                MirrorFile("main", "validation", "openbookqa/Main/dev.tsv", readers.read_obqa_tsv),
                MirrorFile("main", "test", "openbookqa/Main/test.jsonl", readers.read_obqa_jsonl),
            ),
            fields=("id", "question_stem", "choices", "answerKey"),
        ),
    ),
)

STAGED: dict[str, Task] = {t.short: t for t in TABLE}
_BY_LAUNCHER: dict[str, Task] = {t.launcher: t for t in TABLE}


def staged(short: str, where: str = "task") -> Task:
    """One of the five staged tasks by its short name."""
    if short not in STAGED:
        raise UserError(f"{where}: {short!r} is not a staged task{did_you_mean(short, STAGED)}; staged: {', '.join(STAGED)}")
    return STAGED[short]


# --- the launcher's catalog -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    harness: str
    endpoint_type: str
    container: str
    description: str = ""

    @property
    def qualified(self) -> str:
        return f"{self.harness}.{self.name}"


@functools.cache
def catalog() -> tuple[CatalogEntry, ...]:
    """Every task the installed NeMo Evaluator Launcher knows (its packaged task definitions; about 2 s)."""
    import logging

    from nemotron_eval.core.launcher import keep_root_logging, module

    logging.getLogger("nemo_evaluator_launcher").setLevel(logging.WARNING)
    with keep_root_logging():
        mapping: dict[Any, Any] = module("nemo_evaluator_launcher.common.mapping").load_tasks_mapping()
    return tuple(
        sorted(
            (
                CatalogEntry(
                    name=str(d["task"]), harness=str(d["harness"]), endpoint_type=str(d.get("endpoint_type") or ""),
                    container=str(d.get("container") or ""), description=" ".join(str(d.get("description") or "").split()),
                )
                for d in mapping.values()
            ),
            key=lambda e: (e.name, e.harness),
        )
    )


@functools.cache
def installed_harnesses() -> frozenset[str]:
    """Harnesses whose package is installed here (the harness runs in this environment, no container)."""
    import logging

    from nemotron_eval.core.launcher import keep_root_logging, module

    logging.getLogger("nemo_evaluator").setLevel(logging.WARNING)
    with keep_root_logging():
        frameworks, _, _ = module("nemo_evaluator.core.input").get_available_evaluations()
    return frozenset(str(name) for name in frameworks)


def _from_catalog(name: str, where: str) -> Task:
    """A catalog task; its short name is the name as written (paths: results/{model}/ifeval.json)."""
    entries = catalog()
    if name.count(".") == 1:
        harness, _, task = name.partition(".")
        hits = [e for e in entries if (e.harness, e.name) == (harness, task)]
    else:
        hits = [e for e in entries if e.name == name]
    if not hits:
        names = sorted({e.name for e in entries} | set(STAGED) | set(_BY_LAUNCHER))
        raise UserError(
            f"{where}: unknown task {name!r}{did_you_mean(name, names)}; `nemotron ls tasks` lists the "
            f"{len(entries)} tasks of the installed launcher"
        )
    if len(hits) > 1:
        local = [e for e in hits if e.harness in installed_harnesses()]
        if len(local) != 1:
            raise UserError(
                f"{where}: task {name!r} exists in several harnesses; write one of "
                f"{', '.join(e.qualified for e in hits)}"
            )
        hits = local
    entry = hits[0]
    return Task(short=name, launcher=name, harness=entry.harness, endpoint_type=entry.endpoint_type, container=entry.container)


def resolve(name: Any, where: str = "evaluation.tasks") -> Task:
    """The task a config entry names (`evaluation.tasks[].name`): a launcher name of the table, else the catalog's."""
    if not isinstance(name, str) or not name:
        raise UserError(f"{where}: a task name must be a non-empty string, got {name!r}")
    if name in _BY_LAUNCHER:
        return _BY_LAUNCHER[name]
    return _from_catalog(name, where)


def matches(task: Task, name: str) -> bool:
    """Whether a filter name (`tasks=`, `-t`) selects `task`: its short name, launcher name or qualified name."""
    return name in (task.short, task.launcher, f"{task.harness}.{task.launcher}")


def listing() -> list[dict[str, Any]]:
    """The catalog as rows for `nemotron ls tasks`, with the staged tasks' short names and where data comes from."""
    rows = []
    for e in catalog():
        staged_task = _BY_LAUNCHER.get(e.name) if e.harness == LM_EVAL else None
        rows.append({
            "name": e.name,
            "harness": e.harness,
            "endpoint": e.endpoint_type,
            "short": staged_task.short if staged_task else "",
            "offline": bool(staged_task),
            "runs_here": e.harness in installed_harnesses(),
            "description": e.description,
        })
    return rows
