"""The plant simulator: a KIP-style plant served over OPC UA and published over MQTT (see README.md).

Programmatic use (tests, the demo)::

    from collectors.simulator import SimOptions, Simulator
    sim = Simulator(SimOptions(opcua_endpoint="opc.tcp://127.0.0.1:4841/sim"))
    await sim.start(); sim.inject("P-101:bearing"); await sim.run(stop_event); await sim.stop()
"""

from collectors.simulator.faults import Fault
from collectors.simulator.plant import Plant, PlantConfig, Sample
from collectors.simulator.runner import SimOptions, Simulator

__all__ = ["Fault", "Plant", "PlantConfig", "Sample", "SimOptions", "Simulator"]
