"""The one safe reader (parser attacks end in one line, fast) and file modes that follow the umask."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nemotron_eval.artifacts.local import LocalRegistry
from nemotron_eval.core.errors import UserError
from nemotron_eval.core.io import atomic_dir, current_umask, write_json_atomic, write_text_atomic
from nemotron_eval.core.safeload import MAX_BYTES, load_json, load_toml, load_yaml, load_yaml_text

from conftest import make_checkpoint


def billion_laughs(width: int = 9, depth: int = 8) -> str:
    """security.md's bomb: `depth` levels of anchors, each a list of `width` aliases of the one below."""
    lines = [f"lol0: &lol0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, depth + 1):
        lines.append(f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_fails_in_under_a_second(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("# " + "padding " * 140 + "\n" + billion_laughs())
    assert 1500 < bomb.stat().st_size < 2500  # the 1.7 KB of security.md
    started = time.monotonic()
    with pytest.raises(UserError, match=r"bomb.yaml: expands to more than 200000 values \(a YAML alias"):
        load_yaml(bomb)
    assert time.monotonic() - started < 1.0
    # a few aliases are fine: what is shared is read as it expands
    assert load_yaml_text("a: &x [1, 2]\nb: *x\n", "ok.yaml") == {"a": [1, 2], "b": [1, 2]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\nb: 2\na: 3\n", "duplicate key 'a' at line 3 (first at line 1)"),
        ("a: &x [*x]\n", "a recursive YAML alias at line 1"),
        ("a: !!binary aGVsbG8=\n", "a is a YAML bytes value, which a config cannot hold"),
        ("a: !!set {x, y}\n", "a is a YAML set value"),
        ("[" * 3000 + "]" * 3000, "nested too deeply"),
        ("a: [1,\n", "malformed YAML at line 2"),
        ("a: 1\n---\nb: 2\n", "malformed YAML"),
    ],
)
def test_yaml_attacks_are_one_line(text: str, expected: str) -> None:
    with pytest.raises(UserError) as e:
        load_yaml_text(text, "cfg.yaml")
    assert str(e.value).startswith("cfg.yaml: ") and expected in str(e.value) and "\n" not in str(e.value)


def test_yaml_reads_as_hydra_reads() -> None:
    """The loader OmegaConf uses: dates and times stay text (PyYAML's safe loader makes a date OmegaConf refuses)."""
    assert load_yaml_text("d: 2024-01-01\nt: 04:00:00\nf: 1e3\n", "x") == {"d": "2024-01-01", "t": "04:00:00", "f": 1000.0}


def test_size_cap_and_encoding(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * (MAX_BYTES + 10) + "\n")
    started = time.monotonic()
    with pytest.raises(UserError, match=r"big.yaml: larger than 1024 KB; a YAML file is a few KB"):
        load_yaml(big)
    assert time.monotonic() - started < 1.0
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(UserError, match=r"latin.yaml: not UTF-8 text \(byte 9: b'\\xe9'\); save it as UTF-8"):
        load_yaml(latin)
    with pytest.raises(UserError, match="no such YAML file"):
        load_yaml(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="is a folder"):
        load_yaml(tmp_path)


def test_toml_times_and_json_truncation(tmp_path: Path) -> None:
    env = tmp_path / "env.toml"
    env.write_text("[cluster]\ntime = 04:00:00\n")
    with pytest.raises(UserError, match=r'\[cluster\] time = 04:00:00 is a TOML time, not text; quote it: time = "04:00:00"'):
        load_toml(env)
    env.write_text("[cluster]\nstart = 2026-01-02\n")
    with pytest.raises(UserError, match=r"\[cluster\] start = 2026-01-02 is a TOML date"):
        load_toml(env)
    meta = tmp_path / "metadata.json"
    meta.write_text('{"path": "/ck", "digest": "ab')
    with pytest.raises(UserError, match=r"metadata.json: this registry file is not valid JSON \(.*truncated\?\); fix it"):
        load_json(meta, "registry file", fix="fix it")
    meta.write_text('{"a": 1, "a": 2}')
    with pytest.raises(UserError, match="duplicate key 'a'"):
        load_json(meta)


# --- modes ----------------------------------------------------------------------------------------------------


@pytest.fixture(params=[0o002, 0o022, 0o077], ids=["umask002", "umask022", "umask077"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_follow_the_umask(tmp_path: Path, umask: int) -> None:
    assert current_umask() == umask
    write_text_atomic(tmp_path / "a.txt", "x")
    write_json_atomic(tmp_path / "b.json", {"x": 1})
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives: the atomic writers match it
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "b.json") == mode(plain) == 0o666 & ~umask
    with atomic_dir(tmp_path / "staged") as tmp:
        (tmp / "f").write_text("x")
    (tmp_path / "plain_dir").mkdir()
    assert mode(tmp_path / "staged") == mode(tmp_path / "plain_dir") == 0o777 & ~umask


def test_a_shared_registry_is_readable_by_the_team(tmp_path: Path, umask: int) -> None:
    reg = LocalRegistry(tmp_path / "registry")
    reg.add("demo", make_checkpoint(tmp_path / "ck"))
    for path in (tmp_path / "registry" / "demo" / "aliases.json", tmp_path / "registry" / "demo" / "v1" / "metadata.json"):
        assert mode(path) == 0o666 & ~umask
        assert json.loads(path.read_text())
    assert mode(tmp_path / "registry" / "demo") == 0o777 & ~umask


def test_a_registry_inside_its_checkpoint_is_refused(tmp_path: Path) -> None:
    ck = make_checkpoint(tmp_path / "ck")
    for root in (ck / "registry", ck):
        with pytest.raises(UserError, match=r"the registry .* lies inside the checkpoint .*ck; registering would change"):
            LocalRegistry(root).add("demo", ck)
    assert sorted(p.name for p in ck.iterdir()) == ["weights.bin"]  # nothing written into it


@pytest.mark.parametrize("loader", [load_yaml, load_json, load_toml])
def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path: Path, loader) -> None:
    """A named pipe with no writer would block open() forever; a FIFO with a writer would never end. Both kinds
    of special file are refused by what they are, before anything is read."""
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(UserError, match=r"config\.yaml: not a regular file \(a pipe, device or socket\)"):
        loader(fifo)
    assert time.monotonic() - start < 2


def test_a_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="/dev/zero: not a regular file"):
        load_yaml("/dev/zero")


@pytest.mark.parametrize("kind", ["yaml", "json", "toml"])
@pytest.mark.parametrize("depth", [65, 400, 5000])
def test_deep_nesting_is_one_line(tmp_path: Path, kind: str, depth: int) -> None:
    """A document a few hundred or thousand levels deep ends in one line naming the file (never RecursionError)."""
    path = tmp_path / f"deep.{kind}"
    if kind == "toml":
        path.write_text("a = " + "[" * depth + "]" * depth + "\n")
        loader = load_toml
    else:
        path.write_text("{\"a\": " * depth + "1" + "}" * depth + "\n")
        loader = load_yaml if kind == "yaml" else load_json
    with pytest.raises(UserError, match=rf"deep\.{kind}: (nested more than 64 levels deep|nested too deeply)"):
        loader(path)


def test_nesting_a_config_needs_passes(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("{\"a\": " * 20 + "1" + "}" * 20 + "\n")
    assert load_yaml(path) is not None
