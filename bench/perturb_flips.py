"""How much a `perturb_checkpoint` scale changes a model's answers: flips and accuracy, side by side.

    .venv/bin/python bench/perturb_flips.py CHECKPOINT [--scales 0.01 0.02 0.05] [--items 20] [--seed 1]
        [--mirror ../shared/benchmarks]

For each scale, writes the perturbed copy to a temp folder and scores the first `--items` OpenBookQA test and
HellaSwag validation items zero-shot, in-process with transformers (sum of continuation log-probs, the harness's
`acc`), for the source and the copy on the same items. Prints accuracy of each and how many items changed
answer. A quick scan to pick a scale; the pipeline's own run (server + harness, few-shot HellaSwag) is the
measurement that counts, see tests/fixtures/report/README.md.

Seen on this 2-core machine (SmolLM2-135M fp32, seed 1, 20 items each; source: OpenBookQA acc 0.00, HellaSwag 0.30):
scale 0.01: 0/20 and 0/20 answers changed; 0.02: 0 and 1; 0.05: 1 and 1; 0.1: 5/20 and 4/20, accuracy 0.05 and 0.25.
The pipeline uses 0.1 for the second checkpoint of its comparison fixtures.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

from nemotron_eval.data.readers import read_hellaswag_txt, read_obqa_jsonl
from nemotron_eval.artifacts.model import perturb_checkpoint


def items(mirror: Path, n: int) -> dict[str, list[tuple[str, list[str], int]]]:
    """(context, continuations, gold) per task, built as the harness's task YAMLs build them (zero-shot)."""
    obqa = [
        (r["question_stem"], [" " + t for t in r["choices"]["text"]], r["choices"]["label"].index(r["answerKey"].strip()))
        for r in itertools.islice(read_obqa_jsonl(mirror / "openbookqa/Main/test.jsonl"), n)
    ]
    hs = [
        (f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}", [" " + e for e in r["endings"]], int(r["label"]))
        for r in itertools.islice(read_hellaswag_txt(mirror / "hellaswag/hellaswag_val_full.txt.bz2"), n)
    ]
    return {"openbookqa": obqa, "hellaswag": hs}


def answers(checkpoint: Path, tasks: dict[str, list[tuple[str, list[str], int]]]) -> dict[str, list[int]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    out: dict[str, list[int]] = {}
    for task, rows in tasks.items():
        picks = []
        for ctx, conts, _ in rows:
            lls = []
            for cont in conts:
                c_ids = tok(ctx, add_special_tokens=False)["input_ids"]
                full = tok(ctx + cont, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([full])
                with torch.no_grad():
                    logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
                tgt = ids[0, len(c_ids):]
                lls.append(float(logp[len(c_ids) - 1 :].gather(1, tgt[:, None]).sum()))
            picks.append(max(range(len(lls)), key=lls.__getitem__))
        out[task] = picks
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--scales", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    p.add_argument("--items", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mirror", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks")
    a = p.parse_args()
    tasks = items(a.mirror, a.items)
    base = answers(a.checkpoint, tasks)

    def acc(task: str, picks: list[int]) -> float:
        return sum(pk == gold for pk, (_, _, gold) in zip(picks, tasks[task])) / len(picks)

    print("source: " + ", ".join(f"{t} acc {acc(t, base[t]):.2f}" for t in tasks), flush=True)
    for scale in a.scales:
        with tempfile.TemporaryDirectory(prefix="perturb-bench-") as tmp:
            started = time.monotonic()
            perturb_checkpoint(a.checkpoint, Path(tmp) / "ckpt", seed=a.seed, scale=scale)
            new = answers(Path(tmp) / "ckpt", tasks)
        parts = []
        for t in tasks:
            flips = sum(x != y for x, y in zip(base[t], new[t]))
            parts.append(f"{t} acc {acc(t, new[t]):.2f}, {flips}/{len(new[t])} answers changed")
        print(f"scale {scale}: " + "; ".join(parts) + f" ({time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
