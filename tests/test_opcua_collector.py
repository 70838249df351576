"""OPC UA collector against a real OPC UA server (the plant simulator's asyncua server), no mocks."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import datetime

import pytest
from asyncua import ua
from opcua_support import SimProcess, Sink, free_port, running, serving, until

from collectors.base import CollectorContext
from collectors.opcua import Config, build
from collectors.simulator import SimOptions, Simulator
from collectors.simulator.tags import synthetic_tags
from edge.errors import NotConnectedError
from edge.metrics import Metrics
from edge.records import Batch, Flag, Quality, Reading


def collector(endpoint: str, tags, ns: int = 2, metrics: Metrics | None = None, **kw):
    cfg = Config.model_validate({
        "endpoint": endpoint, "publishing_interval_ms": 100, "sampling_interval_ms": 0, "queue_size": 100,
        "connect_timeout_s": 5, "watchdog_interval_s": 0.5, **kw,
        "nodes": kw.get("nodes") or [{"node_id": f"ns={ns};s={t}", "tag": t} for t in tags]})
    return build(cfg, CollectorContext(name="opcua-test", state_dir=None, metrics=metrics or Metrics()))


@pytest.fixture
async def sim():
    """The simulator's OPC UA server with the plant's tags plus synthetic ones: 200 in all."""
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    probe = Simulator(SimOptions(opcua_endpoint=None))
    s = Simulator(SimOptions(opcua_endpoint=endpoint, interval_s=0.1, synthetic_tags=200 - len(probe.tags),
                             synthetic_interval_s=0.1, seed=5))
    await s.start()
    yield s
    await s.stop()


def changes(writes: list[tuple]) -> list[tuple]:
    """What a data-change subscription reports: writes whose value or status differs from the previous one."""
    out: list[tuple] = []
    for w in writes:
        if not out or (w[1], w[2]) != (out[-1][1], out[-1][2]):
            out.append(w)
    return out


def record_writes(sim: Simulator) -> dict[str, list[tuple]]:
    """Every value the server holds or gets written from now on: tag -> [(source time, value, status)]."""
    written: dict[str, list[tuple]] = defaultdict(list)
    # Values already in the server (written by start()) are what a new subscription reports first.
    for t in sim.tags:
        dv = sim.opcua.server.read_attribute_value(sim.opcua._nodes[t.name][0])
        written[t.name].append((dv.SourceTimestamp, dv.Value.Value, dv.StatusCode.value))
    sim.opcua.on_write = lambda tag, value, status, ts: written[tag].append((ts, value, status))
    return written


async def run_plant(sim: Simulator, seconds: float) -> None:
    stop = asyncio.Event()
    runner = asyncio.create_task(sim.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await runner


def assert_every_change_arrived(written: dict[str, list[tuple]], sink: Sink) -> dict[str, list[Reading]]:
    got = sink.by_tag()
    for tag, writes in written.items():
        expected = changes(writes)
        received = [(r.time, r.value, r.status) for r in got[tag]]
        first = [w[0] for w in expected].index(received[0][0])
        assert received == expected[first:], tag
    return got


async def test_200_tags_every_change_arrives_with_quality_and_timestamps(sim):
    assert len(sim.tags) == 200
    written = record_writes(sim)
    sink = Sink()
    col = collector(sim.opcua.endpoint, [t.name for t in sim.tags], ns=sim.opcua.ns)
    async with running(col, sink.emit):
        await until(lambda: len(sink.by_tag()) == 200, what="an initial value of every tag")
        await run_plant(sim, 2.0)
        await until(lambda: all(rs[-1].time == changes(written[tag])[-1][0] for tag, rs in sink.by_tag().items()),
                    what="the last change of every tag")
        got = assert_every_change_arrived(written, sink)
        for r in sink.readings:
            assert r.quality is Quality.GOOD and r.flags == 0 and r.status_name == ""
            assert r.server_time is not None and r.receive_time >= r.time
        synthetic = [t.name for t in sim.tags if t.name.startswith("SYN.")]
        assert min(len(got[t]) for t in synthetic) >= 10  # they changed every 100 ms for 2 s
        status = col.status()
        assert status["connected"] and status["items"] == 200 and status["items_failed"] == 0
        assert status["notifications"] == len(sink.readings) and status["publishes"] == len(sink.batches)
    assert not col.connected


async def test_a_slow_pipeline_loses_nothing_and_keeps_its_subscription(sim):
    """emit() blocks for 3 s (back-pressure): the server queues the changes; no watchdog re-creation."""
    written = record_writes(sim)
    sink = Sink()
    blocked = asyncio.Event()

    async def slow_emit(batch: Batch) -> None:
        if len(sink.batches) == 1 and not blocked.is_set():
            blocked.set()
            await asyncio.sleep(3.0)
        await sink.emit(batch)

    col = collector(sim.opcua.endpoint, [t.name for t in sim.tags], ns=sim.opcua.ns)
    async with running(col, slow_emit):
        await until(lambda: len(sink.by_tag()) == 200, what="initial values")
        subscription = col._client._subscriptions[0]
        first_id = subscription.subscription_id
        await run_plant(sim, 2.0)
        assert blocked.is_set()
        await until(lambda: all(rs[-1].time == changes(written[tag])[-1][0] for tag, rs in sink.by_tag().items()),
                    what="the last change of every tag")
        assert_every_change_arrived(written, sink)
        assert subscription.subscription_id == first_id and col.status()["connects"] == 1


async def test_sensor_failure_arrives_as_bad_quality_with_the_code_name(sim):
    sink = Sink()
    col = collector(sim.opcua.endpoint, ["P-103.vib_de", "P-101.bearing_temp", "K1.NOx"], ns=sim.opcua.ns)
    async with running(col, sink.emit):
        await until(lambda: len(sink.by_tag()) == 3, what="initial values")
        sim.inject("P-103.vib_de:sensor_failure")
        sim.inject("P-101.bearing_temp:uncertain")
        await sim.tick()
        await until(lambda: any(r.quality is Quality.BAD for r in sink.readings), what="a bad reading")
        await until(lambda: any(r.quality is Quality.UNCERTAIN for r in sink.readings), what="an uncertain reading")
        bad = [r for r in sink.readings if r.quality is Quality.BAD]
        assert {r.tag for r in bad} == {"P-103.vib_de"}
        assert bad[0].value is None and bad[0].status == 0x808C0000 and bad[0].status_name == "BadSensorFailure"
        assert bad[0].flags & Flag.SOURCE_STATUS
        unc = next(r for r in sink.readings if r.quality is Quality.UNCERTAIN)
        assert unc.tag == "P-101.bearing_temp" and isinstance(unc.value, float)
        assert unc.status_name == "UncertainSensorNotAccurate" and unc.flags & Flag.SOURCE_STATUS
        assert all(r.quality is Quality.GOOD for r in sink.readings if r.tag == "K1.NOx")
        # The sensor comes back: good again, with a number.
        sim.plant.clear()
        n = len(sink.readings)
        await sim.tick()
        await until(lambda: any(r.tag == "P-103.vib_de" and r.quality is Quality.GOOD for r in sink.readings[n:]),
                    what="recovery")


async def test_server_restart_run_raises_then_a_new_run_resumes():
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    tags = synthetic_tags(20)
    metrics = Metrics()
    col = collector(endpoint, [t.name for t in tags], metrics=metrics)
    sink = Sink()
    async with serving(tags, endpoint) as server:
        task = asyncio.create_task(col.run(sink.emit))
        await until(lambda: len(sink.readings) >= 20, what="initial values")
        assert metrics.connected.labels("opcua-test")._value.get() == 1
        await server.stop()
        with pytest.raises(NotConnectedError, match="connection lost"):
            await asyncio.wait_for(task, 15)  # bounded: the watchdog notices within ~2 x 0.5 s
        assert metrics.connected.labels("opcua-test")._value.get() == 0
        await col.aclose()

    # While the server is away, run() fails fast instead of hanging.
    with pytest.raises(NotConnectedError, match="cannot connect"):
        await asyncio.wait_for(col.run(sink.emit), 15)

    async with serving(tags, endpoint) as server, running(col, sink.emit):
        restarted = datetime.now().astimezone()
        await until(lambda: sum(r.receive_time > restarted for r in sink.readings) >= 20, what="re-subscription")
        now = datetime.now().astimezone()
        await server.write([(t.name, 123.5, 0) for t in tags], now, now)
        await until(lambda: sum(r.value == 123.5 for r in sink.readings) == 20, what="new values after restart")
        assert col.status()["connects"] == 3 and col.status()["connected"]


async def test_a_frozen_server_is_noticed_by_the_watchdog(tmp_path):
    """SIGSTOP: the TCP connection stays open but nothing answers (a hung server, a cut network path)."""
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    sim = SimProcess(endpoint, tmp_path, "--interval", "0.2").start()
    try:
        col = collector(endpoint, ["P-101.vib_de", "K1.NOx"], watchdog_interval_s=0.5, request_timeout_s=2)
        sink = Sink()
        task = asyncio.create_task(col.run(sink.emit))
        await until(lambda: len(sink.readings) >= 4, what="values flowing")
        sim.freeze()
        t0 = time.monotonic()
        with pytest.raises(NotConnectedError, match="connection lost"):
            await asyncio.wait_for(task, 20)
        noticed_s = time.monotonic() - t0
        await asyncio.wait_for(col.aclose(), 10)  # closing a session with a hung server must not hang
        sim.thaw()
        n = len(sink.readings)
        async with running(col, sink.emit):
            await until(lambda: len(sink.readings) > n + 2, what="values after the server thawed")
        print(f"frozen server noticed after {noticed_s:.2f} s")
    finally:
        sim.stop()


async def test_dead_port_and_silent_peer_fail_within_the_timeout():
    col = collector(f"opc.tcp://127.0.0.1:{free_port()}/none", ["a"], connect_timeout_s=2)
    with pytest.raises(NotConnectedError, match="cannot connect"):
        await asyncio.wait_for(col.run(Sink().emit), 10)

    # A peer that accepts TCP but never answers: asyncua's connect() alone would wait for ever.
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(reader, writer):
        accepted.append(writer)

    silent = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    col = collector(f"opc.tcp://127.0.0.1:{port}/silent", ["a"], connect_timeout_s=1)
    t0 = time.monotonic()
    with pytest.raises(NotConnectedError, match="no OPC UA session within 1 s"):
        await asyncio.wait_for(col.run(Sink().emit), 10)
    assert time.monotonic() - t0 < 8  # bounded by connect_timeout_s, not by asyncua
    assert accepted
    await col.aclose()
    for w in accepted:
        w.close()
    silent.close()
    await silent.wait_closed()


async def test_refused_nodes_are_reported_and_the_rest_still_arrive():
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    tags = synthetic_tags(30)
    nodes = [{"node_id": f"ns=2;s={t.name}", "tag": t.name} for t in tags]
    nodes.insert(7, {"node_id": "ns=2;s=NO.SUCH.NODE", "tag": "ghost"})
    nodes.insert(20, {"node_id": "ns=9;i=1", "tag": "ghost2"})
    # Three creation requests of 11 items: refusals in two of them fail nothing else.
    col = collector(endpoint, [], nodes=nodes, items_per_call=11)
    sink = Sink()
    async with serving(tags, endpoint), running(col, sink.emit):
        await until(lambda: len(sink.by_tag()) == 30, what="every good node")
        st = col.status()
        assert (st["items"], st["items_failed"]) == (30, 2)
        assert {(f["tag"], f["status"]) for f in st["failed"]} == {("ghost", "BadNodeIdUnknown"),
                                                                    ("ghost2", "BadNodeIdUnknown")}


async def test_nodes_refused_at_the_connect_are_asked_for_again_and_read_once_the_server_has_them(monkeypatch,
                                                                                                   caplog):
    """A server that restarted often answers before its address space is complete (a PLC's tags loaded after its
    OPC UA stack, nodes added by a program download): the nodes it refused then were never asked for again while
    the connection lasted (weeks, on a good network), so their tags stayed empty. They are now asked for again
    every REFUSED_RETRY_S, subscribed and polled alike, and read once the server has them."""
    import logging

    from opcua_support import plant_server

    from collectors.opcua import collector as opcua_collector

    monkeypatch.setattr(opcua_collector, "REFUSED_RETRY_S", 0.5)
    srv, endpoint, ns, plant = await plant_server("late", flow=1.0)
    col = collector(endpoint, [], nodes=[{"node_id": f"ns={ns};s=flow", "tag": "flow"},
                                         {"node_id": f"ns={ns};s=level", "tag": "level"},
                                         {"node_id": f"ns={ns};s=speed", "tag": "speed", "mode": "poll"}],
                    polling_interval_ms=100)
    sink = Sink()
    async with srv, running(col, sink.emit):
        await until(lambda: col.connected and "flow" in sink.by_tag(), what="the node the server has")
        st = col.status()
        assert (st["items"], st["items_failed"]) == (1, 2)
        assert {f["tag"] for f in st["failed"]} == {"level", "speed"}
        with caplog.at_level(logging.INFO, logger="collectors.opcua.collector"):
            await asyncio.sleep(1.5)  # asked again meanwhile, still refused: not logged again
            assert "now accepts" not in caplog.text and caplog.text.count("refused by the server") == 1
            # The server's address space is completed while the collector stays connected.
            level = await plant["flow"].get_parent()
            level, speed = [await level.add_variable(ua.NodeId(name, ns), name, v)
                            for name, v in (("level", 2.0), ("speed", 3.0))]
            await until(lambda: {t: [r.value for r in rs] for t, rs in sink.by_tag().items()}
                        == {"flow": [1.0], "level": [2.0], "speed": [3.0]}, timeout_s=10, what="the late nodes")
            await level.write_value(4.0)
            await speed.write_value(5.0)
            await until(lambda: [r.value for r in sink.by_tag()["level"]] == [2.0, 4.0]
                        and [r.value for r in sink.by_tag()["speed"]] == [3.0, 5.0], timeout_s=10, what="changes")
        st = col.status()
        assert (st["items"], st["items_failed"], st["failed"]) == (3, 0, [])
        assert "now accepts 2 of the 2 nodes it refused: level, speed" in caplog.text
        assert col.connects == 1  # on the same connection


async def test_username_password_from_a_secret_reference(monkeypatch):
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/sim"
    tags = synthetic_tags(3)
    async with serving(tags, endpoint, users={"gateway": "s3cret"}):
        monkeypatch.setenv("SIM_OPCUA_PW", "wrong")
        col = collector(endpoint, [t.name for t in tags], username="gateway", password="env:SIM_OPCUA_PW")
        with pytest.raises(NotConnectedError, match="cannot connect: Bad"):
            await asyncio.wait_for(col.run(Sink().emit), 10)
        await col.aclose()

        monkeypatch.setenv("SIM_OPCUA_PW", "s3cret")
        col = collector(endpoint, [t.name for t in tags], username="gateway", password="env:SIM_OPCUA_PW")
        sink = Sink()
        async with running(col, sink.emit):
            await until(lambda: len(sink.by_tag()) == 3, what="values with the right password")


async def test_a_notification_is_acknowledged_only_once_the_spool_has_it(sim):
    """asyncua acknowledges a publish response when the collector's callback returns; the callback returns only
    after the batch's ``ack`` (called by the pipeline once the spool holds it), so the server keeps in its
    retransmission queue whatever is not durable yet (DESIGN.md §5)."""
    held: list[Batch] = []

    async def emit(batch: Batch) -> None:  # a spool that has not written anything yet
        held.append(batch)

    col = collector(sim.opcua.endpoint, [t.name for t in sim.tags][:20])
    stop = asyncio.Event()
    plant = asyncio.create_task(sim.run(stop))
    try:
        async with running(col, emit):
            await until(lambda: held, timeout_s=10)
            await asyncio.sleep(1.0)  # ten publishing intervals of changing values
            assert len(held) == 1 and col.publishes == 1  # the first notification is not acknowledged yet
            held[0].ack()
            for k in range(2, 5):  # each acknowledgement lets exactly the next notification come
                await until(lambda k=k: len(held) >= k, timeout_s=5)
                await asyncio.sleep(0.3)
                assert len(held) == k
                held[-1].ack()
    finally:
        stop.set()
        await plant
