"""Readers of the original benchmark formats and staging (fixtures: tests/fixtures/benchmarks)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from nemotron_eval.data import readers, stage
from nemotron_eval.data.stage import read_manifest, resolve_mirror, stage_dataset
from nemotron_eval.data.tasks import MMLU_SUBJECTS, STAGED
from nemotron_eval.core.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
TASKS = ("mmlu", "arc_challenge", "winogrande", "hellaswag", "openbookqa")


@pytest.fixture(scope="session")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture mirror, with the one MMLU subject copied to all 57 (staging needs them all)."""
    root = tmp_path_factory.mktemp("mirror")
    shutil.copytree(FIXTURES, root, dirs_exist_ok=True)
    for folder in ("dev", "val", "test"):
        src = FIXTURES / "mmlu" / folder / f"abstract_algebra_{folder}.csv"
        for subject in MMLU_SUBJECTS:
            shutil.copyfile(src, root / "mmlu" / folder / f"{subject}_{folder}.csv")
    return root


def _keys(rows: list[dict], task: str) -> None:
    assert rows
    for row in rows:
        assert tuple(row) == STAGED[task].dataset.fields


# --- readers --------------------------------------------------------------------------------


def test_mmlu_csv() -> None:
    rows = list(readers.read_mmlu_csv(FIXTURES / "mmlu/test/abstract_algebra_test.csv"))
    _keys(rows, "mmlu")
    assert len(rows) == 3
    assert rows[0] == {
        "question": "How many generators does the cyclic group Z_6 have?",
        "subject": "abstract_algebra",
        "choices": ["1", "2", "3", "6"],
        "answer": 1,
    }
    assert rows[1]["question"].endswith("A) always abelian?")  # quoted, with a newline
    dev = list(readers.read_mmlu_csv(FIXTURES / "mmlu/dev/abstract_algebra_dev.csv"))
    assert dev[1]["choices"][0] == "True, True" and dev[1]["answer"] == 2


def test_mmlu_csv_errors(tmp_path: Path) -> None:
    bad = tmp_path / "anatomy_test.csv"
    bad.write_text("q,a,b,c,d,E\n")
    with pytest.raises(UserError, match=r"anatomy_test\.csv:1: answer 'E'"):
        list(readers.read_mmlu_csv(bad))
    bad.write_text("q,a,b,c,A\n")
    with pytest.raises(UserError, match="expected 6 columns"):
        list(readers.read_mmlu_csv(bad))
    with pytest.raises(UserError, match="<subject>_"):
        list(readers.read_mmlu_csv(tmp_path / "anatomy.csv"))


def test_arc_original_jsonl() -> None:
    rows = list(readers.read_arc_jsonl(FIXTURES / "arc_challenge/ARC-Challenge-Train.jsonl"))
    _keys(rows, "arc_challenge")
    assert rows[0]["question"] == "Which tool measures the mass of a small rock?"
    assert rows[0]["choices"]["label"] == ["A", "B", "C", "D"]
    assert rows[1]["choices"]["label"] == ["1", "2", "3", "4"] and rows[1]["answerKey"] == "2"
    assert len(rows[2]["choices"]["text"]) == 5


def test_arc_converted_test_file() -> None:
    rows = list(readers.read_arc_converted(FIXTURES / "arc_challenge/arc_challenge.jsonl"))
    _keys(rows, "arc_challenge")
    assert rows[0]["question"] == "What happens to a shadow as the Sun rises higher in the sky?"
    assert rows[0]["answerKey"] == "A" and rows[0]["id"] == "ARC-Challenge-Test-0001"
    assert rows[1]["choices"]["label"] == ["A", "B", "C", "D", "E"] and rows[1]["answerKey"] == "D"


def test_arc_errors(tmp_path: Path) -> None:
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"id": "1", "question": {"stem": "q", "choices": []}, "answerKey": "A"}\n')
    with pytest.raises(UserError, match=r"x\.jsonl:1: .*non-empty list"):
        list(readers.read_arc_jsonl(bad))
    bad.write_text('{"query": "Question: q", "choices": ["a", "b"], "gold": 2}\n')
    with pytest.raises(UserError, match="'gold' 2"):
        list(readers.read_arc_converted(bad))
    bad.write_text("{not json\n")
    with pytest.raises(UserError, match=r"x\.jsonl:1: not valid JSON"):
        list(readers.read_arc_jsonl(bad))


def test_winogrande() -> None:
    rows = list(readers.read_winogrande_jsonl(FIXTURES / "winogrande/dev.jsonl"))
    _keys(rows, "winogrande")
    assert rows[0]["answer"] == "1" and rows[0]["option2"] == "Dan"
    test = list(readers.read_winogrande_jsonl(FIXTURES / "winogrande/test.jsonl"))
    assert [r["answer"] for r in test] == ["", ""]


def test_hellaswag_txt() -> None:
    rows = list(readers.read_hellaswag_txt(FIXTURES / "hellaswag/hellaswag_val_full.txt.bz2"))
    _keys(rows, "hellaswag")
    assert len(rows) == 3
    first = rows[0]
    assert first["activity_label"] == "Washing dishes"
    assert (first["ctx_a"], first["ctx_b"]) == ("A woman stands at a sink full of plates.", "she")
    assert first["ctx"] == first["ctx_a"] + " " + first["ctx_b"]
    assert first["label"] == "1" and len(first["endings"]) == 4 and first["ind"] == 0
    assert rows[1]["ctx_b"] == "" and rows[1]["ctx_a"] == rows[1]["ctx"]  # ends a sentence
    assert rows[2]["ctx_b"] == "the kite"


def test_hellaswag_plain_text_and_errors(tmp_path: Path) -> None:
    plain = tmp_path / "h.txt"
    plain.write_text("Label: a b. c\n0\nw\nx\ny\nz\n")
    (row,) = readers.read_hellaswag_txt(plain)
    assert row["ctx_b"] == "c"
    plain.write_text("Label: a b. c\n7\nw\nx\ny\nz\n")
    with pytest.raises(UserError, match=r"h\.txt:2: gold index '7'"):
        list(readers.read_hellaswag_txt(plain))
    plain.write_text("Label: a\n0\nw\n")
    with pytest.raises(UserError, match="multiple of 6"):
        list(readers.read_hellaswag_txt(plain))


def test_openbookqa_jsonl_and_tsv() -> None:
    rows = list(readers.read_obqa_jsonl(FIXTURES / "openbookqa/Main/test.jsonl"))
    _keys(rows, "openbookqa")
    assert rows[0]["question_stem"] == "Which of these conducts electricity best?"
    tsv = list(readers.read_obqa_tsv(FIXTURES / "openbookqa/Main/dev.tsv"))
    _keys(tsv, "openbookqa")
    assert tsv[0] == {
        "id": "FIX-D1",
        "question_stem": "Plants make food using",
        "choices": {"text": ["moonlight", "sunlight", "soil only", "rocks"],
                    "label": ["A", "B", "C", "D"]},
        "answerKey": "B",
    }  # fmt: skip


def test_openbookqa_tsv_ambiguous_choices(tmp_path: Path) -> None:
    bad = tmp_path / "dev.tsv"
    head = "ID\tQuestion Stem\tChoices\tComplete Question\tAnswer Key\n"
    bad.write_text(head + "1\tq\t(A) a (B) b (C) c (D) d (D) e\tq\tA\n")
    with pytest.raises(UserError, match=r"dev\.tsv:2: choices"):
        list(readers.read_obqa_tsv(bad))


# --- staging --------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_stage_from_mirror(task: str, mirror: Path, tmp_path: Path) -> None:
    out = stage_dataset(task, tmp_path / task, mirror=mirror)
    manifest = read_manifest(out)
    assert manifest["source"] == f"mirror:{mirror.resolve()}"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", manifest["digest"])
    assert manifest["task"] == task
    for config, splits in manifest["configs"].items():
        for split, info in splits.items():
            assert info["file"] == f"{config}/{split}.jsonl"
            lines = (out / info["file"]).read_text().splitlines()
            assert len(lines) == info["rows"]
            assert tuple(json.loads(lines[0])) == STAGED[task].dataset.fields
    assert sorted(os.listdir(tmp_path)) == [task]  # no temporary folders left


def test_stage_row_counts_and_fallbacks(mirror: Path, tmp_path: Path) -> None:
    counts = {
        "mmlu": {"test": 3 * 57, "validation": 57, "dev": 2 * 57},
        "arc_challenge": {"train": 3, "validation": 2, "test": 3},
        "winogrande": {"train": 3, "validation": 3, "test": 2},
        "hellaswag": {"validation": 3},
        "openbookqa": {"train": 2, "validation": 2, "test": 3},
    }
    for task, expected in counts.items():
        manifest = read_manifest(stage_dataset(task, tmp_path / task, mirror=mirror))
        assert manifest["splits"] == expected, task
    fallbacks = {t: read_manifest(tmp_path / t)["fallbacks"] for t in counts}
    assert any("no train split" in f for f in fallbacks["hellaswag"])
    assert any("train_l" in f for f in fallbacks["winogrande"])
    assert any("converted" in f for f in fallbacks["arc_challenge"])
    assert fallbacks["openbookqa"] == [] and fallbacks["mmlu"] == []
    assert len(read_manifest(tmp_path / "mmlu")["configs"]) == 57


def test_digest_is_stable_and_tracks_content(mirror: Path, tmp_path: Path) -> None:
    a = read_manifest(stage_dataset("winogrande", tmp_path / "a", mirror=mirror))
    b = read_manifest(stage_dataset("winogrande", tmp_path / "b", mirror=mirror))
    assert a["digest"] == b["digest"]
    assert (tmp_path / "a/winogrande_xl/validation.jsonl").read_bytes() == (
        tmp_path / "b/winogrande_xl/validation.jsonl"
    ).read_bytes()
    changed = tmp_path / "mirror2"
    shutil.copytree(mirror / "winogrande", changed / "winogrande")
    with open(changed / "winogrande/dev.jsonl", "a") as f:
        f.write(json.dumps({"sentence": "A _ b.", "option1": "x", "option2": "y", "answer": "1"}))
        f.write("\n")
    c = read_manifest(stage_dataset("winogrande", tmp_path / "c", mirror=changed))
    assert c["digest"] != a["digest"] and c["splits"]["validation"] == 4


def test_restage_replaces_atomically(mirror: Path, tmp_path: Path) -> None:
    out = tmp_path / "data" / "openbookqa"
    stage_dataset("openbookqa", out, mirror=mirror)
    (out / "stray.txt").write_text("from an older staging")
    stage_dataset("openbookqa", out, mirror=mirror)
    assert not (out / "stray.txt").exists()
    assert sorted(os.listdir(out.parent)) == ["openbookqa"]


def test_failed_staging_leaves_nothing(mirror: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(mirror / "openbookqa", broken / "openbookqa")
    with open(broken / "openbookqa/Main/test.jsonl", "a") as f:
        f.write("{truncated\n")
    data = tmp_path / "data"
    with pytest.raises(UserError, match=r"test\.jsonl:4: not valid JSON"):
        stage_dataset("openbookqa", data / "openbookqa", mirror=broken)
    assert os.listdir(data) == []
    # An earlier good staging survives a failed one untouched.
    stage_dataset("openbookqa", data / "openbookqa", mirror=mirror)
    before = read_manifest(data / "openbookqa")
    with pytest.raises(UserError):
        stage_dataset("openbookqa", data / "openbookqa", mirror=broken)
    assert read_manifest(data / "openbookqa") == before
    assert os.listdir(data) == ["openbookqa"]


def test_missing_mirror_file_names_it_and_the_setting(mirror: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    (partial / "hellaswag").mkdir(parents=True)
    missing = r"hellaswag_val_full\.txt\.bz2: missing .*NEMOTRON_DATA_MIRROR"
    with pytest.raises(UserError, match=missing):
        stage_dataset("hellaswag", tmp_path / "out", mirror=partial)
    assert not (tmp_path / "out").exists()


# --- staged data as the evaluation reads it ---------------------------------------------------------------


def test_verified_staged_data_reports_the_digest_of_its_files(mirror: Path, tmp_path: Path) -> None:
    out = stage_dataset("openbookqa", tmp_path / "openbookqa", mirror=mirror)
    checked = stage.verify_staged(out)
    assert checked["digest"] == read_manifest(out)["digest"] == stage.staged_digest(out)
    assert all(re.fullmatch(r"[0-9a-f]{64}", e["sha256"]) for s in checked["configs"].values() for e in s.values())


@pytest.mark.parametrize(("change", "message"), [
    ("edit", r"main/test\.jsonl: edited after staging .*stage it again: delete .*openbookqa and run again$"),
    ("remove", r"main/test\.jsonl: missing from the staged data .*delete .*openbookqa and run again$"),
    ("add", r"main/extra\.jsonl: not written by staging .*delete .*openbookqa and run again$"),
    ("fifo", r"main/test\.jsonl: not a regular file in staged data; stage it again"),
    ("manifest digest", r"manifest\.json: the staged files' digest sha256:.* is not the recorded sha256:0000"),
    ("old manifest, edited", r"manifest\.json: the staged files' digest .* \(the data or the manifest was edited"),
])
def test_staged_data_changed_after_staging_is_refused_in_one_line(change: str, message: str, mirror: Path,
                                                                   tmp_path: Path) -> None:
    out = stage_dataset("openbookqa", tmp_path / "openbookqa", mirror=mirror)
    data = out / "main" / "test.jsonl"
    manifest = json.loads((out / "manifest.json").read_text())
    if change in ("edit", "old manifest, edited"):
        data.write_text(data.read_text().replace("a", "b", 1))
    if change == "old manifest, edited":  # staged before files had their own sha256: the digest still says it
        for splits in manifest["configs"].values():
            for entry in splits.values():
                del entry["sha256"]
    if change == "manifest digest":
        manifest["digest"] = "sha256:" + "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    if change == "remove":
        data.unlink()
    if change == "add":
        (out / "main" / "extra.jsonl").write_text("{}\n")
    if change == "fifo":
        data.unlink()
        os.mkfifo(data)
    with pytest.raises(UserError, match=message) as err:
        stage.verify_staged(out)
    assert "\n" not in str(err.value)


def test_what_staging_reads_changes_with_the_file_list_and_each_file(mirror: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage rule's param: the task's list of mirror files (data/tasks.py) and each file's identity, so that
    a changed list restages although Snakemake's `input` trigger is off, and so does a file replaced by one with
    an older modification time; staging records it in the manifest."""
    import dataclasses

    copy = tmp_path / "mirror"
    shutil.copytree(mirror / "winogrande", copy / "winogrande")
    before = stage.reads("winogrande", copy)
    assert stage.reads("winogrande", copy) == before
    assert read_manifest(stage_dataset("winogrande", tmp_path / "w", mirror=copy))["reads"] == before
    assert stage.reads("winogrande", None) != before  # the hub
    # the task's list names another file of the mirror (train_xl for train_l), older than the staged data
    task = STAGED["winogrande"]
    files = tuple(dataclasses.replace(f, path="winogrande/train_xl.jsonl") if f.split == "train" else f
                  for f in task.dataset.mirror_files)
    shutil.copy2(copy / "winogrande/train_l.jsonl", copy / "winogrande/train_xl.jsonl")
    monkeypatch.setitem(STAGED, "winogrande",
                        dataclasses.replace(task, dataset=dataclasses.replace(task.dataset, mirror_files=files)))
    assert stage.reads("winogrande", copy) != before
    monkeypatch.undo()
    assert stage.reads("winogrande", copy) == before
    # a file replaced by another with the same size and an older time (a copy that kept its time)
    dev = copy / "winogrande/dev.jsonl"
    st = dev.stat()
    replacement = copy / "winogrande/dev.new"
    replacement.write_bytes(dev.read_bytes().replace(b"1", b"2", 1))
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    replacement.replace(dev)
    assert stage.reads("winogrande", copy) != before


def test_unknown_task(tmp_path: Path, mirror: Path) -> None:
    with pytest.raises(UserError, match="'hellaswg' is not a staged task.*did you mean 'hellaswag'"):
        stage_dataset("hellaswg", tmp_path / "x", mirror=mirror)


def test_resolve_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEMOTRON_DATA_MIRROR", raising=False)
    assert resolve_mirror(None) is None
    assert resolve_mirror(str(tmp_path)) == tmp_path.resolve()
    monkeypatch.setenv("NEMOTRON_DATA_MIRROR", str(tmp_path))
    assert resolve_mirror("") == tmp_path.resolve()
    with pytest.raises(UserError, match="data.mirror: mirror folder '/nonexistent'"):
        resolve_mirror("/nonexistent")
    monkeypatch.setenv("NEMOTRON_DATA_MIRROR", "/nonexistent")
    with pytest.raises(UserError, match="NEMOTRON_DATA_MIRROR: mirror folder"):
        resolve_mirror(None)


# --- the hub --------------------------------------------------------------------------------


def test_hub_offline_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as err:
        stage_dataset("hellaswag", tmp_path / "out", mirror=None, hub_cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "'hellaswag'" in message and "Hugging Face hub" in message
    assert "data.mirror" in message and "NEMOTRON_DATA_MIRROR" in message
    assert "\n" not in message
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_hub_parquet_layouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parquet conversion branch's two layouts become the same staged files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    snap = tmp_path / "snapshots" / "0123abcd"
    rows = list(readers.read_winogrande_jsonl(FIXTURES / "winogrande/dev.jsonl"))
    (snap / "winogrande_xl" / "validation").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:2]), snap / "winogrande_xl/validation/0000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), snap / "winogrande_xl/validation/0001.parquet")
    pq.write_table(pa.Table.from_pylist(rows), snap / "winogrande_xl/winogrande-train.parquet")
    calls: list[tuple] = []

    def fake_download(repo_id: str, configs: tuple, revision: str, cache_dir: Path | None) -> str:
        calls.append((repo_id, configs, revision))
        return str(snap)

    monkeypatch.setattr(stage, "_download", fake_download)
    manifest = read_manifest(stage_dataset("winogrande", tmp_path / "out", mirror=None))
    assert calls == [("winogrande", ("winogrande_xl",), "refs/convert/parquet")]
    assert manifest["source"] == "hub:winogrande@0123abcd"
    assert manifest["splits"] == {"train": 3, "validation": 3}
    assert manifest["fallbacks"] == []
    staged = [json.loads(x) for x in (tmp_path / "out/winogrande_xl/validation.jsonl").open()]
    assert staged == rows


# --- the real mirror ------------------------------------------------------------------------

REAL_MIRROR = Path(
    os.environ.get("NEMOTRON_DATA_MIRROR") or Path(__file__).parents[2] / "shared" / "benchmarks"
)
# Row counts from SOURCES.md of the mirror.
REAL_COUNTS = {
    "mmlu": {"dev": 285, "validation": 1531, "test": 14042},
    "arc_challenge": {"train": 1119, "validation": 299, "test": 1172},
    "winogrande": {"train": 10234, "validation": 1267, "test": 1767},
    "hellaswag": {"validation": 10042},
    "openbookqa": {"train": 4957, "validation": 500, "test": 500},
}


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_stage_real_mirror(task: str, tmp_path: Path) -> None:
    if not REAL_MIRROR.is_dir():
        pytest.skip(f"no benchmark mirror at {REAL_MIRROR} (set NEMOTRON_DATA_MIRROR)")
    manifest = read_manifest(stage_dataset(task, tmp_path / task, mirror=REAL_MIRROR))
    assert manifest["splits"] == REAL_COUNTS[task]
    again = read_manifest(stage_dataset(task, tmp_path / "again", mirror=REAL_MIRROR))
    assert again["digest"] == manifest["digest"]


# --- what a mirror file is, not only what it says --------------------------------------------------------------


def test_a_bz2_bomb_stops_at_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A few hundred bytes of bz2 that expand far past the cap: the read stops at the cap (memory stays bounded)
    and the file is named in one line. The cap is lowered here so the test inflates 2 MB, not 256."""
    import bz2 as bz2mod

    monkeypatch.setattr(readers, "MAX_DATA_BYTES", 1 << 20)
    bomb = tmp_path / "hellaswag_val_full.txt.bz2"
    bomb.write_bytes(bz2mod.compress(b"\0" * (2 << 20), 9))
    assert bomb.stat().st_size < 200
    with pytest.raises(UserError, match=r"hellaswag_val_full\.txt\.bz2: more than 1 MB of text \(decompressed\)"):
        list(readers.read_hellaswag_txt(bomb))


def test_corrupt_bz2_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "hellaswag_val_full.txt.bz2"
    bad.write_bytes(b"BZh9not really bz2")
    with pytest.raises(UserError, match=r"hellaswag_val_full\.txt\.bz2: cannot read it"):
        list(readers.read_hellaswag_txt(bad))


@pytest.mark.parametrize("reader, name, good, line", [
    (readers.read_mmlu_csv, "anatomy_test.csv", 'q,a,b,c,d,A\n', 2),
    (readers.read_obqa_jsonl, "test.jsonl", '{"id": "1"}\n', 2),
    (readers.read_hellaswag_txt, "hellaswag_val_full.txt", "a: b\n0\nx\ny\nz\nw\n", 7),
])
def test_non_utf8_mirror_file_names_file_and_line(tmp_path: Path, reader, name: str, good: str, line: int) -> None:
    path = tmp_path / name
    path.write_bytes(good.encode() + b"caf\xe9\n")
    with pytest.raises(UserError, match=rf"{re.escape(name)}:{line}: not UTF-8 text \(byte \d+: b'\\xe9'\)"):
        list(reader(path))


def test_a_fifo_in_the_mirror_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "anatomy_test.csv"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match=r"anatomy_test\.csv: not a regular file"):
        list(readers.read_mmlu_csv(fifo))
