"""OPC UA collector (asyncua): ``[[collectors]] kind = "opcua"``. See README.md and sample.toml."""

from __future__ import annotations

from collectors.base import CollectorContext
from collectors.opcua.config import Config, NodeConfig
from edge.secrets import resolve_secret

__all__ = ["Config", "NodeConfig", "build"]


def build(config: Config, context: CollectorContext):
    """The collector for ``config``; the password reference is resolved here, at start-up."""
    from collectors.opcua.collector import OpcUaCollector

    password = None
    if config.password is not None:
        password = resolve_secret(config.password, where=f"collectors ({context.name}).password")
    return OpcUaCollector(config, context, password=password)
