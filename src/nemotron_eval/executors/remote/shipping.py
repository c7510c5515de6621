"""What is shipped with the head job: the project's files and the control folder that head.sh reads."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from nemotron_eval.executors.remote.profile import RemoteProfile

CONTROL = ".nemotron-remote"  # the control folder's name inside the shipped project
# Left out when the project folder is not a git work tree (no .gitignore to ask).
_SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", ".snakemake", ".pytest_cache", "node_modules"}


def project_files(root: Path) -> list[str]:
    """The files to ship: git's tracked and untracked-but-not-ignored files, else all but caches and venvs."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root, capture_output=True, check=True, timeout=60,
        ).stdout  # fmt: skip
        names = [n for n in out.decode().split("\0") if n]
        return sorted(n for n in set(names) if (root / n).is_file() or (root / n).is_symlink())
    except (OSError, subprocess.CalledProcessError):
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
            files += [os.path.relpath(os.path.join(dirpath, f), root) for f in filenames]
        return sorted(files)


def write_control(folder: Path, profile: RemoteProfile, argv: Sequence[str]) -> None:
    """head.sh and the values it reads as data."""
    head = resources.files("nemotron_eval.executors.remote").joinpath("head.sh").read_bytes()
    (folder / "head.sh").write_bytes(head)
    (folder / "head.sh").chmod(0o755)
    (folder / "argv").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    if profile.venv:
        (folder / "venv").write_bytes(profile.venv.encode() + b"\0")
    if profile.setup:
        lines = "\n".join(profile.setup)
        (folder / "setup.sh").write_text(f"# env.toml profile {profile.name!r}: setup lines, sourced by head.sh\n{lines}\n")
