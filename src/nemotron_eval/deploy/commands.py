"""Command lines for a deployment: what runs, in which container runner, on which nodes. Nothing is run here.

`deployment_command(eval_cfg)` reads eval.yaml's `deployment` and `execution` sections and returns a
`DeploymentPlan`: the argv the serve step starts, the environment it adds (secrets only by *name*), and where
the server will answer. `container_runner_wrap` puts a shell command into a container runner:

    pyxis      srun --overlap --mem=0 --nodes N --ntasks N*M --ntasks-per-node M --kill-on-bad-exit=1
                    --container-image=IMG --container-mounts=a:b,... [--container-env=NAME,...]
                    --no-container-mount-home bash -c CMD
    enroot     enroot start --mount a:b ... --env NAME ... IMG bash -c CMD
    apptainer  apptainer exec --nv --no-home --bind a:b ... IMG bash -c CMD
    none       bash -c CMD   (on the host)

enroot, apptainer and none run on the serve step's node; spanning several nodes (execution.num_nodes > 1, or
deployment.multiple_instances on Slurm) puts the same srun in front of them, without container flags.
`--overlap --mem=0` because the serve step itself runs inside a Slurm step of the job (Snakemake's job step)
whose CPUs, memory and GPUs the deployment shares (Slurm 22.05 shares memory only with --mem=0; the step gets
all the job's GPUs without asking); `--ntasks` because that step's SLURM_NTASKS would otherwise apply.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemotron_eval.deploy.ready import server_command
from nemotron_eval.errors import UserError, did_you_mean
from nemotron_eval.images import enroot_uri, is_image_file
from nemotron_eval.secrets import looks_secret

RUNNERS = ("pyxis", "enroot", "apptainer", "none")
DEPLOYMENT_TYPES = ("generic", "vllm", "none", "local")
CHECKPOINT_MOUNT = "/checkpoint"
HOST = "{host}"  # placeholder in a plan's URLs for the node the serve step resolves at run time
PASS_THROUGH = ("HF_TOKEN",)  # host variables handed to the deployment by name whenever they are set
_HOST_REF = re.compile(r"^(?:host:|\$)([A-Za-z_][A-Za-z0-9_]*)$")  # "host:NAME" or "$NAME": a host variable


@dataclass(frozen=True)
class DeploymentPlan:
    """How one deployment is started and reached.

    `argv` is empty for `none` (nothing to start). `base_url` may hold "{host}": the first node of the
    Slurm allocation, resolved by the serve step (`host` is then None). The process gets `env` (plain
    values) and `env_from_host` (container name -> host variable, copied at start-up); `env_names` are all
    the names the container runner passes through. No secret value is ever part of a plan.
    """

    type: str
    argv: list[str]
    model_id: str
    base_url: str
    health_path: str
    completions_path: str
    readiness_timeout_s: float
    host: str | None = None
    port: int | None = None
    runner: str = "none"
    env: dict[str, str] = field(default_factory=dict)
    env_from_host: dict[str, str] = field(default_factory=dict)
    env_names: list[str] = field(default_factory=list)
    api_key_name: str | None = None

    def urls(self, host: str | None = None) -> dict[str, str]:
        """url, completions_url and health_url, with "{host}" replaced by `host` (default: the plan's)."""
        base = self.base_url
        if HOST in base:
            node = host or self.host
            if not node:
                raise ValueError(f"{base} needs the host the deployment runs on")
            base = base.replace(HOST, node)
        return {"url": base, "completions_url": base + self.completions_path, "health_url": base + self.health_path}

    def process_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The deployment process's environment: `environ`, the plain values, the host variables it names."""
        copied = {name: environ[ref] for name, ref in self.env_from_host.items() if ref in environ}
        return {**environ, **self.env, **copied}


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
    command: str,
    mounts: Mapping[str, str],
    env_names: Sequence[str],
    *,
    nodes: int = 1,
    ntasks_per_node: int = 1,
    gpus: int | None = None,
    mount_home: bool = False,
    srun: bool | None = None,
) -> list[str]:
    """The argv running the shell `command` in `image` with `runner` (see the module docstring).

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
    shell = ["bash", "-c", command]
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


def deployment_command(
    eval_cfg: Mapping[str, Any],
    *,
    image: str | None = None,
    server_endpoint_file: Path = Path("endpoint.server.json"),
    environ: Mapping[str, str] | None = None,
) -> DeploymentPlan:
    """The plan for eval.yaml's deployment (`generic`, `vllm`, `none` or `local`).

    `image` replaces deployment.image for the runner: the squashed file (build/images/*.sqsh) for pyxis and
    enroot, which enroot needs. `environ` (default: none) says which PASS_THROUGH variables are set.
    `server_endpoint_file` is where the `local` server writes its address.
    """
    dep: Mapping[str, Any] = eval_cfg.get("deployment") or {}
    kind = dep.get("type")
    if kind not in DEPLOYMENT_TYPES:
        raise UserError(
            f"deployment.type={kind!r}: unknown; valid: {', '.join(DEPLOYMENT_TYPES)}{did_you_mean(str(kind), DEPLOYMENT_TYPES)}"
        )
    if kind == "none":
        return _existing(dep)
    if kind == "local":
        return _local(dep, server_endpoint_file)
    execution: Mapping[str, Any] = eval_cfg.get("execution") or {}
    runner = check_runner(str(execution.get("container_runner") or "none"))
    inside = runner != "none"
    checkpoint = str(dep.get("checkpoint_path") or "")
    if kind == "generic":
        command = unescape_dollars(_required(dep, "command"))
    else:
        command = shlex.join(_vllm_argv(dep, CHECKPOINT_MOUNT if inside else checkpoint))
        if _nodes(execution) > 1:
            raise UserError(
                f"deployment.type=vllm runs on one node; execution.num_nodes={_nodes(execution)} needs a generic "
                "deployment whose command starts the multi-node server (e.g. with Ray)"
            )
    return _cluster_plan(str(kind), dep, execution, runner, command, image=image, environ=environ or {})


def _required(dep: Mapping[str, Any], key: str) -> str:
    value = dep.get(key)
    if value in (None, "", "???"):
        raise UserError(f"deployment.{key} is required for deployment.type={dep.get('type')}")
    return str(value)


def _vllm_argv(dep: Mapping[str, Any], checkpoint: str) -> list[str]:
    argv = ["vllm", "serve", checkpoint]
    for key in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
        argv += [f"--{key.replace('_', '-')}", str(int(dep.get(key) or 1))]
    argv += ["--port", str(int(dep.get("port") or 8000)), "--served-model-name", str(dep.get("served_model_name") or "model")]
    return argv + shlex.split(str(dep.get("extra_args") or ""))


def _nodes(execution: Mapping[str, Any]) -> int:
    nodes = int(execution.get("num_nodes") or 1)
    if nodes < 1:
        raise UserError(f"execution.num_nodes={nodes}: must be at least 1")
    return nodes


def _tasks_per_node(execution: Mapping[str, Any], nodes: int) -> int:
    """execution.deployment.n_tasks spread over the nodes (NVIDIA's default: one per node), else ntasks_per_node."""
    n_tasks = (execution.get("deployment") or {}).get("n_tasks")
    if n_tasks is None:
        return max(1, int(execution.get("ntasks_per_node") or 1))
    if int(n_tasks) < nodes or int(n_tasks) % nodes:
        raise UserError(f"execution.deployment.n_tasks={n_tasks}: must be a multiple of execution.num_nodes={nodes}")
    return int(n_tasks) // nodes


def _gpus(execution: Mapping[str, Any]) -> int | None:
    """The GPUs per node from execution.gres ("gpu:8", "gpu:h100:8"); None when not said."""
    gres = execution.get("gres")
    match = re.fullmatch(r"gpu(?::[^:,]+)?:(\d+)", str(gres)) if gres else None
    return int(match.group(1)) if match else None


def _mounts(dep: Mapping[str, Any], execution: Mapping[str, Any]) -> dict[str, str]:
    """The checkpoint at /checkpoint, execution.mounts.deployment (host: container) and execution.mounts.extra
    ("host:container" strings, or a path mounted at the same place)."""
    mounts = {str(_required(dep, "checkpoint_path")): CHECKPOINT_MOUNT}
    section = execution.get("mounts") or {}
    for src, dst in (section.get("deployment") or {}).items():
        mounts[str(src)] = str(dst)
    for entry in section.get("extra") or []:
        src, sep, dst = str(entry).partition(":")
        if not src or (sep and not dst):
            raise UserError(f"execution.mounts.extra: {entry!r} is not 'host_path:container_path' (or one path)")
        mounts[src] = dst or src
    return mounts


def _environment(execution: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """execution.env_vars.deployment split into plain values and host variables ("host:NAME" or "$NAME"),
    plus every name to pass through. A secret-looking name with a plain value is refused."""
    plain: dict[str, str] = {}
    from_host: dict[str, str] = {}
    for name, value in ((execution.get("env_vars") or {}).get("deployment") or {}).items():
        if value is None:
            continue
        ref = _HOST_REF.match(str(value))
        if ref:
            from_host[str(name)] = ref.group(1)
        elif looks_secret(str(name)):
            raise UserError(
                f"execution.env_vars.deployment.{name}: a secret's value does not belong in a config; "
                f"name the variable that holds it instead ({name}: host:{name})"
            )
        else:
            plain[str(name)] = str(value)
    passed = [name for name in PASS_THROUGH if name in environ]
    return plain, from_host, sorted({*plain, *from_host, *passed})


def _cluster_plan(
    kind: str,
    dep: Mapping[str, Any],
    execution: Mapping[str, Any],
    runner: str,
    command: str,
    *,
    image: str | None,
    environ: Mapping[str, str],
) -> DeploymentPlan:
    slurm = execution.get("type") == "slurm"
    if runner == "pyxis" and not slurm:
        raise UserError(
            f"execution.container_runner=pyxis needs execution.type=slurm (pyxis is an srun plugin); "
            f"execution.type={execution.get('type')!r} can use: enroot, apptainer, none"
        )
    container_image = image or _runner_image(runner, dep)
    if runner == "enroot" and not image:
        raise UserError("execution.container_runner=enroot starts a squashed image: build it first (the squash_image rule)")
    nodes = _nodes(execution)
    plain, from_host, names = _environment(execution, environ)
    argv = container_runner_wrap(
        runner,
        container_image,
        command,
        _mounts(dep, execution) if runner != "none" else {},
        names,
        nodes=nodes,
        ntasks_per_node=_tasks_per_node(execution, nodes),
        gpus=_gpus(execution),
        mount_home=bool((execution.get("mounts") or {}).get("mount_home", False)),
        srun=slurm and (nodes > 1 or bool(dep.get("multiple_instances"))),
    )
    endpoints = dep.get("endpoints") or {}
    port = int(dep.get("port") or 8000)
    return DeploymentPlan(
        type=kind,
        argv=argv,
        model_id=str(dep.get("served_model_name") or "model"),
        base_url=f"http://{HOST}:{port}",
        health_path=str(dep.get("health_check_path") or endpoints.get("health") or "/health"),
        completions_path=str(endpoints.get("completions") or "/v1/completions"),
        readiness_timeout_s=float(dep.get("readiness_timeout_s") or 3600),
        host=None if slurm else "127.0.0.1",
        port=port,
        runner=runner,
        env=plain,
        env_from_host=from_host,
        env_names=names,
    )


def _runner_image(runner: str, dep: Mapping[str, Any]) -> str | None:
    """deployment.image as the runner names it when no squashed file is given."""
    if runner == "none":
        return None
    image = _required(dep, "image")
    if is_image_file(image):
        return image
    if runner == "apptainer":
        return f"docker://{image}"
    return enroot_uri(image).removeprefix("docker://")  # pyxis imports it itself


def _existing(dep: Mapping[str, Any]) -> DeploymentPlan:
    url = _required(dep, "url").rstrip("/")
    base = url.removesuffix("/v1/completions").removesuffix("/completions")
    return DeploymentPlan(
        type="none",
        argv=[],
        model_id=_required(dep, "served_model_name"),
        base_url=base,
        health_path=str(dep.get("health_check_path") or "/health"),
        completions_path=url[len(base):] if url.endswith("completions") else "/v1/completions",
        readiness_timeout_s=float(dep.get("readiness_timeout_s") or 0),
        api_key_name=dep.get("api_key_name"),
    )


def _local(dep: Mapping[str, Any], endpoint_file: Path) -> DeploymentPlan:
    host, port = str(dep.get("host") or "127.0.0.1"), int(dep.get("port") or 0)
    argv = server_command(
        Path(_required(dep, "checkpoint_path")),
        endpoint_file=endpoint_file,
        host=host,
        port=port,
        dtype=str(dep.get("dtype") or "float32"),
        served_model_name=str(dep.get("served_model_name") or "model"),
        max_batch_size=int(dep.get("max_batch_size") or 8),
    )
    return DeploymentPlan(
        type="local",
        argv=argv,
        model_id=str(dep.get("served_model_name") or "model"),
        base_url=f"http://{host}:{port}",  # port 0: the server picks one and writes it to its endpoint file
        health_path=str(dep.get("health_check_path") or "/health"),
        completions_path="/v1/completions",
        readiness_timeout_s=float(dep.get("readiness_timeout_s") or 300),
        host=host,
        port=port,
    )
