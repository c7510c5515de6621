"""Artifact specs, the local folder registry and its CLI, and the W&B registry (against a fake Api)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from nemotron_eval.artifacts import registry_from_env
from nemotron_eval.artifacts.local import LocalRegistry
from nemotron_eval.artifacts.wandb import WandbRegistry
from nemotron_eval.config.envtoml import EnvFile, load_env_file
from nemotron_eval.core.errors import UserError
from nemotron_eval.core.spec import ModelSpec, parse_spec, parse_wildcard

from conftest import nemotron


def checkpoint(folder: Path, content: str = "weights") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_text(content)
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "tokenizer.json").write_text("{}")
    return folder


@pytest.mark.parametrize(
    ("wildcard", "name", "alias"),
    [("rl_latest", "rl", "latest"), ("sft_v2", "sft", "v2"), ("sft_2", "sft", "v2"), ("my_model_best", "my_model", "best")],
)
def test_wildcards(wildcard: str, name: str, alias: str) -> None:
    spec = parse_wildcard(wildcard)
    assert (spec.name, spec.alias) == (name, alias)
    assert parse_spec(spec.spec) == spec and spec.wildcard == f"{name}_{alias}"


@pytest.mark.parametrize("bad", ["rl", "rl_", "_latest", "a b_latest", "rl_lat:est"])
def test_invalid_wildcards(bad: str) -> None:
    with pytest.raises(UserError, match="not a valid artifact spec; write NAME_ALIAS, e.g. rl_latest"):
        parse_wildcard(bad)


def test_local_registry_versions_aliases_and_digests(tmp_path: Path) -> None:
    reg = LocalRegistry(tmp_path / "artifacts")
    a, b = checkpoint(tmp_path / "a", "one"), checkpoint(tmp_path / "b", "two")
    v1 = reg.add("demo", a, lineage={"stage": "sft"})
    v2 = reg.add("demo", b, aliases=["latest", "best"])
    assert (v1["version"], v2["version"]) == ("v1", "v2")
    assert v1["digest"] != v2["digest"] and len(v1["digest"]) == 64
    meta = json.loads((tmp_path / "artifacts" / "demo" / "v1" / "metadata.json").read_text())
    assert meta["path"] == str(a) and meta["lineage"] == {"stage": "sft"} and meta["files"] == 2 and meta["created_at"]
    assert not (tmp_path / "artifacts" / "demo" / "v1" / "model.safetensors").exists()  # referenced, not copied
    assert reg.resolve(parse_spec("demo:latest")).version == "v2"
    assert reg.resolve(parse_spec("demo:best")).path == str(b)
    assert reg.resolve(parse_spec("demo:1")).version == "v1"
    assert reg.resolve(parse_spec("demo:v1")).digest == v1["digest"]
    reg.add("demo", checkpoint(tmp_path / "c", "three"), aliases=["latest"])  # the alias moves; best stays
    assert reg.resolve(parse_spec("demo:latest")).version == "v3"
    assert reg.resolve(parse_spec("demo:best")).version == "v2"
    assert [(r["version"], r["aliases"]) for r in reg.listing("demo")] == [("v1", []), ("v2", ["best"]), ("v3", ["latest"])]


def test_local_registry_errors_list_what_exists(tmp_path: Path) -> None:
    reg = LocalRegistry(tmp_path / "artifacts")
    with pytest.raises(UserError, match="no artifact named 'demo'.*register one with `nemotron artifacts add"):
        reg.resolve(parse_spec("demo:latest"))
    ck = checkpoint(tmp_path / "ck")
    reg.add("demo", ck)
    with pytest.raises(UserError, match=r"no artifact named 'dmeo'.*\(did you mean 'demo'\?\); artifacts: demo"):
        reg.resolve(parse_spec("dmeo:latest"))
    with pytest.raises(UserError, match="demo has no version or alias 'v7'.*valid: v1, latest"):
        reg.resolve(parse_spec("demo:v7"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no file"):
        reg.add("empty", tmp_path / "empty")
    with pytest.raises(UserError, match="does not exist"):
        reg.add("demo", tmp_path / "missing")
    with pytest.raises(UserError, match="alias 'v3' is not valid"):
        reg.add("demo", ck, aliases=["v3"])
    (ck / "model.safetensors").write_text("changed after registration")
    os.utime(ck / "model.safetensors", ns=(1, 1))
    with pytest.raises(UserError, match="changed since it was registered.*register it again"):
        reg.resolve(parse_spec("demo:latest"))


def test_cli_add_prints_the_version_and_ls_lists(tmp_path: Path) -> None:
    ck = checkpoint(tmp_path / "ck")
    first = nemotron(tmp_path, "artifacts", "add", "demo", str(ck), "--alias", "latest")
    assert first.returncode == 0 and first.stdout == "v1\n", first.stderr
    second = nemotron(tmp_path, "artifacts", "add", "demo", str(checkpoint(tmp_path / "ck2", "other")))
    assert second.stdout == "v2\n"
    listing = nemotron(tmp_path, "artifacts", "ls")
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "ALIASES", "DIGEST", "CREATED", "PATH"]
    assert lines[1].split()[:3] == ["demo", "v1", "-"] and lines[2].split()[:3] == ["demo", "v2", "latest"]
    bad = nemotron(tmp_path, "artifacts", "add", "demo", str(tmp_path / "nope"))
    assert bad.returncode != 0 and bad.stderr.startswith("nemotron: error:") and "does not exist" in bad.stderr


def test_env_toml_chooses_the_registry(tmp_path: Path) -> None:
    (tmp_path / "env.toml").write_text('[artifacts]\nroot = "reg"\n[wandb]\nentity = "e"\nproject = "p"\n')
    reg = registry_from_env(load_env_file(tmp_path / "env.toml"))
    assert isinstance(reg, LocalRegistry) and reg.root == tmp_path / "reg"
    (tmp_path / "env.toml").write_text('[artifacts]\nbackend = "wandb"\n[wandb]\nentity = "e"\nproject = "p"\n')
    reg = registry_from_env(load_env_file(tmp_path / "env.toml"))
    assert isinstance(reg, WandbRegistry) and (reg.entity, reg.project) == ("e", "p")
    with pytest.raises(UserError, match="backend 's3' is not valid; valid: local, wandb"):
        registry_from_env(EnvFile(tmp_path / "env.toml", {"artifacts": {"backend": "s3"}}))


class FakeArtifact:
    def __init__(self, version: str, digest: str, metadata: dict[str, Any], qualified_name: str) -> None:
        self.version, self.digest, self.metadata, self.qualified_name = version, digest, metadata, qualified_name
        self.downloads: list[str] = []

    def download(self, root: str) -> str:
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / "model.safetensors").write_text("downloaded")
        self.downloads.append(root)
        return root


class FakeApi:
    """Stands in for wandb.Api(): no W&B server can run on this machine."""

    def __init__(self, artifacts: dict[str, FakeArtifact]) -> None:
        self.artifacts = artifacts
        self.calls: list[str] = []

    def artifact(self, ref: str) -> FakeArtifact:
        self.calls.append(ref)
        if ref not in self.artifacts:
            raise ValueError(f"artifact '{ref}' not found in 'team/evals'\nmore detail")
        return self.artifacts[ref]


def test_wandb_registry_resolves_path_from_metadata(tmp_path: Path) -> None:
    """A fake wandb.Api() (no W&B server here): references by metadata path, as NVIDIA's recipe writes them."""
    art = FakeArtifact("v4", "d1g3st", {"absolute_path": "/lustre/ckpt/rl/iter_100"}, "team/evals/rl:v4")
    api = FakeApi({"team/evals/rl:latest": art, "team/evals/rl:v4": art})
    reg = WandbRegistry("team", "evals", api_factory=lambda: api)
    got = reg.resolve(ModelSpec("rl", "latest"))
    assert (got.registry, got.version, got.digest, got.path) == ("wandb", "v4", "d1g3st", "/lustre/ckpt/rl/iter_100")
    assert got.qualified_name == "team/evals/rl:v4" and api.calls == ["team/evals/rl:latest"]
    assert reg.materialize(got) == got and not art.downloads


def test_wandb_registry_downloads_when_metadata_has_no_path(tmp_path: Path) -> None:
    """A fake wandb.Api() (no W&B server here): the download folder is the checkpoint path, known before the
    download (the plan compiles with it); materialize() downloads once."""
    art = FakeArtifact("v2", "abc", {}, "team/evals/sft:v2")
    api = FakeApi({"team/evals/sft:v2": art})
    reg = WandbRegistry("team", "evals", api_factory=lambda: api, download_root=tmp_path / "dl")
    got = reg.resolve(ModelSpec("sft", "v2"))
    assert Path(got.path) == (tmp_path / "dl" / "sft-v2").resolve() and not Path(got.path).exists()
    assert reg.materialize(got) == got and (Path(got.path) / "model.safetensors").exists()
    assert reg.materialize(got) == got and art.downloads == [got.path]  # there already: no second download
    with pytest.raises(UserError, match=r"artifact 'team/evals/sft:best': not found in W&B: artifact .* not found"):
        reg.resolve(ModelSpec("sft", "best"))
    with pytest.raises(UserError, match="need a project"):
        WandbRegistry(None, None, api_factory=lambda: api).resolve(ModelSpec("sft", "v2"))


def test_registering_the_same_content_again_reuses_the_version(tmp_path: Path) -> None:
    reg = LocalRegistry(tmp_path / "artifacts")
    ck = checkpoint(tmp_path / "ck")
    assert reg.add("demo", ck)["version"] == "v1"
    os.utime(ck / "model.safetensors", ns=(5, 5))  # touched, same bytes
    again = reg.add("demo", ck, aliases=["latest", "prod"])
    assert again["version"] == "v1" and again["reused"]
    assert reg.resolve(parse_spec("demo:prod")).version == "v1"  # and the new fingerprint is accepted


@pytest.mark.slow  # wandb.Api() waits about 20 s for a server that is not there
def test_the_real_wandb_client_keeps_its_service_to_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real wandb.Api() (no W&B server here: a closed port) starts a service and writes its address into
    WANDB_SERVICE for children to join; the registry takes it out again (`core.wandb_service`), and the lookup
    still fails as one line."""
    import wandb

    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    try:
        with pytest.raises(UserError, match=r"artifact 'team/ckpts/sft:v2': not found in W&B: "):
            WandbRegistry("team", "ckpts").resolve(parse_spec("sft:v2"))
        assert "WANDB_SERVICE" not in os.environ
    finally:
        wandb.teardown()
