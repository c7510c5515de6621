"""Bad input, as a careless user or an attacker writes it: each case fails in one line that names the culprit,
when the plan is made (before Snakemake writes or submits anything), and nothing is written.

The cases run the Plan in-process, as the Snakefile makes it (the `planner` fixture: a working directory with a
registered `demo` checkpoint); tests/test_workflow_compile.py and tests/test_security.py run a selection through
the real snakemake CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nemotron_eval.core.errors import UserError
from nemotron_eval.pipeline.request import read_request_file

P = "evaluation.nemo_evaluator_config.config.params"
T0 = "evaluation.tasks.0.nemo_evaluator_config.config.params"
TOKEN = "hf_" + "Q" * 34


def bomb() -> str:
    lines = ["l0: &l0 [a, a, a, a, a, a, a, a, a]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


FLOW_BOMB = "[" + ", ".join(["&l0 [" + ", ".join(["a"] * 10) + "]"]
                             + [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 7)]) + "]"
LOCAL = (Path(__file__).resolve().parents[1] / "configs" / "local.yaml").read_text()

# id, config, overrides, extra (files / env_toml / env_profile / model), what the one line must contain
CASES: list[tuple[str, str, list[str], dict[str, Any], str]] = [
    # -- the schema: types and ranges --------------------------------------------------------------------------
    ("limit_samples<1", "local", [f"{P}.limit_samples=-1"], {}, f"{P}.limit_samples=-1: a whole number >= 1 or null"),
    ("parallelism 0", "local", [f"{P}.parallelism=0"], {}, f"{P}.parallelism=0: a whole number >= 1"),
    ("request_timeout text", "local", [f"{P}.request_timeout=abc"], {}, f"{P}.request_timeout='abc': a number > 0"),
    ("max_retries<0", "local", [f"{P}.max_retries=-1"], {}, f"{P}.max_retries=-1: a whole number >= 0"),
    ("task limit 0", "local", [f"+{T0}.limit_samples=0"], {}, f"{T0}.limit_samples=0: a whole number >= 1"),
    ("task top_p>1", "local", [f"{T0}.top_p=2"], {}, f"{T0}.top_p=2: a number >= 0 and <= 1"),
    ("port too big", "local", ["deployment.port=70000"], {}, "deployment.port=70000: a whole number from 0 to 65535"),
    ("port 0 on a cluster", "default", ["deployment.port=0"], {}, "deployment.port=0: a whole number from 1 to 65535"),
    ("checkpoint a number", "local", ["deployment.checkpoint_path=5"], {}, "deployment.checkpoint_path=5: an absolute path"),
    ("checkpoint relative", "local", ["deployment.checkpoint_path=rel/ck"], {}, "deployment.checkpoint_path='rel/ck': an absolute path"),
    ("checkpoint with a mount", "default", ["deployment.checkpoint_path=/tmp/a,/etc:/host-etc"], {},
     "deployment.checkpoint_path='/tmp/a,/etc:/host-etc': an absolute path of letters, digits"),
    ("num_nodes text", "default", ["execution.num_nodes=two"], {}, "execution.num_nodes='two': a whole number >= 1"),
    ("num_instances 0", "default", ["execution.num_instances=0"], {}, "execution.num_instances=0: a whole number >= 1"),
    ("gres", "default", ["execution.gres=gpu8"], {}, "execution.gres='gpu8': gpu:N or gpu:TYPE:N"),
    ("walltime", "default", ["run.env.time=4h"], {}, "run.env.time='4h': a Slurm time"),
    ("dtype", "local", ["deployment.dtype=float16"], {}, "deployment.dtype='float16': one of float32, bfloat16"),
    ("container runner", "default", ["execution.container_runner=docker"], {}, "execution.container_runner='docker': one of pyxis"),
    ("served name with a space", "local", ["deployment.served_model_name=my model"], {}, "deployment.served_model_name='my model'"),
    ("image with a quote", "default", ["deployment.image=x'$(touch X)'"], {}, "deployment.image=\"x'$(touch X)'\": an image reference"),
    ("run.model a number", "local", ["run.model=5"], {}, "run.model=5: an artifact spec NAME:ALIAS"),
    ("engine", "local", ["run.engine=snakemak"], {}, "run.engine='snakemak': one of snakemake, launcher or null (did you mean 'snakemake'?)"),
    ("env var without prefix", "local", ["+deployment.env_vars.HF_HOME=/cache"], {},
     "deployment.env_vars.HF_HOME='/cache': Env var value '/cache' must have an explicit prefix. Use 'lit:/cache' instead."),
    ("endpoint url", "default", ["deployment=none", "target.api_endpoint.url=http://h/v1;touch", "target.api_endpoint.model_id=m"], {},
     "target.api_endpoint.url='http://h/v1;touch': an http(s) URL"),
    ("params into the harness's shell", "local", [f"+{P}.extra.tokenizer_backend=$(touch X)"], {},
     f"{P}.extra.tokenizer_backend='$(touch X)': text without shell-special characters"),
    ("mounts map", "default", ["+execution.mounts.deployment./data=relative"], {}, "execution.mounts.deployment={'/lustre': '/lustre', '/data': 'relative'}"),
    # -- unknown keys --------------------------------------------------------------------------------------------
    ("unknown data key", "local", ["+data.mirorr=/x"], {}, "data.mirorr: unknown key in this project's section 'data' (did you mean 'mirror'?)"),
    ("unknown run key", "local", ["+run.modle=x"], {}, "run.modle: unknown key in this project's section 'run' (did you mean 'model'?)"),
    ("unknown local deployment key", "local", ["+deployment.dtyp=x"], {}, "deployment.dtyp: unknown key in the local deployment (did you mean 'dtype'?)"),
    ("launcher evaluation key", "local", ["+evaluation.env_var={}"], {}, "evaluation.env_var: unknown key (NeMo Evaluator Launcher's evaluation has no such key) (did you mean 'env_vars'?)"),
    ("launcher task key", "local", ["+evaluation.tasks.0.contaner=x"], {}, "evaluation.tasks.0.contaner: unknown key (NeMo Evaluator Launcher's evaluation has no such key) (did you mean 'container'?)"),
    ("launcher mounts key", "default", ["+execution.mounts.deploy={}"], {}, "execution.mounts.deploy: unknown key"),
    ("execution.env_vars", "default", ["+execution.env_vars.X=lit:y"], {}, "execution.env_vars: not a key of NeMo Evaluator Launcher"),
    # -- env.toml ------------------------------------------------------------------------------------------------
    ("profile mounts a string", "default", [], {"env_toml": '[c]\nmounts = "/lustre:/lustre"\n', "env_profile": "c"},
     "env.toml: [c] mounts = '/lustre:/lustre' must be a list of 'host_path:container_path[:flags]'"),
    ("profile time unquoted", "default", [], {"env_toml": "[c]\ntime = 04:00:00\n", "env_profile": "c"},
     'env.toml: [c] time = 04:00:00 is a TOML time, not text; quote it: time = "04:00:00"'),
    ("artifacts root a number", "local", [], {"env_toml": "[artifacts]\nroot = 5\n"}, "env.toml: [artifacts] root = 5 must be a string"),
    ("env.toml not UTF-8", "local", [], {"files": {"env.toml": b"[c]\naccount = '\xff'\n"}}, "env.toml: not UTF-8 text (byte 15"),
    # -- files that attack the parser ------------------------------------------------------------------------------
    ("alias bomb", "bomb.yaml", [], {"files": {"bomb.yaml": LOCAL + bomb().replace("l", "run_l")}}, "bomb.yaml: expands to more than 200000 values"),
    ("duplicate key", "dup.yaml", [], {"files": {"dup.yaml": LOCAL + "data:\n  mirror: null\n"}}, "dup.yaml: duplicate key 'data' at line"),
    ("config not UTF-8", "latin.yaml", [], {"files": {"latin.yaml": LOCAL.encode() + b"# caf\xe9\n"}}, "latin.yaml: not UTF-8 text"),
    ("config too big", "big.yaml", [], {"files": {"big.yaml": LOCAL + "#" + "x" * (1 << 20) + "\n"}}, "big.yaml: larger than 1024 KB"),
    ("binary tag", "bin.yaml", [], {"files": {"bin.yaml": LOCAL + "note: !!binary aGk=\n"}}, "bin.yaml: note is a YAML bytes value"),
    ("override flow bomb", "local", ["+run.env.x=" + FLOW_BOMB], {}, "override '+run.env.x=[&l0 [a, a, a, a, a, a, a, a, a, a], &l1"),
    ("art of another artifact", "default", ["+deployment.note=${art:other,path}"], {"model": "demo_latest"},
     "${art:other,path}: unknown artifact 'other'"),
    # -- secrets -----------------------------------------------------------------------------------------------
    ("oc.env with a space", "local", ["+run.env.k=${oc.env: WANDB_API_KEY}"], {}, "${oc.env:WANDB_API_KEY} in the config would copy a secret"),
    ("oc.env nested", "local", ["+run.env.n=DB_PASSWORD", "+run.env.k=${oc.env:${run.env.n}}"], {}, "${oc.env:DB_PASSWORD}"),
    ("oc.env default", "local", ["+run.env.k=${oc.env:NOT_SET_X,${oc.env:OPENAI_KEY}}"], {}, "${oc.env:OPENAI_KEY}"),
    ("literal password", "local", ["+run.env.password=hunter22"], {}, "config key run.env.password holds a secret value (not repeated here)"),
    ("HF_TOKEN lit in deployment", "local", ["+deployment.env_vars.HF_TOKEN=lit:abc"], {}, "deployment.env_vars.HF_TOKEN=host:HF_TOKEN"),
    ("HF_TOKEN lit at top level", "local", ["+env_vars={HF_TOKEN: 'lit:abc'}"], {}, "config key env_vars.HF_TOKEN holds a secret value"),
    ("key lit in evaluation", "local", ["+evaluation.env_vars.OPENAI_API_KEY=lit:abc"], {}, "evaluation.env_vars.OPENAI_API_KEY=host:OPENAI_API_KEY"),
    ("token under any key", "local", [f"+run.env.note={TOKEN}"], {}, "config key run.env.note holds a secret value"),
    ("api_key in env.toml", "local", [], {"env_toml": f'[wandb]\napi_key = "{TOKEN}"\n'}, "env.toml: [wandb] api_key holds a secret value"),
    # -- the registry and model specs ------------------------------------------------------------------------------
    ("truncated aliases.json", "default", [], {"model": "demo_latest", "files": {"artifacts/demo/aliases.json": '{"latest": "v'}},
     "artifacts/demo/aliases.json: this registry file is not valid JSON"),
    ("truncated metadata.json", "default", [], {"model": "demo_latest", "files": {"artifacts/demo/v1/metadata.json": '{"path": "/x", "dig'}},
     "artifacts/demo/v1/metadata.json: this registry file is not valid JSON"),
    ("aliases.json not a table", "default", [], {"model": "demo_latest", "files": {"artifacts/demo/aliases.json": "[1]"}},
     "aliases.json: not a registry alias table"),
    ("alias to a missing version", "default", [], {"model": "demo_latest", "files": {"artifacts/demo/aliases.json": '{"latest": "v9"}'}},
     "alias 'latest' points to v9, which is missing from"),
    ("a 250-character name", "default", [], {"model": "n" * 250 + "_latest"}, "artifact name nnnnnnnnnnnnnnnnnnnn...: 250 characters; at most 128"),
]


@pytest.mark.parametrize(("config", "overrides", "extra", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_culprit(planner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   config: str, overrides: list[str], extra: dict[str, Any], expected: str) -> None:
    monkeypatch.setenv("DB_PASSWORD", "s3cret-db-value")
    monkeypatch.setenv("OPENAI_KEY", "s3cret-openai-value")
    for name, content in (extra.get("files") or {}).items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    eval_config = str(tmp_path / config) if config.endswith(".yaml") else config
    with pytest.raises(UserError) as e:
        plan = planner(eval_config, overrides, env_toml=extra.get("env_toml"), env_profile=extra.get("env_profile"))
        plan.model(extra.get("model", plan.default_model))
    message = str(e.value)
    assert expected in message and "\n" not in message, message
    assert "s3cret" not in message and TOKEN not in message and "hunter22" not in message
    assert not (tmp_path / "build").exists() and not (tmp_path / ".snakemake").exists()


def test_enough_cases() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("eval_config: local\noverrides: [a\n", "malformed YAML at line 3"),
        ("eval_config: local\neval_config: default\n", "duplicate key 'eval_config' at line 2"),
        ("- local\n", "expected a mapping of eval_config"),
        ("eval_config: local\nextra: 1\n", "unknown key 'extra'"),
    ],
)
def test_bad_request_files(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "request.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        read_request_file(path)
    assert expected in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("override", [
    "+evaluation.nemo_evaluator_config.config.params.extra.x=$(touch /tmp/pwned)<art:",
    "deployment.served_model_name=a;id<art:model,path>",
])
def test_a_value_cannot_skip_the_checks_by_looking_unresolved(planner, override: str) -> None:
    """Values still waiting for their artifact are skipped by the plan-level check; one that only looks like that
    is checked, and a model's own check skips nothing."""
    from nemotron_eval.core.errors import UserError

    with pytest.raises(UserError, match="shell|letters, digits"):
        planner("local", [override]).model("smollm2_latest")
