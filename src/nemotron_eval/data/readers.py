"""Readers for the original benchmark releases, yielding rows in the Hugging Face schema.

Each reader turns one file of an original release (the formats of the local mirror, see
`/work/shared/benchmarks/SOURCES.md`) into rows with exactly the fields, field order and value
types of the Hugging Face dataset that NeMo Evaluator's task YAML reads (`Dataset.fields` of each
task in `nemotron_eval.data.tasks`), so the harness's own `doc_to_text`/`process_docs` functions see
what they would see from the hub:

- `mmlu_str` (adlr_mmlu): `hails/mmlu_no_train`, one config a subject:
  question, subject, choices, answer (int 0-3)
- `adlr_arc_challenge_llama`: `allenai/ai2_arc` ARC-Challenge: id, question, choices{text,label},
  answerKey
- `winogrande`: `winogrande` winogrande_xl: sentence, option1, option2, answer ("1"/"2"/"")
- `hellaswag`: `hellaswag`: ind, activity_label, ctx_a, ctx_b, ctx, endings, source_id, split,
  split_type, label (a string)
- `openbookqa`: `openbookqa` main: id, question_stem, choices{text,label}, answerKey

Where the original format lacks a field the hub has, the reader fills it as described in its
docstring; `stage.py` records each such gap in the staged dataset's manifest (`fallbacks`).
Malformed input raises `UserError` naming the file and line.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nemotron_eval.core.errors import UserError

Row = dict[str, Any]

LETTERS = "ABCDE"


def _fail(path: Path, line: int | None, what: str) -> UserError:
    where = f"{path}:{line}" if line is not None else str(path)
    return UserError(f"{where}: {what}")


MAX_DATA_BYTES = 256 << 20  # a benchmark file, decompressed; the five originals are at most a few MB


def _text(path: Path, newline: str | None = None) -> io.StringIO:
    """A mirror file's text, read through one gate: a regular file (a FIFO would block), at most MAX_DATA_BYTES
    after decompression (a few hundred bytes of bz2 can expand to gigabytes: the read stops at the cap), strict
    UTF-8 with the line of the first bad byte named. Every reader opens its file here."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise _fail(path, None, "not a regular file (a pipe, device or socket)")
        raw = bz2.BZ2File(path) if path.suffix == ".bz2" else open(path, "rb")
        with raw as f:
            data = f.read(MAX_DATA_BYTES + 1)
    except (OSError, EOFError, ValueError) as e:
        raise _fail(path, None, f"cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if len(data) > MAX_DATA_BYTES:
        raise _fail(path, None, f"more than {MAX_DATA_BYTES >> 20} MB of text (decompressed); not a benchmark file")
    try:
        return io.StringIO(data.decode("utf-8"), newline=newline)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise _fail(path, line, f"not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r})") from None


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON-lines file."""
    with _text(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise _fail(path, n, f"not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise _fail(path, n, "expected a JSON object per line")
            yield n, obj


def _get(obj: dict[str, Any], key: str, path: Path, line: int, kind: type = str) -> Any:
    value: Any = obj
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise _fail(path, line, f"missing field {key!r}")
        value = value[part]
    if not isinstance(value, kind):
        raise _fail(path, line, f"field {key!r} should be {kind.__name__}, got {value!r}")
    return value


# --- MMLU ---------------------------------------------------------------------------------


def mmlu_subject(path: Path) -> str:
    """`abstract_algebra` for `.../abstract_algebra_test.csv` (also `_dev`, `_val`)."""
    m = re.fullmatch(r"(.+)_(dev|val|test)\.csv", path.name)
    if not m:
        raise _fail(path, None, "expected a file named <subject>_{dev,val,test}.csv")
    return m.group(1)


def read_mmlu_csv(path: Path) -> Iterator[Row]:
    """Hendrycks MMLU CSV: no header; question, A, B, C, D, answer letter. Subject from the name."""
    subject = mmlu_subject(path)
    with _text(path, newline="") as f:
        for n, rec in enumerate(csv.reader(f), start=1):
            if len(rec) != 6:
                raise _fail(path, n, f"expected 6 columns (question, A-D, answer), got {len(rec)}")
            letter = rec[5].strip()
            if letter not in LETTERS[:4]:
                raise _fail(path, n, f"answer {letter!r} is not one of A, B, C, D")
            yield {
                "question": rec[0],
                "subject": subject,
                "choices": rec[1:5],
                "answer": LETTERS.index(letter),
            }


# --- ARC ----------------------------------------------------------------------------------


def _choices(items: Any, path: Path, line: int) -> dict[str, list[str]]:
    if not isinstance(items, list) or not items:
        raise _fail(path, line, "field 'question.choices' should be a non-empty list")
    text, label = [], []
    for c in items:
        if not isinstance(c, dict) or not isinstance(c.get("text"), str) or not isinstance(
            c.get("label"), str
        ):
            raise _fail(path, line, "each choice needs string 'text' and 'label'")
        text.append(c["text"])
        label.append(c["label"])
    return {"text": text, "label": label}


def read_arc_jsonl(path: Path) -> Iterator[Row]:
    """Original ARC-V1 jsonl (`id`, `question.stem`, `question.choices`, `answerKey`)."""
    for n, obj in _jsonl(path):
        choices = _choices(_get(obj, "question.choices", path, n, list), path, n)
        key = _get(obj, "answerKey", path, n)
        if key not in choices["label"]:
            raise _fail(path, n, f"answerKey {key!r} is not a choice label {choices['label']}")
        yield {
            "id": _get(obj, "id", path, n),
            "question": _get(obj, "question.stem", path, n),
            "choices": choices,
            "answerKey": key,
        }


def read_arc_converted(path: Path, id_prefix: str = "ARC-Challenge-Test") -> Iterator[Row]:
    """The converted ARC test file (`query` "Question: ...", `choices` texts, `gold` index).

    It has no ids and no choice labels: ids are `<id_prefix>-<line>` and labels are the letters
    A-E (the original's few digit labels 1-4 read the same to the harness, which maps digits to
    letters and scores choices by position).
    """
    for n, obj in _jsonl(path):
        query = _get(obj, "query", path, n)
        texts = _get(obj, "choices", path, n, list)
        gold = _get(obj, "gold", path, n, int)
        if not texts or len(texts) > len(LETTERS) or not all(isinstance(t, str) for t in texts):
            raise _fail(path, n, f"'choices' should be 1-{len(LETTERS)} strings")
        if not 0 <= gold < len(texts):
            raise _fail(path, n, f"'gold' {gold} is not an index into {len(texts)} choices")
        labels = list(LETTERS[: len(texts)])
        yield {
            "id": f"{id_prefix}-{n:04d}",
            "question": query.removeprefix("Question: ").removesuffix("\nAnswer:"),
            "choices": {"text": texts, "label": labels},
            "answerKey": labels[gold],
        }


# --- Winogrande ---------------------------------------------------------------------------


def read_winogrande_jsonl(path: Path) -> Iterator[Row]:
    """Winogrande 1.1 jsonl; `qID` is dropped (the hub has none); no `answer` (test) reads ""."""
    for n, obj in _jsonl(path):
        sentence = _get(obj, "sentence", path, n)
        if "_" not in sentence:
            raise _fail(path, n, "'sentence' has no '_' blank")
        answer = obj.get("answer", "")
        if answer not in ("1", "2", ""):
            raise _fail(path, n, f"'answer' {answer!r} should be \"1\" or \"2\"")
        yield {
            "sentence": sentence,
            "option1": _get(obj, "option1", path, n),
            "option2": _get(obj, "option2", path, n),
            "answer": answer,
        }


# --- HellaSwag ----------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"^(.*[.!?])\s+(\S.*)$", re.DOTALL)


def split_hellaswag_context(ctx: str) -> tuple[str, str]:
    """(ctx_a, ctx_b) from the joined context, so that `ctx_a + " " + ctx_b == ctx`.

    The hub's ctx_b is the unfinished last sentence that the endings complete (ActivityNet items:
    "... on a roof. he"); the harness capitalizes it. A context ending in . ! ? has no such
    fragment (ctx_b ""). Otherwise ctx_b is the text after the last sentence end (heuristic).
    """
    if re.search(r"[.!?]$", ctx):
        return ctx, ""
    m = _SENTENCE_END.match(ctx)
    if not m:
        return "", ctx
    return m.group(1), m.group(2)


def read_hellaswag_txt(path: Path) -> Iterator[Row]:
    """llama.cpp's HellaSwag text, .bz2 or plain: 6 lines a task ("label: ctx", gold, 4 endings).

    Missing on the mirror and filled: `ctx_a`/`ctx_b` (see `split_hellaswag_context`),
    `ind` (the task's position in the file), `source_id` and `split_type` (""), `split` ("val").
    """
    with _text(path) as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise _fail(path, None, f"{len(lines)} lines is not a multiple of 6 (6 lines a task)")
    for i in range(0, len(lines), 6):
        head, gold, endings = lines[i], lines[i + 1].strip(), lines[i + 2 : i + 6]
        if ": " not in head:
            raise _fail(path, i + 1, "expected '<activity label>: <context>'")
        if gold not in ("0", "1", "2", "3"):
            raise _fail(path, i + 2, f"gold index {gold!r} is not 0-3")
        label, ctx = head.split(": ", 1)
        ctx_a, ctx_b = split_hellaswag_context(ctx)
        yield {
            "ind": i // 6,
            "activity_label": label,
            "ctx_a": ctx_a,
            "ctx_b": ctx_b,
            "ctx": ctx,
            "endings": endings,
            "source_id": "",
            "split": "val",
            "split_type": "",
            "label": gold,
        }


# --- OpenBookQA ---------------------------------------------------------------------------


def read_obqa_jsonl(path: Path) -> Iterator[Row]:
    """OpenBookQA-V1 `Data/Main/*.jsonl`: `id`, `question.stem`, `question.choices`, `answerKey`."""
    for n, obj in _jsonl(path):
        choices = _choices(_get(obj, "question.choices", path, n, list), path, n)
        key = _get(obj, "answerKey", path, n)
        if key.strip() not in choices["label"]:
            raise _fail(path, n, f"answerKey {key!r} is not a choice label {choices['label']}")
        yield {
            "id": _get(obj, "id", path, n),
            "question_stem": _get(obj, "question.stem", path, n),
            "choices": choices,
            "answerKey": key,
        }


_OBQA_CHOICE = re.compile(r"\(([A-Z])\) ")
_OBQA_COLUMNS = ["ID", "Question Stem", "Choices", "Complete Question", "Answer Key"]


def read_obqa_tsv(path: Path) -> Iterator[Row]:
    """OpenBookQA-V1 `Data/Main/*.tsv`: header row; choices as "(A) x (B) y (C) z (D) w"."""
    with _text(path, newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if header != _OBQA_COLUMNS:
            raise _fail(path, 1, f"expected the header {_OBQA_COLUMNS}, got {header}")
        for n, rec in enumerate(rows, start=2):
            if not rec:
                continue
            if len(rec) != len(_OBQA_COLUMNS):
                raise _fail(path, n, f"expected {len(_OBQA_COLUMNS)} tab-separated columns")
            parts = _OBQA_CHOICE.split(rec[2])
            labels, texts = parts[1::2], [t.strip() for t in parts[2::2]]
            if parts[0].strip() or labels != list(LETTERS[: len(labels)]) or len(labels) < 2:
                raise _fail(
                    path, n, f"choices {rec[2]!r} are not one '(A) ', '(B) ', ... marker each"
                )
            if rec[4].strip() not in labels:
                raise _fail(path, n, f"answer key {rec[4]!r} is not a choice label {labels}")
            yield {
                "id": rec[0],
                "question_stem": rec[1],
                "choices": {"text": texts, "label": labels},
                "answerKey": rec[4].strip(),
            }
