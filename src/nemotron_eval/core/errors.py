"""One error type for every problem a user can fix, and one way every entry point ends.

A `UserError`'s message is the one line the user sees: it names the file, key or value and what would be valid.
`exit_code(fn)` runs an entry point: a UserError becomes that line on stderr (and in the step's log), status 2;
Ctrl-C is status 130; any other exception is a bug: its traceback goes to the log (when there is one), the user
gets one line naming the log.
"""

from __future__ import annotations

import difflib
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

PREFIX = "nemotron: error: "


class UserError(Exception):
    """Bad input: the message names the file, key or value and what would be valid."""


def shown(value: Any, width: int = 60) -> str:
    """A value in a message: its repr, cut to `width` characters (a key 5000 levels deep is not repeated)."""
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def did_you_mean(value: str, valid: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix naming the closest valid choice, or ''."""
    close = difflib.get_close_matches(value, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _append(log: Path | None, text: str) -> None:
    if log is None:
        return
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    except OSError:
        pass


def exit_code(fn: Callable[[], int | None], log: Path | None = None) -> int:
    """Run an entry point's body and turn how it ended into an exit status (see the module docstring).
    Messages never carry the value of a secret environment variable."""
    from nemotron_eval.core.secrets import scrub_env_values

    try:
        return int(fn() or 0)
    except UserError as e:
        message = scrub_env_values(str(e))
        print(PREFIX + (message.splitlines() or [""])[0], file=sys.stderr)
        _append(log, PREFIX + message)  # the log keeps the whole message (a deployment log's tail, ...)
        return 2
    except KeyboardInterrupt:
        print("nemotron: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: the traceback goes to the log, the user gets one line
        where = log if log is not None else _crash_log()
        _append(where, scrub_env_values(traceback.format_exc()))
        first = scrub_env_values(str(e)).splitlines()[0] if str(e) else ""
        print(f"nemotron: internal error: {type(e).__name__}: {first} (traceback in {where})", file=sys.stderr)
        return 1


def _crash_log() -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / "nemotron-crash.log"
