"""An OPC UA server whose variables count, for restart tests: ``python tests/opcua_counter.py ENDPOINT OUT ...``.

The simulator's synthetic variables (``SYN.00001`` ...) all take value k with source time ``origin + k x period``,
for k = start ... start + count - 1, one step every ``period`` of real time. No step is skipped (a late one is
written late, with its own source time), so a test knows every value produced: ``OUT`` holds the last k written.
Then the server keeps serving, idle, until SIGTERM. ``--cert``/``--key``/``--policy`` make it secure, ``--user``
closes it to one user name (password from $COUNTER_PASSWORD), ``--historize`` keeps every value in the server's
history (asyncua's in-memory history: HistoryRead ReadRawModified).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asyncua import ua

from collectors.simulator.opcua_server import SimOpcUaServer
from collectors.simulator.tags import synthetic_tags


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("endpoint")
    p.add_argument("out", type=Path)
    p.add_argument("--tags", type=int, default=3)
    p.add_argument("--period", type=float, default=0.1)
    p.add_argument("--origin", type=datetime.fromisoformat, default=datetime.now(UTC))
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--policy", action="append")
    p.add_argument("--user")
    p.add_argument("--historize", action="store_true", help="keep every value in the server's history (HistoryRead)")
    a = p.parse_args()
    specs = synthetic_tags(a.tags)
    users = {a.user: os.environ["COUNTER_PASSWORD"]} if a.user else None
    server = SimOpcUaServer(specs, a.endpoint, certificate=a.cert, private_key=a.key, policies=a.policy, users=users)
    await server.start()
    history = None
    if a.historize:
        # Every written value into the server's history, as written (asyncua's historize_node_data_change samples
        # through a subscription of queue size 1, which drops values written in a burst: a late counter catching up).
        history = server.server.iserver.history_manager.storage
        nodes = [ua.NodeId.from_string(server.node_id(s.name)) for s in specs]
        for node in nodes:
            await history.new_historized_node(node, None)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(a.count):
        k = a.start + i
        await asyncio.sleep(max(0.0, t0 + i * a.period - loop.time()))
        when = a.origin + timedelta(seconds=k * a.period)
        await server.write([(s.name, float(k), 0) for s in specs], when, datetime.now(UTC))
        if history is not None:
            for node in nodes:
                await history.save_node_value(node, ua.DataValue(ua.Variant(float(k), ua.VariantType.Double),
                                                                 SourceTimestamp=when, ServerTimestamp=when))
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text(f"{k}\n")
        tmp.replace(a.out)
        if stop.is_set():
            break
    await stop.wait()
    await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
