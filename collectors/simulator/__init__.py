"""The plant simulator: a KIP-style plant served over OPC UA and published over MQTT (see README.md).

Programmatic use (tests, the demo)::

    from collectors.simulator import SimOptions, Simulator
    sim = Simulator(SimOptions(opcua_endpoint="opc.tcp://127.0.0.1:4841/sim"))
    await sim.start(); sim.inject("P-101:bearing"); await sim.run(stop_event); await sim.stop()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Where the simulator serves OPC UA unless told otherwise; here, not in opcua_server, so that the command line
# names it without importing asyncua.
DEFAULT_ENDPOINT = "opc.tcp://127.0.0.1:4840/valvoja/sim"

# Imported when first used: every `valvoja` command builds the simulator's parser, and the runner brings asyncua
# (about a second of start-up for commands that never simulate).
_LAZY = {"Fault": "collectors.simulator.faults", "Plant": "collectors.simulator.plant",
         "PlantConfig": "collectors.simulator.plant", "Sample": "collectors.simulator.plant",
         "SimOptions": "collectors.simulator.runner", "Simulator": "collectors.simulator.runner"}

if TYPE_CHECKING:
    from collectors.simulator.faults import Fault
    from collectors.simulator.plant import Plant, PlantConfig, Sample
    from collectors.simulator.runner import SimOptions, Simulator

__all__ = ["DEFAULT_ENDPOINT", "Fault", "Plant", "PlantConfig", "Sample", "SimOptions", "Simulator"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
