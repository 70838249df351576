"""Secrets by reference: a config value ``env:NAME`` or ``file:/path`` is resolved at start-up.

The site configuration never holds a secret itself (a literal password in a config
file is a configuration error), so config files can be shared and versioned.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field

from edge.errors import ConfigError

PREFIXES = ("env:", "file:")


def is_reference(value: str) -> bool:
    return value.startswith(PREFIXES)


def _check_reference(value: str) -> str:
    if not is_reference(value):
        raise ValueError("must be a reference 'env:NAME' or 'file:/path'; never put a secret in the config file")
    return value


# The one type for every secret field of every config section (database URL, MQTT and OPC UA passwords,
# notification credentials): validated at load, resolved by `resolve_secret` only when it is used.
SecretRef = Annotated[str, AfterValidator(_check_reference),
                      Field(description="env:NAME or file:/path; never the secret itself")]


def resolve_secret(ref: str, *, where: str = "secret") -> str:
    """Resolve ``env:NAME`` or ``file:PATH``; ``where`` names the config key for error messages.

    A file's trailing newline is stripped (secrets written by ``echo`` or container
    secret mounts usually have one).
    """
    if ref.startswith("env:"):
        name = ref[4:]
        if not name:
            raise ConfigError(f"{where}: 'env:' needs a variable name, e.g. env:MQTT_PASSWORD")
        if name not in os.environ:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return os.environ[name]
    if ref.startswith("file:"):
        path = Path(ref[5:])
        try:
            return path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read secret file {path}: {exc.strerror}") from exc
    raise ConfigError(f"{where}: must be a reference 'env:NAME' or 'file:/path', not a literal secret")
