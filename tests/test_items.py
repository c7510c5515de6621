"""Per-item records from real lm-eval samples files (tests/fixtures/report: SmolLM2 and its perturbed copy,
run through the pipeline's server and harness; see the README there), and bad input."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from nemotron_eval.core.errors import UserError
from nemotron_eval.evaluate.items import extract_items, read_items, samples_files

FIXTURES = Path(__file__).parent / "fixtures" / "report"
MODELS = ("smollm2_latest", "smollm2-noisy_latest")
TASKS = ("openbookqa", "hellaswag", "mmlu")


def harness_dir(model: str, task: str) -> Path:
    return FIXTURES / model / "harness" / task


def result(model: str, task: str) -> dict:
    return json.loads((FIXTURES / model / f"{task}.json").read_text())


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("task", TASKS)
def test_items_reproduce_the_harness_scores(tmp_path: Path, model: str, task: str) -> None:
    out = tmp_path / f"{task}.items.jsonl.gz"
    summary = extract_items(harness_dir(model, task), out)
    records = read_items(out)
    res = result(model, task)
    assert summary["items"] == len(records) == res["n_samples"]
    assert summary["unreproduced"] == 0
    for metric, score in res["metrics"].items():  # the pipeline's score is the mean of lm-eval's per-item values
        assert summary["metrics"][metric] == pytest.approx(score["value"], abs=1e-12)
    ids = [r["id"] for r in records]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for r in records:
        assert set(r["correct"]) == set(res["metrics"])
        if r["type"] == "multiple_choice":
            assert isinstance(r["gold"], int) and len(r["ll"]) >= 2
            for metric, pick in r["chosen"].items():  # every pick recomputed, and it agrees with lm-eval
                assert pick is not None and int(pick == r["gold"]) == r["correct"][metric]
            assert r["chosen"]["acc"] == max(range(len(r["ll"])), key=lambda i: r["ll"][i])
        else:
            assert task == "mmlu" and r["gold"] in "ABCD" and isinstance(r["generated"], str)
            assert r["correct"]["exact_match"] == int(r["chosen"]["exact_match"] == r["gold"])


def test_ids_are_lm_evals_document_hashes() -> None:
    """An id is the subtask plus the first 16 hex digits of sha256 over the document as lm-eval logged it:
    recomputed here from the doc itself, the way lm-eval does."""
    for task in TASKS:
        for path in samples_files(harness_dir(MODELS[0], task)).values():
            for line in path.read_text().splitlines():
                sample = json.loads(line)
                digest = hashlib.sha256(json.dumps(sample["doc"], indent=2, ensure_ascii=False, default=str).encode()).hexdigest()
                assert digest == sample["doc_hash"]


@pytest.mark.parametrize("task", TASKS)
def test_items_line_up_across_models_and_answers_differ(tmp_path: Path, task: str) -> None:
    a, b = (read_items(_extract(tmp_path, m, task)) for m in MODELS)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert [r["gold"] for r in a] == [r["gold"] for r in b]
    if a[0]["type"] == "multiple_choice":
        assert all(x["ll"] != y["ll"] for x, y in zip(a, b))  # the noise moved every log-likelihood
    metric = next(iter(a[0]["chosen"]))
    changed = sum(x["chosen"][metric] != y["chosen"][metric] for x, y in zip(a, b))
    assert 0 < changed < len(a)  # some answers changed, not all: the copy still works


def test_mmlu_keeps_subjects_apart(tmp_path: Path) -> None:
    records = read_items(_extract(tmp_path, MODELS[0], "mmlu"))
    subjects = {r["subtask"] for r in records}
    assert len(subjects) == 57 and all(s.startswith("mmlu_str_") for s in subjects)
    assert all(r["id"].startswith(r["subtask"] + "/") for r in records)


def test_output_is_reproducible_and_follows_the_umask(tmp_path: Path) -> None:
    first = _extract(tmp_path / "1", MODELS[0], "hellaswag")
    second = _extract(tmp_path / "2", MODELS[0], "hellaswag")
    assert first.read_bytes() == second.read_bytes()
    assert gzip.decompress(first.read_bytes()).decode().count("\n") == 20
    umask = os.umask(0)
    os.umask(umask)
    assert first.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]  # no temp file left behind


def test_newest_run_wins_and_repeated_documents_get_distinct_ids(tmp_path: Path) -> None:
    src = harness_dir(MODELS[0], "openbookqa")
    work = tmp_path / "h"
    shutil.copytree(src, work)
    (path,) = samples_files(work).values()
    lines = path.read_text().splitlines()
    # an older run of the same task beside it: ignored
    (path.parent / "samples_staged_openbookqa_2000-01-01T00-00-00.000000.jsonl").write_text(lines[0] + "\n")
    # the same document twice in the newest file (as a release with duplicate questions would give)
    dup = json.loads(lines[0])
    dup["doc_id"] = 999
    path.write_text("\n".join([*lines, json.dumps(dup)]) + "\n")
    records = read_items(_extract_from(work, tmp_path / "out.gz"))
    assert len(records) == len(lines) + 1
    base = [r for r in records if r["doc_id"] == json.loads(lines[0])["doc_id"]][0]["id"]
    assert [r["id"] for r in records if r["id"].startswith(base)] == [base, base + "#2"]


def test_bad_input_is_one_line_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a harness output folder"):
        extract_items(tmp_path / "missing", tmp_path / "x.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: no lm-eval samples_<task>_<timestamp>\.jsonl files"):
        extract_items(tmp_path / "empty", tmp_path / "x.gz")
    bad = tmp_path / "bad" / "m"
    bad.mkdir(parents=True)
    (bad / "samples_staged_openbookqa_2026-01-01T00-00-00.1.jsonl").write_text('{"doc_id": 0, "doc_hash": "ab"}\n{oops\n')
    with pytest.raises(UserError, match=r"samples_staged_openbookqa_2026-01-01T00-00-00\.1\.jsonl:2: not a JSON line"):
        extract_items(tmp_path / "bad", tmp_path / "x.gz")
    assert not (tmp_path / "x.gz").exists()
    (tmp_path / "plain.gz").write_text("not gzip")
    with pytest.raises(UserError, match=r"plain\.gz: cannot read the items file"):
        read_items(tmp_path / "plain.gz")


def _extract(tmp_path: Path, model: str, task: str) -> Path:
    return _extract_from(harness_dir(model, task), tmp_path / model / f"{task}.items.jsonl.gz")


def _extract_from(folder: Path, out: Path) -> Path:
    extract_items(folder, out)
    return out
