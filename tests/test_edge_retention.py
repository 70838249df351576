"""Retention against rollup work still owed: what a long outage's backlog brings back must reach the rollups."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import timedelta

import psycopg
import pytest
from opcua_support import until
from test_edge_housekeeping import _run_worker
from test_forward_rollups import _cols

from edge.forwarder import Forwarder, RollupWorker
from edge.metrics import Metrics
from edge.pipeline import SpoolWorker
from edge.records import utcnow
from edge.settings import Database, SiteConfig
from edge.spool import Spool


def _rolled_up(dsn: str, tag: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT coalesce(sum(r.count), 0) FROM readings_1m r JOIN tags t ON t.id = r.tag_id"
                            " WHERE t.name = %s", (tag,)).fetchone()[0]


def test_a_backlog_older_than_retention_committed_during_a_refresh_reaches_the_rollups(pg_dsn, tmp_path,
                                                                                       monkeypatch):
    """A spool drained after an outage longer than `retention_days` brings readings retention removes again; the
    docs promise their rollups are kept. The hourly retention ran right after a refresh: a group the forwarder
    committed meanwhile (its rollups noted, not yet made) was dropped with its chunk, and the next refresh found
    no raw readings to roll up: those readings were in neither table."""
    import time
    from types import SimpleNamespace

    from edge import forwarder

    # As on a machine booted a minute ago (a fresh CI machine; an edge box whose gateway starts at boot): retention
    # waited for "an hour after" monotonic 0.0 and did not run in the first hour of uptime (these tests failed then).
    booted = time.monotonic() - 60
    monkeypatch.setattr(forwarder, "time", SimpleNamespace(monotonic=lambda: time.monotonic() - booted,
                                                           perf_counter=time.perf_counter, time=time.time))
    old = (utcnow() - timedelta(days=20)).replace(second=0, microsecond=0)
    now = utcnow().replace(microsecond=0)

    async def go():
        worker = SpoolWorker(Spool(tmp_path / "spool.db", max_bytes=100 << 20))
        fwd = Forwarder(worker, pg_dsn, SiteConfig(), Metrics(), asyncio.Event())
        await fwd._connect()
        rollups = RollupWorker(fwd, pg_dsn, Database(url="postgresql://x/y", retention_days=7))
        try:
            await worker.call(worker.spool.append_many, [(_cols("live.t", now, 10), [])])
            assert await fwd.drain_once(linger=False)
            await worker.call(worker.spool.append_many, [(_cols("backlog.t", old, 120), [])])
            refresh = rollups.sink.refresh_minutes

            async def refresh_while_the_backlog_commits(tags, minutes):
                await refresh(tags, minutes)
                if await fwd.drain_once(linger=False):  # the forwarder's commit lands between refresh and retention
                    rollups.sink.refresh_minutes = refresh

            rollups.sink.refresh_minutes = refresh_while_the_backlog_commits
            for _ in range(3):
                await rollups.refresh_once()
        finally:
            await rollups.close()
            await fwd.close()
            worker.shutdown()

    asyncio.run(go())
    assert _rolled_up(pg_dsn, "live.t") == 10
    assert _rolled_up(pg_dsn, "backlog.t") == 120, "the backlog's readings were dropped before their rollups were made"
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM readings WHERE time < now() - interval '7 days'").fetchone()[0] == 0


def test_retention_does_not_hold_writes_behind_a_long_reader(pg_dsn, tmp_path):
    """Retention holds writes off while it drops; a reader on an old chunk (a long console query) made it wait for
    that chunk with writes stopped behind it for as long as the query ran. It now gives up after a few seconds
    and tries again at the next round."""
    import time

    from edge.forwarder import RETENTION_LOCK_TIMEOUT_S

    old = (utcnow() - timedelta(days=20)).replace(second=0, microsecond=0)
    now = utcnow().replace(microsecond=0)

    async def go():
        worker = SpoolWorker(Spool(tmp_path / "spool.db", max_bytes=100 << 20))
        fwd = Forwarder(worker, pg_dsn, SiteConfig(), Metrics(), asyncio.Event())
        await fwd._connect()
        rollups = RollupWorker(fwd, pg_dsn, Database(url="postgresql://x/y", retention_days=7))
        reader = await psycopg.AsyncConnection.connect(pg_dsn)
        try:
            await worker.call(worker.spool.append_many, [(_cols("old.t", old, 10), [])])
            assert await fwd.drain_once(linger=False)
            await reader.execute("SELECT count(*) FROM readings WHERE time < now() - interval '7 days'")  # stays open
            t0 = time.monotonic()
            retention = asyncio.create_task(rollups.refresh_once())
            await asyncio.sleep(0.5)
            await worker.call(worker.spool.append_many, [(_cols("new.t", now, 5), [])])
            try:
                assert await asyncio.wait_for(fwd.drain_once(linger=False), 15)
                written_after = time.monotonic() - t0
            except TimeoutError:
                written_after = math.inf
            await reader.rollback()  # the long query ends
            await retention
            if written_after == math.inf:
                return written_after
            assert rollups.last_retention is None  # postponed to a later round, not done
            await worker.call(worker.spool.append_many, [(_cols("new.t", now + timedelta(seconds=10), 1), [])])
            assert await fwd.drain_once(linger=False)
            await rollups.refresh_once()
            assert rollups.last_retention is not None
            return written_after
        finally:
            await reader.close()
            await rollups.close()
            await fwd.close()
            worker.shutdown()

    written_after = asyncio.run(go())
    assert written_after < RETENTION_LOCK_TIMEOUT_S + 3, f"a write waited {written_after:.1f} s behind retention"
    assert _rolled_up(pg_dsn, "old.t") == 10
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM readings WHERE time < now() - interval '7 days'").fetchone()[0] == 0


def _hours(dsn: str, tag: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT r.bucket, r.count, r.min, r.max FROM readings_1h r JOIN tags t ON t.id = r.tag_id"
                            " WHERE t.name = %s ORDER BY r.bucket", (tag,)).fetchall()


def _minutes_before(dsn: str, days: int) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM readings_1m WHERE bucket < now() - %s * interval '1 day'",
                            (days,)).fetchone()[0]


@pytest.mark.parametrize("edition", ["pg_dsn", "plain_pg_dsn"])
def test_rollups_1m_retention_removes_old_minutes_and_keeps_their_hours(edition, request, tmp_path, caplog):
    """`rollups_1m_retention_days`: the hourly round of the rollup worker removes 1-minute rollups older than that
    (by chunk on TimescaleDB, by row on plain PostgreSQL) and keeps the hourly ones, and the newer minutes."""
    dsn = request.getfixturevalue(edition)
    old = (utcnow() - timedelta(days=30)).replace(minute=0, second=0, microsecond=0)
    recent = (utcnow() - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)

    async def go():
        worker = SpoolWorker(Spool(tmp_path / "spool.db", max_bytes=100 << 20))
        fwd = Forwarder(worker, dsn, SiteConfig(), Metrics(), asyncio.Event())
        await fwd._connect()
        rollups = RollupWorker(fwd, dsn, Database(url="postgresql://x/y", retention_days=10,
                                                  rollups_1m_retention_days=14))
        try:
            await worker.call(worker.spool.append_many, [(_cols("m.t", old, 180, step_s=60.0, value=3.0), []),
                                                         (_cols("m.t", recent, 120, step_s=60.0, value=4.0), [])])
            assert await fwd.drain_once(linger=False)
            await rollups.refresh_once()
            assert _minutes_before(dsn, 14) == 180
            with caplog.at_level(logging.INFO, logger="edge.forwarder"):
                await rollups.trim_once()
            assert rollups.last_trim is not None, "the round got through"
        finally:
            await rollups.close()
            await fwd.close()
            worker.shutdown()

    asyncio.run(go())
    assert _minutes_before(dsn, 14) == 0
    assert _rolled_up(dsn, "m.t") == 120, "the newer minutes are kept"
    assert [h[1:] for h in _hours(dsn, "m.t")] == [(60, 3.0, 3.0)] * 3 + [(60, 4.0, 4.0)] * 2
    assert any(getattr(r, "event", None) == "retention_rollups" for r in caplog.records)


@pytest.mark.parametrize("edition", ["pg_dsn", "plain_pg_dsn"])
def test_a_late_reading_for_an_hour_whose_minutes_retention_removed_does_not_shrink_the_hour(edition, request):
    """Hours are recomputed from their 1-minute rollups. Once those are gone, a late reading for such an hour made
    a 1-minute rollup of its own, and the hour recomputed from it became an hour of one reading."""
    from edge.sink.rollups import retention_1m
    from edge.sink.timescale import TimescaleSink
    from edge.spool import SpooledBatch

    dsn = request.getfixturevalue(edition)
    old = (utcnow() - timedelta(days=30)).replace(minute=0, second=0, microsecond=0)

    async def go():
        sink = TimescaleSink(dsn)
        await sink.connect()
        first = await sink.write([SpooledBatch(1, _cols("late1m.t", old, 60, step_s=60.0, value=5.0), [], 0.0)])
        await sink.refresh_rollups(first.tag_ids, old, old + timedelta(minutes=59))
        await sink.apply_retention(10)
        removed, _, done = await retention_1m(sink.conn, sink.features, 14, time.monotonic() + 60)
        assert removed >= 1 and done
        late = await sink.write([SpooledBatch(2, _cols("late1m.t", old + timedelta(minutes=30, seconds=1), 1,
                                                       value=99.0), [], 0.0)])
        await sink.refresh_rollups(late.tag_ids, old + timedelta(minutes=30), old + timedelta(minutes=30))
        await sink.close()

    asyncio.run(go())
    assert [h[1:] for h in _hours(dsn, "late1m.t")] == [(60, 5.0, 5.0)], \
        "the hour was recomputed from the late reading alone"


def test_rollups_1m_retention_on_plain_postgresql_goes_on_after_its_time_budget(plain_pg_dsn):
    """A first round over a long history is cut at the deadline, in batches, and the next round finishes it."""
    from edge.sink.rollups import retention_1m
    from edge.sink.timescale import TimescaleSink
    from edge.spool import SpooledBatch

    old = (utcnow() - timedelta(days=30)).replace(minute=0, second=0, microsecond=0)

    async def go():
        sink = TimescaleSink(plain_pg_dsn)
        await sink.connect()
        first = await sink.write([SpooledBatch(1, _cols("budget.t", old, 300, step_s=60.0), [], 0.0)])
        await sink.refresh_rollups(first.tag_ids, old, old + timedelta(minutes=299))
        out = [await retention_1m(sink.conn, sink.features, 14, time.monotonic() - 1, batch=100)]
        out.append(await retention_1m(sink.conn, sink.features, 14, time.monotonic() + 60, batch=100))
        await sink.close()
        return out

    (n1, unit, done1), (n2, _, done2) = asyncio.run(go())
    assert (n1, unit, done1) == (100, "rows", False), "one batch, then the deadline"
    assert (n2, done2) == (200, True)
    assert _minutes_before(plain_pg_dsn, 14) == 0


def test_raw_retention_on_plain_postgresql_lets_writes_through_between_its_batches(plain_pg_dsn, tmp_path,
                                                                                   monkeypatch, caplog):
    """On an ordinary table raw retention is a DELETE, under the lock that holds writes off. The first round after
    `retention_days` was set on a site that had kept months of readings deleted them all in one transaction: writes
    waited for the whole of it (1.2 M rows/s: minutes for a plant's months, past the watchdog's stall limit), and a
    `statement_timeout` cancelled it every hour. Now a batch at a time, each its own transaction, and a round cut
    at its time budget goes on at the next refresh."""
    from edge import forwarder

    monkeypatch.setattr(forwarder, "RETENTION_BATCH_ROWS", 4000, raising=False)  # raising: absent before
    old_rows = 240_000  # 60 batches
    with psycopg.connect(plain_pg_dsn, autocommit=True) as conn:
        from edge.db.migrate import migrate

        migrate(conn)
        conn.execute("INSERT INTO tags (name) SELECT 'old' || i FROM generate_series(1, 20) i")
        conn.execute("INSERT INTO readings (time, tag_id, value, quality, receive_time)"
                     " SELECT now() - interval '20 days' - i * interval '1 second', t.id, 1.0, 0, now()"
                     " FROM tags t, generate_series(1, %s) i", (old_rows // 20,))
    now = utcnow().replace(microsecond=0)

    def old_left() -> int:
        with psycopg.connect(plain_pg_dsn) as conn:
            return conn.execute("SELECT count(*) FROM readings WHERE time < now() - interval '7 days'").fetchone()[0]

    async def go():
        worker = SpoolWorker(Spool(tmp_path / "spool.db", max_bytes=100 << 20))
        fwd = Forwarder(worker, plain_pg_dsn, SiteConfig(), Metrics(), asyncio.Event())
        await fwd._connect()
        rollups = RollupWorker(fwd, plain_pg_dsn, Database(url="postgresql://x/y", retention_days=7))
        try:
            await worker.call(worker.spool.append_many, [(_cols("live.t", now, 10), [])])
            assert await fwd.drain_once(linger=False)
            rollups.tail_checked = True  # the tail of the old rows is not this test's matter
            retention = asyncio.create_task(rollups.refresh_once())
            await until(lambda: old_left() < old_rows or retention.done(), what="retention to begin removing")
            await worker.call(worker.spool.append_many, [(_cols("live.t", now + timedelta(seconds=10), 10), [])])
            assert await fwd.drain_once(linger=False)
            left_at_write = old_left()
            await retention
            assert left_at_write > 0, "a write waited until retention had deleted every old row"
            assert rollups.last_retention is not None, "the round got through"
            # A round cut short by its time: one batch, then the next refresh goes on.
            with psycopg.connect(plain_pg_dsn, autocommit=True) as conn:
                conn.execute("INSERT INTO readings (time, tag_id, value, quality, receive_time)"
                             " SELECT now() - interval '20 days' - i * interval '1 second', 1, 1.0, 0, now()"
                             " FROM generate_series(1, 6000) i")
            monkeypatch.setattr(forwarder, "RETENTION_BUDGET_S", -1.0, raising=False)
            rollups.last_retention = None
            await worker.call(worker.spool.append_many, [(_cols("live.t", now + timedelta(seconds=20), 1), [])])
            assert await fwd.drain_once(linger=False)
            with caplog.at_level(logging.INFO, logger="edge.forwarder"):
                await rollups.refresh_once()
                assert rollups.last_retention is None and old_left() == 2000
                await worker.call(worker.spool.append_many, [(_cols("live.t", now + timedelta(seconds=30), 1), [])])
                assert await fwd.drain_once(linger=False)
                await rollups.refresh_once()
            assert rollups.last_retention is not None and old_left() == 0
        finally:
            await rollups.close()
            await fwd.close()
            worker.shutdown()

    asyncio.run(go())
    assert _rolled_up(plain_pg_dsn, "live.t") == 22
    said = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "retention"]
    assert said == ["retention: removed 4000 older than 7 days (more next round)",
                    "retention: removed 2000 older than 7 days"], said


def test_raw_retention_the_database_refuses_is_said_once_and_holds_back_neither_rollups_nor_other_tables(
        plain_pg_dsn, tmp_path, caplog):
    """A refusal of the raw readings' retention (a role that is not the owner: drop_chunks needs it; no DELETE on
    readings; a trigger) raised out of the refresh every round: logged as "rollup refresh failed", the rollup
    connection closed and reopened behind a growing back-off, and the hourly removal of old alerts, predictions
    and dead letters, which runs after the refresh, never ran at all. It is now said once as a retention failure,
    counted, and tried again in an hour."""
    with psycopg.connect(plain_pg_dsn, autocommit=True) as conn:
        from edge.db.migrate import migrate

        migrate(conn)
        conn.execute("INSERT INTO tags (name) VALUES ('old.t')")
        conn.execute("INSERT INTO readings (time, tag_id, value, quality, receive_time)"
                     " SELECT now() - interval '20 days' - i * interval '1 second', 1, 1.0, 0, now()"
                     " FROM generate_series(1, 100) i")
        conn.execute("INSERT INTO dead_letters (time, source, topic, payload, error)"
                     " VALUES (now() - interval '60 days', 's', 't', 'x', 'e')")
        conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                     " $$ BEGIN RAISE EXCEPTION 'must be owner of table readings'; END $$")
        conn.execute("CREATE TRIGGER refuse BEFORE DELETE ON readings FOR EACH ROW EXECUTE FUNCTION refuse()")
    caplog.set_level(logging.INFO, logger="edge")

    async def feed(worker, fwd):  # readings keep coming: each round has rollup work
        now = utcnow()
        for i in range(5):
            await worker.call(worker.spool.append_many, [(_cols("live.t", now + timedelta(seconds=i), 1), [])])
            assert await fwd.drain_once(linger=False)
            await asyncio.sleep(0.3)

    metrics = Metrics()
    asyncio.run(_run_worker(plain_pg_dsn, tmp_path, Database(url="postgresql://x/y", retention_days=7,
                                                             rollup_interval_s=0.1), metrics=metrics, during=feed))
    text = metrics.render().decode()
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("retention_error") == 1 and "rollup_error" not in events, events
    assert 'valvoja_rollup_errors_total{part="retention"} 1.0' in text
    assert _rolled_up(plain_pg_dsn, "live.t") == 5
    with psycopg.connect(plain_pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0, "the hourly trim never ran"
        assert conn.execute("SELECT count(*) FROM readings WHERE tag_id = 1").fetchone()[0] == 100
