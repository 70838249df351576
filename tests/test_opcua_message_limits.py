"""Messages over the gateway's size limit from an OPC UA server (collectors/opcua/connection.py MAX_MESSAGE_BYTES).

asyncua's client asked for no limit and took the server's Acknowledge as its own (0: none): a 20 MB string value
arrived whole and became a reading (spool, database). Now a message over the limit ends the connection with a
stated, counted reason, nothing of it is stored, and the collector takes values again once the value is small.
"""

from __future__ import annotations

import asyncio

from opcua_support import Sink, plant_server, supervised, until

from collectors.base import CollectorContext
from collectors.opcua import Config, build
from collectors.opcua.connection import MAX_MESSAGE_BYTES
from edge.metrics import Metrics


async def test_a_value_over_the_message_limit_is_a_counted_error_and_the_collector_recovers():
    srv, endpoint, ns, nodes = await plant_server("big", Flow=1.0, Blob="small")
    flow, blob = nodes["Flow"], nodes["Blob"]
    metrics = Metrics()
    cfg = Config.model_validate({
        "endpoint": endpoint, "publishing_interval_ms": 100, "sampling_interval_ms": 0, "queue_size": 100,
        "connect_timeout_s": 5, "watchdog_interval_s": 0.5,
        "nodes": [{"node_id": f"ns={ns};s=Flow", "tag": "flow"}, {"node_id": f"ns={ns};s=Blob", "tag": "blob"}]})
    col = build(cfg, CollectorContext(name="big", state_dir=None, metrics=metrics))
    sink = Sink()

    def too_large_count() -> float:
        return metrics.collector_errors.labels("big", "message_too_large")._value.get()

    async with srv, supervised(col, sink.emit) as errors:
        await until(lambda: {"flow", "blob"} <= set(sink.by_tag()), what="both tags")
        await blob.write_value("x" * (MAX_MESSAGE_BYTES + 1_000_000))  # ~17 MB in one notification
        await until(lambda: too_large_count() >= 2 or any(len(str(r.value)) > 1000 for r in sink.readings),
                    timeout_s=30, what="the refusal, counted (at each attempt)")
        assert not [len(str(r.value)) for r in sink.readings if len(str(r.value)) > 1000], "stored a huge value"
        assert any("BadRequestTooLarge" in e and f"{MAX_MESSAGE_BYTES >> 20} MiB" in e for e in errors), errors
        assert "16 MiB" in (col.status()["last_error"] or ""), col.status()

        await blob.write_value("small again")
        n = len(sink.by_tag()["flow"])
        for i in range(20):
            await flow.write_value(100.0 + i)
            await asyncio.sleep(0.1)
        await until(lambda: 119.0 in {r.value for r in sink.by_tag()["flow"]}, timeout_s=30,
                    what="values again once the big one is gone")
        assert len(sink.by_tag()["flow"]) > n
        assert "small again" in {r.value for r in sink.by_tag()["blob"]}
