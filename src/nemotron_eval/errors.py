"""One error type for every problem a user can fix: its message is the one line they see."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input: the message names the file, key or value and what would be valid."""


def did_you_mean(value: str, valid: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix naming the closest valid choice, or ''."""
    close = difflib.get_close_matches(value, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
