"""Squashed images: file names, enroot URIs, and `squash` itself.

enroot cannot run here (no user namespaces for it, no registry access), so `squash` is tested against a
stand-in `enroot` on PATH: a small script written into tmp_path that records its argv and writes the
--output file, or prints a message and fails.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from nemotron_eval.core.errors import UserError
from conftest import copy_workflow, make_checkpoint, nemotron, snakemake
from nemotron_eval.deploy.images import SquashError, enroot_uri, needs_squash, parse_image, sqsh_name, squash

DIGEST = "sha256:" + "ab12" * 16


@pytest.mark.parametrize(
    ("image", "name"),
    [
        ("nvcr.io/nvidia/nemo:25.11.nemotron_3_nano", "nvcr.io+nvidia+nemo+25.11.nemotron_3_nano.sqsh"),
        ("nvcr.io/nvidia/nemo-evaluator", "nvcr.io+nvidia+nemo-evaluator+latest.sqsh"),
        ("vllm/vllm-openai:v0.11.0", "docker.io+vllm+vllm-openai+v0.11.0.sqsh"),
        ("ubuntu", "docker.io+library+ubuntu+latest.sqsh"),
        ("docker.io/library/ubuntu:latest", "docker.io+library+ubuntu+latest.sqsh"),
        ("registry.local:5000/team/img:1.0", "registry.local+5000+team+img+1.0.sqsh"),
        (f"nvcr.io/nvidia/nemo@{DIGEST}", f"nvcr.io+nvidia+nemo+{DIGEST.replace(':', '+')}.sqsh"),
    ],
)
def test_sqsh_name(image: str, name: str) -> None:
    assert sqsh_name(image) == name
    assert set(name) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-")


@pytest.mark.parametrize(
    ("image", "uri"),
    [
        ("nvcr.io/nvidia/nemo:25.11.nemotron_3_nano", "docker://nvcr.io#nvidia/nemo:25.11.nemotron_3_nano"),
        ("nvcr.io/nvidia/nemo-evaluator", "docker://nvcr.io#nvidia/nemo-evaluator:latest"),
        ("vllm/vllm-openai", "docker://vllm/vllm-openai:latest"),  # Docker Hub: enroot's default registry
        ("docker.io/vllm/vllm-openai:v1", "docker://vllm/vllm-openai:v1"),
        ("ubuntu:24.04", "docker://library/ubuntu:24.04"),
        ("localhost:5000/img:dev", "docker://localhost:5000#img:dev"),
        (f"nvcr.io/nvidia/nemo@{DIGEST}", f"docker://nvcr.io#nvidia/nemo:{DIGEST}"),
        (f"nvcr.io/nvidia/nemo:25.11@{DIGEST}", f"docker://nvcr.io#nvidia/nemo:{DIGEST}"),  # the digest wins
    ],
)
def test_enroot_uri(image: str, uri: str) -> None:
    assert enroot_uri(image) == uri


@pytest.mark.parametrize("image", ["", "Nvcr.io/UPPER/x", "nvcr.io/nvidia/nemo:bad tag", "nemo@sha256:xyz", "a//b"])
def test_not_an_image_reference(image: str) -> None:
    with pytest.raises(UserError, match="deployment.image="):
        parse_image(image)


def eval_cfg(runner: str = "pyxis", *, type_: str = "slurm", image: str = "nvcr.io/nvidia/nemo:25.11", dep: str = "generic") -> dict:
    return {"execution": {"type": type_, "container_runner": runner}, "deployment": {"type": dep, "image": image}}


def test_needs_squash() -> None:
    """images asks the caller whether the deployment starts its image; the deployment type knows (runs_image)."""
    from nemotron_eval.deploy import types

    def squashed(cfg: dict) -> bool:
        return needs_squash(cfg, runs_image=types.get(cfg["deployment"]["type"]).runs_image)

    assert squashed(eval_cfg("pyxis")) and squashed(eval_cfg("enroot")) and squashed(eval_cfg(dep="vllm"))
    assert not squashed(eval_cfg("apptainer"))
    assert not squashed(eval_cfg("none"))
    assert not squashed(eval_cfg(type_="local", runner="enroot"))
    assert not squashed(eval_cfg(dep="local"))
    assert not squashed(eval_cfg(image="/shared/images/nemo.sqsh"))  # already a file
    assert not squashed({"execution": {"type": "slurm", "container_runner": "pyxis"}, "deployment": {"type": "none"}})
    assert not needs_squash(eval_cfg("pyxis"), runs_image=False)


def fake_enroot(tmp_path: Path, *, fail: str | None = None) -> Path:
    """A stand-in enroot: records its argv in calls.jsonl; writes the --output file, or prints `fail` and exits 1."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "enroot"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys, pathlib\n"
        f"pathlib.Path({str(tmp_path / 'calls.jsonl')!r}).open('a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "args = sys.argv[1:]\n"
        "out = pathlib.Path(args[args.index('--output') + 1])\n"
        "assert not out.exists(), 'File already exists'\n"
        "print('[INFO] Querying registry for permission grant')\n"
        f"fail = {fail!r}\n"
        "if fail:\n"
        "    out.write_bytes(b'partial')\n"  # a half-written file must not survive
        "    print('[INFO] Fetching image manifest')\n"
        "    print(fail, file=sys.stderr)\n"
        "    sys.exit(1)\n"
        "out.write_bytes(b'hsqs' + b'\\0' * 60)\n"
        "print('[INFO] Creating squashfs filesystem...')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def calls(tmp_path: Path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


def test_squash_imports_into_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{fake_enroot(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "build" / "images" / sqsh_name("nvcr.io/nvidia/nemo:25.11.nemotron_3_nano")
    squash("nvcr.io/nvidia/nemo:25.11.nemotron_3_nano", out, log=tmp_path / "logs" / "squash.log")
    assert out.read_bytes().startswith(b"hsqs")
    [argv] = calls(tmp_path)
    assert argv[0] == "import" and argv[1] == "--output" and argv[3] == "docker://nvcr.io#nvidia/nemo:25.11.nemotron_3_nano"
    tmp_output = Path(argv[2])
    assert tmp_output.parent == out.parent and tmp_output != out and not tmp_output.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    assert "Creating squashfs" in (tmp_path / "logs" / "squash.log").read_text()


def test_a_failed_import_leaves_nothing_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{fake_enroot(tmp_path, fail='[ERROR] URL https://nvcr.io/v2/nvidia/nemo/manifests/nope returned error code: 401 Unauthorized')}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "images" / "x.sqsh"
    with pytest.raises(SquashError, match=r"(?s)enroot import docker://nvcr.io#nvidia/nemo:nope failed \(exit status 1\).*401 Unauthorized") as e:
        squash("nvcr.io/nvidia/nemo:nope", out, log=tmp_path / "squash.log")
    assert isinstance(e.value, UserError)
    assert list(out.parent.iterdir()) == []


def test_an_existing_output_is_replaced_only_on_success(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "images" / "x.sqsh"
    out.parent.mkdir()
    out.write_bytes(b"old")
    monkeypatch.setenv("PATH", f"{fake_enroot(tmp_path, fail='[ERROR] network unreachable')}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(SquashError):
        squash("ubuntu", out, log=tmp_path / "squash.log")
    assert out.read_bytes() == b"old"


def test_no_enroot(tmp_path: Path) -> None:
    with pytest.raises(SquashError, match="not on PATH"):
        squash("ubuntu", tmp_path / "x.sqsh", enroot=str(tmp_path / "missing-enroot"), log=tmp_path / "log")


def test_the_rule_squashes_the_image_eval_yaml_names(tmp_path: Path) -> None:
    """Through the snakemake CLI: the squash_image rule writes exactly the absolute file compile put into eval.yaml
    (a stand-in enroot: no user namespaces or registry here)."""
    work = copy_workflow(tmp_path)
    assert nemotron(work, "artifacts", "add", "rl", str(make_checkpoint(tmp_path / "ck"))).returncode == 0
    env = {"PATH": f"{fake_enroot(tmp_path)}{os.pathsep}{os.environ['PATH']}"}
    name = "nvcr.io+nvidia+nemo+25.11.nemotron_3_nano.sqsh"
    proc = snakemake(work, "build/rl_latest/eval.yaml", f"build/images/{name}", "--config", "eval_config=default", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    image = Path(yaml.safe_load((work / "build/rl_latest/eval.yaml").read_text())["deployment"]["image"])
    assert image == work / "build/images" / name and image.read_bytes().startswith(b"hsqs")
    assert calls(tmp_path)[0][3] == "docker://nvcr.io#nvidia/nemo:25.11.nemotron_3_nano"
    again = snakemake(work, "-n", f"build/images/{name}", "--config", "eval_config=default", env=env)
    assert "Nothing to be done" in again.stdout + again.stderr
    forced = snakemake(work, "-n", f"build/images/{name}", "--config", "eval_config=default", "force_squash=true", env=env)
    assert "squash_image" in forced.stdout