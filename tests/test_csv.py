"""The project's CSV writer (`io.csv_text`): what a spreadsheet would run as a formula is quoted, numbers stay numbers."""

from __future__ import annotations

import csv
import io

import pytest

from nemotron_eval.core.io import csv_cell, csv_text


@pytest.mark.parametrize("text", ["=HYPERLINK(\"http://x\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx", "\r=1"])
def test_formula_like_text_is_quoted(text: str) -> None:
    assert csv_cell(text) == "'" + text


@pytest.mark.parametrize("value, cell", [(None, ""), (True, "true"), (False, "false"), (-0.25, "-0.25"), (3, "3"),
                                         ("smollm2:latest", "smollm2:latest"), ("a=b", "a=b")])
def test_plain_values(value: object, cell: str) -> None:
    assert csv_cell(value) == cell


def test_table_round_trips_through_a_csv_reader() -> None:
    text = csv_text(["model", "value"], [["=evil()", -0.5], ["ok, with comma", 1.0]])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [["model", "value"], ["'=evil()", "-0.5"], ["ok, with comma", "1.0"]]
