"""Secrets by reference: a config value ``env:NAME`` or ``file:/path`` is resolved at start-up.

The site configuration never holds a secret itself (a literal password in a config
file is a configuration error), so config files can be shared and versioned.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field

from edge.errors import ConfigError
from edge.paths import REF

PREFIXES = ("env:", "file:")


def is_reference(value: str) -> bool:
    return value.startswith(PREFIXES)


def _check_reference(value: str) -> str:
    if not is_reference(value):
        raise ValueError("must be a reference 'env:NAME' or 'file:/path'; never put a secret in the config file")
    return value


# The one type for every secret field of every config section (database URL, MQTT and OPC UA passwords,
# notification credentials): validated at load, resolved by `resolve_secret` only when it is used.
# A relative file: path is taken from the configuration file's folder (edge.paths, REF).
SecretRef = Annotated[str, AfterValidator(_check_reference), REF,
                      Field(description="env:NAME or file:/path; never the secret itself")]


def resolve_secret(ref: str, *, where: str = "secret") -> str:
    """Resolve ``env:NAME`` or ``file:PATH``; ``where`` names the config key for error messages.

    A trailing line end is stripped, of a file's and a variable's value (secrets written by ``echo``, container
    secret mounts and variables filled from them usually have one). An empty secret is an error: no site means an empty
    password, and using one fails the log-in later, far from the cause (a secret file
    written on a full disk, an unset-but-exported variable). A file other users can read or change is refused
    (`read_secret_file`). Every problem is a
    `ConfigError` naming ``where``, never another exception: a SIGHUP reload rejects
    only ConfigError and must never end the running gateway.
    """
    if ref.startswith("env:"):
        name = ref[4:]
        if not name:
            raise ConfigError(f"{where}: 'env:' needs a variable name, e.g. env:MQTT_PASSWORD")
        if name not in os.environ:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        # Its line end goes as a file's does: a variable filled from a file written by `echo` (Kubernetes'
        # secretKeyRef of a secret made --from-file) carried it into the password, and the log-in failed with a
        # secret that looked right.
        value = os.environ[name].rstrip("\r\n")
        if not value:
            raise ConfigError(f"{where}: environment variable {name} is empty")
        return value
    if ref.startswith("file:"):
        if not ref[5:]:
            raise ConfigError(f"{where}: 'file:' needs a path, e.g. file:/run/secrets/db_password")
        return read_secret_file(Path(ref[5:]), where=where)
    raise ConfigError(f"{where}: must be a reference 'env:NAME' or 'file:/path', not a literal secret")


def read_secret_file(path: Path, *, where: str) -> str:
    """The secret in the file at ``path``, without its trailing newline, for every secret the project reads from a
    file (``file:`` references, ``valvoja console user add --password-file``); ``where`` names the key or option.

    A file other users can read or change is refused (`_check_mode`), as is an empty one or one that is not UTF-8;
    every problem is a one-line `ConfigError` naming ``where`` and the file.
    """
    try:
        with open(path, "rb") as f:
            _check_mode(os.fstat(f.fileno()), path, where)  # of the file read, not of one put there later
            # UTF-8 whatever the locale (systemd and containers often run with none).
            value = f.read().decode("utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read secret file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:  # e.g. saved as Latin-1; the message must not show the bytes
        raise ConfigError(f"{where}: secret file {path} is not UTF-8 text (byte {exc.start}); save it as "
                          "UTF-8") from None
    if not value:
        raise ConfigError(f"{where}: secret file {path} is empty")
    return value


def _check_mode(st: os.stat_result, path: Path, where: str) -> None:
    """Refuse a secret file that others can read or change, as libpq and ssh do with theirs.

    The rule is libpq's for private keys, widened for containers: a file of the process's own user must have no
    group or other access (``chmod 600``), since only that user needs it; a file of another user (root, or the host
    account whose file a container's bind mount shows: compose secrets, Docker and Kubernetes secret mounts are 0444
    or 0644) may be readable by group and others, which is how this process reads it at all, but not writable by
    them, who could replace the secret. A refusal is a `ConfigError`, so the gateway does not start, check-config
    and a SIGHUP reload name it, and the message says how to fix it.
    """
    if os.name != "posix":
        return
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == os.geteuid() and mode & 0o077:
        raise ConfigError(f"{where}: secret file {path} can be read by other users (mode {mode:04o}, owned by this "
                          f"process's user): run chmod 600 {path}")
    if mode & 0o022:
        raise ConfigError(f"{where}: secret file {path} can be changed by other users (mode {mode:04o}, owned by uid "
                          f"{st.st_uid}): run chmod go-w {path}")
