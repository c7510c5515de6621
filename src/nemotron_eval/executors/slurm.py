"""Slurm: what the deployment job asks for, the checks that must fail before anything is submitted, the
deployment as a job step of its own on the allocation's first node, the job ids Snakemake's Slurm executor
plugin reports, and their status and cancellation (profiles/slurm, profiles/slurm-local). A head job is
submitted here through NeMo-Run (`nemotron_eval.executors.remote`, an env.toml profile with executor = "slurm")."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from typing import Any

from nemotron_eval.config.validators import gpus_per_node, walltime_minutes
from nemotron_eval.executors.runners import check_runner
from nemotron_eval.core.errors import UserError
from nemotron_eval.executors.base import Executor, register

_JOB_ID = re.compile(r"SLURM jobid (\d+)")  # "Job 3 has been submitted with SLURM jobid 1234 (log: ...)."
_SET_ACCOUNT = 'add account = "..." to the profile or override run.env.account=...'


def check_account(account: str | None, profile: str | None, enforce: str | None) -> None:
    """A cluster that enforces associations needs an account: say where to set it."""
    if account or not enforce or not re.search(r"associations|limits|qos|safe", enforce):
        return
    where = f"env.toml profile {profile!r}" if profile else "the config (no env_profile given)"
    raise UserError(
        f"{where} has no 'account', and this cluster requires one (AccountingStorageEnforce={enforce}); {_SET_ACCOUNT}"
    )


def check_gpus(gres: str | None, partition: str | None, node_gres: list[str]) -> None:
    """A GPU request larger than any node would pend forever: refuse it with what the nodes have."""
    wanted = gpus_per_node(gres)
    if not wanted or not node_gres:
        return
    largest = max((sum(int(n) for n in re.findall(r"gpu(?::[A-Za-z0-9_-]+)?:(\d+)", g)) for g in node_gres), default=0)
    if wanted > largest:
        where = f"partition {partition!r}" if partition else "the cluster"
        raise UserError(f"execution.gres={gres}: no node of {where} has more than gpu:{largest} (sinfo); request at most gpu:{largest} per node")


def slurm_facts(partition: str | None) -> tuple[str | None, list[str]]:
    """AccountingStorageEnforce and the GRES of each node, or (None, []) without a reachable Slurm."""
    if not shutil.which("scontrol") or not shutil.which("sinfo"):
        return None, []
    try:
        conf = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=15)
        args = ["sinfo", "-h", "-N", "-o", "%G"] + (["-p", partition] if partition else [])
        nodes = subprocess.run(args, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None, []
    m = re.search(r"^AccountingStorageEnforce\s*=\s*(.*)$", conf.stdout, re.M)
    enforce = m[1].strip() if m and m[1].strip() not in ("none", "0") else None
    return enforce, [line.strip() for line in nodes.stdout.splitlines() if line.strip()]


def first_node(environ: Mapping[str, str]) -> str:
    """The first node of this Slurm job (where a deployment's task 0 runs); this host outside Slurm."""
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if nodelist and shutil.which("scontrol"):
        try:
            hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                   timeout=30, check=True).stdout.split()
        except (subprocess.SubprocessError, OSError):
            hosts = []
        if hosts:
            return hosts[0]
    return environ.get("SLURMD_NODENAME") or "127.0.0.1"


@register
class Slurm(Executor):
    name = "slurm"
    squashes_images = True  # pyxis and enroot start a squashed file, made once on the shared file system
    remote = True

    def deployment_resources(self, execution: Mapping[str, Any]) -> dict[str, Any]:
        check_runner(str(execution.get("container_runner", "none")))
        res: dict[str, Any] = {
            "nodes": int(execution.get("num_nodes") or 1),
            "runtime": walltime_minutes(execution.get("walltime") or "04:00:00"),
        }
        if execution.get("gres"):
            gpus_per_node(execution["gres"])
            res["gres"] = str(execution["gres"])
        for key, resource in (("partition", "slurm_partition"), ("account", "slurm_account")):
            if execution.get(key):
                res[resource] = str(execution[key])
        if execution.get("mem_mb"):
            res["mem_mb"] = int(execution["mem_mb"])
        return res

    def squash_resources(self, run_env: Mapping[str, Any]) -> dict[str, Any]:
        """env.toml's build_partition and build_time (default one hour)."""
        res: dict[str, Any] = {"runtime": walltime_minutes(run_env.get("build_time") or 60, "run.env.build_time")}
        if run_env.get("build_partition"):
            res["slurm_partition"] = str(run_env["build_partition"])
        return res

    def check(self, execution: Mapping[str, Any], env_profile: str | None) -> None:
        """A GPU request larger than any node, or no account where one is required."""
        enforce, node_gres = slurm_facts(execution.get("partition"))
        check_account(execution.get("account"), env_profile, enforce)
        check_gpus(execution.get("gres"), execution.get("partition"), node_gres)

    def check_settings(self, execution: Mapping[str, Any], env_profile: str | None) -> None:
        """An env.toml profile that sends jobs to a cluster names their account: the launcher's sbatch scripts
        would say `--account None` (a config without a profile is left to `check`: a cluster that enforces
        accounts says so)."""
        if env_profile and not execution.get("account"):
            raise UserError(
                f"env.toml profile {env_profile!r} has no 'account': its Slurm jobs would be submitted with "
                f"`--account None`; {_SET_ACCOUNT}"
            )

    def srun(self, execution: Mapping[str, Any]) -> bool:
        return True  # the deployment is a job step of its own (process tracking, every node)

    def deployment_host(self, environ: Mapping[str, str] | None) -> str | None:
        return None if environ is None else first_node(environ)

    def job_ids(self, line: str) -> list[str]:
        return _JOB_ID.findall(line)

    def job_states(self, ids: Iterable[str]) -> dict[str, str]:
        """sacct's State of each job's allocation (squeue forgets ended jobs within seconds)."""
        ids = list(ids)
        if not ids or not shutil.which("sacct"):
            return {}
        try:
            out = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(ids)],
                                 capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            return {}
        rows = (line.split("|", 1) for line in out.splitlines() if "|" in line)
        return {job: state.strip() for job, state in rows if job in ids}

    def cancel(self, ids: Iterable[str]) -> None:
        """Snakemake cancels its Slurm jobs on SIGINT; what it could not (killed first) is cancelled here."""
        ids = list(ids)
        if ids and shutil.which("scancel"):
            subprocess.run(["scancel", *ids], capture_output=True, check=False)
