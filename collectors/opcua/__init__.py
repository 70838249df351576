"""OPC UA collector (asyncua): ``[[collectors]] kind = "opcua"``. See README.md and sample.toml."""

from __future__ import annotations

from collectors.base import CollectorContext
from collectors.opcua.config import Config, NodeConfig
from edge.secrets import resolve_secret

__all__ = ["Config", "NodeConfig", "build"]


def build(config: Config, context: CollectorContext):
    """The collector for ``config``; the password references are resolved here, at start-up."""
    from collectors.opcua.collector import OpcUaCollector

    password = key_password = None
    if config.password is not None:
        password = resolve_secret(config.password, where=f"collectors ({context.name}).password")
    if config.private_key_password is not None:
        key_password = resolve_secret(config.private_key_password,
                                      where=f"collectors ({context.name}).private_key_password")
    if config.private_key is not None:  # a key that cannot be read is a start-up error, not a retry loop
        from pathlib import Path

        from collectors.opcua.security import SecurityError, check_private_key
        from edge.errors import ConfigError

        try:
            check_private_key(Path(config.private_key), key_password)
        except SecurityError as exc:
            raise ConfigError(f"collectors ({context.name}).private_key: {exc}") from None
    return OpcUaCollector(config, context, password=password, key_password=key_password)
