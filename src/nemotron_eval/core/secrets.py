"""Keeping secrets out of what we print and write.

Two ways a secret can leak, two helpers:

* a config value under a key that names a secret (`api_key: abc...`, `hf_token: ...`): `redact(obj)`
  replaces it with "***" before a config is printed or logged;
* the value of a secret environment variable pasted into text (an error message, a harness log, a
  copied results file): `scrub_env_values(text)` replaces every current value of those variables.

Refusing secrets before anything is written (`looks_secret_env`, `literal_secret`): a config may name a secret
(`api_key_name: OPENAI_API_KEY`, `HF_TOKEN: host:HF_TOKEN`) but never hold one, nor read one through
`${oc.env:...}` (the value would be copied into build/ and Snakemake's records).

Secret variables are WANDB_API_KEY and HF_TOKEN, any name a config gives in an `api_key_name` key
(NeMo Evaluator's `target.api_endpoint.api_key_name`), and any set variable whose name looks secret
(NGC_API_KEY, GITHUB_TOKEN, ...). A key *naming* a secret (`api_key_name`, `token_file`) is not one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

SECRET_ENV_VARS: frozenset[str] = frozenset({"WANDB_API_KEY", "HF_TOKEN"})
MASK = "***"
MIN_SCRUB_LEN = 6  # shorter values ("1", "true") would mangle unrelated text

_SECRET_WORDS = frozenset(
    {"password", "passwd", "secret", "token", "apikey", "credential", "credentials", "authorization", "cookie"}
)
_SECRET_PAIRS = frozenset({("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key")})
# A last word that makes the key a *reference* to a secret, not the secret itself.
_REFERENCE_WORDS = frozenset({"name", "names", "env", "var", "file", "path", "dir", "url", "type", "id"})


def _words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def looks_secret(key: str) -> bool:
    """True for keys like api_key, apiKey, HF_TOKEN, client_secret, password; False for tokenizer, max_tokens, api_key_name."""
    words = _words(key)
    if not words or words[-1] in _REFERENCE_WORDS:
        return False
    return any(w in _SECRET_WORDS for w in words) or any(p in _SECRET_PAIRS for p in zip(words, words[1:]))


# An environment variable's name is read more strictly than a config key: OPENAI_KEY, DB_PASS, GITHUB_PAT are
# secrets; a config key `key` or `sort_key` is not.
_SECRET_ENV_WORDS = _SECRET_WORDS | {"key", "pass", "pat", "auth", "passphrase"}
_REFERENCE_ENV_WORDS = frozenset({"name", "names", "file", "path", "dir", "url", "type", "id", "sock", "socket"})
# Prefixes of well-known credentials (Hugging Face, OpenAI, GitHub, NVIDIA NGC, Slack, AWS access key ids).
_TOKEN_RE = re.compile(
    r"(?:hf_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
    r"|nvapi-[A-Za-z0-9_-]{30,}|xox[abpr]-[A-Za-z0-9-]{20,}|AKIA[A-Z0-9]{16})"
)
BY_NAME = (
    "pass secrets by name: set the variable where the jobs run and name it (env_vars: NAME: host:NAME; "
    "an endpoint's key: target.api_endpoint.api_key_name: NAME; W&B: WANDB_API_KEY or `wandb login`)"
)


def looks_secret_env(name: str) -> bool:
    """True for environment variable names like OPENAI_API_KEY, OPENAI_KEY, HF_TOKEN, DB_PASS, DB_PASSWORD,
    AWS_SECRET_ACCESS_KEY, GITHUB_PAT; False for HOME, USER, TOKENIZERS_PARALLELISM, HF_TOKEN_PATH, SSH_AUTH_SOCK."""
    words = _words(name)
    if not words or words[-1] in _REFERENCE_ENV_WORDS:
        return False
    return looks_secret(name) or any(w in _SECRET_ENV_WORDS for w in words)


def looks_like_token(value: Any) -> bool:
    """A string that holds a well-known credential (hf_..., sk-..., ghp_..., nvapi-..., AKIA...)."""
    return isinstance(value, str) and _TOKEN_RE.search(value) is not None


def _is_reference(value: str) -> bool:
    """An env_vars value that names a variable instead of holding one (the launcher's host:/runtime: forms)."""
    return value.startswith(("host:", "runtime:"))


def literal_secret(obj: Any, path: str = "") -> str | None:
    """The dotted key of the first secret written as a value in a config (None when there is none):
    a non-empty value under a secret-looking key (api_key, password, ...); in an `env_vars` mapping, a
    secret-looking variable given other than by name (`HF_TOKEN: lit:...`); any string holding a well-known
    credential. The caller's message never repeats the value."""
    if isinstance(obj, Mapping):
        env_map = path.rsplit(".", 1)[-1] == "env_vars" or path == "env_vars"
        for k, v in obj.items():
            here = f"{path}.{k}" if path else str(k)
            if env_map and isinstance(k, str) and isinstance(v, str):
                if (looks_secret_env(k) or looks_like_token(v)) and not _is_reference(v) and v.strip():
                    return here
                continue
            if isinstance(k, str) and looks_secret(k) and isinstance(v, (str, int, float)) and not isinstance(v, bool):
                if str(v).strip() and str(v) != "???":
                    return here
            found = literal_secret(v, here)
            if found:
                return found
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = literal_secret(v, f"{path}.{i}" if path else str(i))
            if found:
                return found
        return None
    return path if looks_like_token(obj) else None


def redact(obj: Any) -> Any:
    """A copy of `obj` (nested dicts/lists) with every non-empty value under a secret-looking key replaced by "***"."""
    if isinstance(obj, Mapping):
        return {
            k: MASK if isinstance(k, str) and looks_secret(k) and obj[k] not in (None, "") else redact(obj[k])
            for k in obj
        }
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj


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


def secret_env_names(extra: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """WANDB_API_KEY, HF_TOKEN, the names in `extra` (api_key_name values) and set variables whose name looks secret
    (the same rule that refuses reading them in a config: `looks_secret_env`)."""
    env = os.environ if environ is None else environ
    return SECRET_ENV_VARS | frozenset(extra) | frozenset(n for n in env if looks_secret_env(n))


def scrub_env_values(text: str, extra: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> str:
    """`text` with the current value of every secret environment variable replaced by "***"."""
    env = os.environ if environ is None else environ
    values = {env[n] for n in secret_env_names(extra, env) if len(env.get(n) or "") >= MIN_SCRUB_LEN}
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text
