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

    manifest.json                   source, digest, fallbacks, row counts, files and their sha256, what was read
    <config>/<split>.jsonl          one row a line, fields in the hub dataset's schema

`<config>` is the hub dataset's config name: the 57 MMLU subjects (`abstract_algebra`, ...),
`ARC-Challenge`, `winogrande_xl`, `default` (HellaSwag), `main` (OpenBookQA).
Splits are the hub's names (`train`, `validation`, `test`, MMLU's `dev`).

Sources: a local mirror of the original releases (`mirror=`, from the `data.mirror` config key
or `NEMOTRON_DATA_MIRROR`), read with `readers`; or the Hugging Face hub (`mirror=None`): the
parquet conversion (`refs/convert/parquet`) of the dataset id the harness's YAML names.
Writing is atomic: a temporary folder beside `out_dir`, renamed into place when complete.

Staged data is what the evaluation reads, and what it reads is what its result says: `verify_staged` checks the
files against the manifest right before the harness reads them (and after), and the digest it computes is the one
the result records. `reads` says what staging a task reads (the mirror's files, as a list and each file's
identity, or the hub's dataset): the stage rule restages when it changes, and the manifest keeps it.
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
    what = reads(task_short, mirror, hub_revision)  # before reading: a file changed meanwhile restages next time
    with atomic_dir(out_dir) as tmp:
        if mirror is not None:
            source, files, inputs = _from_mirror(ds, Path(mirror), tmp)
            fallbacks = list(ds.fallbacks)
        else:
            source, files = _from_hub(ds, tmp, hub_revision, hub_cache_dir)
            inputs, fallbacks = {}, []
        digests = _file_digests(tmp)
        configs: dict[str, dict[str, dict[str, Any]]] = {}
        splits: dict[str, int] = {}
        for (config, split), (rel, rows) in sorted(files.items()):
            configs.setdefault(config, {})[split] = {"rows": rows, "file": rel, "sha256": digests[rel]}
            splits[split] = splits.get(split, 0) + rows
        manifest = {
            "format": FORMAT_VERSION,
            "task": task_short,
            "dataset": ds.hub_id,
            "source": source,
            "digest": _combined(digests),
            "splits": splits,
            "fallbacks": fallbacks,
            "configs": configs,
            "inputs": inputs,
            "reads": what,
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


def hub_off() -> bool:
    """Whether the Hugging Face hub is switched off here (HF_HUB_OFFLINE)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def staged_digest(staged_dir: Path) -> str:
    """sha256 over the staged data files (sorted relative paths and contents), not the manifest."""
    return _combined(_file_digests(Path(staged_dir)))


def _file_digests(staged_dir: Path) -> dict[str, str]:
    """Relative path -> sha256 of every data file (`*.jsonl`) under `staged_dir`, whatever it is: a data file that
    is not a regular file is refused (the harness would read it; a FIFO would block)."""
    digests: dict[str, str] = {}
    for path in sorted(Path(staged_dir).rglob("*.jsonl")):
        rel = path.relative_to(staged_dir).as_posix()
        if not path.is_file():  # a regular file (after links)
            raise UserError(f"{path}: not a regular file in staged data; {_restage(staged_dir)}")
        digests[rel] = sha256_file(path)
    return digests


def _combined(digests: dict[str, str]) -> str:
    h = hashlib.sha256()
    for rel, digest in sorted(digests.items()):
        h.update(f"{rel}\0{digest}\n".encode())
    return "sha256:" + h.hexdigest()


def _restage(staged_dir: Path) -> str:
    return f"stage it again: delete {staged_dir} and run again"


def verify_staged(staged_dir: Path) -> dict[str, Any]:
    """The manifest of a staged dataset whose files are, now, the ones staging wrote: every file the manifest lists
    with its sha256, no other data file, and their digest the manifest's. `digest` in what it returns is the one
    just computed from the files (equal to the manifest's). Anything else (a file edited, added or removed after
    staging, a manifest edited) is one line naming the file and saying how to stage it again."""
    staged_dir = Path(staged_dir)
    manifest = read_manifest(staged_dir)
    where = staged_dir / MANIFEST
    configs = manifest.get("configs")
    if not isinstance(configs, dict) or not all(isinstance(c, dict) for c in configs.values()):
        raise UserError(f"{where}: `configs` is not a mapping of configs to splits; {_restage(staged_dir)}")
    listed: dict[str, str | None] = {}
    for config, splits in configs.items():
        for split, entry in splits.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
                raise UserError(f"{where}: configs.{config}.{split} names no file; {_restage(staged_dir)}")
            listed[entry["file"]] = entry.get("sha256")
    found = _file_digests(staged_dir)
    for rel, recorded in sorted(listed.items()):
        if rel not in found:
            raise UserError(f"{staged_dir / rel}: missing from the staged data (its manifest lists it); "
                            f"{_restage(staged_dir)}")
        if recorded is not None and found[rel] != recorded:
            raise UserError(f"{staged_dir / rel}: edited after staging (sha256 {found[rel][:12]}, staged as "
                            f"{str(recorded)[:12]}); {_restage(staged_dir)}")
    extra = sorted(set(found) - set(listed))
    if extra:
        raise UserError(f"{staged_dir / extra[0]}: not written by staging (the manifest lists no such file); "
                        f"{_restage(staged_dir)}")
    digest = _combined(found)
    if digest != manifest.get("digest"):
        raise UserError(f"{where}: the staged files' digest {digest[:19]} is not the recorded "
                        f"{str(manifest.get('digest'))[:19]} (the data or the manifest was edited after staging); "
                        f"{_restage(staged_dir)}")
    return {**manifest, "digest": digest}


def reads(task_short: str, mirror: Path | None, hub_revision: str = HUB_REVISION) -> str:
    """What staging `task_short` reads, as a digest that changes whenever that does: from a mirror, its files (the
    task's list: config, split, path, reader) and each file's identity (size, modification time, inode: a file
    replaced by another with an older time counts); from the hub, the dataset, its configs and the revision. Also
    the schema and the staged format. The stage rule's param: Snakemake restages when it changes."""
    ds = spec(task_short)
    parts: list[Any] = [FORMAT_VERSION, ds.hub_id, list(ds.configs), list(ds.fields)]
    if mirror is None:
        parts.append(["hub", hub_revision])
    else:
        for mf in ds.mirror_files:
            path = Path(mirror) / mf.path
            try:
                st = path.stat()
                identity: Any = [st.st_size, st.st_mtime_ns, st.st_ino]
            except OSError:
                identity = None  # staging says it is missing
            parts.append([mf.config, mf.split, mf.path, f"{mf.reader.__module__}.{mf.reader.__qualname__}", identity])
    return "sha256:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()


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
            local_files_only=hub_off(),
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
