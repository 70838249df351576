"""What one reading and one message may weigh (validation.max_text_bytes and max_tag_bytes, an MQTT collector's
max_payload_bytes).

A text value of up to 16 MiB from OPC UA (the client's message limit), or in an MQTT message, became one reading as
it was, and went whole through the spool, the database and the console. Now a text over ``max_text_bytes`` (64 KiB
by default) is a dead letter of its collector with the tag, its size, its time and its first 4 KiB, counted in
``valvoja_readings_too_large_total``; every other reading of the message or group is stored. An MQTT message over
``max_payload_bytes`` is a dead letter (first MiB kept) without being decoded, acknowledged, and the stream goes on.
A tag name (a topic level, a JSON field: the publisher's choice) over ``max_tag_bytes`` (512 bytes by default) was
refused only by the database's index of tag names (about 2.7 kB), its group then written apart; now its reading is
a dead letter at ingest (first KiB of the name, its size, the limit), counted in ``valvoja_tag_names_too_long_total``.
Real servers: asyncua's, mosquitto, PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
from opcua_support import plant_server
from ops_support import rows
from paho.mqtt.enums import CallbackAPIVersion

from edge import settings
from edge.gateway import Gateway
from edge.metrics import Metrics
from edge.pipeline import Ingest, SpoolWorker
from edge.records import Batch, Reading, utcnow
from edge.settings import SiteConfig, Validation
from edge.spool import Spool
from edge.validate import Validator

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
TEXT_PREFIX_BYTES = 4096  # what a dead letter keeps of a text (docs/operations.md)


async def until(predicate, timeout_s: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        got = predicate()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.1)


async def values(dsn: str) -> dict[str, list]:
    """Stored readings per tag: the value (text or float) of each, in time order."""
    got = await asyncio.to_thread(rows, dsn, "SELECT t.name, coalesce(r.value_text, r.value::text) FROM readings r "
                                             "JOIN tags t ON t.id = r.tag_id ORDER BY r.time")
    out: dict[str, list] = {}
    for tag, v in got:
        out.setdefault(tag, []).append(v)
    return out


async def dead_letters(dsn: str) -> list[tuple]:
    return await asyncio.to_thread(rows, dsn, "SELECT source, topic, payload, error FROM dead_letters ORDER BY id")


@contextlib.asynccontextmanager
async def gateway(cfg: SiteConfig, dsn: str):
    gw = Gateway(cfg, conninfo=dsn)
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:
        await asyncio.wait_for(gw.ready.wait(), 30)
        yield gw
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)


def site(tmp_path, collector: dict, **validation) -> SiteConfig:
    return settings.parse({
        "site": {"state_dir": str(tmp_path / "var")}, "http": {"enabled": False},
        "database": {"flush_interval_s": 0.1, "connect_timeout_s": 3}, "validation": validation,
        "collectors": [collector]})


def counter(metric, label: str) -> float:
    return metric.labels(label)._value.get()


# -- the ingest stage, with a real spool -----------------------------------------------------------------------


async def test_a_text_over_the_limit_is_a_dead_letter_and_the_rest_of_its_group_is_spooled(tmp_path):
    metrics = Metrics()
    worker = SpoolWorker(Spool(tmp_path / "spool.db", max_bytes=100 << 20))
    ingest = Ingest(worker, Validator({}, Validation(max_text_bytes=1000)), metrics, queue_batches=16)
    analysed: list = []
    ingest.on_spooled = lambda readings, latest: analysed.extend(readings)
    now = utcnow()
    huge = "Ä" * 600 + "x" * 100_000  # 101,200 bytes in UTF-8; its 4 KiB prefix ends in the middle of nothing
    acked: list[str] = []
    ua_batch = Batch("ua", [Reading("P-1.flow", T0, 1.5, now), Reading("P-1.status", T0, huge, now),
                            Reading("P-1.state", T0, "ok" * 500, now)], ack=lambda: acked.append("ua"))
    mq_batch = Batch("mq", [Reading("K1.NOx", T0, 42.0, now)], ack=lambda: acked.append("mq"))
    # Both batches in one group: queued before the ingest task runs.
    await ingest.emit(ua_batch)
    await ingest.emit(mq_batch)
    task = asyncio.create_task(ingest.run())
    try:
        await until(lambda: len(acked) == 2, 10, "both batches acknowledged")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    spooled = worker.spool.peek(10**6)
    rows = [r for b in spooled for r in b.rows]
    assert sorted((r[0], r[2]) for r in rows) == [("K1.NOx", 42.0), ("P-1.flow", 1.5), ("P-1.state", "ok" * 500)]
    [dead] = [d for b in spooled for d in b.dead_letters]
    source, topic, payload, error, _ = dead
    assert (source, topic) == ("ua", "P-1.status")
    assert "text value of 101200 bytes is over validation.max_text_bytes (1000)" in error
    assert T0.isoformat() in error and f"first {len(payload)} bytes kept" in error
    assert len(payload) <= TEXT_PREFIX_BYTES and huge.encode().startswith(payload)
    assert len(payload) > TEXT_PREFIX_BYTES - 4  # whole characters only
    assert counter(metrics.readings_too_large, "ua") == 1 and counter(metrics.dead_letters, "ua") == 1
    assert counter(metrics.readings_in, "ua") == 2 and counter(metrics.readings_in, "mq") == 1
    assert sorted(r.tag for r in analysed) == ["K1.NOx", "P-1.flow", "P-1.state"]
    worker.shutdown()


async def test_a_tag_name_over_the_limit_is_a_dead_letter_and_the_rest_of_its_group_is_spooled(tmp_path):
    metrics = Metrics()
    worker = SpoolWorker(Spool(tmp_path / "spool.db", max_bytes=100 << 20))
    ingest = Ingest(worker, Validator({}, Validation(max_tag_bytes=100, max_text_bytes=1000)), metrics,
                    queue_batches=16)
    now = utcnow()
    long_name = "plant/" + "Ä" * 60  # 66 characters, 126 bytes
    acked: list[str] = []
    await ingest.emit(Batch("mq", [Reading("K1.NOx", T0, 42.0, now), Reading(long_name, T0, 7.5, now),
                                   Reading("K1.O2", T0, 3.0, now), Reading(long_name + "/x", T0, "t" * 5000, now)],
                            ack=lambda: acked.append("mq")))
    task = asyncio.create_task(ingest.run())
    try:
        await until(lambda: acked, 10, "the batch acknowledged")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    spooled = worker.spool.peek(10**6)
    assert sorted((r[0], r[2]) for b in spooled for r in b.rows) == [("K1.NOx", 42.0), ("K1.O2", 3.0)]
    dead = [d for b in spooled for d in b.dead_letters]
    assert [(d[0], d[1], bytes(d[2])) for d in dead] == [("mq", long_name, b"7.5"),
                                                         ("mq", long_name + "/x", b"t" * TEXT_PREFIX_BYTES)]
    assert "tag name of 126 bytes is over validation.max_tag_bytes (100)" in dead[0][3]
    assert "tag name of 128 bytes is over validation.max_tag_bytes (100)" in dead[1][3], "one dead letter a reading"
    assert T0.isoformat() in dead[0][3]
    assert counter(metrics.tag_names_too_long, "mq") == 2 and counter(metrics.dead_letters, "mq") == 2
    assert counter(metrics.readings_too_large, "mq") == 0 and counter(metrics.readings_in, "mq") == 2
    worker.shutdown()


def test_oversized_tags_counts_bytes_and_keeps_the_first_kib_of_a_name():
    from edge.columns import Columns
    from edge.validate import oversized_tags

    now = utcnow()
    cols = Columns.from_readings([Reading("é" * 300, now, 1.0, now), Reading("e" * 512, now, 2.0, now),
                                  Reading("é" * 300, now, 3.0, now), Reading("e" * 513, now, "x", now)])
    assert oversized_tags(cols, 512) == [(0, 600), (2, 600), (3, 513)]
    assert oversized_tags(cols, 600) == []


def test_oversized_texts_counts_bytes_not_characters():
    from edge.columns import Columns
    from edge.validate import TEXT_PREFIX_BYTES as KEPT
    from edge.validate import oversized_texts

    assert KEPT == TEXT_PREFIX_BYTES

    now = utcnow()
    cols = Columns.from_readings([Reading("a", now, "é" * 600, now), Reading("b", now, "e" * 1000, now),
                                  Reading("c", now, 7.0, now), Reading("d", now, "e" * 1001, now)])
    assert oversized_texts(cols, 1000) == [(0, 1200), (3, 1001)]


# -- OPC UA, through a gateway into PostgreSQL -------------------------------------------------------------------


async def test_an_oversized_opcua_text_is_a_dead_letter_and_the_other_values_are_stored(tmp_path, pg_dsn):
    srv, endpoint, ns, nodes = await plant_server("textcap", Flow=1.0, Status="starting")
    flow, status = nodes["Flow"], nodes["Status"]
    cfg = site(tmp_path, {
        "kind": "opcua", "name": "ua", "endpoint": endpoint, "publishing_interval_ms": 100,
        "sampling_interval_ms": 0, "queue_size": 100, "connect_timeout_s": 5,
        "nodes": [{"node_id": f"ns={ns};s=Flow", "tag": "flow"}, {"node_id": f"ns={ns};s=Status", "tag": "status"}]})
    assert cfg.validation.max_text_bytes == 65_536
    big = "E" * 200_000  # a broken device's "status string"
    async with srv, gateway(cfg, pg_dsn) as gw:
        await until(lambda: values(pg_dsn), what="first values stored")
        await until(lambda: _has(pg_dsn, "status", "starting"), what="the first status stored")
        await status.write_value(big)
        await flow.write_value(2.0)  # most likely in the same publish as the big one
        await asyncio.sleep(0.5)
        await status.write_value("running")
        await flow.write_value(3.0)
        await until(lambda: _has(pg_dsn, "flow", "3"), what="the flow after the big status")
        await until(lambda: _has(pg_dsn, "status", "running"), what="the status after the big one")
        assert counter(gw.metrics.readings_too_large, "ua") == 1
        assert counter(gw.metrics.dead_letters, "ua") == 1
        assert gw.collectors["ua"].connected
    stored = await values(pg_dsn)
    assert "2" in stored["flow"] and stored["status"] == ["starting", "running"]
    [(source, topic, payload, error)] = await dead_letters(pg_dsn)
    assert (source, topic) == ("ua", "status")
    assert "text value of 200000 bytes is over validation.max_text_bytes (65536)" in error
    assert bytes(payload) == b"E" * TEXT_PREFIX_BYTES


async def _has(dsn: str, tag: str, value: str) -> bool:
    return value in (await values(dsn)).get(tag, [])


# -- MQTT, through a gateway into PostgreSQL ---------------------------------------------------------------------


def publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    """QoS 1, each acknowledged by the broker before this returns."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"textcap-pub-{time.monotonic_ns()}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for topic, payload in messages:
            c.publish(topic, payload, qos=1).wait_for_publish(60)
    finally:
        c.loop_stop()
        c.disconnect()


def mqtt_collector(port: int, run: str, **kw) -> dict:
    return {"kind": "mqtt", "name": "mq", "port": port, "client_id": f"textcap-{run}", "keepalive_s": 5,
            "connect_timeout_s": 5, "subscriptions": [{"topic": f"tc/{run}/+line", "tag": "{line}.{field}",
                                                       "json": {"value": "*", "time": "t", "time_format": "epoch_ms"}}],
            **kw}


def sample(i: int, **fields) -> bytes:
    return json.dumps({"t": int(T0.timestamp() * 1000) + i, **fields}).encode()


async def test_an_oversized_json_text_is_a_dead_letter_and_the_rest_of_its_message_is_stored(
        tmp_path, pg_dsn, mosquitto):
    run = f"{time.monotonic_ns()}"
    cfg = site(tmp_path, mqtt_collector(mosquitto.port, run), max_text_bytes=4096)
    async with gateway(cfg, pg_dsn) as gw:
        await until(lambda: gw.collectors["mq"].connected, what="subscribed")
        await asyncio.to_thread(publish, mosquitto.port, [
            (f"tc/{run}/L1", sample(1, flow=1.5, state="ok", note="n" * 5000)),
            (f"tc/{run}/L1", sample(2, flow=2.5, note="fine"))])
        await until(lambda: _has(pg_dsn, "L1.flow", "2.5"), what="the second message stored")
        assert counter(gw.metrics.readings_too_large, "mq") == 1
    stored = await values(pg_dsn)
    assert stored == {"L1.flow": ["1.5", "2.5"], "L1.state": ["ok"], "L1.note": ["fine"]}
    [(source, topic, payload, error)] = await dead_letters(pg_dsn)
    assert (source, topic, bytes(payload)) == ("mq", "L1.note", b"n" * 4096)
    assert "text value of 5000 bytes is over validation.max_text_bytes (4096)" in error


async def test_a_tag_name_over_max_tag_bytes_is_a_dead_letter_and_the_rest_of_its_message_is_stored(
        tmp_path, pg_dsn, mosquitto):
    """Two ways a publisher makes a tag name: a JSON field of the message, a topic level of the subscription."""
    run = f"{time.monotonic_ns()}"
    cfg = site(tmp_path, mqtt_collector(mosquitto.port, run))
    assert cfg.validation.max_tag_bytes == 512
    field, line = "f" * 600, "L" * 2000
    async with gateway(cfg, pg_dsn) as gw:
        await until(lambda: gw.collectors["mq"].connected, what="subscribed")
        await asyncio.to_thread(publish, mosquitto.port, [
            (f"tc/{run}/L1", sample(1, flow=1.5, state="ok", **{field: 7.0})),
            (f"tc/{run}/{line}", sample(2, flow=9.0)),
            (f"tc/{run}/L1", sample(3, flow=2.5))])
        await until(lambda: _has(pg_dsn, "L1.flow", "2.5"), what="the last message stored")
        await until(lambda: _dead_letters_are(pg_dsn, 2), what="both dead letters stored")
        assert counter(gw.metrics.tag_names_too_long, "mq") == 2 and counter(gw.metrics.dead_letters, "mq") == 2
        assert counter(gw.metrics.readings_too_large, "mq") == 0 and counter(gw.metrics.readings_in, "mq") == 3
        assert gw.metrics.readings_refused._value.get() == 0, "set aside before the database saw it"
    assert await values(pg_dsn) == {"L1.flow": ["1.5", "2.5"], "L1.state": ["ok"]}
    [(longest,)] = await asyncio.to_thread(rows, pg_dsn, "SELECT max(octet_length(name)) FROM tags")
    assert longest < 512, "no tag row was made for either long name"
    (s1, t1, p1, e1), (s2, t2, p2, e2) = await dead_letters(pg_dsn)
    assert (s1, t1, bytes(p1)) == ("mq", f"L1.{field}", b"7.0")
    assert "tag name of 603 bytes is over validation.max_tag_bytes (512)" in e1 and "first 603 bytes" in e1
    assert (s2, t2, bytes(p2)) == ("mq", f"{line}.flow"[:1024], b"9.0")
    assert "tag name of 2005 bytes is over validation.max_tag_bytes (512)" in e2 and "first 1024 bytes" in e2


async def _dead_letters_are(dsn: str, n: int) -> bool:
    return len(await dead_letters(dsn)) == n


async def test_an_mqtt_payload_over_max_payload_bytes_is_a_dead_letter_acknowledged_and_the_stream_goes_on(
        tmp_path, pg_dsn, mosquitto):
    run = f"{time.monotonic_ns()}"
    cfg = site(tmp_path, mqtt_collector(mosquitto.port, run, max_payload_bytes=65_536))
    big = sample(1, flow=1.0, junk="j" * (3 << 20))  # 3 MiB
    async with gateway(cfg, pg_dsn) as gw:
        await until(lambda: gw.collectors["mq"].connected, what="subscribed")
        await asyncio.to_thread(publish, mosquitto.port, [(f"tc/{run}/L1", big),
                                                          (f"tc/{run}/L1", sample(2, flow=2.0))])
        await until(lambda: _has(pg_dsn, "L1.flow", "2"), what="the message after the big one stored")
        await until(lambda: dead_letters(pg_dsn), what="the dead letter stored")
        assert counter(gw.metrics.dead_letters, "mq") == 1
        assert gw.metrics.collector_errors.labels("mq", "message_too_large")._value.get() == 1
        assert gw.collectors["mq"].status()["messages_too_large"] == 1
        assert gw.collectors["mq"].connected
    [(source, topic, payload, error)] = await dead_letters(pg_dsn)
    assert (source, topic) == ("mq", f"tc/{run}/L1")
    assert f"message of {len(big)} bytes is over max_payload_bytes (65536); not decoded" in error
    assert bytes(payload) == big[:1 << 20]
    # Acknowledged: a gateway started again on the same persistent session does not get it again.
    async with gateway(cfg, pg_dsn) as gw:
        await until(lambda: gw.collectors["mq"].connected, what="subscribed again")
        await asyncio.to_thread(publish, mosquitto.port, [(f"tc/{run}/L1", sample(3, flow=3.0))])
        await until(lambda: _has(pg_dsn, "L1.flow", "3"), what="the next message stored")
        assert counter(gw.metrics.dead_letters, "mq") == 0
    assert len(await dead_letters(pg_dsn)) == 1
    assert (await values(pg_dsn)) == {"L1.flow": ["2", "3"]}
