"""Fault tests on the whole path: MQTT (mosquitto) -> `valvoja run` (a process) -> PostgreSQL + TimescaleDB.

Real processes are stopped, killed and restarted; each test then counts what arrived:
every published reading in the database exactly once.
"""

from __future__ import annotations

import secrets
import threading
import time
from datetime import timedelta

import orjson
import psycopg
import pytest
from gateway_proc import GatewayProcess
from ops_support import Publisher, new_run, site_config, stored, wait_for

from edge.columns import Columns
from edge.records import Reading, utcnow
from edge.spool import Spool

# Under pytest-xdist (scripts/test.sh) the long fault tests share one worker: two at once on 2 cores slowed
# each other's gateways past what they wait for.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("faults")]


def values(dsn: str, prefix: str = "P-1.") -> list[float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [v for (v,) in conn.execute(
            "SELECT r.value FROM readings r JOIN tags t ON t.id = r.tag_id WHERE t.name LIKE %s ORDER BY r.value",
            (prefix + "%",)).fetchall()]


def exactly_once(dsn: str, n: int) -> None:
    got = values(dsn)
    assert len(got) == n, f"{len(got)} rows for {n} published"
    assert got == [float(i) for i in range(n)], "every reading once, none missing, none twice"


def start_subscribed(gw: GatewayProcess) -> GatewayProcess:
    """Start and wait until the MQTT session is subscribed: what is published before that has no session to go to."""
    gw.start()
    wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], timeout_s=30, what="collector subscribed")
    return gw


class SteadyPublisher(threading.Thread):
    """Publishes ``rate`` readings/s (one per QoS 1 message) until stopped; counts what the broker acknowledged."""

    def __init__(self, pub: Publisher, rate: float):
        super().__init__(daemon=True)
        self.pub, self.period = pub, 1.0 / rate
        self.halt = threading.Event()

    def run(self) -> None:
        next_t = time.monotonic()
        while not self.halt.is_set():
            self.pub.publish(1)
            next_t += self.period
            time.sleep(max(0.0, next_t - time.monotonic()))

    def stop(self) -> int:
        self.halt.set()
        self.join(30)
        return self.pub.sent


def test_database_down_60_s_at_20_readings_per_s_loses_nothing_and_duplicates_nothing(tmp_path, own_pg_server,
                                                                                    mosquitto):
    dsn = own_pg_server.create_database("faults", timescaledb=True)
    run = new_run()
    gw = start_subscribed(GatewayProcess(tmp_path / "gw", site_config(dsn, mosquitto.port, run=run)))
    pub = Publisher(mosquitto.port, run)
    flow = SteadyPublisher(pub, rate=20)
    try:
        flow.start()
        wait_for(lambda: stored(dsn) >= 40, timeout_s=30, what="readings flowing into the database")
        own_pg_server.stop()
        t_down = time.monotonic()
        wait_for(lambda: not gw.health()["database"]["connected"], timeout_s=30, what="outage noticed")
        spooled_during = wait_for(lambda: gw.health()["spool"]["readings"] >= 200 and gw.health()["spool"]["readings"],
                                  timeout_s=60, what="readings spooled while the database is away")
        assert gw.health()["collectors"]["plant"]["connected"], "collection goes on during the outage"
        time.sleep(max(0.0, 60 - (time.monotonic() - t_down)))
        own_pg_server.start()
        time.sleep(3)
        n = flow.stop()
        assert n >= 60 * 20, "the publisher kept going through the outage"
        wait_for(lambda: stored(dsn) >= n, timeout_s=60, what="backlog drained")
        time.sleep(1)
        exactly_once(dsn, n)
        health = gw.health()
        assert health["spool"]["readings"] == 0 and spooled_during >= 200
        assert 'valvoja_db_errors_total' in gw.metrics()
    finally:
        flow.halt.set()
        pub.close()
        assert gw.terminate() == 0


def test_gateway_sigkill_mid_stream_loses_no_acknowledged_reading_and_duplicates_none(tmp_path, pg_dsn, mosquitto):
    run = new_run()
    config = site_config(pg_dsn, mosquitto.port, run=run)
    gw = start_subscribed(GatewayProcess(tmp_path / "gw", config))
    pub = Publisher(mosquitto.port, run)
    flow = SteadyPublisher(pub, rate=400)
    try:
        flow.start()
        wait_for(lambda: stored(pg_dsn) >= 500, timeout_s=30, what="readings flowing")
        for _ in range(3):  # several kills at arbitrary points of the stream
            gw.kill()
            time.sleep(1.0)  # the broker keeps the session's messages while the gateway is dead
            gw.start()
            wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], timeout_s=30, what="reconnected")
            time.sleep(1.5)
        n = flow.stop()
        wait_for(lambda: stored(pg_dsn) >= n, timeout_s=60, what="everything stored after the kills")
        time.sleep(1)
        exactly_once(pg_dsn, n)
    finally:
        flow.halt.set()
        pub.close()
        assert gw.terminate() == 0


def test_broker_restart_collection_resumes(tmp_path, pg_dsn, own_mosquitto):
    run = new_run()
    gw = start_subscribed(GatewayProcess(tmp_path / "gw", site_config(pg_dsn, own_mosquitto.port, run=run)))
    try:
        pub = Publisher(own_mosquitto.port, run)
        pub.publish(100)
        wait_for(lambda: stored(pg_dsn) >= 100, timeout_s=30, what="first readings")
        pub.close()
        own_mosquitto.stop()
        wait_for(lambda: not gw.health()["collectors"]["plant"]["connected"], timeout_s=30, what="loss noticed")
        own_mosquitto.start()
        wait_for(lambda: gw.health()["collectors"]["plant"]["connected"], timeout_s=45, what="collector reconnected")
        pub = Publisher(own_mosquitto.port, run)
        pub.sent = 100  # continue the sequence of values and timestamps
        pub.publish(100)
        pub.close()
        wait_for(lambda: stored(pg_dsn) >= 200, timeout_s=30, what="readings after the broker restart")
        exactly_once(pg_dsn, 200)
        assert "valvoja_collector_reconnects_total" in gw.metrics()
    finally:
        assert gw.terminate() == 0


def one_refused_among_good(tmp_path, pg_dsn: str, mosquitto, levels: str, value, *,
                           spooled: bool = False) -> tuple[str, str, str]:
    """Publish 300 good readings, one of ``value`` on ``ops/<run>/<levels>``, 300 more: every good one must be stored
    once, the spool drain, one reading counted refused, and later readings flow. The dead letter (source, topic,
    error) is returned. ``spooled``: the 601 readings are in the gateway's spool before it starts (as an older
    gateway left them) instead of published."""
    run = new_run()
    gw = GatewayProcess(tmp_path / "gw", site_config(pg_dsn, mosquitto.port, run=run))
    if spooled:
        now = utcnow()
        base = now.replace(microsecond=0) - timedelta(minutes=5)
        good = [Reading("P-1.flow", base + timedelta(milliseconds=i), float(i), now) for i in range(600)]
        bad = Reading(levels.replace("/", "."), base, value, now)
        spool = Spool(gw.workdir / "var" / "spool.db", max_bytes=10**8)
        spool.append_many([(Columns.from_readings([*good[:300], bad, *good[300:]]), [])])
        spool.close()
    start_subscribed(gw)
    pub = Publisher(mosquitto.port, run)
    try:
        if spooled:
            pub.base, pub.sent = base, 600  # the published ones go on from the spooled ones
        else:
            pub.publish(300)
            t = pub.base.isoformat().replace("+00:00", "Z")
            pub.client.publish(f"ops/{run}/{levels}", orjson.dumps({"value": value, "time": t}),
                               qos=1).wait_for_publish(30)
            pub.publish(300)
        wait_for(lambda: stored(pg_dsn) >= 600, timeout_s=60, what="the good readings around the bad one stored")
        exactly_once(pg_dsn, 600)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            dead = conn.execute("SELECT source, topic, error FROM dead_letters").fetchall()
        assert len(dead) == 1, [(s, t[:40], e) for s, t, e in dead]
        wait_for(lambda: gw.health()["spool"]["readings"] == 0, timeout_s=30, what="spool drained")
        assert "valvoja_readings_refused_total 1.0" in gw.metrics()
        pub.publish(50)  # and the forwarder is not stuck behind it
        wait_for(lambda: stored(pg_dsn) >= 650, timeout_s=30, what="later readings stored")
        exactly_once(pg_dsn, 650)
        return dead[0]
    finally:
        pub.close()
        assert gw.terminate() == 0


def test_reading_the_database_refuses_becomes_a_dead_letter_and_the_rest_flows(tmp_path, pg_dsn, mosquitto):
    """A text with a NUL character decodes fine but PostgreSQL text cannot hold it. Retrying its group whole
    blocked the spool for good; now the group is written in parts: one dead letter, every good reading once."""
    source, topic, error = one_refused_among_good(tmp_path, pg_dsn, mosquitto, "P-9/state", "ok\u0000bad")
    assert (source, topic) == ("database", "P-9.state") and "NUL" in error, (source, topic, error)


def test_a_tag_name_too_long_for_the_database_becomes_a_dead_letter_and_the_rest_flows(tmp_path, pg_dsn,
                                                                                       mosquitto):
    """Anyone who may publish on the plant's broker chooses the tag name (a topic level, a JSON field, a Sparkplug
    metric). One name longer than a PostgreSQL index entry can hold (about 2.7 kB) was refused by the ``tags``
    unique index with ProgramLimitExceeded, an OperationalError: taken for an outage, the group was retried for
    ever and nothing reached the database again. Now it is one dead letter and the rest flows. Such a name no longer
    gets past ingest (``validation.max_tag_bytes``, tests/test_edge_text_limit.py), but a spool an older gateway
    wrote may hold one: that is where it comes from here."""
    asset = secrets.token_urlsafe(6000)  # 8,000 characters that do not compress below the index limit
    source, topic, error = one_refused_among_good(tmp_path, pg_dsn, mosquitto, f"{asset}/flow", 1.0, spooled=True)
    assert (source, topic) == ("database", f"{asset}.flow"), (source, topic[:40])
    assert "ProgramLimitExceeded" in error, error


def test_rollups_owed_when_the_gateway_is_killed_are_made_at_the_next_start(tmp_path, pg_dsn, mosquitto):
    """Readings committed and gone from the spool, their 1-minute rollups not yet recomputed, then SIGKILL: the
    work is noted in the spool in the same transaction that forgets the batches, so the next start does it."""
    run = new_run()
    slow = site_config(pg_dsn, mosquitto.port, run=run).replace("connect_timeout_s = 3",
                                                                "connect_timeout_s = 3\nrollup_interval_s = 3600", 1)
    gw = start_subscribed(GatewayProcess(tmp_path / "gw", slow))
    pub = Publisher(mosquitto.port, run)

    def rolled() -> int:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            return conn.execute("SELECT coalesce(sum(count), 0) FROM readings_1m").fetchone()[0]

    try:
        pub.publish(500)
        wait_for(lambda: stored(pg_dsn) >= 500 and gw.health()["spool"]["readings"] == 0, timeout_s=30,
                 what="stored and gone from the spool")
        assert rolled() == 0  # the refresh is an hour away
        gw.kill()
        gw.config.write_text(site_config(pg_dsn, mosquitto.port, run=run).replace("{HTTP_PORT}", str(gw.port)))
        start_subscribed(gw)
        wait_for(lambda: rolled() == 500, timeout_s=30, what="the owed rollups made after the restart")
    finally:
        pub.close()
        assert gw.terminate() == 0
