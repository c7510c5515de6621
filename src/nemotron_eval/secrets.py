"""Keeping secrets out of what we print and write.

Two ways a secret can leak, two helpers:

* a config value under a key that names a secret (`api_key: abc...`, `hf_token: ...`): `redact(obj)`
  replaces it with "***" before a config is printed or logged;
* the value of a secret environment variable pasted into text (an error message, a harness log, a
  copied results file): `scrub_env_values(text)` replaces every current value of those variables.

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
    """WANDB_API_KEY, HF_TOKEN, the names in `extra` (api_key_name values) and set variables whose name looks secret."""
    env = os.environ if environ is None else environ
    return SECRET_ENV_VARS | frozenset(extra) | frozenset(n for n in env if looks_secret(n))


def scrub_env_values(text: str, extra: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> str:
    """`text` with the current value of every secret environment variable replaced by "***"."""
    env = os.environ if environ is None else environ
    values = {env[n] for n in secret_env_names(extra, env) if len(env.get(n) or "") >= MIN_SCRUB_LEN}
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text
