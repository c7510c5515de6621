"""Keeping secrets out of what we print and write.

A secret is recognised two ways: by the name it is kept under, and by the shape of the value itself.

* Names (`looks_secret` for config keys, `looks_secret_env` for environment variables): words that say
  "secret" (`password`, `passphrase`, `token`, `secret`, `jwt`, `credentials`, ...: anywhere in the key, also run
  together as in PGPASSWORD or clientSecret), and short words that do when they end a longer name (`db_pass`,
  MYSQL_PWD, SSHPASS, GITHUB_PAT, basic_auth, OPENAI_KEY; but not `sort_key` or `metric_key`). A key that ends by
  saying it *refers* to a secret (`api_key_name`, `token_file`, HF_TOKEN_PATH) is not one.
* Shapes (`secret_shape`): a credential a provider issues (hf_..., sk-..., ghp_..., github_pat_..., glpat-...,
  xoxb-..., AKIA..., nvapi-..., AIza..., npm_..., pypi-...), a JSON Web Token (eyJ...), a PEM private key, a URL with
  `user:password@`, an HTTP `Bearer`/`Basic` credential; and, under a key that only *might* name a secret
  (`key`, `auth`, `signature`, `api_key_name`), a long random-looking string.

What uses them:
* refusing secrets before anything is written (`literal_secret`): a config may name a secret
  (`api_key_name: OPENAI_API_KEY`, `HF_TOKEN: host:HF_TOKEN`, the launcher's `api_key: JUDGE_API_KEY`) but
  never hold one;
* reading the environment into a config (`${oc.env:NAME}`, resolved into build/ and Snakemake's records) is
  allowed for the names in `ENV_READABLE` only (`env_read_problem`), whatever the name looks like;
* `redact(obj)` masks secret values in a config before it is printed or logged;
* `scrub_env_values(text)` replaces the value of every secret environment variable pasted into text (an error
  message, a harness log, a copied results file). Secret variables are WANDB_API_KEY and HF_TOKEN, any name a
  config gives in an `api_key_name` key, any set variable whose name looks secret and any whose value has a
  secret's shape (DATABASE_URL=postgres://u:pw@h).
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

SECRET_ENV_VARS: frozenset[str] = frozenset({"WANDB_API_KEY", "HF_TOKEN"})
MASK = "***"
MIN_SCRUB_LEN = 6  # shorter values ("1", "true") would mangle unrelated text

# The environment variables a config may read through ${oc.env:NAME}: who and where (the launcher's Slurm
# config reads ${oc.env:USER}), Slurm's facts about the job it runs in, and the data and cache folders. Facts,
# never credentials, and none of them chosen by someone else: every other variable travels by name
# (env_vars: NAME: host:NAME), so its value reaches the job's environment and no file. A list of names, not
# prefixes: SLURM_ANYTHING could be set by anyone to anything.
ENV_READABLE: frozenset[str] = frozenset({
    "USER", "LOGNAME", "HOME", "PWD", "HOSTNAME", "TMPDIR",
    "SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_JOB_ACCOUNT", "SLURM_JOB_PARTITION", "SLURM_JOB_QOS",
    "SLURM_JOB_NODELIST", "SLURM_JOB_NUM_NODES", "SLURM_NNODES", "SLURM_NTASKS", "SLURM_CPUS_ON_NODE",
    "SLURM_GPUS_ON_NODE", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_SUBMIT_DIR", "SLURM_CLUSTER_NAME",
    "NEMOTRON_DATA_MIRROR", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE",
})  # fmt: skip

# --- names ---------------------------------------------------------------------------------------------------

# Words that make a name secret wherever they stand, also at the end of a run-together word (PGPASSWORD).
# Not `secrets`: Kubernetes' `image_pull_secrets` and the like list the *names* of secret objects.
_STRONG = ("password", "passwords", "passwd", "passphrase", "secret", "token", "apikey", "jwt",
           "credential", "credentials", "authorization", "cookie", "cookies", "bearer", "privatekey")  # fmt: skip
# Words that make a name secret when they end it after another word (db_pass, MYSQL_PWD, GITHUB_PAT, openai_key).
_WEAK = frozenset({"pass", "pwd", "pw", "pat", "auth", "key"})
_NOT_PASS = frozenset({"bypass", "compass", "surpass", "encompass", "overpass", "underpass", "trespass", "multipass"})
# `<word>_key` names data, not a credential, after these words (a lookup key, a column, a metric).
_DATA_KEY_WORDS = frozenset({
    "sort", "metric", "cache", "primary", "foreign", "dict", "hash", "lookup", "group", "partition", "join", "index",
    "answer", "label", "column", "field", "target", "doc", "document", "output", "input", "prompt", "task", "result",
    "score", "unique", "shard", "message", "content", "text", "choice", "choices", "gold", "order", "query",
    "context", "question", "response", "sample", "item", "dataset", "data", "record", "row", "entry", "map", "id",
    "config", "hot", "search", "match", "filter", "split", "feature", "image", "reference", "dedup", "seed",
    "state", "request", "reward", "category", "subject", "fewshot", "template", "tokenizer", "table",
})  # fmt: skip
# A last word that makes the key a *reference* to a secret, not the secret itself.
_REFERENCE_WORDS = frozenset({"name", "names", "env", "var", "file", "path", "dir", "url", "type", "id"})
_REFERENCE_ENV_WORDS = frozenset({"name", "names", "file", "path", "dir", "url", "type", "id", "sock", "socket"})
# Words besides the secret ones that make a key worth a look at its value: a random-looking string under them
# is a secret (`signature`, `session`, and `key` alone or in `api_key_name`).
_SUSPICIOUS = frozenset({"sig", "signature", "salt", "hmac", "session", "cert", "license", "private", "cred", "creds"})


def _words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def _strong(word: str) -> bool:
    return word.endswith(_STRONG)


def _weak_compound(word: str) -> bool:
    """A weak word run together with the word before it: sshpass, dbpass, mysqlpwd (not bypass, oldpwd)."""
    return (word.endswith("pass") and len(word) > 4 and word not in _NOT_PASS) or (
        word.endswith("pwd") and len(word) > 3 and word != "oldpwd"
    )


def looks_secret(key: str) -> bool:
    """True for keys like api_key, apiKey, HF_TOKEN, client_secret, password, db_pass, sshPassphrase, openai-key;
    False for tokenizer, max_tokens, api_key_name, key, sort_key, pwd."""
    words = _words(key)
    if not words or words[-1] in _REFERENCE_WORDS:
        return False
    if any(_strong(w) or _weak_compound(w) for w in words):
        return True
    last = words[-1]
    if len(words) < 2 or last not in _WEAK:
        return False
    return not (last == "key" and words[-2] in _DATA_KEY_WORDS)


def looks_secret_env(name: str) -> bool:
    """True for environment variable names like OPENAI_API_KEY, OPENAI_KEY, HF_TOKEN, DB_PASS, PGPASSWORD, SSHPASS,
    MYSQL_PWD, CI_JOB_JWT, AWS_SECRET_ACCESS_KEY, GITHUB_PAT; False for HOME, USER, PWD, TOKENIZERS_PARALLELISM,
    HF_TOKEN_PATH, SSH_AUTH_SOCK. Stricter than a config key: any weak word counts (AUTH_ANYTHING, KEY_X)."""
    words = _words(name)
    if not words or words[-1] in _REFERENCE_ENV_WORDS or words in (["pwd"], ["oldpwd"]):
        return False
    return looks_secret(name) or any(w in _WEAK or w == "passphrase" for w in words)


def _suspicious(key: str) -> bool:
    """A key whose value deserves a look: any secret or weak word in it (`key`, `api_key_name`, `auth_type`)."""
    return any(w in _WEAK or w in _SUSPICIOUS or _strong(w) or _weak_compound(w) for w in _words(key))


# --- shapes --------------------------------------------------------------------------------------------------

_EDGE = r"(?<![A-Za-z0-9_-])"  # a credential starts a word: no `sk-` inside `task-...`
_PREFIXED = {
    "a Hugging Face token": r"hf_[A-Za-z0-9]{30,}",
    "an OpenAI or Anthropic key": r"sk-(?:proj-|ant-|live-)?(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{20,}",
    "a GitHub token": r"(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})",
    "a GitLab token": r"gl(?:pat|dt|rt|ptt|cbt|oas)-[A-Za-z0-9_-]{20,}",
    "a Slack token": r"(?:xox[abeposr]-[A-Za-z0-9-]{10,}|xapp-[A-Za-z0-9-]{10,})",
    "an AWS access key id": r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])",
    "an NVIDIA API key": r"nvapi-[A-Za-z0-9_-]{30,}",
    "a Google API key": r"AIza[A-Za-z0-9_-]{35}",
    "an npm token": r"npm_[A-Za-z0-9]{36}",
    "a PyPI token": r"pypi-AgE[A-Za-z0-9_-]{30,}",
    "a Stripe key": r"[rs]k_live_[A-Za-z0-9]{20,}",
    "a JSON Web Token": r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
}
_PREFIXED_RE = [(what, re.compile(_EDGE + pattern)) for what, pattern in _PREFIXED.items()]
_PEM_RE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
# scheme://user:password@ (the password non-empty; `${...}` inside counts: it would be resolved into the URL).
_CRED_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:]*:[^\s/?#@]+@")
_BEARER_RE = re.compile(r"(?i:bearer)\s+[A-Za-z0-9._~+/-]{16,}=*")
_BASIC_RE = re.compile(r"(?i:basic)\s+([A-Za-z0-9+/]{8,}={0,2})(?![A-Za-z0-9+/=])")


def _basic_credential(text: str) -> bool:
    for m in _BASIC_RE.finditer(text):
        try:
            if b":" in base64.b64decode(m[1], validate=True):
                return True
        except (binascii.Error, ValueError):
            continue
    return False


def secret_shape(value: Any) -> str | None:
    """What a string looks like when it holds a credential by its shape alone ("a URL with user:password@",
    "a GitHub token", ...), else None. Never the value itself."""
    if not isinstance(value, str) or len(value) < 8:
        return None
    for what, pattern in _PREFIXED_RE:
        if pattern.search(value):
            return what
    if _PEM_RE.search(value):
        return "a private key"
    if _CRED_URL_RE.search(value):
        return "a URL with user:password@"
    if _BEARER_RE.search(value) or _basic_credential(value):
        return "an HTTP authorization credential"
    return None


def looks_like_token(value: Any) -> bool:
    """A string that holds a credential by its shape (`secret_shape`)."""
    return secret_shape(value) is not None


_ENV_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]*")


def random_looking(value: Any) -> bool:
    """A long string without spaces or slashes that mixes letter cases or letters and digits
    with high entropy (a key, a hash, a password from a generator); not a path, a name, an ENV_NAME or a sentence."""
    if not isinstance(value, str) or len(value) < 16 or re.search(r"[\s/]", value) or _ENV_NAME_RE.fullmatch(value):
        return False
    classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]"))
    counts = Counter(value)
    entropy = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
    return classes >= 2 and entropy >= 3.0


# --- configs -------------------------------------------------------------------------------------------------


def _names_a_variable(value: str) -> bool:
    """An `env_vars` value that names a variable instead of holding one (the launcher's host:/runtime: forms)."""
    return value.startswith(("host:", "runtime:"))


def _names_a_secret(value: str) -> bool:
    """A value under a secret's key that names the variable holding it, as the launcher's task parameters do
    (`api_key: JUDGE_API_KEY`): an ENV_NAME that itself looks secret."""
    return _names_a_variable(value) or (_ENV_NAME_RE.fullmatch(value) is not None and looks_secret_env(value))


def in_env_map(key: str) -> bool:
    """Whether a dotted config key is a variable of an `env_vars` mapping (any spelling: envVars, ENV-VARS)."""
    parent = key.rsplit(".", 2)[-2:-1]
    return bool(parent) and _words(parent[0]) == ["env", "vars"]


def _blank(value: Any) -> bool:
    return value is None or isinstance(value, bool) or str(value).strip() in ("", "???")


def literal_secret(obj: Any, path: str = "") -> tuple[str, str] | None:
    """The dotted key of the first secret written as a value in a config and what gave it away (the caller's
    message never repeats the value), or None. A secret is: a value under a secret-looking key (each item of a
    list there too) that does not name a variable; in an `env_vars` mapping, a secret-looking variable given
    other than by name (`HF_TOKEN: lit:...`); a string with a secret's shape anywhere; a random-looking string
    under a key that may name a secret."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            here = f"{path}.{k}" if path else str(k)
            found = _entry_secret(str(k), v, here)
            if found:
                return found
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = literal_secret(v, f"{path}.{i}" if path else str(i))
            if found:
                return found
        return None
    shape = secret_shape(obj)
    return (path, shape) if shape else None


def _entry_secret(key: str, value: Any, here: str) -> tuple[str, str] | None:
    if in_env_map(here) and isinstance(value, str):
        if _names_a_variable(value):
            return None
        if looks_secret_env(key) and value.strip():
            return here, "a secret variable given by value"
    elif looks_secret(key):
        items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
        for i, item in items:
            if isinstance(item, (str, int, float)) and not _blank(item) and not (isinstance(item, str) and _names_a_secret(item)):
                return (here if i is None else f"{here}.{i}"), "a value under a secret's name"
    if _suspicious(key) and random_looking(value):
        return here, "a random-looking string under a key that may name a secret"
    return literal_secret(value, here)


def redact(obj: Any) -> Any:
    """A copy of `obj` (nested dicts/lists) with every non-empty value under a secret-looking key, and every
    string with a secret's shape, replaced by "***"."""
    if isinstance(obj, Mapping):
        return {
            k: MASK if isinstance(k, str) and looks_secret(k) and obj[k] not in (None, "") else redact(obj[k])
            for k in obj
        }
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return MASK if looks_like_token(obj) else obj


def api_key_names(config: Any) -> list[str]:
    """Every string value of an `api_key_name` key anywhere in a config (the env vars holding endpoint keys)."""
    found: list[str] = []
    if isinstance(config, Mapping):
        for k, v in config.items():
            if k == "api_key_name" and isinstance(v, str) and v:
                found.append(v)
            else:
                found.extend(api_key_names(v))
    elif isinstance(config, (list, tuple)):
        for v in config:
            found.extend(api_key_names(v))
    return found


def secret_variables(config: Any) -> list[str]:
    """The secrets a config's jobs read by name from the environment: WANDB_API_KEY and HF_TOKEN, every
    `api_key_name` value, and the variables an `env_vars` mapping names (`host:NAME`, `runtime:NAME`) whose name
    looks secret; each once, in order. (Other variables it names are facts of where the jobs run.)"""
    found: list[str] = [*sorted(SECRET_ENV_VARS), *api_key_names(config)]

    def walk(obj: Any, here: str) -> None:
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                key = f"{here}.{k}" if here else str(k)
                if isinstance(v, str) and in_env_map(key) and _names_a_variable(v):
                    name = v.split(":", 1)[1]
                    if looks_secret_env(name) or looks_secret_env(str(k)):
                        found.append(name)
                else:
                    walk(v, key)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{here}.{i}" if here else str(i))

    walk(config, "")
    return list(dict.fromkeys(n for n in found if n))


# --- the environment -----------------------------------------------------------------------------------------

BY_NAME = (
    "pass secrets by name: set the variable where the jobs run and name it (env_vars: NAME: host:NAME; "
    "an endpoint's key: target.api_endpoint.api_key_name: NAME; W&B: WANDB_API_KEY or `wandb login`)"
)


def env_read_problem(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Why a config may not read `${oc.env:NAME}` into its files (None when it may): the name is not in
    ENV_READABLE, or the value it has here has a secret's shape. The reason never holds the value."""
    env = os.environ if environ is None else environ
    if name not in ENV_READABLE:
        kind = "a secret" if looks_secret_env(name) else "an environment value"
        return (
            f"${{oc.env:{name}}} in the config would copy {kind} into build/ and Snakemake's records; a config reads "
            f"only {', '.join(sorted(ENV_READABLE))} from the environment; pass {name} by name instead "
            f"(env_vars: {name}: host:{name}, or target.api_endpoint.api_key_name={name}); jobs read it from the "
            "environment where they run"
        )
    shape = secret_shape(env.get(name))
    return f"${{oc.env:{name}}}: the value of {name} here looks like {shape} (not repeated here); unset it or fix it" if shape else None


def secret_env_names(extra: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """WANDB_API_KEY, HF_TOKEN, the names in `extra` (api_key_name values), set variables whose name looks secret
    (`looks_secret_env`) and set variables whose value has a secret's shape (`secret_shape`)."""
    env = os.environ if environ is None else environ
    shaped = (n for n, v in env.items() if looks_secret_env(n) or looks_like_token(v))
    return SECRET_ENV_VARS | frozenset(extra) | frozenset(shaped)


def scrub_env_values(text: str, extra: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> str:
    """`text` with the current value of every secret environment variable replaced by "***"."""
    env = os.environ if environ is None else environ
    values = {env[n] for n in secret_env_names(extra, env) if len(env.get(n) or "") >= MIN_SCRUB_LEN}
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text
