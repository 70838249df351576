"""OPC UA collector (asyncua): ``[[collectors]] kind = "opcua"``. See README.md and sample.toml."""

from __future__ import annotations

from collectors.base import CollectorContext
from collectors.opcua.config import Config, NodeConfig
from edge.secrets import resolve_secret

__all__ = ["Config", "NodeConfig", "build"]


def build(config: Config, context: CollectorContext):
    """The collector for ``config``; the password references are resolved here, at start-up."""
    from pathlib import Path

    from collectors.opcua.collector import OpcUaCollector
    from collectors.opcua.security import SecurityError, check_private_key
    from edge.errors import ConfigError

    def secret(key: str) -> str | None:
        ref = getattr(config, key)
        return None if ref is None else resolve_secret(ref, where=f"collectors ({context.name}).{key}")

    password, key_password, user_key_password = (secret("password"), secret("private_key_password"),
                                                 secret("user_private_key_password"))
    # A key that cannot be read is a start-up error, not a reconnect loop.
    for key, pw in (("private_key", key_password), ("user_private_key", user_key_password)):
        if getattr(config, key) is not None:
            try:
                check_private_key(Path(getattr(config, key)), pw, setting=f"{key}_password")
            except SecurityError as exc:
                raise ConfigError(f"collectors ({context.name}).{key}: {exc}") from None
    return OpcUaCollector(config, context, password=password, key_password=key_password,
                          user_key_password=user_key_password)
