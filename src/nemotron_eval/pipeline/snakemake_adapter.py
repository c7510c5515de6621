"""Every use of Snakemake's internals, in one place: attributes of its `workflow` object and of its persistence
that are not in its documented API. Written for Snakemake 9.27 (pyproject.toml pins `snakemake>=9.27,<10`);
tests/test_snakemake_adapter.py exercises each function on a real workflow and its real persistence and fails
naming the attribute when a release changes one. The Snakefile and `nemotron_eval.pipeline.smk` call these functions and
touch no Snakemake attribute themselves (`workflow.basedir` and `config` are documented; they stay where they are).

    given_config(workflow)             `--config` values as given (workflow.config_settings.config)
    hand_jobs_a_request(workflow, a)   what a job Snakemake starts through a shell gets instead of those values
                                       (workflow.config_settings.config_args)
    is_main_process(workflow)          the process that plans and schedules, not a job's (workflow.is_main_process)
    dry_run(workflow)                  whether this is a dry run (-n), known while the Snakefile is read
                                       (workflow.output_settings.dryrun; workflow.dryrun is set only later)
    forced(workflow)                   whether anything is forced (workflow.dag_settings: forceall, forcetargets,
                                       forcerun, target_jobs); known only while the DAG is built
    rerun_triggers(workflow)           the active rerun triggers (workflow.dag_settings.rerun_triggers)
    cores(workflow)                    the cores this run may use (workflow.resource_settings.cores)
    completed_record(workflow, path)   whether Snakemake holds a metadata record of `path` and no incomplete marker
                                       (workflow.persistence._read_record, _filter_incomplete_keys: no public call
                                       takes a plain path)
    force(workflow, path)              run the job writing `path` in this invocation whatever Snakemake's checks
                                       find (workflow.dag.forcefiles, as --rerun-incomplete does for its files)
    end_rescheduling()                 stop the scheduler's last re-evaluation timer once the run ended (the
                                       threading.Timer of JobScheduler._schedule_reevalutation)
"""

from __future__ import annotations

from typing import Any

SNAKEMAKE_SERIES = "9.27"  # the release these internals were read from (pyproject.toml pins >=9.27,<10)


def given_config(workflow: Any) -> dict[str, Any]:
    """The `--config KEY=VALUE` values of this invocation (not the profile's configfile), {} when none."""
    return dict(workflow.config_settings.config or {})


def hand_jobs_a_request(workflow: Any, argument: str) -> None:
    """Jobs Snakemake starts by invoking itself through a shell get `--config ARGUMENT` instead of the values given
    here (so that no value travels on a command line: see rules/common.smk)."""
    workflow.config_settings.config_args = argument


def is_main_process(workflow: Any) -> bool:
    return bool(workflow.is_main_process)


def dry_run(workflow: Any) -> bool:
    """Whether this invocation only shows what would run (-n, --dry-run): it starts no job."""
    settings = workflow.output_settings
    return bool(settings is not None and settings.dryrun)


def forced(workflow: Any) -> bool:
    """Whether this invocation forces jobs (--forceall, --force, --forcerun, --target-jobs)."""
    s = workflow.dag_settings
    return bool(s.forceall or s.forcetargets or s.forcerun or s.target_jobs)


def rerun_triggers(workflow: Any) -> frozenset[str]:
    """The rerun triggers in Snakemake's command-line spelling (mtime, params, input, code, software-env)."""
    return frozenset(t.name.lower().replace("_", "-") for t in workflow.dag_settings.rerun_triggers)


def cores(workflow: Any) -> int | None:
    """--cores (a profile's `cores`); None when not given."""
    value = workflow.resource_settings.cores
    return None if value is None else int(value)


def completed_record(workflow: Any, path: str) -> bool:
    """Whether Snakemake recorded a finished job that wrote `path` (a record, and no incomplete marker)."""
    persistence = workflow.persistence
    return bool(persistence._read_record(path)) and not persistence._filter_incomplete_keys([path])


def force(workflow: Any, path: str) -> None:
    """Make the job that writes `path` run in this invocation, as `--forcerun` of that file would (Snakemake adds
    the incomplete files to the same set under --rerun-incomplete). Only while the DAG is built (from an input
    function): the set is read when Snakemake decides what runs."""
    workflow.dag.forcefiles.add(path)


def end_rescheduling() -> int:
    """Cancel the scheduler's pending re-evaluation timers; returns how many there were. Call once the run ended
    (the Snakefile's onsuccess and onerror).

    Why: after every scheduling round of a run (not a dry run) Snakemake starts a non-daemon `threading.Timer` of
    the --max-jobs-per-timespan span (1 s by default) to look again; the last one holds the finished process until
    it fires: `snakemake build/{model}/eval.yaml` took 2.3 s, 1.3 s with it cancelled (2-core Xeon)."""
    import threading

    timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer)
              and "_schedule_reevalutation" in getattr(t.function, "__qualname__", "")]
    for timer in timers:
        timer.cancel()
    for timer in timers:
        timer.join(timeout=1)
    return len(timers)
