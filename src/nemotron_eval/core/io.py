"""Small file helpers: atomic writes (with the modes the umask gives) and content digests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask sets it: a race for rules running in threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc (not Linux): the classic way
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temp file in the same folder, then rename."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder, then rename. mkstemp makes the temp file
    0600; it gets the mode a plain open() would give (0666 less the umask), so a shared registry or results
    folder stays readable by the team."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def dump_yaml(data: Any) -> str:
    """Deterministic YAML: key order kept, block style, no aliases."""

    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return yaml.dump(data, Dumper=_NoAliases, sort_keys=False, default_flow_style=False, width=1000)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(folder: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(part in skip for part in p.parts))


def sha256_tree(folder: Path, skip: tuple[str, ...] = ()) -> str:
    """Content digest of a folder: relative paths and file contents, in sorted order; files under a folder named
    in `skip` (e.g. __pycache__) left out."""
    folder = Path(folder)
    if folder.is_file():
        return sha256_file(folder)
    h = hashlib.sha256()
    for p in _files(folder, skip):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        h.update(sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def stat_fingerprint(folder: Path) -> str:
    """Cheap change detector for a folder: relative paths, sizes and mtimes (no reading)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in [folder] if folder.is_file() else _files(folder):
        st = p.stat()
        h.update(f"{p.relative_to(folder) if p != folder else p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@contextlib.contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `out_dir`; on success it replaces `out_dir`, else goes."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; it gets a plain mkdir's mode
        yield tmp
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex}.old"
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def log_tail(path: Path | str | None, n: int = 30) -> str:
    """The last `n` lines of a log file (progress-bar redraws collapsed), or a line saying there is none."""
    if path is None:
        return "(no log file given)"
    path = Path(path)
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 400 * n, 0))  # a generous guess at n lines' size
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    lines = [line.split("\r")[-1].rstrip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    return "\n".join(lines[-n:]) if lines else f"({path} is empty)"


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets read as the start of a formula


def csv_cell(value: Any) -> str:
    """One CSV cell: None empty, booleans true/false, floats in full (repr), and text that a spreadsheet would
    run as a formula (a model or task name starting with = + - @) quoted with a leading apostrophe (OWASP's rule)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    """A table as CSV text (every cell through `csv_cell`): the one writer of the project's CSV files."""
    import csv
    import io as _io

    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow([csv_cell(v) for v in row])
    return buf.getvalue()
