"""The simulator's OPC UA address space as a client reads it: EngineeringUnits that do not mislead a client."""

from __future__ import annotations

from asyncua import Client, ua

from collectors.simulator.tags import catalogue
from edge.embedded import free_port
from tests.opcua_support import serving


async def test_engineering_units_say_no_code_rather_than_a_wrong_one():
    """K1.fuel is in kNm3/h, for which UNECE Rec 20 has no code; its UnitId said MQH (cubic metre per hour), a factor
    of 1,000 off for a client (an HMI, a historian) that goes by UnitId. It is now -1, "not available"."""
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/valvoja/sim"
    async with serving(catalogue(["P-101"], "K1"), endpoint) as server:
        async with Client(endpoint, timeout=10) as client:
            def eu(tag: str):
                return client.get_node(ua.NodeId(f"{tag}.EngineeringUnits", server.ns)).read_value()

            fuel, vib = await eu("K1.fuel"), await eu("P-101.vib_de")
    assert (fuel.UnitId, fuel.DisplayName.Text) == (-1, "kNm3/h")
    assert (vib.UnitId, vib.DisplayName.Text) == (int.from_bytes(b"C16", "big"), "mm/s")  # millimetre per second
