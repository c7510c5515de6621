"""Container images squashed once with enroot (build/images/*.sqsh), for pyxis and enroot on Slurm.

Compute nodes then start the deployment from a file on the shared filesystem instead of each pulling the image
from the registry. Which image and where its file lies is decided when eval.yaml is compiled
(`config.compile.squashed_image`); the squash_image rule calls `squash`. enroot writes to a temporary name next to the output, renamed into place only once the import succeeded.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemotron_eval.core.io import log_tail
from nemotron_eval.core.errors import UserError

DOCKER_HUB = "docker.io"
SQUASHED_RUNNERS = ("pyxis", "enroot")
_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Fa-f0-9]{32,}")


class SquashError(UserError):
    """enroot could not import the image; the message ends with enroot's last lines."""


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference: `[registry/]repository[:tag][@digest]`."""

    registry: str  # docker.io when the reference names none
    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """The canonical reference: registry, repository, and tag (latest when neither tag nor digest)."""
        tag = self.tag or (None if self.digest else "latest")
        return f"{self.registry}/{self.repository}" + (f":{tag}" if tag else "") + (f"@{self.digest}" if self.digest else "")


def is_image_file(image: str) -> bool:
    """A local image file (an existing .sqsh or .sif) rather than a registry reference."""
    return image.startswith(("/", "./", "../", "~")) or image.endswith((".sqsh", ".sif"))


def parse_image(image: str) -> ImageRef:
    """Parse a Docker image reference; raises UserError naming deployment.image when it is not one."""
    rest, _, digest = image.strip().partition("@")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, rest
    repository, colon, tag = path.rpartition(":") if ":" in path.rsplit("/", 1)[-1] else (path, "", "")
    if registry in (DOCKER_HUB, "index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
        repository = repository if "/" in repository else f"library/{repository}"
    if not (_REPOSITORY.fullmatch(repository) and (not colon or _TAG.fullmatch(tag)) and (not digest or _DIGEST.fullmatch(digest))):
        raise UserError(
            f"deployment.image={image!r}: not an image reference "
            "([registry/]repository[:tag][@sha256:digest], e.g. nvcr.io/nvidia/nemo:25.11.nemotron_3_nano)"
        )
    return ImageRef(registry, repository, tag or None, digest or None)


def enroot_uri(image: str) -> str:
    """enroot's URI for an image: docker://[REGISTRY#]REPOSITORY:TAG.

    Docker Hub images are given without a registry (enroot's default, registry-1.docker.io); a digest
    replaces the tag (`repository:sha256:...`, the manifest enroot then fetches).
    """
    ref = parse_image(image)
    registry = "" if ref.registry == DOCKER_HUB else f"{ref.registry}#"
    return f"docker://{registry}{ref.repository}:{ref.digest or ref.tag or 'latest'}"


def sqsh_name(image: str) -> str:
    """A file name for the squashed image: the canonical reference with `/`, `:` and `@` as `+`,
    e.g. nvcr.io+nvidia+nemo+25.11.nemotron_3_nano.sqsh (only [A-Za-z0-9._+-])."""
    name = re.sub(r"[/:@]", "+", parse_image(image).reference)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name) + ".sqsh"


def needs_squash(eval_cfg: Mapping[str, Any], *, runs_image: bool) -> bool:
    """True when the deployment's image is squashed first (`squashes`). `runs_image`: whether the deployment's
    type starts deployment.image (the caller asks its type, `deploy.types.get(kind).runs_image`)."""
    return runs_image and squashes(eval_cfg.get("execution") or {}, (eval_cfg.get("deployment") or {}).get("image"))


def enroot_problem(runner: str, image: Any, key: str, *, squashed_later: bool) -> str | None:
    """Why `runner` cannot start `image` (the value of `key`), or None: enroot starts a squashed file only, which a
    registry image becomes on Slurm (`squashed_later`)."""
    if runner == "enroot" and not str(image).endswith(".sqsh") and not squashed_later:
        return (f"execution.container_runner=enroot starts a squashed image; {key}={image} is not a .sqsh file "
                "(a registry image is squashed for execution.type=slurm)")
    return None


def squashes(execution: Mapping[str, Any], image: Any) -> bool:
    """True when `image` (a deployment's or a harness's) is a registry reference that pyxis or enroot starts on an
    executor that squashes images first (Slurm)."""
    from nemotron_eval.executors import for_execution

    return (
        for_execution(execution).squashes_images
        and execution.get("container_runner") in SQUASHED_RUNNERS
        and isinstance(image, str)
        and bool(image)
        and not is_image_file(image)
    )


def squash(image: str, output: Path, *, enroot: str = "enroot", log: Path) -> None:
    """`enroot import` the image into `output`, atomically: a failed import leaves no file behind."""
    output, log = Path(output), Path(log)
    uri = enroot_uri(image)
    executable = shutil.which(enroot)
    if executable is None:
        raise SquashError(f"{enroot!r} is not on PATH: squashing {image} for execution.container_runner pyxis/enroot needs enroot")
    output.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # enroot refuses to overwrite
    try:
        with log.open("w") as out:
            print(f"$ {enroot} import --output {tmp} {uri}", file=out, flush=True)
            status = subprocess.run(
                [executable, "import", "--output", str(tmp), uri],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=False,
            ).returncode
        if status != 0 or not tmp.is_file():
            why = f"exit status {status}" if status else f"no file at {tmp}"
            raise SquashError(f"enroot import {uri} failed ({why}); last lines of {log}:\n{log_tail(log, 15)}")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
