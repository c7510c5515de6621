"""`nemotron watch --dir ... --convert-arg ...`: each ready folder converted by a real command (an argv list with
{input} and {output}) before it is registered; the conversion is what is registered; a failing command is
retried at the next looks, then reported and left alone, nothing half-written registered."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from nemotron_eval.artifacts import LocalRegistry
from nemotron_eval.core.spec import ModelSpec
from nemotron_eval.deploy.stub import write_checkpoint
from nemotron_eval.front import watch

# a converter: copies the checkpoint and marks the copy (what a format conversion would write)
CONVERT = [sys.executable, "-c", "import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2]); "
           "open(sys.argv[2] + '/converted', 'w').write(sys.argv[1])", "{input}", "{output}"]
# a converter that writes half its output, then fails
FAILS = [sys.executable, "-c", "import os, sys; os.makedirs(sys.argv[1]); print('bad shard 3'); sys.exit(3)", "{output}"]


def watcher(work: Path, convert: list[str], retries: int = 1) -> watch.Watcher:
    watched = [watch.Watched("ck", None, work / ".nemotron/watch/ck-x.json")]
    return watch.Watcher(watch.Setup(None, None, ("openbookqa",), ()), LocalRegistry(work / "artifacts"), watched,
                         max_parallel=1, retries=retries, source=(str(work / "ckpts" / "iter_*"), "done"),
                         curve_tasks=["openbookqa"], convert=convert)


def ready(work: Path, step: int) -> Path:
    folder = write_checkpoint(work / "ckpts" / f"iter_{step:07d}")
    (folder / "done").write_text("")
    return folder


def test_the_conversion_is_registered_with_the_folder_as_lineage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = ready(tmp_path, 1000)
    w = watcher(tmp_path, CONVERT)
    w.look()
    reg = LocalRegistry(tmp_path / "artifacts")
    (version,) = reg.history("ck")
    out = tmp_path / ".nemotron/watch/converted/ck/iter_0001000"
    assert Path(reg.resolve(ModelSpec("ck", "v1")).path) == out and (out / "converted").read_text() == str(source)
    assert version.lineage == {"source": str(source), "converted": str(out), "step": 1000}
    assert not out.with_name("iter_0001000.partial").exists() and set(w.watched[0].versions) == {"v1"}
    w.look()  # registered once
    assert len(LocalRegistry(tmp_path / "artifacts").history("ck")) == 1


def test_a_failing_conversion_is_retried_then_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    source = ready(tmp_path, 2000)
    w = watcher(tmp_path, FAILS, retries=1)
    for _ in range(3):
        w.look()
    err = capsys.readouterr().err
    assert err.count(f"{source}: not converted: the conversion exited 3 (bad shard 3; log ") == 2
    assert "(1 left)" in err and "failed 2 times, reported and left alone" in err
    assert LocalRegistry(tmp_path / "artifacts").history("ck") == [] and w.watched[0].versions == {}
    state = json.loads((tmp_path / ".nemotron/watch/ck-x.json").read_text())
    assert state["conversions"][str(source)]["attempts"] == 2
    assert not (tmp_path / ".nemotron/watch/converted/ck/iter_0002000").exists()  # the partial one is not it


def test_a_missing_program_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    ready(tmp_path, 1)
    watcher(tmp_path, ["no-such-converter-here", "{input}", "{output}"], retries=0).look()
    assert "'no-such-converter-here' cannot run" in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["ck", "--convert-arg", "cp"], "--convert-arg: the conversion runs on each --dir folder"),
    (["ck", "--dir", "x/*", "--marker", "done", "--convert-arg", "cp", "--convert-arg", "{input}"], "no argument names {output}"),
])  # fmt: skip
def test_bad_conversion_arguments_are_one_line(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    from nemotron_eval.front import cli

    assert cli.main(["watch", "--once", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
