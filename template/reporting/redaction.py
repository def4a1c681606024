"""Secrets never leave the machine: what the saved and logged config, and the command line W&B records,
show instead of them.

A key that names a secret (token, password, api key, ...) has its value replaced by `<redacted>`, and so
has any value of a secret-named environment variable, wherever it appears (a config string, an argument).
Redaction is by name and by value because a secret can reach the config either way: `hf_token=...` on the
command line, or `${oc.env:HF_TOKEN}` interpolated into an innocently named key.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from omegaconf import OmegaConf

from template.config import Config, to_dict

REDACTED = "<redacted>"
MIN_SECRET_LEN = 8  # shorter environment values ("1", "true") are not treated as secrets
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
SECRET_WORDS = frozenset({"token", "secret", "secrets", "password", "passwd", "passphrase",
                          "credential", "credentials", "apikey", "auth", "cookie", "pat"})
SECRET_PAIRS = frozenset({"apikey", "privatekey", "accesskey", "secretkey", "signingkey", "sessionkey"})


def is_secret_name(name: str) -> bool:
    """`HF_TOKEN`, `wandb_api_key`, `apiKey`, `db_password` yes; `tokenizer`, `max_tokens` no."""
    words = [w.lower() for w in _WORDS.findall(str(name))]
    return any(w in SECRET_WORDS for w in words) or any(a + b in SECRET_PAIRS for a, b in itertools.pairwise(words))


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-named environment variables, longest first (so replacement is greedy)."""
    env = os.environ if environ is None else environ
    found = {v for k, v in env.items() if is_secret_name(k) and len(v) >= MIN_SECRET_LEN}
    return sorted(found, key=len, reverse=True)


def _scrub(text: str, values: Sequence[str]) -> str:
    for value in values:
        text = text.replace(value, REDACTED)
    return text


def redact(value: Any, values: Sequence[str] | None = None) -> Any:
    """A copy of a config tree without secrets: secret-named keys and secret values replaced."""
    values = secret_values() if values is None else values
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_name(k) else redact(v, values)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, values) for v in value]
    if isinstance(value, str):
        return _scrub(value, values)
    return value


def redact_argv(argv: Sequence[str], values: Sequence[str] | None = None) -> list[str]:
    """The command line with secrets replaced: `key=v` / `--key=v` / `--key v` with a secret-named
    key, and any secret environment value wherever it appears."""
    values = secret_values() if values is None else values
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        key, eq, _ = arg.partition("=")
        name = key.lstrip("-").rsplit(".", 1)[-1]
        if eq and is_secret_name(name):
            out.append(f"{key}={REDACTED}")
        elif arg.startswith("--") and not eq and is_secret_name(name):
            out.append(arg)
            hide_next = True
        else:
            out.append(_scrub(arg, values))
    return out


def safe_config(cfg: Config) -> dict[str, Any]:
    """The resolved config as logged to W&B and saved to config.yaml: secrets redacted."""
    return redact(to_dict(cfg))


def config_yaml(cfg: Config) -> str:
    """config.yaml's text: the resolved config, secrets redacted."""
    return OmegaConf.to_yaml(OmegaConf.create(safe_config(cfg)))


@contextlib.contextmanager
def redacted_sys_argv() -> Iterator[None]:
    """wandb reads `sys.argv` into the run's metadata when the run starts: show it a redacted copy."""
    saved = sys.argv
    sys.argv = [saved[0], *redact_argv(saved[1:])] if saved else saved
    try:
        yield
    finally:
        sys.argv = saved
