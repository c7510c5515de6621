"""Secrets by shape and by name, and the environment read into configs only from an allowlist (core.secrets).

The first half checks the rules on names, values and nested configs directly; the second makes plans as the
Snakefile does (the `planner` fixture), with sentinel values in the environment: every refusal is one line that
names the key and never the value (the plan writes nothing; tests/test_security.py runs a selection through the
real snakemake CLI and looks for the sentinels in every file it leaves).
"""

from __future__ import annotations

import base64
import glob
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from nemotron_eval.core.errors import UserError
from nemotron_eval.core.secrets import (
    ENV_READABLE, env_read_problem, literal_secret, looks_secret, looks_secret_env, random_looking, redact,
    scrub_env_values, secret_shape,
)  # fmt: skip

from conftest import REPO

# Values built at run time, so that no file of the repo holds a credential's shape.
GH = "ghp_" + "Aa1" * 12
GLPAT = "glpat-" + "x1Y2" * 5
JWT = ".".join(["eyJhbGciOiJIUzI1NiJ9", "eyJzdWIiOiIxMjM0NTY3ODkwIn0", "dBjftJeZ4CVPmB92K27uhbUJU1p1r"])
HEX40 = "8f3a9b1c2d4e5f60718293a4b5c6d7e8f9a0b1c2"


# --- names ---------------------------------------------------------------------------------------------------
SECRET_NAMES = [
    "db_pass", "OPENAI_KEY", "openaiKey", "openai-key", "ssh_passphrase", "sshPassphrase", "SSH-PASSPHRASE",
    "SSHPASS", "MYSQL_PWD", "PGPASSWORD", "pgPassword", "CI_JOB_JWT", "github_pat", "basic_auth", "DB_PASSWD",
    "clientSecret", "session_cookie", "Bearer", "anthropic_api_key", "my-service-key", "privateKey",
]  # fmt: skip
NOT_SECRET_NAMES = [
    "sort_key", "metric_key", "answer_key", "key", "pwd", "tokenizer", "max_new_tokens", "api_key_name",
    "eos_token_id", "hf_token_path", "image_pull_secrets", "bypass", "passes", "token_file", "apiKeyName",
]  # fmt: skip


@pytest.mark.parametrize("key", SECRET_NAMES)
def test_secret_names_in_any_spelling(key: str) -> None:
    assert looks_secret(key) and looks_secret_env(key)


@pytest.mark.parametrize("key", NOT_SECRET_NAMES)
def test_names_that_are_not_secrets(key: str) -> None:
    assert not looks_secret(key)


@pytest.mark.parametrize("name", ["PWD", "OLDPWD", "HOME", "SSH_AUTH_SOCK", "PGPASSFILE", "HF_TOKEN_PATH", "TOKENIZERS_PARALLELISM"])
def test_environment_names_that_are_not_secrets(name: str) -> None:
    assert not looks_secret_env(name)


# --- shapes --------------------------------------------------------------------------------------------------
SHAPES = [
    ("postgres://u:pw@db.example.org/x", "URL with user:password@"),
    ("see mysql+pymysql://admin:${run.pw}@db:3306/x", "URL with user:password@"),
    ("https://oauth2:" + "tok12345" + "@gitlab.example.org/g/r.git", "URL with user:password@"),
    ("Authorization: Bearer " + "abcDEF123456ghiJKL7890", "HTTP authorization"),
    ("Basic " + base64.b64encode(b"user:hunter2").decode(), "HTTP authorization"),
    ("sk-proj-" + "Ab1" * 10, "OpenAI or Anthropic"),
    ("sk-ant-api03-" + "Zz9" * 10, "OpenAI or Anthropic"),
    (GH, "GitHub"),
    ("github_pat_" + "11ABCDEF0" * 5, "GitHub"),
    ("ghs_" + "Q1w2" * 9, "GitHub"),
    (GLPAT, "GitLab"),
    ("xoxb-" + "1234567890-abcdef", "Slack"),
    ("xoxp-" + "9876543210-fedcba", "Slack"),
    ("AKIA" + "IOSFODNN7EXAMPLE", "AWS"),
    ("ASIA" + "Q3EGRXQ2PZ7EXAMP", "AWS"),
    ("hf_" + "q" * 34, "Hugging Face"),
    ("nvapi-" + "x" * 40, "NVIDIA"),
    ("AIza" + "SyD" * 11 + "xy", "Google"),
    ("npm_" + "a1B2" * 9, "npm"),
    ("pypi-AgEIcHlwaS5vcmc" + "x" * 30, "PyPI"),
    (JWT, "JSON Web Token"),
    ("-----BEGIN " + "RSA PRIVATE KEY-----\nMIIE...", "private key"),
    ("-----BEGIN " + "OPENSSH PRIVATE KEY-----", "private key"),
    ("-----BEGIN " + "PGP PRIVATE KEY BLOCK-----", "private key"),
]
NOT_SHAPES = [
    "nvcr.io/nvidia/nemo:25.11.nemotron_3_nano", "https://user@host.example.org/x", "http://localhost:8000/v1",
    "/lustre/me/nemotron", "basic arithmetic questions", "Bearer of bad news", "my_task-abcdefghijklmnopqrstuvwxyz",
    "meta-llama/Llama-3.1-8B-Instruct", "hf_transfer", "sqlite:///tmp/x.db", "a:b@c", "ssh://git@github.com/o/r.git",
]  # fmt: skip


@pytest.mark.parametrize(("value", "what"), SHAPES, ids=[w + str(i) for i, (_, w) in enumerate(SHAPES)])
def test_credentials_by_shape(value: str, what: str) -> None:
    shape = secret_shape(value)
    assert shape is not None and what in shape, shape
    assert literal_secret({"deployment": {"note": value}}) == ("deployment.note", shape)  # under any key


@pytest.mark.parametrize("value", NOT_SHAPES)
def test_ordinary_values_have_no_secret_shape(value: str) -> None:
    assert secret_shape(value) is None


def test_random_looking_strings() -> None:
    assert random_looking(HEX40) and random_looking("Zt8fK2qLw9XbV4mN")
    for plain in ("OPENAI_API_KEY", "huggingface", "/a/b/c/d/e/f/g/h/i", "a sentence with words in it", "1234567890123456"):
        assert not random_looking(plain), plain


# --- configs -------------------------------------------------------------------------------------------------
NESTED = [
    ("list under a secret key", {"run": {"env": {"passwords": ["a", "hunter22"]}}}, "run.env.passwords.0"),
    ("token deep in a list of maps", {"evaluation": {"tasks": [{"name": "x", "extra": [{"u": GH}]}]}},
     "evaluation.tasks.0.extra.0.u"),
    ("camelCase envVars by value", {"deployment": {"envVars": {"DB_PASS": "lit:x"}}}, "deployment.envVars.DB_PASS"),
    ("kebab env-vars by value", {"deployment": {"env-vars": {"MYSQL_PWD": "lit:x"}}}, "deployment.env-vars.MYSQL_PWD"),
    ("UPPER ENV_VARS URL", {"ENV_VARS": {"DATABASE_URL": "lit:postgres://u:pw@h/db"}}, "ENV_VARS.DATABASE_URL"),
    ("hex under key", {"export": {"wandb": {"key": HEX40}}}, "export.wandb.key"),
    ("random under api_key_name", {"target": {"api_endpoint": {"api_key_name": "Zt8fK2qLw9XbV4mN"}}},
     "target.api_endpoint.api_key_name"),
    ("number under a pin", {"run": {"db_pwd": 123456}}, "run.db_pwd"),
]


@pytest.mark.parametrize(("config", "key"), [n[1:] for n in NESTED], ids=[n[0] for n in NESTED])
def test_nested_secrets_are_found(config: dict[str, Any], key: str) -> None:
    found = literal_secret(config)
    assert found is not None and found[0] == key, found


def test_secrets_named_not_held_pass() -> None:
    config = {
        "target": {"api_endpoint": {"api_key_name": "OPENAI_API_KEY", "url": "https://integrate.api.nvidia.com/v1"}},
        "deployment": {"env_vars": {"HF_TOKEN": "host:HF_TOKEN", "DB_PASS": "runtime:DB_PASS", "HF_HOME": "lit:/cache"}},
        "evaluation": {"params": {"extra": {"judge": {"api_key": "JUDGE_API_KEY", "password": None, "token": "???"}}}},
        "run": {"env": {"sort_key": "answer", "image_pull_secrets": ["ngc-access"], "max_tokens": 1024}},
    }
    assert literal_secret(config) is None


def test_repo_and_launcher_configs_pass() -> None:
    """No false positive on the configs this repo ships or on NeMo Evaluator Launcher's own (its task catalog's
    `api_key: JUDGE_API_KEY` names a variable)."""
    import nemo_evaluator_launcher

    launcher = Path(nemo_evaluator_launcher.__file__).parent
    files = sorted(glob.glob(str(REPO / "configs/**/*.yaml"), recursive=True)) + sorted(glob.glob(str(launcher / "**/*.yaml"), recursive=True))
    assert len(files) > 30
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the launcher's task catalog is large
    found = {f: literal_secret(yaml.load(Path(f).read_text(), Loader=loader)) for f in files}
    assert {f: v for f, v in found.items() if v} == {}


def test_redact_masks_by_shape_too() -> None:
    assert redact({"note": GLPAT, "db_pass": "x", "n": 1, "l": ["plain", JWT]}) == {"note": "***", "db_pass": "***", "n": 1, "l": ["plain", "***"]}


def test_scrub_env_values_by_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable whose name says nothing but whose value is a credential is scrubbed from messages too."""
    monkeypatch.setenv("DATABASE_URL", "postgres://u:pw-sentinel@db/x")
    monkeypatch.setenv("SOME_SETTING", GH)
    monkeypatch.setenv("SSHPASS", "sentinel-sshpass")
    text = "a postgres://u:pw-sentinel@db/x b " + GH + " c sentinel-sshpass d"
    assert scrub_env_values(text) == "a *** b *** c *** d"


# --- the environment, read into a config -------------------------------------------------------------------


def test_env_allowlist() -> None:
    assert {"USER", "HOME", "PWD", "HOSTNAME", "SLURM_JOB_ID", "NEMOTRON_DATA_MIRROR"} <= ENV_READABLE
    assert env_read_problem("USER", {"USER": "me"}) is None
    assert "looks like a GitHub token" in (env_read_problem("USER", {"USER": GH}) or "")
    assert "host:PGPASSWORD" in (env_read_problem("PGPASSWORD", {}) or "")


REFUSED_READS = ["PGPASSWORD", "MYSQL_PWD", "SSHPASS", "CI_JOB_JWT", "DATABASE_URL", "MY_SETTING", "SLURM_ANYTHING",
                 "http_proxy", "AWS_SESSION_TOKEN"]  # fmt: skip


@pytest.mark.parametrize("name", REFUSED_READS)
@pytest.mark.parametrize("spelling", ["${{oc.env:{n}}}", "${{oc.env: '{n}'}}", "x-${{oc.env:UNSET_X,${{oc.env:{n}}}}}",
                                      "\\${{oc.env:{n}}}"], ids=["plain", "quoted", "default", "escaped"])
def test_env_reads_outside_the_allowlist_are_refused(planner, monkeypatch: pytest.MonkeyPatch, name: str, spelling: str) -> None:
    sentinel = f"sentinel-{uuid.uuid4().hex}"
    monkeypatch.setenv(name, f"postgres://u:{sentinel}@h/x" if name == "DATABASE_URL" else sentinel)
    with pytest.raises(UserError) as e:
        planner("local", [f"+run.env.k={spelling.format(n=name)}"])
    message = str(e.value)
    assert f"${{oc.env:{name}}}" in message and f"host:{name}" in message and "\n" not in message, message
    assert sentinel not in message


def test_allowlisted_reads_still_resolve(planner, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher's Slurm config reads ${oc.env:USER}; who, where and Slurm's job facts stay readable."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    plan = planner("local", ["+run.env.who=${oc.env:USER,nobody}@${oc.env:HOSTNAME,here}", "+run.env.job=${oc.env:SLURM_JOB_ID}"])
    assert plan.merged["run"]["env"]["job"] == "${oc.env:SLURM_JOB_ID}"  # merged.yaml keeps the read ...
    assert plan.resolved["run"]["env"]["job"] == "4242"  # ... which resolves
    assert plan.resolved["run"]["env"]["who"].count("@") == 1


def test_allowlisted_variable_holding_a_credential_is_refused(planner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTNAME", GLPAT)
    with pytest.raises(UserError) as e:
        planner("local", ["+run.env.k=${oc.env:HOSTNAME}"])
    assert "HOSTNAME here looks like a GitLab token" in str(e.value) and GLPAT not in str(e.value)


ENV_TOML = [
    ("URL with a password", '[p]\nexecutor = "slurm"\nregistry = "https://me:{s}@registry.example.org"\n', "[p] registry"),
    ("token in a list", '[p]\nexecutor = "slurm"\nsetup = ["echo hi", "export T={gl}"]\n', "[p] setup.1"),
    ("oc.env of a secret", '[p]\nexecutor = "slurm"\naccount = "${{oc.env:PGPASSWORD}}"\n', "${oc.env:PGPASSWORD}"),
    ("db_pass in [cli]", '[cli]\ndb_pass = "{s}"\n', "[cli] db_pass"),
]


@pytest.mark.parametrize(("toml", "expected"), [c[1:] for c in ENV_TOML], ids=[c[0] for c in ENV_TOML])
def test_env_toml_secrets_never_reach_merged_yaml(planner, monkeypatch: pytest.MonkeyPatch, toml: str, expected: str) -> None:
    sentinel = f"sentinel{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("PGPASSWORD", sentinel)
    with pytest.raises(UserError) as e:
        planner("default", env_toml=toml.format(s=sentinel, gl=GLPAT), env_profile="p" if "[p]" in toml else None)
    message = str(e.value)
    assert expected in message and sentinel not in message and GLPAT not in message and "\n" not in message, message
