"""NeMo Evaluator Launcher and NeMo Evaluator, imported without letting them take over this process's logging.

Importing either configures the root logger: the launcher adds a stderr handler and DEBUG file handlers (under
~/.nemo-evaluator/logs), NeMo Evaluator a console handler of its own. Inside Snakemake's process (the plan reads
the launcher's task catalog, its env-var syntax and config models) every line Snakemake logs would then be
printed twice. `module(name)` imports one of their modules and puts the root logger back as it was.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType


@contextmanager
def keep_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


def module(name: str) -> ModuleType:
    """`importlib.import_module(name)`, the root logger left as it was."""
    with keep_root_logging():
        return importlib.import_module(name)
