"""ProjectPackager: the NeMo-Run packager that ships the project. Importing it imports nemo_run (seconds)."""

from __future__ import annotations

import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nemo_run.core.packaging.base import Packager

from nemotron_eval.core.io import current_umask
from nemotron_eval.executors.remote.shipping import CONTROL


@dataclass(kw_only=True)
class ProjectPackager(Packager):
    """Ships named files of a local folder plus a control folder (as .nemotron-remote/).

    Unlike GitArchivePackager it ships the working tree as it is (uncommitted edits included), takes the
    file list from its fields instead of a shell `find`, and writes the archive with Python's tarfile.
    NeMo-Run extracts it into the job's code/ folder and, for an SSH tunnel, rsyncs that to the cluster.
    """

    root: str
    files: list[str]
    control: str  # a local folder whose files go under .nemotron-remote/

    def package(self, path: Path, job_dir: str, name: str) -> str:
        out = Path(job_dir) / f"{name}.tar.gz"
        if out.exists():
            return str(out)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=job_dir)
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600: the mode a plain open() would give
        os.close(fd)
        try:
            with tarfile.open(tmp, "w:gz") as tar:
                for rel in self.files:
                    tar.add(Path(self.root) / rel, arcname=rel, recursive=False)
                for f in sorted(Path(self.control).iterdir()):
                    tar.add(f, arcname=f"{CONTROL}/{f.name}", recursive=False)
            os.replace(tmp, out)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return str(out)
