"""The rule steps' logging: every line reaches the rule's log file, even after the harness set up its logging."""

from __future__ import annotations

from pathlib import Path

import pytest

from nemotron_eval.pipeline import workflow as wf
from nemotron_eval.core.errors import UserError
from nemotron_eval.evaluate.framework import framework_defaults


def test_log_lines_survive_the_harness_logging_setup(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "step.log"
    with pytest.raises(RuntimeError):
        with wf.logged(log):
            wf.log.info("before")
            framework_defaults("hellaswag")  # imports nemo_evaluator, which closes the handlers it finds
            wf.log.info("after")
            raise RuntimeError("the harness failed")
    text = log.read_text()
    assert "before" in text and "after" in text and "RuntimeError: the harness failed" in text


def test_user_errors_are_left_to_the_caller(tmp_path: Path) -> None:
    log = tmp_path / "step.log"
    with pytest.raises(UserError):
        with wf.logged(log):
            raise UserError("bad input")
    assert "Traceback" not in log.read_text()


def test_an_evaluation_without_its_deployment_stops_at_once(tmp_path: Path) -> None:
    """When Snakemake reruns an evaluation the plan did not declare the deployment for, the step says so before
    reading anything or waiting for a deployment that nobody starts."""
    missing = tmp_path / "nothing-here"
    with pytest.raises(UserError, match=r"openbookqa: Snakemake reran this evaluation .* run the same command again"):
        wf.evaluate("openbookqa", missing, missing, missing, Path("-"), missing, tmp_path / "r.json", tmp_path / "i.gz")
    assert not list(tmp_path.iterdir())
