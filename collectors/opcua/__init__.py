"""OPC UA collector (asyncua): ``[[collectors]] kind = "opcua"``. See README.md and sample.toml."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collectors.base import CollectorContext
    from collectors.opcua.config import Config, NodeConfig

__all__ = ["Config", "NodeConfig", "build"]


def __getattr__(name: str):
    # The configuration models import asyncua (about a second): not for every `valvoja` command, which all build
    # the `opcua browse` parser, only where an OPC UA configuration is read.
    if name in ("Config", "NodeConfig"):
        from collectors.opcua import config

        return getattr(config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build(config: Config, context: CollectorContext):
    """The collector for ``config``; the secret references are resolved and the keys checked here, at start-up."""
    from collectors.opcua.collector import OpcUaCollector
    from collectors.opcua.connection import resolve_secrets

    secrets = resolve_secrets(config, lambda key: f"collectors ({context.name}).{key}")
    return OpcUaCollector(config, context, secrets=secrets)
