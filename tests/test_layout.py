"""The package's shape, as README's layout section states it: one folder per role, in layers (a folder imports
only from the folders before it: no two-way dependency, so no import cycle between folders), nothing imports
tests or bench, no module over 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "nemotron_eval"
LAYERS = ["core", "data", "config", "artifacts", "executors", "deploy", "evaluate", "report", "exporters",
          "pipeline", "front"]  # fmt: skip
MAX_LINES = 500


def _imports(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_folder_is_a_layer() -> None:
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == sorted(LAYERS), "a new folder of the package needs its place in LAYERS and README's layout"
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py"], "every module lives in a folder"


def test_a_folder_imports_only_the_layers_below() -> None:
    wrong = []
    for module in _modules():
        own = module.relative_to(PACKAGE).parts[0]
        allowed = set(LAYERS[: LAYERS.index(own) + 1]) if own in LAYERS else set()
        for line, name in _imports(module):
            parts = name.split(".")
            if parts[0] in ("tests", "bench", "conftest", "support"):
                wrong.append(f"{module}:{line} imports {name}")
            elif own in LAYERS and parts[0] == "nemotron_eval" and len(parts) > 1 and parts[1] in LAYERS \
                    and parts[1] not in allowed:
                wrong.append(f"{module}:{line}: {own}/ imports {name}, a layer above it")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_no_module_over_the_budget() -> None:
    long = [f"{m} has {n} lines" for m in _modules() if (n := len(m.read_text().splitlines())) > MAX_LINES]
    assert not long, f"budget {MAX_LINES} lines, split by job: " + "; ".join(long)
