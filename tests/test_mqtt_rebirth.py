"""Sparkplug B rebirth requests against a real mosquitto (tests/servers.py).

A simulated edge node (its own paho connection) publishes births and alias-only data and answers a rebirth
request (an NCMD with "Node Control/Rebirth" = true) with NBIRTH and DBIRTH, as the specification asks of an edge
node. The gateway's collector must ask when it cannot place the node's data (no birth seen, a sequence gap), at most
once per node per interval, and not at all with ``request_rebirth = false``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from opcua_support import CutProxy
from paho.mqtt.enums import CallbackAPIVersion
from test_mqtt_collector import Sink, apublish, config, running, spooling, until

from collectors.base import CollectorContext
from collectors.mqtt import build
from collectors.mqtt.rebirth import REBIRTH_METRIC, RebirthRequests
from collectors.mqtt.sparkplug_b_pb2 import DataType, Payload
from collectors.mqtt.sparkplug_encode import EdgeNode, now_ms
from edge.errors import NotConnectedError
from edge.metrics import Metrics
from edge.records import Flag, Quality

_ids = itertools.count()


@dataclass
class Command:
    """An NCMD as the edge node received it."""

    topic: str
    qos: int
    retain: bool
    payload: Payload
    received_ms: int
    received_mono: float  # time.monotonic() on arrival


class SimulatedNode:
    """A Sparkplug edge node with one device, on a connection of its own.

    ``births()`` publishes NBIRTH + DBIRTH; ``send(...)`` publishes alias-only NDATA/DDATA. Every NCMD to the node is
    recorded in ``commands``; a rebirth request is answered with the births (unless ``answers`` is false). Publishes
    use QoS 0, as the specification has edge nodes do; a lock keeps sequence numbers in publishing order.
    """

    def __init__(self, port: int, *, answers: bool = True, group: str = "KIP") -> None:
        self.name = f"edge{next(_ids)}"
        self.edge = EdgeNode(group, self.name)
        self.values = {"flow": 1.0, "running": True}
        self.device, self.device_values = "pump1", {"speed": 1480}
        self.answers = answers
        self.commands: list[Command] = []
        self.births_sent = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{self.name}")
        self.client.will_set(*self.edge.death(), qos=1)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"spBv1.0/{group}/NCMD/{self.name}", qos=0)
        assert subscribed.wait(5), "the simulated edge node got no SUBACK"

    def _on_message(self, client, userdata, msg) -> None:
        payload = Payload.FromString(msg.payload)
        self.commands.append(Command(msg.topic, msg.qos, msg.retain, payload, now_ms(), time.monotonic()))
        if self.answers and any(m.name == REBIRTH_METRIC and m.boolean_value for m in payload.metrics):
            self.births()  # stop DATA, publish the whole birth sequence (the lock holds DATA back meanwhile)

    def births(self) -> None:
        with self._lock:
            self.client.publish(*self.edge.birth(self.values), qos=0)
            self.client.publish(*self.edge.device_birth(self.device, self.device_values), qos=0)
            self.births_sent += 1

    def born_unseen(self) -> None:
        """Births published before the gateway listens: a QoS 1 round trip after them proves the broker has handled
        them (it handles a connection's packets in order), so none can reach a gateway that subscribes next."""
        self.births()
        info = self.client.publish(f"sim/{self.name}/flushed", b"", qos=1)
        info.wait_for_publish(5)
        assert info.is_published()

    def send(self, *samples: tuple[str, object]) -> None:
        """Alias-only data, one message per (metric, value); device metrics go out as DDATA."""
        with self._lock:
            for name, value in samples:
                device = self.device if name in self.device_values else None
                self.client.publish(*self.edge.data({name: value}, device=device), qos=0)

    def skip(self) -> None:
        """A message lost on the way: its sequence number is used, nothing arrives."""
        with self._lock:
            self.edge.data({"flow": 0.0})

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def tag(self, name: str) -> str:
        device = f"{self.device}." if name in self.device_values else ""
        return f"KIP.{self.name}.{device}{name}"


async def test_data_of_a_node_born_before_the_gateway_started_gets_a_rebirth_request_then_is_stored(
        mosquitto, tmp_path):
    node = SimulatedNode(mosquitto.port)
    try:
        node.born_unseen()  # the gateway is not listening yet
        built: list = []
        async with spooling(config(mosquitto.port), tmp_path, built) as (ingest, _, worker, metrics):
            sent_ms = now_ms()
            node.send(("flow", 2.0), ("speed", 1490))  # aliases only: the gateway cannot place them
            await until(lambda: node.births_sent == 2)  # the node answered the request
            node.send(("flow", 3.0), ("speed", 1500), ("running", False))
            await until(lambda: ingest.accepted >= 6 and metrics.dead_letters.labels("mq")._value.get() == 2)
            status = built[0].status()["sparkplug"]
        stored = await worker.call(worker.spool.peek, 1000)
        await worker.call(worker.spool.close)
        worker.shutdown()
    finally:
        node.close()
    rows = [(c.tags[c.tag_idx[i]], c.value_at(i)) for c in [b.columns for b in stored] for i in range(len(c))]
    # The births the request brought, then the data after them, under the node's and the device's tag names.
    assert rows == [(node.tag("flow"), 1.0), (node.tag("running"), True), (node.tag("speed"), 1480),
                    (node.tag("flow"), 3.0), (node.tag("speed"), 1500), (node.tag("running"), False)]
    # What came before the birth stays a dead letter, as before.
    dead = [d for b in stored for d in b.dead_letters]
    assert [d[1] for d in dead] == [f"spBv1.0/KIP/NDATA/{node.name}", f"spBv1.0/KIP/DDATA/{node.name}/pump1"]
    # One request for both messages, shaped as the specification says (Sparkplug 3.0, Commands; NCMD).
    [cmd] = node.commands
    assert (cmd.topic, cmd.qos, cmd.retain) == (f"spBv1.0/KIP/NCMD/{node.name}", 0, False)
    [metric] = cmd.payload.metrics
    assert (metric.name, metric.datatype, metric.WhichOneof("value"), metric.boolean_value) == \
        (REBIRTH_METRIC, DataType.Boolean, "boolean_value", True)
    assert not metric.HasField("alias")
    assert sent_ms - 1000 <= cmd.payload.timestamp <= cmd.received_ms + 1000
    assert not cmd.payload.HasField("seq")  # an NCMD carries no sequence number
    assert status["rebirths_requested"] == 1 and status["rebirth_requests_rate_limited"] == 1
    assert status["rebirth_requests_refused"] == 0


async def test_a_node_that_does_not_answer_is_asked_once_per_interval(mosquitto, tmp_path):
    node = SimulatedNode(mosquitto.port, answers=False)
    node.born_unseen()
    sink = Sink()
    try:
        async with running(config(mosquitto.port, rebirth_interval_s=2.0), sink, tmp_path) as collector:
            started = time.monotonic()
            node.send(*[("flow", float(i)) for i in range(30)])
            await sink.wait(lambda s: sum(len(b.dead_letters) for b in s.batches) == 30)
            assert time.monotonic() - started < 1.5, "too slow a machine for this interval"
            await asyncio.sleep(0.3)
            assert len(node.commands) == 1
            assert collector.status()["sparkplug"]["rebirth_requests_rate_limited"] == 29
            # The interval since the request (sent before the node got it) has passed: the next message asks again.
            await asyncio.sleep(2.1 - (time.monotonic() - node.commands[0].received_mono))
            node.send(("flow", 99.0))
            await until(lambda: len(node.commands) == 2)
            await asyncio.sleep(0.3)
            status = collector.status()["sparkplug"]
    finally:
        node.close()
    assert len(node.commands) == 2
    assert status["rebirths_requested"] == 2 and status["rebirth_requests_rate_limited"] == 29
    assert sink.readings == []  # nothing was guessed


async def test_a_sequence_gap_asks_for_a_rebirth(mosquitto, tmp_path):
    node = SimulatedNode(mosquitto.port)
    sink = Sink()
    try:
        async with running(config(mosquitto.port), sink, tmp_path) as collector:
            node.births()  # seen by the gateway this time
            node.send(("flow", 2.0))
            await sink.wait(lambda s: len(s.readings) == 4)
            assert node.commands == []  # births and data in order: nothing to ask
            node.skip()
            node.send(("flow", 4.0))  # after a gap: decoded as before, and the node is asked to rebirth
            await until(lambda: node.births_sent == 2)
            node.send(("speed", 1600))
            await sink.wait(lambda s: len(s.readings) == 4 + 1 + 3 + 1)
            status = collector.status()["sparkplug"]
    finally:
        node.close()
    assert [(r.tag, r.value) for r in sink.readings[-5:]] == [
        (node.tag("flow"), 4.0), (node.tag("flow"), 1.0), (node.tag("running"), True), (node.tag("speed"), 1480),
        (node.tag("speed"), 1600)]
    assert len(node.commands) == 1 and node.commands[0].payload.metrics[0].name == REBIRTH_METRIC
    assert status["seq_gaps"] == 1 and status["rebirths_requested"] == 1
    assert not any(b.dead_letters for b in sink.batches)


async def test_request_rebirth_false_publishes_nothing(mosquitto, tmp_path):
    node = SimulatedNode(mosquitto.port)
    node.born_unseen()
    sink = Sink()
    try:
        async with running(config(mosquitto.port, request_rebirth=False), sink, tmp_path) as collector:
            node.send(("flow", 2.0), ("speed", 1490))
            node.skip()
            node.send(("flow", 3.0))
            await sink.wait(lambda s: sum(len(b.dead_letters) for b in s.batches) == 3)
            await asyncio.sleep(0.5)
            status = collector.status()
    finally:
        node.close()
    assert node.commands == [] and node.births_sent == 1
    assert status["messages"] == 3  # and nothing of the gateway's own came back on spBv1.0/KIP/#
    assert status["sparkplug"]["rebirths_requested"] == 0 and status["sparkplug"]["rebirth_requests_refused"] == 0


def test_a_refused_rebirth_request_is_counted_and_logged_once_never_raised(caplog):
    """paho refuses to publish while not connected (and after the connection is gone): the message handling goes
    on, the refusal is counted, and the log says it once, with the topic, the reason and what to do."""
    caplog.set_level(logging.DEBUG, logger="collectors.mqtt")
    clock = [0.0]
    requests = RebirthRequests("mq", enabled=True, interval_s=30.0, clock=lambda: clock[0])
    requests.request("KIP", "n1", "NDATA from an edge node whose NBIRTH was not seen")  # no client at all yet
    requests.client = mqtt.Client(CallbackAPIVersion.VERSION2)  # never connected
    requests.request("KIP", "n2", "sequence gap: 9 after 7")
    requests.request("KIP", "n2", "sequence gap: 12 after 10")  # within the interval: held back, not refused
    clock[0] = 31.0
    requests.request("KIP", "n2", "sequence gap: 14 after 12")
    assert requests.stats() == {"rebirths_requested": 0, "rebirth_requests_rate_limited": 1,
                                "rebirth_requests_refused": 3}
    assert requests.last_refusal == "spBv1.0/KIP/NCMD/n2: The client is not currently connected."
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == ["mq: could not publish a Sparkplug rebirth request on spBv1.0/KIP/NCMD/n1 (wanted because: "
                      "NDATA from an edge node whose NBIRTH was not seen): The client is not currently connected.; "
                      "further refusals are only counted (status: sparkplug.rebirth_requests_refused). If the broker "
                      "does not allow this client to publish NCMD, set request_rebirth = false"]


async def test_data_the_broker_sends_again_is_not_a_sequence_gap(mosquitto, tmp_path):
    """Found by tests/test_gateway_chaos.py ("asked ... to rebirth (sequence gap: 92 after 92)"): after a lost
    connection the broker sends the messages it has no PUBACK for again (DUP), whose sequence numbers the decoder has
    seen already. Each such copy was counted as a gap and asked the edge node to rebirth, though nothing was missed,
    and moved the number the next message was checked against back."""
    proxy = await CutProxy(mosquitto.port).start()
    edge = EdgeNode("KIP", f"dup{next(_ids)}")
    collector = build(config(proxy.port), CollectorContext(name="mq", state_dir=tmp_path, metrics=Metrics()))
    sink, again = Sink(), Sink()
    try:
        async with contextlib.AsyncExitStack() as stack:
            task = asyncio.create_task(collector.run(sink))
            stack.push_async_callback(collector.aclose)
            await until(lambda: collector.connected)
            await apublish(mosquitto.port, [edge.birth({"flow": 1.0})])
            await sink.wait(lambda s: len(s.batches) == 1)  # stored and acknowledged
            sink.auto_ack = False
            await apublish(mosquitto.port, [edge.data({"flow": float(v)}) for v in (2, 3, 4)])
            await sink.wait(lambda s: len(s.batches) == 4)  # decoded, not acknowledged: the broker sends them again
            await proxy.cut(0)
            with contextlib.suppress(NotConnectedError):
                await task
            task = asyncio.create_task(collector.run(again))  # what the gateway's supervisor does
            await again.wait(lambda s: len(s.readings) == 3)
            await apublish(mosquitto.port, [edge.data({"flow": 5.0})])  # and the stream goes on
            await again.wait(lambda s: len(s.readings) == 4)
            status = collector.status()["sparkplug"]
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await proxy.stop()
    assert [r.value for r in again.readings] == [2.0, 3.0, 4.0, 5.0]
    assert (status["seq_gaps"], status["rebirths_requested"]) == (0, 0), status


async def test_data_of_a_new_session_are_not_named_by_the_aliases_of_the_dead_one(mosquitto, tmp_path):
    """The gateway stores a node's NDEATH and is restarted (an upgrade). Meanwhile the node starts a new session with
    one more metric: its birth, QoS 0 as the specification has it, is not kept by mosquitto for a client that is away.
    Measured before: after the restart the dead session's birth state was restored as live, so the node's alias-only
    NDATA (alias 1: "temp" now, "flow" before) was stored as flow = 95.0, and nobody asked the node to rebirth."""
    node = SimulatedNode(mosquitto.port)
    cfg = config(mosquitto.port)
    first, second = Sink(), Sink()
    try:
        async with running(cfg, first, tmp_path):
            node.births()
            await first.wait(lambda s: len(s.readings) == 3)
            node.client.publish(*node.edge.death(), qos=1)  # an orderly shutdown publishes its NDEATH
            await first.wait(lambda s: len(s.readings) == 6)
        assert [(r.tag, r.value, r.quality) for r in first.readings[3:]] == [
            (node.tag(name), None, Quality.BAD) for name in ("flow", "running", "speed")]
        node.edge.rebirth_after_reconnect()
        node.values = {"temp": 20.0, "flow": 1.0, "running": True}
        node.born_unseen()  # while the gateway is away
        async with running(cfg, second, tmp_path):
            node.send(("temp", 95.0))
            await second.wait(lambda s: len(s.batches) >= 1)
            await until(lambda: node.births_sent == 3)  # asked, and answered
            node.send(("temp", 96.0), ("flow", 2.0))
            await second.wait(lambda s: len(s.readings) == 4 + 2)
    finally:
        node.close()
    assert [(r.tag, r.value) for r in second.readings] == [
        (node.tag("temp"), 20.0), (node.tag("flow"), 1.0), (node.tag("running"), True), (node.tag("speed"), 1480),
        (node.tag("temp"), 96.0), (node.tag("flow"), 2.0)]
    [dead] = [d for b in second.batches for d in b.dead_letters]
    assert "alias 1 of edge node KIP/" in dead.error and "'flow' then" in dead.error
    assert len(node.commands) == 1 and node.commands[0].payload.metrics[0].name == REBIRTH_METRIC


@pytest.fixture
def product_broker():
    """mosquitto with the queueing settings of the broker the product ships (docker/mosquitto/mosquitto.conf)."""
    from servers import MosquittoServer, mosquitto_bin

    if mosquitto_bin() is None:
        pytest.skip("mosquitto not installed (scripts/setup.sh installs it)")
    shipped = (Path(__file__).parent.parent / "docker" / "mosquitto" / "mosquitto.conf").read_text().splitlines()
    queueing = [line for line in shipped if line.startswith(("queue_qos0_messages", "max_queued"))]
    broker = MosquittoServer(tls=False, password=False, extra_config="\n".join(queueing))
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


async def test_qos0_sparkplug_data_published_while_the_gateway_is_away_are_kept_by_the_shipped_broker(
        product_broker, tmp_path):
    """The specification has edge nodes publish NBIRTH, NDATA, DBIRTH, DDATA and DDEATH with QoS 0, and mosquitto
    keeps QoS 0 messages for a persistent session that is away only with ``queue_qos0_messages true``. Measured
    with the broker configuration shipped before: of the 4 values a node published during a gateway restart and a
    broker restart none arrived (the next message was a sequence gap, and the values were lost for good)."""
    broker = product_broker
    node = SimulatedNode(broker.port)
    cfg = config(broker.port)
    first, second = Sink(), Sink()
    try:
        async with running(cfg, first, tmp_path):
            node.births()
            await first.wait(lambda s: len(s.readings) == 3)
        node.send(("flow", 2.0), ("speed", 1490), ("running", False), ("flow", 3.0))  # the gateway is away
        info = node.client.publish(f"sim/{node.name}/flushed", b"", qos=1)
        info.wait_for_publish(5)
    finally:
        node.close()
    broker.wait_persisted()
    broker.stop()
    broker.start()
    async with running(cfg, second, tmp_path) as collector:
        with contextlib.suppress(TimeoutError):
            await second.wait(lambda s: len(s.readings) >= 4, within_s=10)
        await asyncio.sleep(0.3)
        status = collector.status()["sparkplug"]
    assert [(r.tag, r.value) for r in second.readings] == [
        (node.tag("flow"), 2.0), (node.tag("speed"), 1490), (node.tag("running"), False), (node.tag("flow"), 3.0)]
    assert status["seq_gaps"] == 0 and status["rebirths_requested"] == 0


def _named(seq: int, values: dict[str, tuple[int, object]], *, birth: bool = False) -> bytes:
    """A payload of named metrics without aliases: {name: (datatype, raw field value)}; the datatype only in a birth
    (the specification: DATA should not carry it)."""
    p = Payload(seq=seq, timestamp=now_ms())
    if birth:
        p.metrics.add(name="bdSeq", datatype=DataType.Int64, long_value=0)
    for name, (datatype, raw) in values.items():
        m = p.metrics.add(name=name)
        if birth:
            m.datatype = datatype
        field = {DataType.Int32: "int_value", DataType.UInt32: "int_value", DataType.Int64: "long_value",
                 DataType.Double: "double_value"}[datatype]
        setattr(m, field, raw)
    return p.SerializeToString()


async def test_an_integer_without_a_datatype_is_not_guessed_before_the_birth(mosquitto, tmp_path):
    """A node that names its metrics (no aliases) and, as the specification has it, sends no datatype in NDATA: the
    birth gives it. Measured before, with the NBIRTH published before the gateway started: Int32 -5 (0xFFFFFFFB in
    the protobuf's uint32 field) was stored as 4294967291 and Int64 -9 as 18446744073709551607, good quality. Now such
    a value is left out and named in a dead letter (the others are stored) until the birth the gateway asks for."""
    node = f"named{next(_ids)}"
    types = {"offset": DataType.Int32, "count": DataType.UInt32, "total": DataType.Int64, "flow": DataType.Double}

    def values(offset: int, total: int, count: int = 7, flow: float = 1.5) -> dict:
        return {"offset": (types["offset"], offset & 0xFFFFFFFF), "count": (types["count"], count),
                "total": (types["total"], total & (2**64 - 1)), "flow": (types["flow"], flow)}

    await apublish(mosquitto.port, [(f"spBv1.0/KIP/NBIRTH/{node}", _named(0, values(-1, -1), birth=True))])
    sink = Sink()
    async with running(config(mosquitto.port), sink, tmp_path) as collector:
        await apublish(mosquitto.port, [(f"spBv1.0/KIP/NDATA/{node}", _named(1, values(-5, -9)))])
        await sink.wait(lambda s: len(s.readings) >= 2)
        asked = collector.status()["sparkplug"]["rebirths_requested"]
        # The node's answer to the request, then its data again.
        await apublish(mosquitto.port, [(f"spBv1.0/KIP/NBIRTH/{node}", _named(0, values(-2, -3), birth=True)),
                                        (f"spBv1.0/KIP/NDATA/{node}", _named(1, values(-6, -10, 8, 2.5)))])
        await sink.wait(lambda s: len(s.readings) >= 2 + 8)
    got = [(r.tag.rsplit(".", 1)[1], r.value) for r in sink.readings]
    assert got[:2] == [("count", 7), ("flow", 1.5)]
    [dead] = [d for b in sink.batches for d in b.dead_letters]
    assert "metric 0 ('offset'): int_value 4294967291 has no datatype" in dead.error
    assert "(Int32 -5 or UInt32 4294967291?)" in dead.error and "metric 2 ('total')" in dead.error
    assert "the message's other 2 reading(s) are stored" in dead.error
    assert asked == 1
    assert got[2:] == [("offset", -2), ("count", 7), ("total", -3), ("flow", 1.5),
                       ("offset", -6), ("count", 8), ("total", -10), ("flow", 2.5)]


async def test_a_sequence_gap_is_logged_and_counted_also_without_rebirth_requests(mosquitto, tmp_path, caplog):
    """Messages an edge node sent were lost (a sequence gap): with ``request_rebirth = false`` that was counted in
    status() only, with no log line and no Prometheus metric, and with it the log said only that a rebirth was asked
    (at INFO, at most once per interval). Now each gap counts in valvoja_collector_errors_total{kind=
    "sparkplug_sequence_gap"} and is logged at WARNING with how many messages were missed (at most once a minute per
    node, with the number held back)."""
    caplog.set_level(logging.INFO, logger="collectors.mqtt")
    node = SimulatedNode(mosquitto.port)
    sink = Sink()
    try:
        async with running(config(mosquitto.port, request_rebirth=False), sink, tmp_path) as collector:
            node.births()
            node.send(("flow", 2.0))
            await sink.wait(lambda s: len(s.readings) == 4)
            node.skip()
            node.skip()
            node.send(("flow", 5.0))
            node.skip()
            node.send(("flow", 7.0))
            await sink.wait(lambda s: len(s.readings) == 6)
            gaps = collector.ctx.metrics.collector_errors.labels("mq", "sparkplug_sequence_gap")._value.get()
            status = collector.status()["sparkplug"]
    finally:
        node.close()
    assert [r.value for r in sink.readings[4:]] == [5.0, 7.0]  # decoded as before
    assert gaps == 2 and status["seq_gaps"] == 2
    [line] = [r for r in caplog.records if getattr(r, "event", None) == "sparkplug_sequence_gap"]
    assert line.levelno == logging.WARNING
    assert line.getMessage() == (f"Sparkplug edge node KIP/{node.name}: sequence gap: 5 after 2: at least 2 message(s) "
                                 "missed, whose values are not stored")


async def test_the_will_of_an_old_session_does_not_mark_the_reborn_node_dead(mosquitto, tmp_path):
    """Sparkplug 3.0 (tck-id-topics-nbirth-bdseq-matching): an NDEATH belongs to the NBIRTH with its bdSeq. An edge
    node that came back on a new connection (bdSeq 1) before the broker noticed its old one was gone (bdSeq 0): the
    old connection's will comes after the new birth and must not mark the live node's tags bad. Its own will does."""
    old = SimulatedNode(mosquitto.port)  # will: NDEATH with bdSeq 0
    new = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{old.name}-b")
    sink = Sink()
    try:
        async with running(config(mosquitto.port), sink, tmp_path) as collector:
            old.births()
            await sink.wait(lambda s: len(s.readings) == 3)
            edge = old.edge
            edge.rebirth_after_reconnect()
            new.will_set(*edge.death(), qos=1)  # bdSeq 1
            new.connect("127.0.0.1", mosquitto.port)
            new.loop_start()
            new.publish(*edge.birth({"flow": 5.0, "running": True}), qos=1).wait_for_publish(5)
            await sink.wait(lambda s: len(s.readings) == 5)
            old.client.loop_stop()
            old.client.socket().close()  # gone without DISCONNECT: the broker publishes its will (bdSeq 0)
            await until(lambda: collector.status()["sparkplug"]["stale_deaths"] == 1)  # the will came
            await asyncio.sleep(0.3)
            assert len(sink.readings) == 5, "the stale will marked the reborn node"
            new.publish(*edge.data({"flow": 6.0}), qos=1).wait_for_publish(5)
            await sink.wait(lambda s: len(s.readings) == 6)
            new.loop_stop()
            new.socket().close()  # now the live session's will (bdSeq 1)
            await sink.wait(lambda s: len(s.readings) == 8)
    finally:
        for client in (new, old.client):
            client.loop_stop()
            with contextlib.suppress(Exception):
                client.disconnect()
    assert [(r.tag, r.value) for r in sink.readings[3:6]] == [(old.tag("flow"), 5.0), (old.tag("running"), True),
                                                             (old.tag("flow"), 6.0)]
    assert [(r.tag, r.value, r.quality, r.status_name) for r in sink.readings[6:]] == [
        (old.tag(n), None, Quality.BAD, "NDEATH") for n in ("flow", "running")]


async def test_sparkplug_types_and_a_death_reach_the_database_as_sent(mosquitto, tmp_path, pg_dsn):
    """Pins the whole path (real ingest, spool, forwarder, PostgreSQL) for what the Sparkplug decoder gives: integers
    of every width and sign exactly (UInt64 2^64 - 1 and Int64 -2^63 are beyond float8: kept as text beside it),
    Boolean, String, DateTime (ms) and Float, at the birth's time; then the NDEATH will: a bad-quality NULL at the
    receive time for each metric, flagged as without a source time, so the values are seen to stop being live."""
    from test_mqtt_untimed import forward_spool, rows

    from collectors.mqtt.sparkplug_encode import Metric, encode_payload, topic

    node = f"types{next(_ids)}"
    born_ms = now_ms() - 1000
    metrics = [Metric("u64", 2**64 - 1, datatype=DataType.UInt64), Metric("i64", -(2**63), datatype=DataType.Int64),
               Metric("i8", -128, datatype=DataType.Int8), Metric("u32", 2**32 - 1, datatype=DataType.UInt32),
               Metric("on", True, datatype=DataType.Boolean), Metric("txt", "käy", datatype=DataType.String),
               Metric("when", born_ms - 5, datatype=DataType.DateTime), Metric("f", 0.5, datatype=DataType.Float)]
    birth = encode_payload([Metric("bdSeq", 3, datatype=DataType.Int64), *metrics], seq=0, timestamp_ms=born_ms)
    will = encode_payload([Metric("bdSeq", 3, datatype=DataType.Int64)], timestamp_ms=born_ms - 60_000)
    async with spooling(config(mosquitto.port), tmp_path) as (ingest, _, worker, _):
        await apublish(mosquitto.port, [(topic("KIP", "NBIRTH", node), birth), (topic("KIP", "NDEATH", node), will)])
        await until(lambda: ingest.accepted >= 16)
    await forward_spool(worker, pg_dsn)
    stored = await asyncio.to_thread(
        rows, pg_dsn, "SELECT t.name, r.value, r.value_text, r.quality, r.flags, r.time FROM readings r "
                      "JOIN tags t ON t.id = r.tag_id WHERE t.name LIKE %s ORDER BY r.time, t.name", f"KIP.{node}.%")
    live = {name.rsplit(".", 1)[1]: (value, text, quality) for name, value, text, quality, _, _ in stored[:8]}
    assert live == {"u64": (float(2**64), str(2**64 - 1), 0), "i64": (float(-(2**63)), str(-(2**63)), 0),
                    "i8": (-128.0, None, 0), "u32": (2.0**32 - 1, None, 0), "on": (1.0, None, 0),
                    "txt": (None, "käy", 0), "when": (float(born_ms - 5), None, 0), "f": (0.5, None, 0)}
    assert {t for *_, t in stored[:8]} == {datetime.fromtimestamp(born_ms / 1000, UTC)}
    dead = stored[8:]
    assert sorted(name.rsplit(".", 1)[1] for name, *_ in dead) == sorted(live)
    assert all(value is None and text is None and quality == Quality.BAD and flags & Flag.NO_SOURCE_TIME
               for _, value, text, quality, flags, _ in dead)
    assert len({t for *_, t in dead}) == 1 and dead[0][5] > datetime.fromtimestamp(born_ms / 1000, UTC)
