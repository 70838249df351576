"""OPC UA collector (asyncua): ``[[collectors]] kind = "opcua"``. See README.md and sample.toml."""

from __future__ import annotations

from collectors.base import CollectorContext
from collectors.opcua.config import Config, NodeConfig

__all__ = ["Config", "NodeConfig", "build"]


def build(config: Config, context: CollectorContext):
    """The collector for ``config``; the secret references are resolved and the keys checked here, at start-up."""
    from collectors.opcua.collector import OpcUaCollector
    from collectors.opcua.connection import resolve_secrets

    secrets = resolve_secrets(config, lambda key: f"collectors ({context.name}).{key}")
    return OpcUaCollector(config, context, secrets=secrets)
