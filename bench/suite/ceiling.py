"""P3 (the ceiling): what this model computes on this machine at best, and our server's share of it.

The ceiling is a plain `transformers` forward pass with log-softmax over the vocabulary (`use_cache=False`, no
padding, the same dtype, torch's default threads: every core), at the batch shapes where it is fastest on a CPU
(SHAPES); the best median of REPS timed passes after WARMUP. Our server's figure is the prompt tokens its model
computed (after the prefix cache) per second busy, on the recorded request mix (bench/request_mix.py's replay),
with the prefix cache on and off: the ratio says how much of the machine the serving path wastes (padding, per-batch
overhead, copies of cached prefixes), whatever the prefix cache saves.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .core import Row

SHAPES = ((8, 128), (8, 256), (1, 512))
QUICK_SHAPES = SHAPES[:1]  # --quick: the machinery, not the figure
WARMUP, REPS = 2, 5
GOAL = 0.8


def _plain_model(checkpoint: Path, dtype: str) -> tuple[Any, Any]:
    """torch and the checkpoint loaded as transformers loads it; `forward(ids)` below is what both ceilings time."""
    import torch
    from transformers import AutoModelForCausalLM

    return torch, AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, dtype)).eval()


def _forward(torch: Any, model: Any, ids: Any) -> None:
    """One plain forward pass (no KV cache) and log-softmax over the vocabulary."""
    torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), dim=-1)


def ceiling(checkpoint: Path, dtype: str, shapes: tuple[tuple[int, int], ...] = SHAPES) -> dict[str, Any]:
    """Tokens per second of forward + log-softmax at each of `shapes`; `best` is the highest."""
    torch, model = _plain_model(checkpoint, dtype)
    vocab = model.config.vocab_size
    speeds: dict[str, float] = {}
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for batch, length in shapes:
            ids = torch.randint(0, vocab, (batch, length), generator=generator)
            seconds = []
            for i in range(WARMUP + REPS):
                started = time.perf_counter()
                _forward(torch, model, ids)
                if i >= WARMUP:
                    seconds.append(time.perf_counter() - started)
            speeds[f"{batch}x{length}"] = batch * length / sorted(seconds)[len(seconds) // 2]
    best = max(speeds, key=lambda s: speeds[s])
    return {"best": speeds[best], "best_shape": best, "shapes": {k: round(v) for k, v in speeds.items()},
            "threads": torch.get_num_threads()}


def on_prompts(checkpoint: Path, dtype: str, prompts: list[list[int]]) -> dict[str, Any]:
    """Tokens per second of the same plain forward + log-softmax over the mix's own prompts, each alone (no padding,
    causal attention as transformers calls it): the ceiling for the mix's lengths, long-context attention included.
    The 8x128 ceiling attends over at most 128 keys; a 25-shot prompt's tokens attend over up to ~1,900."""
    torch, model = _plain_model(checkpoint, dtype)
    with torch.inference_mode():
        _forward(torch, model, torch.tensor([prompts[0]]))  # warm-up
        started = time.perf_counter()
        for ids in prompts:
            _forward(torch, model, torch.tensor([ids]))
        seconds = time.perf_counter() - started
    tokens = sum(len(ids) for ids in prompts)
    return {"tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds, "prompts": len(prompts)}


def matched_row(matched: dict[str, Any], off: dict[str, Any], dtype: str) -> Row:
    """Our server without the prefix cache against the ceiling on the mix's own prompts (`on_prompts`)."""
    busy = off["busy_s"]
    return Row("P3", f"ceiling_matched_cache_off_{dtype}",
               f"computed tokens per busy second, real request mix, prefix cache off, {dtype}, against the same "
               "prompts' ceiling", ours=off["computed_tokens"] / busy if busy else None,
               reference=matched["tokens_per_s"], unit="tokens/s", ours_is="our server, prefix cache off",
               reference_is="transformers forward + log-softmax of each of the mix's prompts alone",
               details={k: round(v, 2) if isinstance(v, float) else v for k, v in matched.items()})


def rows(top: dict[str, Any], runs: dict[str, dict[str, Any]], dtype: str) -> list[Row]:
    """One row per server run (`runs`: label -> bench/request_mix.py's replay result): computed tokens per busy
    second against the ceiling `top`."""
    out = []
    for label, run in runs.items():
        busy = run["busy_s"]
        out.append(Row(
            "P3", f"ceiling_{label.replace(' ', '_')}_{dtype}",
            f"computed tokens per busy second, real request mix, prefix {label}, {dtype}",
            ours=run["computed_tokens"] / busy if busy else None, reference=top["best"], unit="tokens/s",
            ours_is=f"our server, prefix {label}",
            reference_is=f"transformers forward + log-softmax, best of {', '.join(top['shapes'])} ({top['best_shape']})",
            op=">=", goal=GOAL,
            details={"busy_s": round(busy, 2), "computed_tokens": run["computed_tokens"],
                     "prompt_tokens": run["prompt_tokens"], "ceiling_shapes": top["shapes"],
                     "threads": top["threads"]}))
    return out
