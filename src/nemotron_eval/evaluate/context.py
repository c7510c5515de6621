"""The model's context length, and the check that the harness truncated no prompt.

Context length: never silently truncated
----------------------------------------
lm-eval's `local-completions` truncates log-likelihood prompts from the left to `max_length`
(default 2048, whatever the model) with only a log warning, and does not check generation
prompts at all when `tokenized_requests=false` (the framework default). The framework's
command template has no `max_length` field, so the checkpoint's context length (config.json
`max_position_embeddings`, or `context_length_tokens=`) is appended to the model_args through
`extra.tokenizer_backend` ("huggingface,max_length=N"): lm-eval then truncates only what the
model truly cannot take. After the run, `check_context` fails the task (`ContextOverflowError`)
if the harness log shows lm-eval's truncation warning or if any logged request
(samples_*.jsonl: context + continuation, or context + max_gen_toks) tokenizes to more than the
context length; prompts whose UTF-8 size already fits are not tokenized.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from nemotron_eval.core.errors import UserError

# lm-eval's warnings when it left-truncates a prompt.
TRUNCATION_MARKERS = ("Left truncating context", "were left truncated")
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


class ContextOverflowError(UserError):
    """A prompt of the task does not fit the model's context length."""


def context_length(checkpoint_dir: Path) -> int:
    """The model's context length from the checkpoint's config.json."""
    path = Path(checkpoint_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read the model's context length ({e})") from None
    cfg = {**cfg.get("text_config", {}), **cfg}
    for key in CONTEXT_KEYS:
        if isinstance(cfg.get(key), int) and cfg[key] > 0:
            return int(cfg[key])
    raise UserError(f"{path}: none of {', '.join(CONTEXT_KEYS)} is set; give context_length_tokens")



def check_context(
    task_short: str, output_dir: Path, log: Path, *, tokenizer_dir: Path, n_ctx: int
) -> None:
    """Raise ContextOverflowError if the harness truncated, or would have had to, any prompt."""
    text = log.read_bytes().decode("utf-8", errors="replace") if log.is_file() else ""
    hits = sum(text.count(m) for m in TRUNCATION_MARKERS)
    if hits:
        raise ContextOverflowError(
            f"{task_short}: lm-eval left-truncated {hits} request(s) to the model's context of "
            f"{n_ctx} tokens (see {log}); use fewer few-shot examples or a longer-context model"
        )
    n_requests, too_long = 0, 0
    worst: tuple[int, str] = (0, "")
    long: list[tuple[str, str, int]] = []
    for doc, prompt, extra in _logged_requests(output_dir):
        n_requests += 1
        # A token is at least one UTF-8 byte: only prompts longer than that bound are tokenized.
        if len(prompt.encode()) + extra > n_ctx:
            long.append((doc, prompt, extra))
    if long:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        for start in range(0, len(long), 512):
            chunk = long[start : start + 512]
            ids = tok([p for _, p, _ in chunk], add_special_tokens=False)["input_ids"]
            for (doc, _, extra), i in zip(chunk, ids):
                if len(i) + extra > n_ctx:
                    too_long += 1
                    worst = max(worst, (len(i) + extra, doc))
    if too_long:
        raise ContextOverflowError(
            f"{task_short}: {too_long} of {n_requests} request(s) need more than the model's "
            f"context of {n_ctx} tokens (longest {worst[0]}: {worst[1]}); use fewer few-shot "
            "examples or a longer-context model"
        )


def _logged_requests(output_dir: Path) -> Iterator[tuple[str, str, int]]:
    """("<task> doc <id>", prompt text, extra tokens) per request in lm-eval's samples_*.jsonl.

    Log-likelihood: context + continuation, plus the one token the server generates.
    Generation: context, plus max_gen_toks.
    """
    for path in sorted(output_dir.rglob("samples_*.jsonl")):
        task = path.stem.removeprefix("samples_").rsplit("_", 1)[0]  # samples_<task>_<time>
        with open(path, encoding="utf-8") as f:
            for line in f:
                sample = json.loads(line)
                doc = f"{task} doc {sample.get('doc_id')}"
                for req in sample.get("arguments", {}).values():
                    ctx, second = req.get("arg_0", ""), req.get("arg_1")
                    if isinstance(second, dict):  # generate_until: (context, gen_kwargs)
                        yield doc, ctx, int(second.get("max_gen_toks", 256))
                    else:
                        yield doc, ctx + (second or ""), 1
