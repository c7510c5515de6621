"""Exporting results: the registry of exporters (`base`) and the exporters, one module each: `wandb`, `mlflow`,
`local`. The receipt of exporter NAME for a model is results/{model}/NAME.json.

    nemotron-step export --dest NAME --config build/{model}/eval.yaml --summary results/{model}/summary.json \\
        --out results/{model}/NAME.json results/{model}/{task}.json ...      (the export_model rule)
    nemotron export RUN_ID --dest NAME                                        (a finished run, again)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from nemotron_eval.core.errors import UserError
from nemotron_eval.exporters import local, mlflow, wandb  # each registers itself
from nemotron_eval.exporters.base import (  # the registry's interface
    REGISTRY, ExportJob, Exporter, export_requested, get, login_for_submission, names, register, requested, schema_rules,
    targets,
)
from nemotron_eval.core.secrets import api_key_names

__all__ = [
    "REGISTRY", "ExportJob", "Exporter", "export_requested", "export_step", "get", "job_for", "local",
    "login_for_submission", "mlflow", "names", "read_eval_config", "register", "requested", "schema_rules", "targets", "wandb",
]  # fmt: skip
COMPARISON = Path("results") / "report.json"  # read when there, as it is: a later report is exported next time


def read_eval_config(config: Path) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{config}: cannot read the eval config ({e})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{config}: not an eval config (a mapping)")
    return cfg


def job_for(dest: str, results: Sequence[Path], cfg: dict[str, Any], summary: Path, out: Path,
            auto_export: Any = None, **options: Any) -> ExportJob:
    """One model's export to `dest` as the compiled eval config `cfg` describes it (`auto_export`: instead of
    the config's execution.auto_export, e.g. `nemotron export` asking for `dest` explicitly)."""
    return ExportJob(
        results=[Path(p) for p in results], summary=Path(summary), receipt=Path(out),
        section=(cfg.get("export") or {}).get(dest),
        auto_export=(cfg.get("execution") or {}).get("auto_export") if auto_export is None else auto_export,
        secret_names=api_key_names(cfg), comparison=COMPARISON, options=options,
    )


def export_step(dest: str, results: Sequence[Path], config: Path, summary: Path, out: Path) -> dict[str, Any]:
    """The export step (`nemotron-step export --dest NAME`): the compiled eval config says where to, the files what."""
    exporter = get(dest)
    return exporter.export(job_for(exporter.name, results, read_eval_config(config), summary, out))
