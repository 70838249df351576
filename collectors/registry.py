"""Collectors register by kind: ``[[collectors]] kind = "mqtt"`` in the site TOML.

Each collector package exposes ``Config`` (a frozen pydantic model with
``extra="forbid"``, whose defaults are the only defaults) and
``build(config, context) -> Collector``. Imports are lazy so a gateway that uses
only MQTT does not import asyncua.
"""

from __future__ import annotations

import importlib
from types import ModuleType

KINDS: dict[str, str] = {
    "mqtt": "collectors.mqtt",
    "opcua": "collectors.opcua",
}


def module_for(kind: str) -> ModuleType:
    """The collector package for ``kind``; KeyError if unknown."""
    return importlib.import_module(KINDS[kind])
