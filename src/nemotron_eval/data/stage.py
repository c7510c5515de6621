"""Stage one benchmark's data as local JSON-lines files the harness reads with its own task YAML.

How the data reaches the harness (decided here, used by `nemotron_eval.evaluate`)
--------------------------------------------------------------------------------
NeMo Evaluator runs lm-evaluation-harness tasks whose YAML names a hub dataset
(`dataset_path: hellaswag`, ...). Of the two offline routes that work, this project uses
**wrapper task YAMLs** (route B of the notes), not a pre-filled `datasets` cache (route A):
`evaluate.task_yamls.write_task_yamls` writes, per task, a YAML that `include:`s the harness's own task file
and overrides only where the rows come from (`dataset_path: json`, `dataset_name: null`,
`dataset_kwargs.data_files` = the files staged here). Prompts, few-shot counts and samplers,
filters and metrics stay the harness's. Route A was rejected because it depends on the private
cache layout and fingerprints of one `datasets` version, and because a stale or hub-filled cache
is read silently; with route B a missing file is a hard error, the data source is visible in
the harness's command line, and nothing under HF_HOME is touched.
Cost: the task is renamed (lm-eval does not let an `--include_path` task shadow a built-in name),
so metric keys carry `staged_<name>`; MMLU needs 57 subject wrappers plus a group wrapper, all
generated from the harness's own files.

Staged layout (`out_dir`), the same whatever the source::

    manifest.json                   source, digest, fallbacks, row counts, files
    <config>/<split>.jsonl          one row a line, fields in the hub dataset's schema

`<config>` is the hub dataset's config name: the 57 MMLU subjects (`abstract_algebra`, ...),
`ARC-Challenge`, `winogrande_xl`, `default` (HellaSwag), `main` (OpenBookQA).
Splits are the hub's names (`train`, `validation`, `test`, MMLU's `dev`).

Sources: a local mirror of the original releases (`mirror=`, from the `data.mirror` config key
or `NEMOTRON_DATA_MIRROR`), read with `readers`; or the Hugging Face hub (`mirror=None`): the
parquet conversion (`refs/convert/parquet`) of the dataset id the harness's YAML names.
Writing is atomic: a temporary folder beside `out_dir`, renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from nemotron_eval.data import readers
from nemotron_eval.core.errors import UserError
from nemotron_eval.core.io import atomic_dir, sha256_file
from nemotron_eval.core.safeload import load_json
from nemotron_eval.data.tasks import Dataset, staged

MIRROR_ENV = "NEMOTRON_DATA_MIRROR"
MIRROR_KEY = "data.mirror"
MANIFEST = "manifest.json"
HUB_REVISION = "refs/convert/parquet"
FORMAT_VERSION = 1

def spec(task_short: str) -> Dataset:
    """The offline dataset of a staged task (see `nemotron_eval.data.tasks`)."""
    dataset = staged(task_short).dataset
    assert dataset is not None
    return dataset


def resolve_mirror(configured: str | os.PathLike[str] | None) -> Path | None:
    """The mirror root: the `data.mirror` config value, else `$NEMOTRON_DATA_MIRROR`, else None."""
    if configured not in (None, ""):
        where, value = MIRROR_KEY, str(configured)
    elif os.environ.get(MIRROR_ENV):
        where, value = MIRROR_ENV, os.environ[MIRROR_ENV]
    else:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise UserError(f"{where}: mirror folder {value!r} does not exist or is not a folder")
    return path.resolve()


def stage_dataset(
    task_short: str,
    out_dir: Path,
    *,
    mirror: Path | None,
    hub_revision: str = HUB_REVISION,
    hub_cache_dir: Path | None = None,
) -> Path:
    """Stage `task_short`'s dataset into `out_dir` (replaced atomically) and return `out_dir`.

    `mirror` is the root of a local mirror of the original releases; None reads the hub.
    """
    ds = spec(task_short)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        if mirror is not None:
            source, files, inputs = _from_mirror(ds, Path(mirror), tmp)
            fallbacks = list(ds.fallbacks)
        else:
            source, files = _from_hub(ds, tmp, hub_revision, hub_cache_dir)
            inputs, fallbacks = {}, []
        configs: dict[str, dict[str, dict[str, Any]]] = {}
        splits: dict[str, int] = {}
        for (config, split), (rel, rows) in sorted(files.items()):
            configs.setdefault(config, {})[split] = {"rows": rows, "file": rel}
            splits[split] = splits.get(split, 0) + rows
        manifest = {
            "format": FORMAT_VERSION,
            "task": task_short,
            "dataset": ds.hub_id,
            "source": source,
            "digest": staged_digest(tmp),
            "splits": splits,
            "fallbacks": fallbacks,
            "configs": configs,
            "inputs": inputs,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return out_dir


def staged_from_mirror(staged: Path) -> Path | None:
    """The mirror folder a staged dataset came from, if it still exists."""
    path = Path(staged) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = load_json(path, "staged data manifest")
    except UserError:
        return None  # a broken manifest: the data is staged again (from the configured mirror or the hub)
    source = str(manifest.get("source", "")) if isinstance(manifest, dict) else ""
    mirror = Path(source.removeprefix("mirror:")) if source.startswith("mirror:") else None
    return mirror if mirror is not None and mirror.is_dir() else None


def read_manifest(staged_dir: Path) -> dict[str, Any]:
    path = Path(staged_dir) / MANIFEST
    if not path.is_file():
        raise UserError(f"{path}: no staged dataset here (run the stage step first)")
    manifest = load_json(path, "staged data manifest", fix=f"stage the dataset again (delete {staged_dir})")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        manifest = manifest if isinstance(manifest, dict) else {}
        raise UserError(f"{path}: format {manifest.get('format')!r} is not {FORMAT_VERSION}")
    return manifest


def staged_digest(staged_dir: Path) -> str:
    """sha256 over the staged data files (sorted relative paths and contents), not the manifest."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(staged_dir).rglob("*.jsonl") if p.is_file()):
        rel = path.relative_to(staged_dir).as_posix()
        h.update(f"{rel}\0{sha256_file(path)}\n".encode())
    return "sha256:" + h.hexdigest()


# --- sources ------------------------------------------------------------------------------

Files = dict[tuple[str, str], tuple[str, int]]  # (config, split) -> (relative file, rows)


def _from_mirror(ds: Dataset, mirror: Path, out: Path) -> tuple[str, Files, dict[str, str]]:
    if not mirror.is_dir():
        raise UserError(
            f"data mirror {str(mirror)!r} is not a folder (set {MIRROR_KEY} or {MIRROR_ENV})"
        )
    files: Files = {}
    inputs: dict[str, str] = {}
    for mf in ds.mirror_files:
        path = mirror / mf.path
        if not path.is_file():
            raise UserError(
                f"{path}: missing from the data mirror {str(mirror)!r} "
                f"({MIRROR_KEY} / {MIRROR_ENV}); it holds the {mf.split} split of {ds.hub_id}"
            )
        inputs[mf.path] = sha256_file(path)
        files[(mf.config, mf.split)] = _write_rows(out, mf.config, mf.split, mf.reader(path), ds.fields)
    return f"mirror:{mirror.resolve()}", files, inputs


def _from_hub(
    ds: Dataset, out: Path, revision: str, cache_dir: Path | None
) -> tuple[str, Files]:
    snapshot = Path(_download(ds.hub_id, ds.configs, revision, cache_dir))
    files: Files = {}
    for config in ds.configs:
        by_split: dict[str, list[Path]] = {}
        for pq_file in sorted((snapshot / config).rglob("*.parquet")):
            split = _hub_split(PurePosixPath(pq_file.relative_to(snapshot).as_posix()))
            by_split.setdefault(split, []).append(pq_file)
        if not by_split:
            raise UserError(
                f"hub dataset {ds.hub_id!r}@{revision}: no parquet files for config {config!r}; "
                f"set {MIRROR_KEY} or {MIRROR_ENV} to a local mirror instead"
            )
        for split, paths in sorted(by_split.items()):
            files[(config, split)] = _write_rows(out, config, split, _parquet_rows(paths), ds.fields)
    return f"hub:{ds.hub_id}@{snapshot.name}", files


def _download(repo_id: str, configs: tuple[str, ...], revision: str, cache_dir: Path | None) -> str:
    """Local snapshot folder of the parquet files of `configs`; every failure is a UserError."""
    import huggingface_hub

    try:
        return huggingface_hub.snapshot_download(
            repo_id,
            repo_type="dataset",
            revision=revision,
            allow_patterns=[f"{c}/*" for c in configs],
            cache_dir=cache_dir,
            # honoured at call time too (huggingface_hub reads the variable once, at import)
            local_files_only=os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"),
        )
    except Exception as e:  # offline, DNS, HTTP, auth: all mean "use the mirror"
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise UserError(
            f"cannot fetch dataset {repo_id!r} (revision {revision}) from the Hugging Face hub: "
            f"{type(e).__name__}: {reason}; set {MIRROR_KEY} in the config or {MIRROR_ENV} "
            "to a local mirror of the original releases"
        ) from e


def _hub_split(rel: PurePosixPath) -> str:
    """Split of `<config>/<split>/0000.parquet` or of `<config>/<name>-<split>.parquet`."""
    if len(rel.parts) >= 3:
        return rel.parts[1].removeprefix("partial-")
    m = re.fullmatch(r".+?-([A-Za-z_]+)(?:-\d+-of-\d+)?\.parquet", rel.name)
    if not m:
        raise UserError(f"hub file {str(rel)!r}: cannot tell its split from the name")
    return m.group(1)


def _parquet_rows(paths: list[Path]) -> Iterator[readers.Row]:
    import pyarrow.parquet as pq

    for path in paths:
        yield from pq.read_table(path).to_pylist()


# --- writing ------------------------------------------------------------------------------


def _write_rows(
    out: Path, config: str, split: str, rows: Iterable[readers.Row], fields: tuple[str, ...]
) -> tuple[str, int]:
    """Write rows as JSON lines; each must have exactly the task's schema `fields` (what the harness reads)."""
    rel = f"{config}/{split}.jsonl"
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            if tuple(row) != fields:
                raise UserError(
                    f"{config}/{split} row {n + 1}: fields {', '.join(row)} do not match the task's schema "
                    f"({', '.join(fields)}); the source is not the release this reader expects"
                )
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    if n == 0:
        raise UserError(f"{config}/{split}: the source has no rows")
    return rel, n
