"""MQTT collector (paho-mqtt 2.x): ``[[collectors]] kind = "mqtt"``. See README.md and sample.toml."""

from __future__ import annotations

from collectors.base import CollectorContext
from collectors.mqtt.config import Config, JsonMapping, Subscription, Tls
from edge.secrets import resolve_secret

__all__ = ["Config", "JsonMapping", "Subscription", "Tls", "build"]


def build(config: Config, context: CollectorContext):
    """The collector for ``config``; the password reference and TLS files are resolved here, at start-up."""
    from collectors.mqtt.collector import MqttCollector

    password = None
    if config.password is not None:
        password = resolve_secret(config.password, where=f"collectors ({context.name}).password")
    return MqttCollector(config, context, password=password)
