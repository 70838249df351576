"""MQTT values without a source time (the receive time is their time) against a real mosquitto and PostgreSQL:
stored once when the broker sends them again, none lost when one message holds several of one tag, and a
retained last-known value not stored as a fresh reading at every new subscription. And a collector whose spool
is full keeps its connection (MQTT 3.1.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import psycopg
import pytest
from gateway_proc import GatewayProcess
from opcua_support import CutProxy
from ops_support import new_run, site_config, wait_for
from test_mqtt_collector import Sink, apublish, config, running, spooling, until

from collectors.base import CollectorContext
from collectors.mqtt import build
from edge.errors import NotConnectedError
from edge.metrics import Metrics
from edge.records import Flag, Quality

PLAIN_SUBSCRIPTION = """
[[collectors.subscriptions]]
topic = "plain/@RUN@/+asset/+signal"
format = "plain"
tag = "{asset}.{signal}"
"""


class HoldProxy(CutProxy):
    """A proxy to the broker that can also swallow what the client sends on the connections open now (its PUBACKs
    never reach the broker) while the broker's messages still come through; later connections pass."""

    def hold_client_bytes(self) -> None:
        for w in self._links:
            if w.get_extra_info("peername")[1] == self.target_port:  # towards the broker
                w.write = lambda data: None


def rows(dsn: str, sql: str, *args) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:  # the schema is there: the gateway or forwarder made it
        return conn.execute(sql, args).fetchall()


async def forward_spool(worker, dsn: str) -> None:
    """Forward everything the spool of ``worker`` (from `spooling`) holds to the database, then close the spool."""
    from edge.forwarder import Forwarder
    from edge.settings import SiteConfig

    fwd = Forwarder(worker, dsn, SiteConfig(), Metrics(), asyncio.Event())
    await fwd._connect()
    while await fwd.drain_once(linger=False):
        pass
    await fwd.close()
    await worker.call(worker.spool.close)
    worker.shutdown()


def readings_of(dsn: str, prefix: str) -> list[tuple]:
    """(tag, value, time) of the stored readings whose tag starts with ``prefix``."""
    return rows(dsn, "SELECT t.name, coalesce(r.value::text, r.value_text), r.time FROM readings r "
                     "JOIN tags t ON t.id = r.tag_id WHERE t.name LIKE %s ORDER BY 1, 2, 3", prefix + "%")


# -- 1. a message the broker sends again ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_an_untimed_message_sent_again_after_a_crash_before_its_puback_is_stored_once(
        tmp_path, pg_dsn, mosquitto):
    """The gateway spools messages without a source time, then dies before its PUBACKs reach the broker (a proxy
    swallows them; then SIGKILL). The broker sends them again (DUP, same packet id) to the restarted gateway. They
    were stored a second time, at a new receive time; a dead letter too (its digest covers the receive time)."""
    run = new_run()
    proxy = await HoldProxy(mosquitto.port).start()
    # keepalive 60 s: while held, the broker hears nothing from the gateway and must not drop it for that.
    site = site_config(pg_dsn, proxy.port, run=run).replace("keepalive_s = 5", "keepalive_s = 60")
    gw = GatewayProcess(tmp_path / "gw", site + PLAIN_SUBSCRIPTION.replace("@RUN@", run))
    n = 20

    def ours(prefix: str = "P-") -> list[tuple]:
        return readings_of(pg_dsn, prefix)

    def dead_letters() -> list[tuple]:
        return rows(pg_dsn, "SELECT topic, payload FROM dead_letters WHERE topic LIKE %s", f"%/{run}/%")

    try:
        await asyncio.to_thread(gw.start)
        await asyncio.to_thread(wait_for, lambda: gw.health()["collectors"]["plant"]["connected"], 30)
        await apublish(mosquitto.port, [(f"plain/{run}/P-1/warm", "0")])
        await asyncio.to_thread(wait_for, lambda: len(ours()) == 1, 30, 0.1, "the first reading stored")
        proxy.hold_client_bytes()
        messages = []
        for i in range(n):
            messages += [(f"plain/{run}/P-2/seq", str(i)), (f"ops/{run}/P-3/json", json.dumps({"value": i + 0.5}))]
        messages.append((f"ops/{run}/P-4/bad", b"not json"))
        await apublish(mosquitto.port, messages)
        # Stored in the database, so certainly spooled (and acknowledged into the proxy, which drops it).
        await asyncio.to_thread(wait_for, lambda: len(ours()) == 1 + 2 * n and dead_letters(), 30, 0.1,
                                "the messages stored")
        # Killed: its end of the connection closes, so the proxy closes the broker's end, and every PUBACK sent
        # since the hold is missing there. The restarted gateway connects through the proxy again, unheld.
        await asyncio.to_thread(gw.kill)
        await asyncio.to_thread(gw.start)
        await asyncio.to_thread(wait_for, lambda: gw.health()["collectors"]["plant"]["connected"], 30)
        # The broker sends the unacknowledged messages first; a message published now comes after them.
        await apublish(mosquitto.port, [(f"plain/{run}/P-9/end", "1")])
        await asyncio.to_thread(wait_for, lambda: ours("P-9."), 30, 0.1, "the last message stored")
        await asyncio.sleep(1.0)
        stored = ours()
        dead = dead_letters()
        matched = gw.health()["collectors"]["plant"]["redeliveries_matched"]
    finally:
        await asyncio.to_thread(gw.terminate)
        await proxy.stop()
    per_value: dict[tuple, int] = {}
    for tag, value, _ in stored:
        per_value[(tag, value)] = per_value.get((tag, value), 0) + 1
    twice = sorted(k for k, c in per_value.items() if c > 1)
    assert (len(twice), len(dead)) == (0, 1), f"readings stored more than once: {twice[:3]}..., dead letters: {dead}"
    assert len(stored) == 2 + 2 * n
    assert matched == 2 * n + 1  # the broker did send them all again (DUP), and each found its receive time


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_a_message_sent_again_on_a_new_connection_keeps_its_first_receive_time(mosquitto, tmp_path, protocol):
    """The connection drops before the PUBACKs (here: before the acks, as when the spool is slow); the broker sends
    the messages again on the next connection, flagged DUP with the same packet id, and the running gateway gives
    them the receive time they had, so the database key finds the copy it holds."""
    proxy = await HoldProxy(mosquitto.port).start()
    cfg = config(proxy.port, protocol=protocol)
    collector = build(cfg, CollectorContext(name="mq", state_dir=tmp_path, metrics=Metrics()))
    sink = Sink(auto_ack=False)
    try:
        task = asyncio.create_task(collector.run(sink))
        await until(lambda: collector.connected)
        await apublish(mosquitto.port, [("t/plain/P-1/x", "1"), ("t/one/K1", '{"value": 2}'), ("t/one/K1", "[3, 4]")])
        await sink.wait(lambda s: len(s.batches) == 3)
        first = [(r.tag, r.value, r.time, r.receive_time) for r in sink.readings]
        await proxy.cut(0)
        with pytest.raises(NotConnectedError):
            await task
        again = Sink()
        task = asyncio.create_task(collector.run(again))  # what the gateway's supervisor does
        await again.wait(lambda s: len(s.batches) == 3)
        second = [(r.tag, r.value, r.time, r.receive_time) for r in again.readings]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, NotConnectedError):
            await task
        await collector.aclose()
        await proxy.stop()
    assert second == first



async def test_remembered_receive_times_are_forgotten_once_the_broker_confirms_the_pubacks(
        mosquitto, tmp_path, monkeypatch):
    """Kept only while the broker may send a message again: once it has confirmed the PUBACKs (periodically, and
    before a clean disconnect) nothing is held, in memory or in the spool. Messages with a source time are never
    remembered."""
    import collectors.mqtt.collector as module

    timed = ("t/one/K1", '{"value": 1, "time": "2024-05-01T12:00:00Z"}')
    built = []
    monkeypatch.setattr(module, "CONFIRM_EVERY_S", 3600.0)
    async with spooling(config(mosquitto.port), tmp_path, built) as (ingest, _, worker, _):
        await apublish(mosquitto.port, [("t/plain/P-1/x", str(i)) for i in range(5)] + [timed])
        await until(lambda: ingest.accepted == 6)
        assert len(await worker.call(worker.spool.load_state, "mq")) == 5
        assert built[0].status()["receive_times_held"] == 5
    assert await worker.call(worker.spool.load_state, "mq") == {}  # confirmed before the disconnect
    assert built[0].status()["receive_times_held"] == 0
    await worker.call(worker.spool.close)
    worker.shutdown()

    monkeypatch.setattr(module, "CONFIRM_EVERY_S", 0.2)
    async with spooling(config(mosquitto.port), tmp_path / "periodic", built) as (ingest, _, worker, _):
        await apublish(mosquitto.port, [("t/plain/P-1/x", str(i)) for i in range(5)] + [timed])
        await until(lambda: ingest.accepted == 6)
        await until(lambda: built[1].status()["receive_times_held"] == 0 and not worker.spool.load_state("mq"))
    await worker.call(worker.spool.close)
    worker.shutdown()


async def test_a_new_session_forgets_every_remembered_receive_time(mosquitto, tmp_path):
    """The broker has no session for the client (first start, or it lost it): it will send nothing again."""
    from edge.spool import Spool

    spool = Spool(tmp_path / "spool.db", max_bytes=1 << 20)
    spool.save_state([("mq", b"\x00\x07", bytes(24)), ("other", b"\x00\x07", bytes(24))])
    spool.close()
    async with spooling(config(mosquitto.port), tmp_path) as (_, _, worker, _):
        assert await worker.call(worker.spool.load_state, "mq") == {}
        assert len(await worker.call(worker.spool.load_state, "other")) == 1
    await worker.call(worker.spool.close)
    worker.shutdown()


async def test_a_message_acknowledged_while_the_collector_closes_is_sent_again_not_held_for_good(
        mosquitto, tmp_path, monkeypatch):
    """Found by tests/test_gateway_chaos.py (a SIGTERM while a backlog was being spooled). The ingest goes on
    acknowledging batches while the collector closes: those PUBACKs went out after the final barrier's UNSUBSCRIBE,
    so its UNSUBACK did not cover them and their receive times stayed remembered, in memory and in the spool, though
    the broker had the PUBACKs and would never send the messages again: held until their packet ids came round
    (65,535 messages later), when a copy of another message with the same topic and payload that the broker sends
    again would take the old receive time and be dropped by the database as a duplicate. Now no PUBACK goes out once
    the final barrier has started: the broker sends those messages again and the remembered times find them."""
    import collectors.mqtt.collector as module

    monkeypatch.setattr(module, "CONFIRM_EVERY_S", 3600.0)  # only the barrier at close confirms
    cfg = config(mosquitto.port)
    collector = build(cfg, CollectorContext(name="mq", state_dir=tmp_path, metrics=Metrics()))
    sink = Sink(auto_ack=False)
    task = asyncio.create_task(collector.run(sink))
    try:
        await until(lambda: collector.connected)
        await apublish(mosquitto.port, [("t/plain/P-1/x", str(i)) for i in range(20)])
        await sink.wait(lambda s: len(s.batches) == 20)
        first = {r.value: r.time for r in sink.readings}
        for b in sink.batches[:10]:
            b.ack()  # spooled before the close: their PUBACKs precede the barrier
        closing = asyncio.create_task(collector.aclose())
        await asyncio.sleep(0)  # the close has sent its UNSUBSCRIBE and waits for the UNSUBACK
        for b in sink.batches[10:]:
            b.ack()  # spooled while it waits (the gateway's ingest runs on during a stop)
        await closing
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, NotConnectedError):
            await task
        again = Sink()
        task = asyncio.create_task(collector.run(again))  # the next connection of the session
        await until(lambda: collector.connected)
        await asyncio.sleep(1.0)  # what the broker sends again comes first
        await collector.aclose()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, NotConnectedError):
            await task
        await collector.aclose()
    st = collector.status()
    assert (st["receive_times_held"], st["redeliveries_matched"]) == (0, 10), st
    assert sorted(r.value for r in again.readings) == list(range(10, 20))
    assert all(r.time == first[r.value] for r in again.readings), "sent again, with the first receive time"


# -- 2. several untimed samples of one tag in one message ------------------------------------------------

async def test_untimed_samples_of_one_tag_in_one_message_are_all_stored_in_their_order(mosquitto, tmp_path, pg_dsn):
    """They all had the receive time: the (tag, time) key kept the first and silently dropped the others."""
    subs = [{"topic": "u/arr/#", "tag": "{#}"},
            {"topic": "u/batch/+line", "tag": "{line}.{field}", "json": {"samples": "s", "tag": "tag"}},
            {"topic": "u/wide/+a", "tag": "{a}.{field}", "json": {"value": "*"}}]
    messages = [("u/arr/A", "[1, 2, 3]"),
                ("u/arr/B", '[{"value": 10}, {"value": 11, "time": 1714564800000}, {"value": 12}]'),
                ("u/batch/L1",
                 '{"s": [{"tag": "a", "value": 20}, {"tag": "b", "value": 30}, {"tag": "a", "value": 21}]}'),
                ("u/wide/W", '{"x": 40, "y": 50}')]
    async with spooling(config(mosquitto.port, subscriptions=subs), tmp_path) as (ingest, _, worker, _):
        await apublish(mosquitto.port, messages)
        await until(lambda: ingest.accepted >= 11)
    await forward_spool(worker, pg_dsn)
    stored = await asyncio.to_thread(readings_of, pg_dsn, "")
    got = {}
    for tag, value, time in stored:
        got.setdefault(tag, []).append((time, float(value)))
    assert {t: [v for _, v in sorted(vs)] for t, vs in got.items()} == {
        "A": [1, 2, 3], "B": [11, 10, 12], "L1.a": [20, 21], "L1.b": [30], "W.x": [40], "W.y": [50]}
    # Several of one tag: a microsecond apart, in message order; one per tag: the receive time itself, which the
    # readings of one message share.
    a = [t for t, _ in sorted(got["A"])]
    assert [(t - a[0]).microseconds for t in a] == [0, 1, 2]
    assert got["W.x"][0][0] == got["W.y"][0][0] and min(got["L1.a"])[0] == got["L1.b"][0][0]


# -- 3. retained messages ------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def retained(port: int, messages: list[tuple[str, str]]):
    """``messages`` retained at the broker for the block (then cleared: the broker is shared)."""
    await apublish(port, messages, retain=True)
    try:
        yield
    finally:
        await apublish(port, [(t, b"") for t, _ in messages], retain=True)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_a_retained_value_without_a_source_time_is_not_stored_as_a_fresh_reading(mosquitto, tmp_path, protocol):
    """Each new subscription gets the broker's retained (last known) value; without a time of its own it was stored
    at the receive time, as if it had just been measured, once per new session or filter."""
    unique = f"ret{protocol[0]}{new_run()}"
    subs = [{"topic": f"{unique}/plain/+a", "format": "plain", "tag": "{a}"},
            {"topic": f"{unique}/json/+a", "tag": "{a}"}]
    stale = [(f"{unique}/plain/P1", "5"), (f"{unique}/json/P2", '{"value": 6, "time": "2024-05-01T12:00:00Z"}'),
             (f"{unique}/json/P3", '[{"value": 7}, {"value": 8, "time": "2024-05-01T12:00:00Z"}]')]
    async with retained(mosquitto.port, stale):
        for _ in range(2):  # a new session each time (clean session, or a new client id), as after a reset
            sink = Sink()
            async with running(config(mosquitto.port, subscriptions=subs, protocol=protocol), sink, tmp_path) as c:
                await sink.wait(lambda s: len(s.batches) == 3)
                # Published while subscribed, retained or not, it is a live value: stored at its receive time.
                await apublish(mosquitto.port, [(f"{unique}/plain/P1", "9")], retain=True, protocol=protocol)
                await sink.wait(lambda s: len(s.batches) == 4)
                status = c.status()
            assert sorted((r.tag, r.value) for r in sink.readings) == [("P1", 9), ("P2", 6), ("P3", 8)]
            assert status["retained_untimed_skipped"] == 2
            assert not any(r.flags & Flag.RETAINED for r in sink.readings)
            await apublish(mosquitto.port, stale[:1], retain=True)


async def test_retained_untimed_values_are_stored_flagged_when_configured(mosquitto, tmp_path):
    unique = f"ret{new_run()}"
    subs = [{"topic": f"{unique}/+a", "format": "plain", "tag": "{a}"}]
    async with retained(mosquitto.port, [(f"{unique}/P1", "5")]):
        sink = Sink()
        async with running(config(mosquitto.port, subscriptions=subs, retained_untimed="store"), sink, tmp_path):
            await apublish(mosquitto.port, [(f"{unique}/P2", "6")])
            await sink.wait(lambda s: len(s.readings) == 2)
    one, two = sorted(sink.readings, key=lambda r: r.tag)
    assert (one.tag, one.value, one.flags) == ("P1", 5, Flag.NO_SOURCE_TIME | Flag.RETAINED)
    assert (two.tag, two.value, two.flags) == ("P2", 6, Flag.NO_SOURCE_TIME)


# -- the pieces, without a broker ----------------------------------------------------------------------------

def message(mid: int, payload: bytes, *, dup: bool = False, qos: int = 1, topic: bytes = b"t/a"):
    from paho.mqtt.client import MQTTMessage

    msg = MQTTMessage(mid=mid, topic=topic)
    msg.payload, msg.dup, msg.qos = payload, dup, qos
    return msg


def test_receive_times_match_a_dup_by_packet_id_and_content_only():
    from collectors.mqtt.redelivery import ReceiveTimes

    times = ReceiveTimes(remember=True)
    first = message(7, b"1")
    t0 = times.stamp(first, 1_000)
    changes, entry = times.settle(first, t0, 1, depends=True)
    assert t0 == 1_000 and entry == (7, entry[1], 1_000)
    assert changes == [(b"\x00\x07", entry[1] + (1000).to_bytes(8, "big"))]
    assert times.stamp(message(7, b"1", dup=True), 5_000) == 1_000  # sent again: its first receive time
    assert times.stamp(message(7, b"2", dup=True), 5_000) == 5_000  # another payload: another message
    assert times.stamp(message(7, b"1", dup=True, topic=b"t/b"), 5_000) == 5_000
    assert times.stamp(message(8, b"1", dup=True), 5_000) == 5_000
    assert times.matched == 1
    # Not DUP: the packet id is free again, so this is a new message, and the entry before it is gone.
    fresh = message(7, b"1")
    assert times.stamp(fresh, 6_000) == 6_000
    assert times.settle(fresh, 6_000, 1, depends=False) == ([(b"\x00\x07", None)], None)
    assert len(times) == 0 and times.stamp(message(7, b"1", dup=True), 7_000) == 7_000


def test_receive_times_survive_a_restart_through_the_spool_changes_and_are_confirmed_one_by_one():
    from collectors.mqtt.redelivery import ReceiveTimes

    times, spool = ReceiveTimes(remember=True), {}
    entries = []
    for mid in (1, 2):
        changes, entry = times.settle(message(mid, b"x"), 100 + mid, 1, depends=True)
        spool.update(changes)
        entries.append(entry)
    again = ReceiveTimes(remember=True)
    again.load(spool)
    assert again.stamp(message(2, b"x", dup=True), 900) == 102
    # The entry of packet id 1 was replaced by a newer message before the confirmation came: it stays.
    _, newer = again.settle(message(1, b"y"), 903, 1, depends=True)
    assert again.confirmed(entries) == [(b"\x00\x02", None)]
    assert len(again) == 1 and again.confirmed([newer]) == [(b"\x00\x01", None)]
    assert again.clear() == [(None, None)]


def test_a_new_receive_time_is_not_among_those_the_message_before_took():
    from collectors.mqtt.redelivery import ReceiveTimes

    times = ReceiveTimes(remember=False)
    a = times.stamp(message(1, b"[1,2,3]"), 1_000)
    times.settle(message(1, b"[1,2,3]"), a, 3, depends=True)  # three samples of one tag: 1000, 1001, 1002
    assert times.stamp(message(2, b"4"), 1_001) == 1_003  # came within them (a big array decodes fast)
    assert times.settle(message(2, b"4"), 1_003, 1, depends=True) == ([], None)  # clean session: nothing kept
    assert times.stamp(message(3, b"5"), 1_003) == 1_004  # the same microsecond
    times.settle(message(3, b"5"), 1_004, 1, depends=True)
    assert times.stamp(message(4, b"5", qos=0), 2_000) == 2_000
    times.settle(message(4, b"5", qos=0), 2_000, 1, depends=True)
    assert times.stamp(message(5, b"6"), 500) == 500  # the clock stepped back: followed


def test_spread_and_retained_helpers_on_rows_and_readings():
    from datetime import UTC, datetime, timedelta

    from collectors.mqtt.untimed import NO_TIME, mark_retained, spread, without_untimed
    from edge.columns import Rows
    from edge.records import Reading

    rows = Rows(1_000)
    for tag, t, v, f in [("a", 1_000, 1.0, NO_TIME), ("b", 5, None, 0), ("a", 1_000, 2.0, NO_TIME),
                         ("b", 1_000, 3.0, NO_TIME), ("a", 1_000, None, NO_TIME)]:
        if v is None:
            rows.bad.append(len(rows.tags))
        rows.tags.append(tag)
        rows.times.append(t)
        rows.values.append(v)
        rows.flags.append(f)
    assert spread(rows) == 3 and rows.times == [1_000, 5, 1_001, 1_000, 1_002]
    rows.source[1] = (int(Quality.UNCERTAIN), 68)  # the device's stated quality (json.quality) goes along
    kept, n = without_untimed(rows)
    assert n == 4 and (kept.tags, kept.times, kept.bad, kept.source) == (["b"], [5], [0], {0: (1, 68)})
    mark_retained(rows)
    assert rows.flags == [NO_TIME | int(Flag.RETAINED), 0] + [NO_TIME | int(Flag.RETAINED)] * 3

    now = datetime(2024, 5, 1, tzinfo=UTC)
    readings = [Reading("x", now, 1, now, flags=NO_TIME), Reading("x", now, 2, now, flags=NO_TIME)]
    assert spread(readings) == 2 and [r.time - now for r in readings] == [timedelta(0), timedelta(microseconds=1)]
    assert readings[1].receive_time == now
    assert spread([Reading("x", now, 1, now, flags=NO_TIME), Reading("y", now, 2, now, flags=NO_TIME)]) == 1


# -- 4. a long full spool with MQTT 3.1.1 ----------------------------------------------------------------------

@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_a_collector_waiting_for_the_spool_keeps_its_connection_alive(mosquitto, tmp_path, protocol):
    """MQTT 3.1.1 has no Receive Maximum: with every in-flight slot taken (the spool full, nothing acknowledged), the
    collector stops reading so the broker keeps the rest. paho's network thread used to wait inside on_message, sent
    no PINGREQ, and the broker dropped the connection after 1.5 x keepalive (then the messages came again)."""
    cfg = config(mosquitto.port, keepalive_s=5, max_inflight=2, protocol=protocol)
    sink = Sink(auto_ack=False)
    async with running(cfg, sink, tmp_path) as collector:
        await apublish(mosquitto.port, [("t/plain/P-1/x", str(i)) for i in range(6)])
        await sink.wait(lambda s: len(s.batches) == 2)
        await asyncio.sleep(cfg.keepalive_s * 2.5)  # the broker gives up after 1.5 x keepalive without a packet
        dropped = [line for line in mosquitto.log_path.read_text().splitlines()
                   if cfg.client_id in line and "exceeded timeout" in line]
        assert dropped == []
        status = collector.status()
        assert (status["connected"], status["connects"], len(sink.batches)) == (True, 1, 2)
        sink.auto_ack = True
        for b in sink.batches:
            b.ack()
        await sink.wait(lambda s: len(s.batches) == 6)
        await asyncio.sleep(0.5)
        assert collector.status()["connects"] == 1
    assert sink.values() == list(range(6))
