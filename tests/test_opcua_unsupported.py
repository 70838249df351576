"""OPC UA values no reading can hold (an array without ``arrays = "flatten"``, a ByteString) against a real asyncua
server: stored as Bad readings without a value, flagged type_mismatch (collectors/opcua/README.md), they had no
counter and no log line, and the status name that says why (`UnsupportedArray`) is not stored, so the plant saw
Bad readings of a healthy node with nothing to say what to change."""

from __future__ import annotations

import logging

from opcua_support import Sink, plant_server, running, until
from test_opcua_collector import collector

from edge.metrics import Metrics
from edge.records import Flag, Quality


async def test_values_no_reading_can_hold_are_counted_and_each_tag_logged_once(caplog):
    caplog.set_level(logging.WARNING, logger="collectors.opcua.collector")
    srv, endpoint, ns, plant = await plant_server("unsupported", wave=[1.0, 2.0, 3.0], blob=b"\x01\x02", flow=1.5)
    metrics = Metrics()
    async with srv:
        sink = Sink()
        col = collector(endpoint, ["wave", "blob", "flow"], ns=ns, metrics=metrics)
        async with running(col, sink.emit):
            await until(lambda: len(sink.readings) >= 3, what="the first values")
            await plant["wave"].write_value([4.0, 5.0, 6.0])
            await until(lambda: len(sink.by_tag()["wave"]) == 2, what="the second array")
            status = col.status()
    by_tag = sink.by_tag()
    assert all(r.value is None and r.quality == Quality.BAD and r.flags & Flag.TYPE_MISMATCH
               for t in ("wave", "blob") for r in by_tag[t])
    assert [r.value for r in by_tag["flow"]] == [1.5]
    assert status["unsupported_values"] == 3
    assert metrics.collector_errors.labels("opcua-test", "unsupported_value")._value.get() == 3
    [line] = [r for r in caplog.records if getattr(r, "event", None) == "opcua_value_unsupported"]
    assert "2 tags" in line.getMessage() and "blob (Unsupportedbytes), wave (UnsupportedArray)" in line.getMessage()
    assert 'arrays = "flatten"' in line.getMessage()
