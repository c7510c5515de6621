"""Container runners: how a deployment's shell command, or a harness's argv (in place of `bash -c CMD`), runs in
its image. Nothing is run here.

    pyxis      srun --overlap --mem=0 --nodes N --ntasks N*M --ntasks-per-node M --kill-on-bad-exit=1
                    --container-image=IMG --container-mounts=a:b,... [--container-env=NAME,...]
                    --no-container-mount-home bash -c CMD
    enroot     enroot start --mount a:b ... --env NAME ... IMG bash -c CMD
    apptainer  apptainer exec --nv --no-home --bind a:b ... IMG bash -c CMD
    none       bash -c CMD   (on the host)

enroot, apptainer and none run on the step's node; spanning several nodes (execution.num_nodes > 1, or
several instances on Slurm) puts the same srun in front of them, without container flags.
`--overlap --mem=0` because the serve step itself runs inside a Slurm step of the job (Snakemake's job step)
whose CPUs, memory and GPUs the deployment shares (Slurm 22.05 shares memory only with --mem=0; the step gets
all the job's GPUs without asking); `--ntasks` because that step's SLURM_NTASKS would otherwise apply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nemotron_eval.core.errors import UserError, did_you_mean

RUNNERS = ("pyxis", "enroot", "apptainer", "none")


def runner_of(execution: Mapping[str, Any]) -> str:
    """The container runner an execution section names (`execution.container_runner`; unset: none)."""
    return str(execution.get("container_runner") or "none")


def check_runner(runner: str) -> str:
    if runner not in RUNNERS:
        raise UserError(
            f"execution.container_runner={runner!r}: unknown runner; valid: {', '.join(RUNNERS)}{did_you_mean(str(runner), RUNNERS)}"
        )
    return runner


def unescape_dollars(command: str) -> str:
    """`$$` -> `$`: NVIDIA's launcher configs escape a `$` meant for the shell inside the job (`$$SLURM_NODEID`)."""
    return command.replace("$$", "$")


def srun_prefix(nodes: int, ntasks_per_node: int) -> list[str]:
    return [
        "srun", "--overlap", "--mem=0", "--nodes", str(nodes), "--ntasks", str(nodes * ntasks_per_node),
        "--ntasks-per-node", str(ntasks_per_node), "--kill-on-bad-exit=1",
    ]


def container_runner_wrap(
    runner: str,
    image: str | None,
    command: str | Sequence[str],
    mounts: Mapping[str, str],
    env_names: Sequence[str],
    *,
    nodes: int = 1,
    ntasks_per_node: int = 1,
    gpus: int | None = None,
    mount_home: bool = False,
    srun: bool | None = None,
) -> list[str]:
    """The argv running `command` in `image` with `runner` (see the module docstring): a string is a shell command
    (`bash -c`), a list an argv run as it is.

    `mounts` maps host paths to container paths; `env_names` are passed by name (pyxis --container-env,
    enroot --env; apptainer inherits the environment). `gpus=0` leaves apptainer's --nv out; Slurm steps
    get the job's GPUs without asking. `srun` (default: nodes > 1) puts srun in front of enroot, apptainer
    and none; pyxis always runs through srun.
    """
    check_runner(runner)
    if nodes < 1 or ntasks_per_node < 1:
        raise ValueError(f"nodes={nodes}, ntasks_per_node={ntasks_per_node}: both must be at least 1")
    if runner != "none" and not image:
        raise UserError(f"execution.container_runner={runner} needs deployment.image")
    shell = ["bash", "-c", command] if isinstance(command, str) else list(command)
    binds = [f"{src}:{dst}" for src, dst in mounts.items()]
    if runner == "pyxis":
        argv = [*srun_prefix(nodes, ntasks_per_node), f"--container-image={image}"]
        if binds:
            argv.append("--container-mounts=" + ",".join(binds))
        if env_names:
            argv.append("--container-env=" + ",".join(env_names))
        argv.append("--container-mount-home" if mount_home else "--no-container-mount-home")
        return argv + shell
    if runner == "enroot":
        inner = ["enroot", "start"]
        for bind in binds:
            inner += ["--mount", bind]
        for name in env_names:
            inner += ["--env", name]
        inner += [str(image), *shell]
    elif runner == "apptainer":
        inner = ["apptainer", "exec", *(["--nv"] if gpus != 0 else []), *([] if mount_home else ["--no-home"])]
        for bind in binds:
            inner += ["--bind", bind]
        inner += [str(image), *shell]
    else:
        inner = shell
    spans = nodes > 1 if srun is None else srun
    return [*srun_prefix(nodes, ntasks_per_node), *inner] if spans else inner
