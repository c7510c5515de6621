"""The optional conversion of a checkpoint folder before `nemotron watch --dir` registers it (as nel-watch's):

    nemotron watch ck --dir 'ckpts/iter_*' --marker done \\
        --convert-arg python --convert-arg convert.py --convert-arg {input} --convert-arg {output}

The command is an argv list (never a shell string); in each argument `{input}` becomes the folder found and
`{output}` the folder the command writes (absent before it runs; the command creates it):
.nemotron/watch/converted/NAME/<folder name>. It is written under `<folder name>.partial` and renamed when the
command exits 0 having created it, so a half-written conversion is never registered; the command's output goes
to `<folder name>.log` beside it. A failed conversion is tried again at the next look, `--retries` times, then
reported and left alone (the watcher's state file keeps the attempts), like a failed evaluation.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from nemotron_eval.core.errors import UserError


def check_command(argv: Sequence[str]) -> None:
    """--convert-arg values: {output} must be named (else nothing would be registered)."""
    if not any("{output}" in a for a in argv):
        raise UserError(f"--convert-arg {' '.join(argv)!r}: no argument names {{output}}, the folder the command "
                        "writes and the watcher registers (e.g. --convert-arg {input} --convert-arg {output})")


def filled(argv: Sequence[str], source: Path, output: Path) -> list[str]:
    return [a.replace("{input}", str(source)).replace("{output}", str(output)) for a in argv]


def convert(argv: Sequence[str], source: Path, out: Path) -> tuple[Path | None, str]:
    """Run the conversion of `source` into `out`; (out, "") when it succeeded, else (None, why, with the log)."""
    if out.is_dir():  # converted before (the watcher stopped before registering it)
        return out, ""
    partial, log = out.with_name(out.name + ".partial"), out.with_name(out.name + ".log")
    shutil.rmtree(partial, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as sink:
        try:
            code = subprocess.run(filled(argv, source, partial), stdin=subprocess.DEVNULL, stdout=sink,
                                  stderr=subprocess.STDOUT, check=False).returncode
        except OSError as e:
            return None, f"{argv[0]!r} cannot run ({e.strerror or e})"
    if code != 0:
        last = (log.read_text(errors="replace").strip().splitlines() or ["(no output)"])[-1][:300]
        return None, f"the conversion exited {code} ({last}; log {log})"
    if not partial.is_dir():
        return None, f"the conversion exited 0 but wrote no folder at {{output}} ({partial}; log {log})"
    partial.rename(out)
    return out, ""
