"""Checkpoints on disk: convert a GGUF into a Hugging Face folder, check a folder, make a perturbed copy of a
folder (a second real checkpoint that answers differently, for comparisons).

torch and transformers are imported only inside the functions that need them, so `check_checkpoint` stays cheap
to import.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from nemotron_eval.core.errors import UserError
from nemotron_eval.core.io import atomic_dir, sha256_file, sha256_tree

DTYPES = ("float32", "bfloat16")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def convert_gguf(gguf: Path, out_dir: Path, *, dtype: str = "float32", overwrite: bool = False) -> dict[str, Any]:
    """Write a Hugging Face checkpoint (safetensors, tokenizer, config) for `gguf` into `out_dir`.

    The folder appears complete or not at all: it is written next to `out_dir` and renamed into place.
    Returns what the registry records as lineage (the GGUF's sha256 among it).
    """
    gguf, out_dir = Path(gguf), Path(out_dir)
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not supported for conversion: use one of {', '.join(DTYPES)}")
    if not gguf.is_file():
        raise UserError(f"{gguf}: GGUF file not found")
    if out_dir.exists() and not overwrite:
        raise UserError(f"{out_dir}: already exists; remove it or convert into a new folder")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    sha256 = sha256_file(gguf)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantized on load; the GGUF quantization config must go or saving refuses.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(getattr(torch, dtype))

    with atomic_dir(out_dir) as tmp:  # a crash leaves the old folder or the new one, never half of one
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        check_checkpoint(tmp)
        _make_readable(tmp)

    config = json.loads((out_dir / "config.json").read_text())
    return {
        "source": str(gguf),
        "source_format": "gguf",
        "gguf_sha256": sha256,
        "checkpoint": str(out_dir),
        "dtype": dtype,
        "architectures": config.get("architectures", []),
        "model_type": config.get("model_type"),
        "num_parameters": int(model.num_parameters()),
        "max_position_embeddings": config.get("max_position_embeddings"),
        "vocab_size": config.get("vocab_size"),
        "files": sorted(p.name for p in out_dir.iterdir()),
        "seconds": round(time.monotonic() - started, 1),
    }


def _make_readable(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder and safetensors writes 0600 files: open them up as the umask allows."""
    from nemotron_eval.core.io import current_umask

    umask = current_umask()
    folder.chmod(0o777 & ~umask)
    for file in folder.iterdir():
        file.chmod(0o666 & ~umask)


def check_checkpoint(path: Path | str) -> None:
    """Raise UserError naming the folder and what is missing unless it holds a config, a tokenizer and weights."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"checkpoint {folder}: not a folder")
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config (config.json)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"tokenizer (one of {', '.join(TOKENIZER_FILES)})")
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        missing.append(f"weights ({' or '.join(WEIGHT_PATTERNS)})")
    if missing:
        raise UserError(f"checkpoint {folder}: no {'; no '.join(missing)}")


PERTURB_METHOD = "gaussian-relative-rms"


def perturb_checkpoint(src: Path, out: Path, *, seed: int, scale: float, overwrite: bool = False) -> dict[str, Any]:
    """Write a copy of the Hugging Face checkpoint `src` into `out` with fixed-seed Gaussian noise on its weights.

    Every floating-point tensor W in the *.safetensors files becomes W + scale * rms(W) * N(0, 1), computed in
    float32 and stored in W's dtype: the noise is `scale` relative to each tensor's own magnitude, so one scale
    suits embeddings, projections and norms alike. The noise of a tensor comes from a torch generator seeded
    with sha256(seed, file, tensor name): it depends on nothing else (not on tensor order, thread count or the
    other tensors), so the same `src`, `seed` and `scale` give the same bytes. Other files (config, tokenizer,
    shard index) are copied unchanged. Why: a comparison report needs a second real checkpoint that still works
    but answers differently on some items; a small scale (SmolLM2-135M: see bench/perturb_flips.py) does that.

    The folder appears complete or not at all. Returns lineage: source path and digest (sha256 over the folder,
    as the local registry computes it), seed, scale, method, the new digest and how many tensors were changed.
    """
    src, out = Path(src), Path(out)
    check_checkpoint(src)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"perturb seed={seed!r}: must be an integer >= 0")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < float(scale) < 1:
        raise UserError(f"perturb scale={scale!r}: must be a number between 0 and 1 (noise relative to each tensor's RMS)")
    shards = sorted(src.glob("*.safetensors"))
    if not shards:
        raise UserError(f"checkpoint {src}: no *.safetensors weights; only safetensors checkpoints can be perturbed")
    if out.exists() and not overwrite:
        raise UserError(f"{out}: already exists; remove it or write the perturbed copy into a new folder")
    if out.resolve() == src.resolve():
        raise UserError(f"{out}: is the source checkpoint; write the perturbed copy into a new folder")

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    started = time.monotonic()
    source_digest = sha256_tree(src)
    changed = 0
    with atomic_dir(out) as tmp:
        for file in sorted(p for p in src.iterdir() if p.is_file() and p.suffix != ".safetensors"):
            shutil.copyfile(file, tmp / file.name)
        for shard in shards:
            tensors: dict[str, Any] = {}
            with safe_open(str(shard), framework="pt") as f:
                metadata = f.metadata()
                for name in sorted(f.keys()):
                    tensor = f.get_tensor(name)
                    if tensor.is_floating_point() and tensor.numel() > 0:
                        tensor = _perturbed(torch, tensor, _tensor_seed(seed, shard.name, name), float(scale))
                        changed += 1
                    tensors[name] = tensor.contiguous()
            save_file(tensors, str(tmp / shard.name), metadata=metadata)
        check_checkpoint(tmp)
        _make_readable(tmp)
    return {
        "source": str(src),
        "source_digest": source_digest,
        "seed": seed,
        "scale": float(scale),
        "method": PERTURB_METHOD,
        "checkpoint": str(out),
        "digest": sha256_tree(out),
        "tensors_perturbed": changed,
        "seconds": round(time.monotonic() - started, 1),
    }


def _tensor_seed(seed: int, shard: str, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{shard}\0{name}".encode()).digest()[:8], "big") >> 1


def _perturbed(torch: Any, tensor: Any, tensor_seed: int, scale: float) -> Any:
    weights = tensor.to(torch.float32)
    rms = float(weights.pow(2).mean().sqrt())
    generator = torch.Generator(device="cpu").manual_seed(tensor_seed)
    noise = torch.randn(weights.shape, generator=generator, dtype=torch.float32)
    return (weights + noise * (scale * rms)).to(tensor.dtype)
