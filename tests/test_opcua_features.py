"""OPC UA collector features against real asyncua servers: deadbands at scale, polling, the keep-alive
watchdog, data types and arrays, per-item settings, several independent servers."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from asyncua import ua
from opcua_support import SimProcess, Sink, free_port, running, serving, until

from collectors.base import CollectorContext
from collectors.opcua import Config, build
from collectors.opcua.subscription import item_request
from collectors.simulator.tags import synthetic_tags
from edge.metrics import Metrics
from edge.records import Flag, Quality


def collector(endpoint: str, nodes: list[dict], name: str = "opcua-test", **kw):
    cfg = Config.model_validate({
        "endpoint": endpoint, "publishing_interval_ms": 100, "sampling_interval_ms": 0, "queue_size": 100,
        "connect_timeout_s": 5, "watchdog_interval_s": 0.5, **kw, "nodes": nodes})
    return build(cfg, CollectorContext(name=name, state_dir=None, metrics=Metrics()))


def stamp(offset_s: float = 0.0) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=offset_s)


async def test_2000_tags_with_absolute_and_percent_deadbands(tmp_path):
    """Values inside the deadband are not reported, values outside are (percent: of the EURange)."""
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    tags = synthetic_tags(2000)  # EURange -100 .. 100: 1 % is 2.0
    nodes = [{"node_id": f"ns=2;s={t.name}", "tag": t.name, "deadband": 2.0} for t in tags[:1000]]
    nodes += [{"node_id": f"ns=2;s={t.name}", "tag": t.name, "deadband": 1.0, "deadband_type": "percent"}
              for t in tags[1000:]]
    # A node without an EURange cannot have a percent deadband: reported, the rest unaffected.
    nodes.append({"node_id": "i=2258", "tag": "server.time", "deadband": 5, "deadband_type": "percent"})
    col = collector(endpoint, nodes, items_per_call=500)
    sink = Sink()
    names = [t.name for t in tags]
    async with serving(tags, endpoint) as server, running(col, sink.emit):
        await until(lambda: len(sink.by_tag()) == 2000, timeout_s=60, what="initial values")
        # The first slices' values can arrive before the last slice (the refused item) is created: wait for it.
        await until(lambda: col.connected, timeout_s=30, what="subscription complete")
        st = col.status()
        assert (st["items"], st["items_failed"]) == (2000, 1)
        assert st["failed"][0]["tag"] == "server.time" and "EURange" in st["failed"][0]["status"]
        # 0 (initial) -> 1.0 inside -> 5.0 outside -> 6.5 inside -> -10 outside
        for k, v in enumerate((1.0, 5.0, 6.5, -10.0)):
            await server.write([(n, v, 0) for n in names], stamp(k), stamp(k))
            await asyncio.sleep(0.3)
        await until(lambda: sum(r.value == -10.0 for r in sink.readings) == 2000, timeout_s=30, what="last value")
        await asyncio.sleep(0.5)
    by_tag = sink.by_tag()
    for name in names:
        assert [r.value for r in by_tag[name]] == [0.0, 5.0, -10.0], name


async def test_polling_mode_reads_changes_once_and_reports_unreadable_nodes():
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    tags = synthetic_tags(20)
    nodes = [{"node_id": f"ns=2;s={t.name}", "tag": t.name} for t in tags]
    nodes.append({"node_id": "ns=2;s=NO.SUCH.NODE", "tag": "ghost"})
    col = collector(endpoint, nodes, mode="poll", polling_interval_ms=100)
    sink = Sink()
    async with serving(tags, endpoint) as server, running(col, sink.emit):
        await until(lambda: len(sink.by_tag()) == 20, what="first poll")
        st = col.status()
        assert (st["items"], st["items_failed"]) == (20, 1) and st["failed"][0]["status"] == "BadNodeIdUnknown"
        for k in range(5):
            await server.write([(t.name, float(k + 1), 0) for t in tags], stamp(k), stamp(k))
            await asyncio.sleep(0.35)  # several polls per value: each value must still arrive once
        await until(lambda: sum(r.value == 5.0 for r in sink.readings) == 20, what="last polled value")
        assert col.status()["polls"] >= 10
    for t in tags:
        assert [r.value for r in sink.by_tag()[t.name]] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


async def test_mixed_subscribe_and_poll_nodes_in_one_collector():
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    tags = synthetic_tags(4)
    nodes = [{"node_id": f"ns=2;s={t.name}", "tag": t.name, "mode": "poll" if i % 2 else None}
             for i, t in enumerate(tags)]
    col = collector(endpoint, nodes, polling_interval_ms=100)
    sink = Sink()
    async with serving(tags, endpoint) as server, running(col, sink.emit):
        await until(lambda: len(sink.by_tag()) == 4, what="both kinds")
        await server.write([(t.name, 42.0, 0) for t in tags], stamp(), stamp())
        await until(lambda: sum(r.value == 42.0 for r in sink.readings) == 4, what="new values")
    assert {r.tag for r in sink.readings if r.value == 42.0} == {t.name for t in tags}  # polled and subscribed


async def test_keepalive_watchdog_recreates_a_subscription_the_server_stopped_serving():
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    tags = synthetic_tags(5)
    nodes = [{"node_id": f"ns=2;s={t.name}", "tag": t.name, "deadband": 0.5} for t in tags]
    col = collector(endpoint, nodes, keepalive_count=3)  # stale after max(0.1 s x 3 x 1.5, 1 s)
    sink = Sink()
    async with serving(tags, endpoint) as server, running(col, sink.emit):
        await until(lambda: len(sink.by_tag()) == 5, what="initial values")
        # The session and the TCP link stay up; only the server's publishing for the subscription stops.
        for isub in list(server.server.iserver.subscription_service.subscriptions.values()):
            isub._task.cancel()
        t0 = time.monotonic()
        await until(lambda: col.status()["subscriptions_recreated"] >= 1, timeout_s=15, what="recreate")
        print(f"silent subscription re-created after {time.monotonic() - t0:.2f} s")
        await server.write([(t.name, 50.0, 0) for t in tags], stamp(), stamp())
        await until(lambda: sum(r.value == 50.0 for r in sink.readings) == 5, what="values after recreate")
        await server.write([(t.name, 50.2, 0) for t in tags], stamp(1), stamp(1))  # inside the deadband
        await asyncio.sleep(0.6)
        st = col.status()
        assert st["connects"] == 1 and st["connected"]  # no reconnect was needed
    assert not any(r.value == 50.2 for r in sink.readings)  # the deadband survived the recreate


async def test_a_quiet_subscription_is_judged_by_the_publishing_interval_the_server_granted(caplog):
    """The collector asks for 100 ms x keep-alive count 2; the server revises the interval up to 1 s, so a quiet
    subscription hears a keep-alive only every 2 s. It must not be taken as stale (deleted and re-created) after
    the requested 0.3 s x 1.5, and status reports what the server granted."""
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    tags = synthetic_tags(3)
    col = collector(endpoint, [{"node_id": f"ns=2;s={t.name}", "tag": t.name} for t in tags], keepalive_count=2)
    sink = Sink()
    async with serving(tags, endpoint, min_publishing_interval_ms=1000) as server, running(col, sink.emit):
        await until(lambda: len(sink.by_tag()) == 3, what="initial values")
        granted = col.status()["subscription"]
        assert (granted["publishing_interval_ms"], granted["keepalive_count"], granted["stale_after_s"]) == \
            (1000.0, 2, 3.0)
        await asyncio.sleep(3 * 2.0 + 0.5)  # three keep-alive periods without a data change
        assert col.status()["subscriptions_recreated"] == 0
        assert not [r for r in caplog.records if "is stale" in r.getMessage()]
        await server.write([(t.name, 7.0, 0) for t in tags], stamp(), stamp())
        await until(lambda: sum(r.value == 7.0 for r in sink.readings) == 3, what="a change after the quiet time")
    assert all(len(rs) == 2 for rs in sink.by_tag().values())  # no duplicate first values from re-creations


async def test_items_refused_when_a_subscription_is_recreated_are_counted_and_named(caplog):
    """A node removed from the server while the collector runs: when the silent subscription is re-created, the
    server refuses that item; it is counted (status, metric), named in status and the log, and the others
    still deliver."""
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    tags = synthetic_tags(5)
    nodes = [{"node_id": f"ns=2;s={t.name}", "tag": t.name} for t in tags]
    nodes.append({"node_id": "ns=2;s=NO.SUCH.NODE", "tag": "ghost"})  # refused from the start
    col = collector(endpoint, nodes, keepalive_count=3)
    gone, kept = tags[2].name, [t.name for t in tags if t.name != tags[2].name]
    sink = Sink()
    refused = col.ctx.metrics.collector_errors.labels(col.name, "monitored_item")
    async with serving(tags, endpoint) as server, running(col, sink.emit):
        await until(lambda: len(sink.by_tag()) == 5, what="initial values")
        assert (col.status()["items"], col.status()["items_failed"], refused._value.get()) == (5, 1, 1)
        for isub in list(server.server.iserver.subscription_service.subscriptions.values()):
            await isub.stop()  # the server stops serving the subscription; the session stays up
        await server.server.delete_nodes([server.server.get_node(server.node_id(gone))])
        await until(lambda: col.status()["subscriptions_recreated"] >= 1, timeout_s=15, what="recreate")
        await until(lambda: col.status()["items_failed"] == 2, what="the refused item counted")
        st = col.status()
        assert st["items"] == 4 and refused._value.get() == 2
        assert {(f["tag"], f["status"]) for f in st["failed"]} == {("ghost", "BadNodeIdUnknown"),
                                                                    (gone, "BadNodeIdUnknown")}
        warned = [r.getMessage() for r in caplog.records if "re-created" in r.getMessage()]
        assert len(warned) == 1 and gone in warned[0] and "BadNodeIdUnknown" in warned[0], warned
        await server.write([(t, 9.0, 0) for t in kept], stamp(), stamp())
        await until(lambda: sum(r.value == 9.0 for r in sink.readings) == 4, what="values after recreate")


async def test_data_types_and_arrays_rejected_or_flattened():
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    t0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    values = {
        "Double": (2.5, ua.VariantType.Double), "Float": (1.5, ua.VariantType.Float),
        "Int16": (-12, ua.VariantType.Int16), "Int32": (-70000, ua.VariantType.Int32),
        "Int64": (2**40, ua.VariantType.Int64), "UInt16": (65000, ua.VariantType.UInt16),
        "UInt32": (4_000_000_000, ua.VariantType.UInt32), "UInt64": (2**63 + 5, ua.VariantType.UInt64),
        "Byte": (200, ua.VariantType.Byte), "Boolean": (True, ua.VariantType.Boolean),
        "String": ("running", ua.VariantType.String), "DateTime": (t0, ua.VariantType.DateTime),
        "ArrReject": ([1.0, 2.0], ua.VariantType.Double), "ArrFlat": ([3.0, 4.0, 5.0], ua.VariantType.Double),
    }
    async with serving(synthetic_tags(1), endpoint) as sim:
        objects = sim.server.nodes.objects
        for name, (value, vtype) in values.items():
            await objects.add_variable(ua.NodeId(f"T.{name}", sim.ns), name, ua.Variant(value, vtype))
        nodes = [{"node_id": f"ns={sim.ns};s=T.{n}", "tag": n} for n in values if n != "ArrFlat"]
        nodes.append({"node_id": f"ns={sim.ns};s=T.ArrFlat", "tag": "ArrFlat", "arrays": "flatten"})
        col = collector(endpoint, nodes)
        sink = Sink()
        async with running(col, sink.emit):
            await until(lambda: len(sink.by_tag()) == len(values) + 2, what="every type")
    got = {tag: rs[0] for tag, rs in sink.by_tag().items()}
    for name, (value, _) in values.items():
        if name.startswith("Arr"):
            continue
        want = value.isoformat() if isinstance(value, datetime) else value
        assert got[name].value == want and got[name].quality is Quality.GOOD, name
    assert got["Float"].value == 1.5 and isinstance(got["Boolean"].value, bool)
    rej = got["ArrReject"]
    assert rej.value is None and rej.quality is Quality.BAD and rej.flags & Flag.TYPE_MISMATCH
    assert rej.status_name == "UnsupportedArray"
    assert [got[f"ArrFlat[{i}]"].value for i in range(3)] == [3.0, 4.0, 5.0]
    assert "ArrFlat" not in got


def test_per_node_settings_reach_the_monitored_item_request():
    cfg = Config.model_validate({
        "endpoint": "opc.tcp://h:1", "sampling_interval_ms": 250, "queue_size": 10,
        "nodes": [{"node_id": "ns=2;i=1", "tag": "a"},
                  {"node_id": "ns=2;i=2", "tag": "b", "sampling_interval_ms": 50, "queue_size": 1,
                   "discard_oldest": False, "deadband": 5, "deadband_type": "percent"}]})
    a = item_request(cfg.nodes[0], cfg, 1).RequestedParameters
    assert (a.SamplingInterval, a.QueueSize, a.DiscardOldest) == (250, 10, True)
    assert not isinstance(a.Filter, ua.DataChangeFilter)
    b = item_request(cfg.nodes[1], cfg, 2, (0.0, 400.0)).RequestedParameters
    assert (b.SamplingInterval, b.QueueSize, b.DiscardOldest, b.ClientHandle) == (50, 1, False, 2)
    assert (b.Filter.DeadbandType, b.Filter.DeadbandValue) == (ua.DeadbandType.Absolute, 20.0)


async def test_one_hung_server_never_stalls_another(tmp_path):
    """Server A freezes (SIGSTOP: connection open, nothing answers); B's values keep flowing meanwhile."""
    ep_a = f"opc.tcp://127.0.0.1:{free_port()}/a"
    ep_b = f"opc.tcp://127.0.0.1:{free_port()}/b"
    sim_a = SimProcess(ep_a, tmp_path, "--interval", "0.2").start()
    tags = synthetic_tags(3)
    col_a = collector(ep_a, [{"node_id": "ns=2;s=P-101.vib_de", "tag": "A"}], name="a", request_timeout_s=2)
    col_b = collector(ep_b, [{"node_id": f"ns=2;s={t.name}", "tag": t.name} for t in tags], name="b")
    sink_a, sink_b = Sink(), Sink()
    try:
        async with serving(tags, ep_b) as server_b, running(col_b, sink_b.emit):
            task_a = asyncio.create_task(col_a.run(sink_a.emit))
            await until(lambda: len(sink_a.readings) >= 3 and len(sink_b.readings) >= 3, what="both flowing")
            sim_a.freeze()
            n = len(sink_b.readings)
            for k in range(10):  # B: a new value every 0.3 s while A hangs
                await server_b.write([(t.name, 100.0 + k, 0) for t in tags], stamp(k), stamp(k))
                await asyncio.sleep(0.3)
            assert len(sink_b.readings) - n >= 27  # all (or nearly all) of B's 30 changes
            await asyncio.wait_for(asyncio.gather(task_a, return_exceptions=True), 15)
            assert not col_a.status()["connected"] and col_b.status()["connected"]
            await col_a.aclose()
    finally:
        sim_a.stop()


async def test_values_the_server_discarded_from_a_full_queue_are_counted_and_logged(caplog):
    """OPC UA Part 4 §5.12.1.5: when an item's queue overflows the server discards values and sets the Overflow
    info bit (InfoType DataValue, 0x0480) on the value next to the gap. With discard_oldest no sequence-number gap
    shows the loss: the bit is the only trace, so it must be counted, logged and not lost in the reading."""
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    tags = synthetic_tags(4)
    col = collector(endpoint, [{"node_id": f"ns=2;s={t.name}", "tag": t.name} for t in tags])
    overflowed = col.ctx.metrics.collector_errors.labels(col.name, "queue_overflow")
    sink = Sink()
    names = [t.name for t in tags]
    async with serving(tags, endpoint) as server, running(col, sink.emit):
        await until(lambda: len(sink.by_tag()) == 4, what="initial values")
        assert col.status()["queue_overflows"] == 0
        # What a server sends for two items whose queues overflowed: a Good value with the overflow bit.
        await server.write([(n, 1.0, 0x0480 if n in names[:2] else 0) for n in names], stamp(), stamp())
        await until(lambda: sum(r.value == 1.0 for r in sink.readings) == 4, what="the values")
        await server.write([(n, 2.0, 0) for n in names], stamp(1), stamp(1))
        await until(lambda: sum(r.value == 2.0 for r in sink.readings) == 4, what="the next values")
        st = col.status()
        assert st["queue_overflows"] == 2 and overflowed._value.get() == 2
    flagged = [r for r in sink.readings if r.value == 1.0 and r.tag in names[:2]]
    assert all(r.quality is Quality.GOOD and r.status == 0x0480 for r in flagged)  # the value itself is good
    warned = [r.getMessage() for r in caplog.records if "Overflow" in r.getMessage()]
    text = " ".join(warned)  # one warning (two if the server split the write over two publish responses)
    assert 1 <= len(warned) <= 2 and all(n in text for n in names[:2]) and "queue_size" in text, warned
    assert not any(n in text for n in names[2:])


async def test_queue_sizes_and_sampling_intervals_the_server_revised_are_reported(caplog):
    """A server grants at most what it can (Part 4 §5.12.1.4-5): a queue of 5 where 100 were asked holds 5
    changes per item while the gateway is away, not the 100 queue_size was sized for. The revision is logged
    (queue: a warning naming the tags) and shown in status; an item that got what it asked for is not listed."""
    import logging

    caplog.set_level(logging.INFO, logger="collectors.opcua")
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    tags = synthetic_tags(4)
    nodes = [{"node_id": f"ns=2;s={t.name}", "tag": t.name} for t in tags]
    nodes[1]["queue_size"] = 3  # within the server's limit: granted as asked
    nodes[2]["sampling_interval_ms"] = 50  # asyncua samples at the publishing interval (100 ms): slower
    col = collector(endpoint, nodes)  # queue_size 100, sampling 0 (fastest: whatever the server can)
    sink = Sink()
    async with serving(tags, endpoint) as server:
        server.server.iserver.max_monitored_item_queue_size = 5
        async with running(col, sink.emit):
            await until(lambda: col.connected, what="subscribed")
            st = col.status()
    names = [t.name for t in tags]
    revised = {r["tag"]: (r["sampling_interval_ms"], r["queue_size"]) for r in st["revised"]}
    assert st["items_revised"] == 3 and revised == {names[0]: (100.0, 5), names[2]: (100.0, 5), names[3]: (100.0, 5)}
    queue = [r for r in caplog.records if "queue" in r.getMessage() and r.levelname == "WARNING"]
    text = queue[0].getMessage() if len(queue) == 1 else queue
    assert "5 instead of 100" in text and all(n in text for n in (names[0], names[2], names[3])), text
    assert names[1] not in text
    sampling = [r.getMessage() for r in caplog.records if "sampl" in r.getMessage() and "instead of" in r.getMessage()]
    assert len(sampling) == 1 and names[2] in sampling[0] and "100 ms instead of 50 ms" in sampling[0], sampling


async def test_a_change_with_the_previous_values_source_time_is_counted_and_logged(caplog):
    """A server whose source timestamps are coarser than its changes (a PLC clock in whole seconds, a gateway
    that stamps a block read once) sends different values of a tag with the same source time. The database keeps
    one reading per (tag, time), the first: the others are dropped there without a trace. The collector counts
    and names them; a value merely sent again (same time, same value: a re-subscription) is not counted."""
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    tags = synthetic_tags(3)
    names = [t.name for t in tags]
    col = collector(endpoint, [{"node_id": f"ns=2;s={n}", "tag": n} for n in names])
    sink = Sink()
    async with serving(tags, endpoint) as server, running(col, sink.emit):
        await until(lambda: len(sink.by_tag()) == 3, what="initial values")
        t = stamp()
        await server.write([(n, 1.0, 0) for n in names], t, t)
        await until(lambda: sum(r.value == 1.0 for r in sink.readings) == 3, what="the first values")
        await server.write([(names[0], 2.0, 0)], t, stamp())  # a new value, the same source time
        await server.write([(names[1], 1.0, 0x40000000)], t, stamp())  # a new status, the same source time
        await until(lambda: len(sink.readings) == 8, what="the second values")
        st = col.status()
    assert st["same_source_time"] == 2
    assert col.ctx.metrics.collector_errors.labels(col.name, "same_source_time")._value.get() == 2
    warned = " ".join(r.getMessage() for r in caplog.records if "same source time" in r.getMessage())
    assert names[0] in warned and names[1] in warned and names[2] not in warned, warned


async def _renumbered_server(endpoint: str, plant_first: bool, flow: float):
    """An asyncua server at ``endpoint`` with two namespaces, each holding numeric nodes i=1001 to i=1003: the
    plant's ("urn:valvoja:test:plant", value ``flow``) and another's (value -999); ``plant_first`` decides which one
    gets index 2 and which 3, as a server that registers its namespaces in another order after a restart does."""
    from asyncua import Server

    srv = Server()
    await srv.init()
    srv.set_endpoint(endpoint)
    order = ["urn:valvoja:test:plant", "urn:valvoja:test:other"]
    for uri in order if plant_first else order[::-1]:
        ns = await srv.register_namespace(uri)
        for i in (1001, 1002, 1003):
            value = flow if uri.endswith("plant") else -999.0
            await srv.nodes.objects.add_variable(ua.NodeId(i, ns), f"{ns}:V{i}", value)
    return srv


async def test_nodes_given_by_namespace_uri_follow_a_server_restart_that_renumbers_its_namespaces(caplog):
    """nsu= node ids were accepted by the configuration and then sent as they were: every one BadNodeIdUnknown
    (asyncua encodes the URI even in a NodeId field, which no server resolves). Now they are resolved with the
    server's NamespaceArray at every session: after a restart that gives the plant's namespace another index, the
    collector reads the plant's node, never the node that now has the old index. An ns= id named that other node
    after the restart (its -999 stored under the plant's tag); it now follows the namespace it named at the first
    session, and the renumbering is logged."""
    from opcua_support import supervised

    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/renumbered"
    plant = "nsu=urn:valvoja:test:plant;i=1001"
    col = collector(endpoint, [{"node_id": plant, "tag": "flow"},
                               {"node_id": plant.replace("1001", "1002"), "tag": "flow.polled", "mode": "poll"},
                               {"node_id": "nsu=urn:valvoja:test:gone;i=1001", "tag": "gone"},
                               {"node_id": "ns=2;i=1003", "tag": "flow.by_index"}],
                    polling_interval_ms=100)
    sink = Sink()
    async with supervised(col, sink.emit):
        async with await _renumbered_server(endpoint, plant_first=True, flow=1.0):
            await until(lambda: {t: [r.value for r in rs] for t, rs in sink.by_tag().items()}
                        == {"flow": [1.0], "flow.polled": [1.0], "flow.by_index": [1.0]},
                        what="the plant's flow, subscribed and polled")
            st = col.status()
            assert (st["items"], st["items_failed"]) == (3, 1)
            assert st["failed"][0]["tag"] == "gone" and "urn:valvoja:test:gone" in st["failed"][0]["status"]
        # Restarted: the other namespace now has index 2, the plant's 3.
        async with await _renumbered_server(endpoint, plant_first=False, flow=2.0):
            await until(lambda: all(2.0 in [r.value for r in sink.by_tag()[t]]
                                    for t in ("flow", "flow.polled", "flow.by_index")),
                        timeout_s=30, what="the plant's flow after the restart")
            await asyncio.sleep(0.5)
    by_tag = sink.by_tag()
    for tag in ("flow", "flow.polled", "flow.by_index"):
        assert [r.value for r in by_tag[tag]] == [1.0, 2.0], tag
    assert "gone" not in by_tag
    moved = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "opcua_namespaces_moved"]
    assert len(moved) == 1 and "ns=2 was urn:valvoja:test:plant, now ns=3" in moved[0], moved


async def test_a_session_resumed_from_the_state_folder_keeps_nodes_given_by_namespace_uri(tmp_path):
    """A restarted gateway resumes the saved session and learns the NamespaceArray anew: when the subscription is
    re-created later (the server stopped serving it), its nsu= items are sent with the server's index, not
    refused."""
    srv = await _renumbered_server(endpoint := f"opc.tcp://127.0.0.1:{free_port()}/resumed", plant_first=False,
                                   flow=1.0)
    nodes = [{"node_id": "nsu=urn:valvoja:test:plant;i=1001", "tag": "flow"}]

    def made():
        cfg = Config.model_validate({"endpoint": endpoint, "publishing_interval_ms": 100, "sampling_interval_ms": 0,
                                     "connect_timeout_s": 5, "watchdog_interval_s": 0.5, "nodes": nodes})
        return build(cfg, CollectorContext(name="gw", state_dir=tmp_path / "gw", metrics=Metrics()))

    first, second = Sink(), Sink()
    async with srv:
        async with running(made(), first.emit):
            await until(lambda: [r.value for r in first.readings] == [1.0], what="first value")
        col = made()
        async with running(col, second.emit):
            await until(lambda: col.connected, what="resumed")
            assert col.status()["session"] == "resumed"
            await col._sub.recreate()  # what asyncua's stale-subscription watchdog calls
            await until(lambda: [r.value for r in second.readings] == [1.0], what="the re-created item's value")
            assert col.status()["items_failed"] == 0
