"""The MQTT collector against a real mosquitto (tests/servers.py): payloads end to end, TLS, passwords,
MQTT 3.1.1 and 5, persistent sessions, acknowledgement only after the test's "spool", back-pressure.

The test plays the gateway: its ``Sink`` is the ``emit`` coroutine and calls ``batch.ack()`` when the
test says the batch is stored, as the pipeline does after its spool commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
import pytest
from certs import CertificateAuthority
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from collectors.base import CollectorContext
from collectors.mqtt import Config, build
from collectors.mqtt.sparkplug_b_pb2 import DataType
from collectors.mqtt.sparkplug_encode import EdgeNode, Metric, encode_payload
from edge.errors import NotConnectedError
from edge.metrics import Metrics
from edge.records import Batch, Flag, Quality

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
_ids = itertools.count()

SUBSCRIPTIONS = [
    {"topic": "t/plain/+asset/+signal", "format": "plain", "tag": "{asset}.{signal}"},
    {"topic": "t/json/+line", "tag": "{line}.{field}",
     "json": {"samples": "samples", "tag": "tag", "value": "v", "time": "t", "time_format": "epoch_ms"}},
    {"topic": "t/one/#", "tag": "{#}"},
    {"topic": "spBv1.0/KIP/#", "format": "sparkplug"},
]


class Sink:
    """The test's ``emit``: keeps every batch; acknowledges it at once when ``auto_ack`` (= "spooled")."""

    def __init__(self, auto_ack: bool = True) -> None:
        self.auto_ack = auto_ack
        self.batches: list[Batch] = []
        self._changed = asyncio.Event()

    async def __call__(self, batch: Batch) -> None:
        self.batches.append(batch)
        if self.auto_ack:
            batch.ack()
        self._changed.set()

    @property
    def readings(self):
        return [r for b in self.batches for r in b.readings]

    def values(self) -> list:
        return [r.value for r in self.readings]

    async def wait(self, predicate, within_s: float = 15.0) -> None:
        async with asyncio.timeout(within_s):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()


async def until(predicate, within_s: float = 15.0) -> None:
    """Poll state that other threads (paho's, the spool's) change."""
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110 - no event to wait on across those threads
            await asyncio.sleep(0.02)


def config(port: int, **kw) -> Config:
    body = {"port": port, "client_id": f"valvoja-test-{next(_ids)}", "keepalive_s": 5, "connect_timeout_s": 5.0,
            "subscriptions": SUBSCRIPTIONS, **kw}
    return Config.model_validate(body)


@contextlib.asynccontextmanager
async def running(cfg: Config, sink: Sink, tmp_path, name: str = "mq"):
    """Run the collector until the block ends (as the gateway would), then close it."""
    collector = build(cfg, CollectorContext(name=name, state_dir=tmp_path / name, metrics=Metrics()))
    task = asyncio.create_task(collector.run(sink))
    try:
        await until(lambda: collector.connected or task.done())
        if task.done():
            task.result()  # raises the connection error
        yield collector
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, NotConnectedError):
            await task
        await collector.aclose()


def publish(port: int, messages: list[tuple[str, bytes | str]], *, qos: int = 1, protocol: str = "3.1.1",
            retain: bool = False, **client_kw) -> None:
    """Publish and wait until the broker has every message (PUBACK)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
    if "username" in client_kw:
        client.username_pw_set(client_kw["username"], client_kw["password"])
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(t, p, qos=qos, retain=retain) for t, p in messages]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


async def apublish(port, messages, **kw) -> None:
    await asyncio.to_thread(publish, port, messages, **kw)


def plain_messages(n: int, start: int = 0) -> list[tuple[str, str]]:
    return [("t/plain/P-1/seq", str(i)) for i in range(start, start + n)]


async def only_new_messages_come(cfg: Config, tmp_path, topic: str) -> None:
    """Reconnect with ``cfg``'s session and publish one good value: it alone arrives (all before was acknowledged)."""
    again = Sink()
    async with running(cfg, again, tmp_path):
        await apublish(cfg.port, [(topic, "8")])
        await again.wait(lambda s: len(s.batches) >= 1)
        await asyncio.sleep(0.3)
    assert again.values() == [8] and not any(b.dead_letters for b in again.batches)


# -- payloads end to end -----------------------------------------------------------------------------

async def test_json_plain_and_sparkplug_decode_end_to_end(mosquitto, tmp_path):
    sink = Sink()
    node = EdgeNode("KIP", "sim")
    batch = {"samples": [{"tag": "flow", "t": T0_MS + i, "v": 10.0 + i} for i in range(100)]
             + [{"tag": "run", "t": T0_MS, "v": True}]}
    async with running(config(mosquitto.port), sink, tmp_path) as collector:
        await apublish(mosquitto.port, [
            ("t/json/L1", json.dumps(batch)),
            ("t/plain/P-101/temp", "21.5"),
            ("t/one/K1/NOx", json.dumps({"value": 41.0, "time": "2024-05-01T14:00:00+02:00"})),
            node.birth({"P-101/speed": 1480, "P-101/ok": True}, timestamp_ms=T0_MS),
            node.device_birth("stack1", {"NOx": 40.0}, timestamp_ms=T0_MS),
            node.data([("NOx", 42.5, T0_MS + 1000)], device="stack1"),
        ])
        await sink.wait(lambda s: len(s.batches) == 6)
        status = collector.status()
    readings = {(r.tag, r.time): r for r in sink.readings}
    assert len(sink.readings) == 101 + 1 + 1 + 2 + 1 + 1
    for i in range(100):
        assert readings[("L1.flow", T0 + timedelta(milliseconds=i))].value == 10.0 + i
    assert readings[("L1.run", T0)].value is True
    [temp] = [r for r in sink.readings if r.tag == "P-101.temp"]
    assert temp.value == 21.5 and temp.flags & Flag.NO_SOURCE_TIME
    assert readings[("K1/NOx", T0)].value == 41.0
    assert readings[("KIP.sim.P-101/speed", T0)].value == 1480
    assert readings[("KIP.sim.stack1.NOx", T0 + timedelta(seconds=1))].value == 42.5
    assert all(b.dead_letters == [] and b.source == "mq" for b in sink.batches)
    assert status["messages"] == 6 and status["readings"] == 107 and status["connected"]


async def test_malformed_messages_are_dead_lettered_logged_once_and_acknowledged(mosquitto, tmp_path, caplog):
    sink = Sink()
    cfg = config(mosquitto.port)
    caplog.set_level(logging.WARNING, logger="collectors.mqtt")
    async with running(cfg, sink, tmp_path) as collector:
        bad = [("t/json/L1", b'{"samples": [{"tag": "x", "v": 1, "t": "never"}]}')] * 5
        await apublish(mosquitto.port, [*bad, ("t/plain/P-1/x", "not a number"), ("t/plain/P-1/x", "7")])
        await sink.wait(lambda s: len(s.batches) == 7)
        assert collector.status()["dead_letters"] == 6
    dead = [d for b in sink.batches for d in b.dead_letters]
    assert [d.topic for d in dead] == ["t/json/L1"] * 5 + ["t/plain/P-1/x"]
    assert "time 'never' is neither ISO-8601 nor an epoch number" in dead[0].error
    assert dead[0].payload == bad[0][1] and dead[0].source == "mq"
    assert sink.values() == [7]  # the stream goes on after bad messages
    logged = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(logged) == 2 and "t/json/L1" in logged[0] and "t/plain/P-1/x" in logged[1]
    # Dead letters were acknowledged with their batch: nothing comes back on the next connection.
    await only_new_messages_come(cfg, tmp_path, "t/plain/P-1/x")


async def test_a_json_message_with_a_malformed_sample_keeps_its_good_samples(mosquitto, tmp_path):
    """Before, one bad sample (a device's one bad value, a time it could not format) made the whole message a dead
    letter: 4 samples gave no reading. Now the good ones are stored and the dead letter names what was left out."""
    subs = [*SUBSCRIPTIONS, {"topic": "t/wide/+line", "tag": "{line}.{field}",
                             "json": {"value": "*", "time": "ts", "time_format": "epoch_ms"}}]
    cfg = config(mosquitto.port, subscriptions=subs)
    sink = Sink()
    batch = json.dumps({"samples": [{"tag": "a", "v": 1.0, "t": T0_MS}, {"tag": "b", "v": {"x": 1}, "t": T0_MS},
                                    {"tag": "c", "v": 3.0, "t": "never"}, {"tag": "d", "v": 4.0, "t": T0_MS + 1}]})
    wide = json.dumps({"ts": T0_MS, "temp": 21.5, "alarm": [1, 2], "press": 1.2})
    nothing = json.dumps({"samples": [{"tag": "e", "v": 5.0, "t": "never"}, {"tag": "f", "v": [], "t": T0_MS}]})
    async with running(cfg, sink, tmp_path) as collector:
        await apublish(mosquitto.port, [("t/json/L1", batch), ("t/wide/L2", wide), ("t/json/L3", nothing)])
        await sink.wait(lambda s: len(s.batches) == 3)
        status = collector.status()
    assert [(r.tag, r.value) for r in sink.readings] == [("L1.a", 1.0), ("L1.d", 4.0), ("L2.temp", 21.5),
                                                         ("L2.press", 1.2)]
    dead = [d for b in sink.batches for d in b.dead_letters]
    assert [d.topic for d in dead] == ["t/json/L1", "t/wide/L2", "t/json/L3"]
    assert dead[0].payload == batch.encode() and dead[0].error.startswith("2 malformed sample(s) or value(s) not")
    assert "sample 1: value at 'v' is an object" in dead[0].error and "sample 2: time 'never'" in dead[0].error
    assert "other 2 reading(s) are stored" in dead[0].error
    assert "value of 'alarm' is an array" in dead[1].error and "other 2 reading(s)" in dead[1].error
    # Nothing readable: one dead letter as before, no readings.
    assert dead[2].error.startswith("sample 0: time 'never'") and dead[2].error.endswith("(and 1 more)")
    assert status["dead_letters"] == 3 and status["readings"] == 4
    await only_new_messages_come(cfg, tmp_path, "t/plain/P-1/x")


# Messages that once made a decoder raise something other than DataError: the collector took that for a lost
# connection, the message was never acknowledged, and the broker sent it again on every reconnect (topic, payload,
# what the dead letter's error must say). b"boom" makes the plain decoder fail as a bug would (see the test).
POISON = [
    ("t/one/K1/NOx", b'{"value": 1.0, "time": "0001-01-01T00:00:00+01:00"}',
     "time '0001-01-01T00:00:00+01:00' is out of range in UTC"),
    ("t/one/K1/NOx", b'{"value": 2.0, "time": "9999-12-31T23:59:59-01:00"}',
     "time '9999-12-31T23:59:59-01:00' is out of range in UTC"),
    ("spBv1.0/KIP//sim", b"", "empty message type level"),
    ("t/plain/P-1/x", b"boom", "RuntimeError: decoder bug for the test"),
    ("t/plain/P-2/x", b"boom", "RuntimeError: decoder bug for the test"),
]


async def test_a_message_that_breaks_a_decoder_is_a_dead_letter_and_the_stream_goes_on(
        mosquitto, tmp_path, caplog, monkeypatch):
    from collectors.mqtt import decode

    real = decode.parse_plain

    def parse_plain(payload: bytes):
        if payload == b"boom":
            raise RuntimeError("decoder bug for the test")
        return real(payload)

    monkeypatch.setattr(decode, "parse_plain", parse_plain)
    caplog.set_level(logging.WARNING, logger="collectors.mqtt")
    cfg = config(mosquitto.port)
    sink = Sink()
    good = plain_messages(len(POISON) + 1)
    interleaved = [m for pair in zip(good, [(t, p) for t, p, _ in POISON], strict=False) for m in pair] + good[-1:]
    async with running(cfg, sink, tmp_path) as collector:
        await apublish(mosquitto.port, interleaved)
        # Before the fix the first poison message ended the connection: fail at once rather than time out.
        await until(lambda: len(sink.batches) == len(interleaved) or not collector.connected)
        await asyncio.sleep(0.3)  # and nothing more comes (no redelivery)
        status = collector.status()
        decoder_errors = collector.ctx.metrics.collector_errors.labels("mq", "decoder")._value.get()
    assert status["connected"] and status["connects"] == 1 and status["last_error"] is None
    assert sink.values() == list(range(len(good)))  # every good reading, once, in order
    dead = [d for b in sink.batches for d in b.dead_letters]
    assert [(d.topic, d.payload) for d in dead] == [(t, p) for t, p, _ in POISON]
    for d, (_, _, error) in zip(dead, POISON, strict=True):
        assert error in d.error
    assert status["dead_letters"] == len(POISON) and status["decoder_errors"] == 2
    assert decoder_errors == 2
    # The first error of its kind is logged at ERROR with the traceback and the topic; the next one on another
    # topic only as a dead letter.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info[0] is RuntimeError and "t/plain/P-1/x" in errors[0].getMessage()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("t/plain/P-2/x" in m and "RuntimeError" in m for m in warned)
    # The poison messages were acknowledged as dead letters: the next connection gets none of them again.
    await only_new_messages_come(cfg, tmp_path, "t/plain/P-1/seq")


async def test_a_message_over_max_payload_bytes_is_a_dead_letter_not_decoded(mosquitto, tmp_path):
    """Decoding takes about 8 times a JSON message's size in memory and a broker passes up to 256 MB: a message the
    gateway could not hold killed it (MemoryMax), and the broker sent it again at every restart. Over the limit
    (16 MiB by default) a message is a dead letter, its first MiB kept, acknowledged; the stream goes on."""
    cfg = config(mosquitto.port)
    assert cfg.max_payload_bytes == 16 * 2**20
    sample = json.dumps({"tag": "big", "v": 1.0, "t": T0_MS}) + ","
    big = ('{"samples": [' + sample * (cfg.max_payload_bytes // len(sample) + 1))[:-1] + "]}"
    sink = Sink()
    async with running(cfg, sink, tmp_path) as collector:
        await apublish(mosquitto.port, [("t/plain/P-1/x", "1"), ("t/json/L1", big), ("t/plain/P-1/x", "2")])
        await sink.wait(lambda s: len(s.batches) == 3, within_s=60)
        assert collector.status()["dead_letters"] == 1
    assert sink.values() == [1, 2]
    dead = [d for b in sink.batches for d in b.dead_letters]
    assert [d.topic for d in dead] == ["t/json/L1"]
    assert f"message of {len(big)} bytes is over max_payload_bytes (16777216); not decoded" in dead[0].error
    assert dead[0].payload == big.encode()[:2**20]
    await only_new_messages_come(cfg, tmp_path, "t/plain/P-1/x")


# -- security ------------------------------------------------------------------------------------------

async def test_tls_with_the_broker_ca_works(mosquitto, tmp_path):
    sink = Sink()
    cfg = config(mosquitto.tls_port, host="localhost", tls={"ca_file": str(mosquitto.ca_path)})
    async with running(cfg, sink, tmp_path) as collector:
        await apublish(mosquitto.port, plain_messages(3))
        await sink.wait(lambda s: len(s.readings) == 3)
        assert collector.status()["broker"].startswith("mqtts://")
    assert sink.values() == [0, 1, 2]


async def test_tls_with_a_wrong_ca_fails_clearly(mosquitto, tmp_path):
    other = CertificateAuthority(tmp_path / "other-ca", common_name="Some other CA")
    cfg = config(mosquitto.tls_port, tls={"ca_file": str(other.cert_path)})
    collector = build(cfg, CollectorContext(name="mq", state_dir=tmp_path, metrics=Metrics()))
    with pytest.raises(NotConnectedError, match=r"TLS: the broker's certificate was refused: (self-signed certificate "
                                                r"in certificate chain|unable to get local issuer certificate) \(is "
                                                r"tls.ca_file the CA that signed"):
        await collector.run(Sink())
    assert not collector.connected and "certificate was refused" in collector.status()["last_error"]


async def test_tls_host_name_is_checked_unless_insecure(mosquitto, tmp_path):
    # The broker's certificate names localhost and 127.0.0.1, not "127.1" (which resolves to 127.0.0.1).
    tls = {"ca_file": str(mosquitto.ca_path)}
    collector = build(config(mosquitto.tls_port, host="127.1", tls=tls),
                      CollectorContext(name="mq", state_dir=tmp_path, metrics=Metrics()))
    with pytest.raises(NotConnectedError, match=r"certificate was refused.*(mismatch|match)"):
        await collector.run(Sink())
    sink = Sink()
    async with running(config(mosquitto.tls_port, host="127.1", tls={**tls, "insecure": True}), sink, tmp_path):
        await apublish(mosquitto.port, plain_messages(1))
        await sink.wait(lambda s: len(s.readings) == 1)


async def test_username_and_password_from_a_secret_reference(mosquitto, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_MQTT_PW", mosquitto.password)
    sink = Sink()
    cfg = config(mosquitto.auth_port, username=mosquitto.username, password="env:TEST_MQTT_PW")
    async with running(cfg, sink, tmp_path):
        await apublish(mosquitto.auth_port, plain_messages(2), username=mosquitto.username,
                       password=mosquitto.password)
        await sink.wait(lambda s: len(s.readings) == 2)
    monkeypatch.setenv("TEST_MQTT_PW", "wrong")
    collector = build(cfg, CollectorContext(name="mq", state_dir=tmp_path, metrics=Metrics()))
    with pytest.raises(NotConnectedError, match=r"broker refused the connection: (Not authorized|Bad user name)"):
        await collector.run(Sink())


# -- sessions, acknowledgement, back-pressure --------------------------------------------------------

@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_messages_published_while_down_arrive_after_restart(mosquitto, tmp_path, protocol):
    cfg = config(mosquitto.port, protocol=protocol)
    first = Sink()
    async with running(cfg, first, tmp_path) as collector:
        assert collector.status()["session_present"] is False
        await apublish(mosquitto.port, plain_messages(5), protocol=protocol)
        await first.wait(lambda s: len(s.readings) == 5)
    # The gateway is down: the broker queues for its session.
    await apublish(mosquitto.port, plain_messages(200, start=5), protocol=protocol)
    second = Sink()
    async with running(cfg, second, tmp_path) as collector:
        await second.wait(lambda s: len(s.readings) == 200)
        assert collector.status()["session_present"] is True and collector.status()["protocol"] == protocol
    assert first.values() == list(range(5)) and second.values() == list(range(5, 205))


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_emitted_but_never_acknowledged_messages_are_redelivered(mosquitto, tmp_path, protocol):
    cfg = config(mosquitto.port, protocol=protocol)
    sink = Sink(auto_ack=False)
    async with running(cfg, sink, tmp_path):
        await apublish(mosquitto.port, plain_messages(10))
        await sink.wait(lambda s: len(s.batches) == 10)
        for b in sink.batches[:4]:  # only these reached the "spool" before the gateway went away
            b.ack()
        await asyncio.sleep(0.3)  # let paho's network thread send the PUBACKs
    again = Sink()
    async with running(cfg, again, tmp_path):
        await again.wait(lambda s: len(s.readings) == 6)
        await asyncio.sleep(0.5)  # and nothing more comes
    assert again.values() == list(range(4, 10))
    # An ack that arrives after its connection is gone does nothing (packet ids belong to that connection).
    sink.batches[5].ack()


async def test_back_pressure_bounds_messages_in_flight(mosquitto, tmp_path):
    for protocol in ("3.1.1", "5"):
        sink = Sink(auto_ack=False)
        async with running(config(mosquitto.port, protocol=protocol, max_inflight=5), sink, tmp_path) as collector:
            await apublish(mosquitto.port, plain_messages(30))
            await sink.wait(lambda s: len(s.batches) == 5)
            await asyncio.sleep(0.5)
            assert len(sink.batches) == 5 and collector.status()["inflight"] == 5
            sink.auto_ack = True
            for b in list(sink.batches):
                b.ack()
            await sink.wait(lambda s: len(s.batches) == 30)
        assert sink.values() == list(range(30)), protocol


async def test_broker_restart_raises_not_connected_and_the_next_run_resumes_the_session(own_mosquitto, tmp_path):
    broker = own_mosquitto
    cfg = config(broker.port)
    collector = build(cfg, CollectorContext(name="mq", state_dir=tmp_path, metrics=Metrics()))
    sink = Sink()
    task = asyncio.create_task(collector.run(sink))
    await until(lambda: collector.connected)
    await apublish(broker.port, plain_messages(3))
    await sink.wait(lambda s: len(s.readings) == 3)
    await asyncio.to_thread(broker.stop)
    with pytest.raises(NotConnectedError, match="connection lost"):
        async with asyncio.timeout(30):  # noticed at once (socket closed), at worst after 1.5 x keepalive
            await task
    assert not collector.connected
    with pytest.raises(NotConnectedError, match="cannot connect"):
        await collector.run(sink)  # what the supervisor sees while the broker is away
    await asyncio.to_thread(broker.start)
    await apublish(broker.port, plain_messages(3, start=3))  # queued in the persisted session
    task = asyncio.create_task(collector.run(sink))
    try:
        await sink.wait(lambda s: set(s.values()) == set(range(6)))
        assert collector.status()["session_present"] is True and collector.status()["connects"] == 3
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await collector.aclose()
    # At least once: a message whose PUBACK the broker had not processed when it stopped comes again.
    values = sink.values()
    assert sorted(set(values)) == list(range(6))
    assert values[:3] == [0, 1, 2] and set(values[3:-3]) <= {0, 1, 2} and values[-3:] == [3, 4, 5]


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_resumed_sessions_keep_their_subscriptions_and_drop_removed_ones(mosquitto, tmp_path, protocol):
    unique = f"{protocol}-{next(_ids)}"
    keep, drop = f"keep/{unique}", f"drop/{unique}"
    # retained_untimed = "store": the retained value (no time of its own) is kept, so each delivery of it shows.
    body = {"port": mosquitto.port, "client_id": f"valvoja-subs-{unique}", "protocol": protocol,
            "retained_untimed": "store",
            "subscriptions": [{"topic": f"{keep}/+n", "tag": "{n}"}, {"topic": f"{drop}/+n", "tag": "{n}"}]}
    await apublish(mosquitto.port, [(f"{keep}/retained", "1")], retain=True)
    try:
        first = Sink()
        async with running(Config.model_validate(body), first, tmp_path):
            await first.wait(lambda s: len(s.readings) == 1)
        # Resumed session: not subscribed again, so the retained message is not sent again.
        second = Sink()
        async with running(Config.model_validate(body), second, tmp_path):
            await apublish(mosquitto.port, [(f"{keep}/live", "2")])
            await second.wait(lambda s: len(s.readings) == 1)
            await asyncio.sleep(0.3)
        assert [(r.tag, r.value) for r in second.readings] == [("live", 2)]
        # A subscription removed from the configuration is removed from the session too.
        body["subscriptions"] = body["subscriptions"][:1]
        third = Sink()
        async with running(Config.model_validate(body), third, tmp_path):
            await apublish(mosquitto.port, [(f"{drop}/x", "3"), (f"{keep}/live", "4")])
            await third.wait(lambda s: len(s.readings) == 1)
            await asyncio.sleep(0.3)
        assert third.values() == [4] and not any(b.dead_letters for b in third.batches)
    finally:
        await apublish(mosquitto.port, [(f"{keep}/retained", b"")], retain=True)  # clear it


async def test_sparkplug_aliases_survive_a_collector_restart(mosquitto, tmp_path):
    node = EdgeNode("KIP", "gw9")
    cfg = config(mosquitto.port)
    first = Sink()
    async with running(cfg, first, tmp_path):
        await apublish(mosquitto.port, [node.birth({"flow": 1.0}, timestamp_ms=T0_MS)])
        await first.wait(lambda s: len(s.readings) == 1)
    await apublish(mosquitto.port, [node.data({"flow": 2.0}, timestamp_ms=T0_MS + 1)])  # alias only
    second = Sink()
    async with running(cfg, second, tmp_path):  # a new process would load the same state dir
        await second.wait(lambda s: len(s.batches) == 1)
    assert [(r.tag, r.value) for r in second.readings] == [("KIP.gw9.flow", 2.0)]
    assert second.batches[0].dead_letters == []


@contextlib.asynccontextmanager
async def spooling(cfg: Config, tmp_path, built: list | None = None):
    """The collector feeding the gateway's real ingest (validation, spool, ack after the commit) until the block
    ends; yields (ingest, its task, spool worker, metrics). The spool is closed after the block. The collector is
    appended to ``built`` when given."""
    from edge.pipeline import Ingest, SourceState, SpoolWorker
    from edge.settings import Validation
    from edge.spool import Spool
    from edge.validate import Validator

    metrics = Metrics()
    worker = SpoolWorker(Spool(tmp_path / "spool.db", max_bytes=100 << 20))
    ingest = Ingest(worker, Validator({}, Validation()), metrics, queue_batches=4)
    ingest_task = asyncio.create_task(ingest.run())
    collector = build(cfg, CollectorContext(name="mq", state_dir=tmp_path, metrics=metrics,
                                            state=SourceState(worker, "mq")))
    if built is not None:
        built.append(collector)
    task = asyncio.create_task(collector.run(ingest.emit))
    try:
        await until(lambda: collector.connected)
        yield ingest, ingest_task, worker, metrics
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await collector.aclose()
        ingest_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await ingest_task


async def test_through_the_real_ingest_pipeline_into_the_spool(mosquitto, tmp_path):
    """Acknowledged only after the spool commit: nothing is redelivered once the spool has it."""
    cfg = config(mosquitto.port)
    async with spooling(cfg, tmp_path) as (ingest, _, worker, metrics):
        samples = [{"tag": "v", "t": T0_MS + i, "v": float(i)} for i in range(100)]
        await apublish(mosquitto.port, [("t/json/L1", json.dumps({"samples": samples}))] * 20
                       + [("t/json/L1", b"garbage"), POISON[0][:2], ("t/plain/P-1/seq", "1")])
        await until(lambda: ingest.accepted >= 2001 and metrics.dead_letters.labels("mq")._value.get() == 2)
    stored = await worker.call(worker.spool.peek, 10_000)
    assert sum(len(b.rows) for b in stored) == 2001
    assert [d[1] for b in stored for d in b.dead_letters] == ["t/json/L1", "t/one/K1/NOx"]
    assert metrics.dead_letters.labels("mq")._value.get() == 2
    again = Sink()
    async with running(cfg, again, tmp_path):
        await asyncio.sleep(0.5)
    assert again.batches == []  # all 23 were acknowledged after the spool commit
    await worker.call(worker.spool.close)
    worker.shutdown()


async def test_a_sparkplug_quality_code_beyond_64_bits_signed_does_not_stop_the_ingest(mosquitto, tmp_path):
    """A Quality property is a uint64 on the wire; the status column is a signed 64-bit integer. A device's bogus
    code used to reach the spool as an int too large for it: the ingest task died and, the message never acked,
    the broker sent it again after every restart."""
    from collectors.mqtt.sparkplug_b_pb2 import Payload

    p = Payload(timestamp=T0_MS, seq=0)
    m = p.metrics.add(name="flow", datatype=DataType.Double, double_value=1.5)
    m.properties.keys.append("Quality")
    m.properties.values.add(type=DataType.UInt64, long_value=2**64 - 1)
    async with spooling(config(mosquitto.port), tmp_path) as (ingest, ingest_task, worker, _):
        await apublish(mosquitto.port, [("spBv1.0/KIP/NDATA/q64", p.SerializeToString()), ("t/plain/P-1/seq", "7")])
        await until(lambda: ingest.accepted >= 2 or ingest_task.done())
        assert not ingest_task.done()
    rows = {c.tags[c.tag_idx[i]]: (c.value_at(i), int(c.quality[i]), int(c.status[i]))
            for c in [b.columns for b in await worker.call(worker.spool.peek, 10)] for i in range(len(c))}
    assert rows["KIP.q64.flow"] == (1.5, int(Quality.BAD), 2**63 - 1)
    assert rows["P-1.seq"][0] == 7
    await worker.call(worker.spool.close)
    worker.shutdown()


async def test_the_quality_a_json_device_states_reaches_the_spool(mosquitto, tmp_path):
    """Through mosquitto and the gateway's ingest: a Kepware-style "q": false and an OPC UA StatusCode in JSON are
    stored with their quality, status and SOURCE_STATUS (they were stored GOOD); a numeric quality where the
    convention is not configured is a dead letter naming json.quality_format, and the message's other sample is
    stored. Samples without a time (the receive time) keep their quality too."""
    subs = [{"topic": "kep/+dev", "tag": "{dev}.{field}",
             "json": {"samples": "values", "tag": "id", "value": "v", "time": "t", "quality": "q"}},
            {"topic": "ua/+dev", "tag": "{dev}.{field}",
             "json": {"value": "*", "time": "", "quality": "StatusCode", "quality_format": "opcua"}}]
    now_ms = int(datetime.now(UTC).timestamp() * 1000)  # not T0: validation flags a two-year-old time stale
    kep = {"values": [{"id": "ok", "v": 1.5, "q": True, "t": now_ms}, {"id": "down", "v": 0.0, "q": False,
                                                                       "t": now_ms},
                      {"id": "num", "v": 9.0, "q": 192, "t": now_ms}, {"id": "plain", "v": 2.5, "t": now_ms}]}
    ua = {"StatusCode": 0x8034_0000, "flow": 12.0}
    async with spooling(config(mosquitto.port, subscriptions=subs), tmp_path) as (ingest, _, worker, metrics):
        await apublish(mosquitto.port, [("kep/D1", json.dumps(kep)), ("ua/D2", json.dumps(ua))])
        await until(lambda: ingest.accepted >= 4 and metrics.dead_letters.labels("mq")._value.get() == 1)
        stored = await worker.call(worker.spool.peek, 100)
    rows = {c.tags[c.tag_idx[i]]: (c.value_at(i), int(c.quality[i]), int(c.status[i]),
                                   bool(c.flags[i] & Flag.SOURCE_STATUS))
            for c in [b.columns for b in stored] for i in range(len(c))}
    assert rows == {"D1.ok": (1.5, Quality.GOOD, 0, False), "D1.down": (0.0, Quality.BAD, 0, True),
                    "D1.plain": (2.5, Quality.GOOD, 0, False), "D2.flow": (12.0, Quality.BAD, 0x8034_0000, True)}
    [(_, topic, _, error)] = [d[:4] for b in stored for d in b.dead_letters]
    assert topic == "kep/D1" and "json.quality_format" in error and "sample 2" in error, error
    await worker.call(worker.spool.close)
    worker.shutdown()


async def test_a_will_ndeath_is_stored_when_the_edge_node_died_not_when_it_connected(mosquitto, tmp_path):
    """The broker publishes the NDEATH registered as the will at CONNECT, so its payload timestamp (as Eclipse
    Tahu's clients set it) is the connect time, before the birth; the null readings belong to the death."""
    import socket

    node = EdgeNode("KIP", f"will{next(_ids)}", bd_seq=4)
    will_topic, _ = node.death()
    connected_ms = T0_MS
    will = encode_payload([Metric("bdSeq", 4, datatype=DataType.Int64)], timestamp_ms=connected_ms)
    edge = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-{node.node}")
    edge.will_set(will_topic, will, qos=1)
    sink = Sink()
    async with running(config(mosquitto.port), sink, tmp_path):
        await asyncio.to_thread(edge.connect, "127.0.0.1", mosquitto.port)
        edge.loop_start()
        edge.publish(*node.birth({"flow": 1.0}, timestamp_ms=connected_ms + 10), qos=1).wait_for_publish(5)
        edge.publish(*node.data({"flow": 2.0}, timestamp_ms=connected_ms + 60_000), qos=1).wait_for_publish(5)
        await sink.wait(lambda s: len(s.readings) == 2)
        edge.loop_stop()
        before_death = datetime.now(UTC)
        edge.socket().shutdown(socket.SHUT_RDWR)  # the edge node vanishes: the broker sends its will
        edge.socket().close()
        await sink.wait(lambda s: len(s.readings) == 3)
    dead = sink.readings[-1]
    assert (dead.tag, dead.value, dead.status_name) == (f"KIP.{node.node}.flow", None, "NDEATH")
    assert dead.time >= before_death and dead.flags & Flag.NO_SOURCE_TIME


async def test_sparkplug_transient_metrics_are_not_stored(mosquitto, tmp_path):
    """Sparkplug: a metric flagged is_transient is of interest to a host but must not be stored in a historian."""
    from collectors.mqtt.sparkplug_b_pb2 import Payload

    node = EdgeNode("KIP", f"tr{next(_ids)}")
    _, birth = node.birth({"flow": 1.0, "setpoint": 5.0}, timestamp_ms=T0_MS)
    data = Payload.FromString(node.data({"flow": 2.0, "setpoint": 6.0}, timestamp_ms=T0_MS + 1000)[1])
    data.metrics[1].is_transient = True
    data.metrics[0].is_historical = True  # history is stored, with its own time
    sink = Sink()
    async with running(config(mosquitto.port), sink, tmp_path) as collector:
        await apublish(mosquitto.port, [(f"spBv1.0/KIP/NBIRTH/{node.node}", birth),
                                        (f"spBv1.0/KIP/NDATA/{node.node}", data.SerializeToString())])
        await sink.wait(lambda s: len(s.batches) == 2)
        stats = collector.status()["sparkplug"]
    assert [(r.tag.split(".")[-1], r.value) for r in sink.batches[1].readings] == [("flow", 2.0)]
    assert sink.batches[1].readings[0].time == T0 + timedelta(seconds=1)
    assert stats["transient_metrics"] == 1


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_a_message_matching_two_subscriptions_is_stored_once(mosquitto, tmp_path, protocol):
    """mosquitto sends an MQTT 5 client one copy per matching subscription; a plain value (receive time) was stored
    twice. Only filters no other one covers are subscribed; the first matching subscription still decodes."""
    unique = f"ov{next(_ids)}"
    subs = [{"topic": f"{unique}/+a/x", "format": "plain", "tag": "first.{a}"},
            {"topic": f"{unique}/#", "format": "plain", "tag": "wide.{#}"}]
    sink = Sink()
    async with running(config(mosquitto.port, subscriptions=subs, protocol=protocol), sink, tmp_path):
        await apublish(mosquitto.port, [(f"{unique}/p1/x", "1"), (f"{unique}/p1/y", "2")], protocol=protocol)
        await sink.wait(lambda s: len(s.readings) >= 2)
        await asyncio.sleep(0.5)
    assert [(r.tag, r.value) for r in sink.readings] == [("first.p1", 1), ("wide.p1/y", 2)]


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_a_message_matching_two_overlapping_subscriptions_is_stored_once(mosquitto, tmp_path, protocol):
    """Two filters that overlap without one covering the other (``u/+/x`` and ``u/p1/+``) are both subscribed; a
    message matching both came once per subscription from mosquitto and a plain value was stored twice."""
    unique = f"ovp{next(_ids)}"
    subs = [{"topic": f"{unique}/+a/x", "format": "plain", "tag": "first.{a}"},
            {"topic": f"{unique}/p1/+b", "format": "plain", "tag": "second.{b}"}]
    sink = Sink()
    async with running(config(mosquitto.port, subscriptions=subs, protocol=protocol), sink, tmp_path) as collector:
        await apublish(mosquitto.port, [(f"{unique}/p1/x", "1"), (f"{unique}/p1/y", "2"), (f"{unique}/p2/x", "3")],
                       protocol=protocol)
        await sink.wait(lambda s: len(s.readings) >= 3)
        await asyncio.sleep(0.5)
    assert [(r.tag, r.value) for r in sink.readings] == [("first.p1", 1), ("second.y", 2), ("first.p2", 3)]
    assert collector.status()["subscription_copies"] == (1 if protocol == "5" else 0)


async def test_a_resumed_mqtt5_session_subscribed_without_identifiers_gets_them_without_retained_copies(
        mosquitto, tmp_path):
    """A session an older version subscribed (no subscription identifiers, no "ids" in subscriptions.json) delivered
    both copies of a message matching two overlapping filters; its filters are subscribed again with identifiers,
    which sends no retained message again (MQTT 5 retain handling 1)."""
    unique = f"ovr{next(_ids)}"
    subs = [{"topic": f"{unique}/+a/x", "format": "plain", "tag": "first.{a}"},
            {"topic": f"{unique}/p1/+b", "format": "plain", "tag": "second.{b}"}]
    body = {"port": mosquitto.port, "client_id": f"valvoja-ids-{unique}", "protocol": "5", "retained_untimed": "store",
            "subscriptions": subs}
    await apublish(mosquitto.port, [(f"{unique}/p9/x", "0")], retain=True, protocol="5")
    try:
        first = Sink()
        async with running(Config.model_validate(body), first, tmp_path):
            await first.wait(lambda s: len(s.readings) == 1)
        # As an older version left the session: subscribed without identifiers, none in subscriptions.json.
        await asyncio.to_thread(subscribe_without_ids, mosquitto.port, body["client_id"], [f"{unique}/+/x",
                                                                                          f"{unique}/p1/+"])
        saved_path = tmp_path / "mq" / "subscriptions.json"
        saved = json.loads(saved_path.read_text())
        saved.pop("ids", None)
        saved_path.write_text(json.dumps(saved))
        second = Sink()
        async with running(Config.model_validate(body), second, tmp_path) as collector:
            await apublish(mosquitto.port, [(f"{unique}/p1/x", "1"), (f"{unique}/p2/x", "2")], protocol="5")
            await second.wait(lambda s: len(s.readings) >= 2)
            await asyncio.sleep(0.5)
        assert [(r.tag, r.value) for r in second.readings] == [("first.p1", 1), ("first.p2", 2)]
        assert collector.status()["subscription_copies"] == 1
        assert "ids" in json.loads(saved_path.read_text())
    finally:
        await apublish(mosquitto.port, [(f"{unique}/p9/x", b"")], retain=True)


def subscribe_without_ids(port: int, client_id: str, filters: list[str]) -> None:
    """Replace a persistent MQTT 5 session's subscriptions of ``filters`` by ones without subscription identifier."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    try:
        opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        done = threading.Event()
        client.on_subscribe = lambda *a: done.set()
        client.subscribe([(f, opts) for f in filters])
        assert done.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_a_session_resumed_with_mqtt311_after_mqtt5_is_not_subscribed_again(mosquitto, tmp_path):
    """The identifiers kept in subscriptions.json mean nothing to MQTT 3.1.1: a session subscribed with MQTT 5 and
    resumed with 3.1.1 must not be subscribed again, which would make the broker send every retained message again."""
    unique = f"p311-{next(_ids)}"
    body = {"port": mosquitto.port, "client_id": f"valvoja-{unique}", "protocol": "5", "retained_untimed": "store",
            "subscriptions": [{"topic": f"{unique}/+n", "format": "plain", "tag": "{n}"}]}
    await apublish(mosquitto.port, [(f"{unique}/retained", "1")], retain=True)
    try:
        first = Sink()
        async with running(Config.model_validate(body), first, tmp_path):
            await first.wait(lambda s: len(s.readings) == 1)
        body["protocol"] = "3.1.1"
        second = Sink()
        async with running(Config.model_validate(body), second, tmp_path) as collector:
            await apublish(mosquitto.port, [(f"{unique}/live", "2")])
            await second.wait(lambda s: len(s.readings) >= 1)
            await asyncio.sleep(0.3)
            assert collector.session_present
        assert [(r.tag, r.value) for r in second.readings] == [("live", 2)]
    finally:
        await apublish(mosquitto.port, [(f"{unique}/retained", b"")], retain=True)
