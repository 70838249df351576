"""Forwarder and rollups against a real TimescaleDB: late data, retention, work owed across a cancelled write."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import psycopg
import pytest
from opcua_support import until

from edge.backoff import Backoff
from edge.columns import Columns
from edge.forwarder import Forwarder, RollupWorker
from edge.metrics import Metrics
from edge.pipeline import SpoolWorker
from edge.records import Reading, utcnow
from edge.settings import SiteConfig
from edge.sink.timescale import TimescaleSink
from edge.spool import Spool, SpooledBatch


def _cols(tag: str, start, n: int, step_s: float = 1.0, value: float = 1.0) -> Columns:
    return Columns.from_readings([Reading(tag, start + timedelta(seconds=i * step_s), value, start)
                                  for i in range(n)])


def _minute(dsn: str, tag: str, bucket) -> tuple | None:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT r.count, r.min, r.max, r.sum FROM readings_1m r JOIN tags t ON t.id = r.tag_id"
                            " WHERE t.name = %s AND r.bucket = %s", (tag, bucket)).fetchone()


@pytest.mark.parametrize("edition", ["pg_dsn", "plain_pg_dsn"])
def test_a_late_reading_after_retention_does_not_shrink_the_rollup_of_its_bucket(edition, request):
    """Retention drops raw readings but keeps their rollups. A reading arriving later for such a bucket (a long
    outage, a device's buffer) used to make the refresh recompute the bucket from the one raw reading left, so
    the rollup of sixty readings became a rollup of one."""
    pg_dsn = request.getfixturevalue(edition)
    old = (utcnow() - timedelta(days=10)).replace(second=0, microsecond=0)

    async def go():
        sink = TimescaleSink(pg_dsn)
        await sink.connect()
        first = await sink.write([SpooledBatch(1, _cols("late.t", old, 60, value=5.0), [], 0.0)])
        await sink.refresh_rollups(first.tag_ids, old, old + timedelta(seconds=59))
        assert _minute(pg_dsn, "late.t", old) == (60, 5.0, 5.0, 300.0)
        removed = await sink.apply_retention(7)
        assert removed >= 1  # the chunk of that day is gone, its rollups kept
        late = await sink.write([SpooledBatch(2, _cols("late.t", old + timedelta(seconds=30, milliseconds=500), 1,
                                                       value=99.0), [], 0.0)])
        await sink.refresh_rollups(late.tag_ids, old, old + timedelta(seconds=31))
        await sink.close()

    asyncio.run(go())
    count, lo = _minute(pg_dsn, "late.t", old)[:2]
    assert count >= 60 and lo == 5.0, "the rollup lost the readings retention had removed"
    with psycopg.connect(pg_dsn) as conn:
        hour = conn.execute("SELECT sum(count) FROM readings_1h").fetchone()[0]
    assert hour >= 60


def _slow_delete(spool: Spool):
    """Make the spool's delete linger in its thread after deleting (the moment a write is cancelled there): the
    event set once it deleted, and the original method to put back."""
    started, original = threading.Event(), spool.delete

    def slow_delete(seqs, rollup=None):
        note = original(seqs, rollup)
        started.set()
        time.sleep(0.5)  # the cancellation arrives while the spool thread is here
        return note

    spool.delete = slow_delete
    return started, original


def test_rollups_owed_by_a_write_cancelled_after_its_spool_delete_are_still_made(pg_dsn, tmp_path):
    """A write cancelled (shutdown, a watchdog restart, another writer's failure) while the spool thread runs its
    delete: the batches are gone and the note of the rollups they owe is in the spool, but the forwarder never
    heard of it. A later refresh marked every note up to its own as done, so those buckets were never made."""
    t0 = (utcnow() - timedelta(hours=1)).replace(second=0, microsecond=0)

    async def go():
        spool = Spool(tmp_path / "spool.db", max_bytes=100 << 20)
        worker = SpoolWorker(spool)
        started, original = _slow_delete(spool)
        await worker.call(spool.append_many, [(_cols("owed.a", t0, 30), [])])
        fwd = Forwarder(worker, pg_dsn, SiteConfig(), Metrics(), asyncio.Event())
        await fwd._connect()
        write = asyncio.create_task(fwd.drain_once(linger=False))
        assert await asyncio.to_thread(started.wait, 30)
        write.cancel()
        await asyncio.gather(write, return_exceptions=True)
        spool.delete = original
        await worker.call(spool.append_many, [(_cols("owed.b", t0, 30), [])])
        assert await fwd.drain_once(linger=False)
        rollups = RollupWorker(fwd, pg_dsn, fwd.db)
        await rollups.refresh_once()
        await rollups.close()
        await fwd.close()
        left = await worker.call(spool.rollup_pending)
        worker.shutdown()
        return left

    left = asyncio.run(go())
    assert _minute(pg_dsn, "owed.b", t0) is not None
    assert _minute(pg_dsn, "owed.a", t0) is not None or left is not None, \
        "the rollups owed by the cancelled write were marked done without being made"


def _raised_batch(seq: int, alert_id: str, asset: str) -> SpooledBatch:
    """A spooled batch as the gateway writes it: three readings of ``<asset>.vib`` and the "raised" change of one
    alert on them."""
    from edge.analytics import alert_change_record
    from edge.records import Alert
    from maintenance.alerts import AlertChange, dedup_key

    t0 = utcnow().replace(microsecond=0) - timedelta(minutes=5)
    tag = f"{asset}.vib"
    alert = Alert(id=alert_id, asset=asset, tag=tag, kind="threshold", severity="warning", raised_at=t0,
                  message="vibration high")
    change = AlertChange("raised", alert, dedup_key(asset, tag, "threshold"), occurrences=1, last_seen=t0)
    return SpooledBatch(seq, _cols(tag, t0, 3), [], 1_700_000_000.0, [alert_change_record(change)])


def test_a_replayed_alert_raise_is_stored_once(pg_dsn):
    """A crash between the database COMMIT and the spool delete writes the batch again. Readings and dead letters
    are de-duplicated by their keys; an alert's "raised" change conflicted with its own open alert and counted one
    more occurrence for each replay."""
    batch = _raised_batch(7, "a-replay-1", "P-1")

    async def go():
        sink = TimescaleSink(pg_dsn)
        await sink.connect()
        first = await sink.write([batch])
        replay = await sink.write([batch])
        await sink.close()
        assert not first.refused and not replay.refused

    asyncio.run(go())
    with psycopg.connect(pg_dsn) as conn:
        occurrences = conn.execute("SELECT occurrences FROM alerts WHERE id = 'a-replay-1'").fetchone()[0]
        events = conn.execute("SELECT count(*) FROM alert_events WHERE alert_id = 'a-replay-1'").fetchone()[0]
        readings = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
    assert readings == 3 and events == 1
    assert occurrences == 1, "the replay counted the alert's one occurrence twice"


def test_an_idle_forwarder_gives_back_the_disk_a_drained_backlog_held(pg_dsn, tmp_path, monkeypatch):
    """After an outage the spool file stayed at the size of its backlog for good (`vacuum_if_empty` was never
    called): the disk the next outage needs. Once drained and idle, the forwarder frees it."""
    import random

    import edge.forwarder
    import edge.spool

    monkeypatch.setattr(edge.spool, "VACUUM_MIN_FREE_BYTES", 1 << 20)
    monkeypatch.setattr(edge.forwarder, "VACUUM_CHECK_S", 0.2)
    rng = random.Random(1)
    t0 = utcnow() - timedelta(hours=2)

    async def go():
        spool = Spool(tmp_path / "spool.db", max_bytes=100 << 20)
        worker = SpoolWorker(spool)
        for k in range(20):  # the backlog of an outage: ~6 MB of readings that do not compress
            rows = [Reading(f"bl.{k}", t0 + timedelta(seconds=i), rng.random(), t0) for i in range(5000)]
            await worker.call(spool.append_many, [(Columns.from_readings(rows), [])])
        full = spool.file_bytes()
        fwd = Forwarder(worker, pg_dsn, SiteConfig(), Metrics(), asyncio.Event())
        task = asyncio.create_task(fwd.run())
        try:
            for _ in range(600):
                if spool.batches == 0 and spool.file_bytes() < full / 4:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await fwd.close()
        left = (spool.batches, spool.file_bytes())
        worker.shutdown()
        return full, left

    full, (batches, size) = asyncio.run(go())
    assert full > 4 << 20
    assert batches == 0 and size < full / 4, f"spool file {size} bytes after draining {full}"
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 100_000


def test_runs_of_minutes():
    from edge.sink.rollups import minutes_of, runs

    assert runs(set()) == []
    assert runs({5, 6, 7, 9, 20, 21}) == [(5, 7), (9, 9), (20, 21)]
    assert runs({1, 3, 10, 11, 40}, max_runs=2) == [(1, 11), (40, 40)]  # joined across the smallest gaps
    assert len(runs(set(range(0, 10_000, 2)), max_runs=64)) == 64
    us = 60_000_000
    assert minutes_of(__import__("numpy").array([0, us - 1, us, 5 * us + 7])) == {0, 1, 5}


def test_a_reading_from_a_clock_reset_to_1970_does_not_recompute_every_minute_between(pg_dsn, tmp_path):
    """A device whose clock fell back to 1970 (a flat battery) sends its readings beside the others: the rollup
    work was one span from the oldest to the newest reading, so every refresh recomputed the whole history of
    every tag written with it. Now the minutes touched are recomputed, and only they."""
    import datetime as dt

    now = utcnow().replace(second=0, microsecond=0) - timedelta(minutes=10)
    old = now - timedelta(days=2)
    epoch = dt.datetime(1970, 1, 1, 0, 0, 5, tzinfo=dt.UTC)

    async def go():
        spool = Spool(tmp_path / "spool.db", max_bytes=100 << 20)
        worker = SpoolWorker(spool)
        fwd = Forwarder(worker, pg_dsn, SiteConfig(), Metrics(), asyncio.Event())
        await fwd._connect()
        rollups = RollupWorker(fwd, pg_dsn, fwd.db)
        await worker.call(spool.append_many, [(_cols("clock.x", old, 60), [])])  # two days ago
        assert await fwd.drain_once(linger=False)
        await rollups.refresh_once()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # a marker no recomputation would leave
            conn.execute("UPDATE readings_1m SET min = -1 WHERE bucket = %s", (old,))
        mixed = Columns.concat([_cols("clock.x", epoch, 1), _cols("clock.x", now, 30)])
        await worker.call(spool.append_many, [(mixed, [])])
        assert await fwd.drain_once(linger=False)
        assert len(fwd.dirty_minutes) == 2
        await rollups.refresh_once()
        await rollups.close()
        await fwd.close()
        worker.shutdown()

    asyncio.run(go())
    assert _minute(pg_dsn, "clock.x", epoch.replace(second=0)) == (1, 1.0, 1.0, 1.0)
    assert _minute(pg_dsn, "clock.x", now) == (30, 1.0, 1.0, 30.0)
    assert _minute(pg_dsn, "clock.x", old)[1] == -1, "a minute nobody wrote to was recomputed"


def test_a_replayed_raise_of_an_alert_cleared_in_the_console_meanwhile_is_skipped(pg_dsn):
    """Crash between COMMIT and the spool delete, the alert cleared by hand before the batch is written again: the
    replayed "raised" met the cleared row's primary key, so the batch's alert changes became dead letters."""
    batch = _raised_batch(8, "a-replay-2", "P-2")

    async def go():
        sink = TimescaleSink(pg_dsn)
        await sink.connect()
        first = await sink.write([batch])
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE alerts SET cleared_at = now(), cleared_by = 'anna', state = 'cleared'"
                         " WHERE id = 'a-replay-2'")
        replay = await sink.write([batch])
        await sink.close()
        return first, replay

    first, replay = asyncio.run(go())
    assert not first.refused and not replay.refused, replay.refused
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT state, cleared_by, occurrences FROM alerts WHERE asset = 'P-2'").fetchall()
        dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    assert rows == [("cleared", "anna", 1)] and dead == 0


def test_a_write_the_database_breaks_off_leaves_no_pending_task_behind(pg_dsn, tmp_path):
    """Found by tests/test_gateway_chaos.py: each write a database outage broke off left the forwarder's pending
    read of the next group behind (a task never cancelled), and asyncio logged "Task was destroyed but it is
    pending!" at ERROR when it was collected, a line a reader of the log cannot place. The group written after the
    outage is stored all the same."""
    import gc

    t0 = (utcnow() - timedelta(hours=1)).replace(second=0, microsecond=0)

    async def go():
        leaked: list[str] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: leaked.append(context["message"]))
        spool = Spool(tmp_path / "spool.db", max_bytes=100 << 20)
        worker = SpoolWorker(spool)
        fwd = Forwarder(worker, pg_dsn, SiteConfig(), Metrics(), asyncio.Event())
        task = asyncio.create_task(fwd.run())
        try:
            await worker.call(spool.append_many, [(_cols("cut.a", t0, 10), [])])
            await until(lambda: not spool.batches, what="the first group stored")
            with psycopg.connect(pg_dsn, autocommit=True) as conn:  # the server ends the writers' sessions
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                             "current_database() AND application_name LIKE 'valvoja-%'")
            await worker.call(spool.append_many, [(_cols("cut.b", t0, 10), [])])
            fwd.wake.set()
            # The write fails, the forwarder reconnects after a back-off and writes the group.
            await until(lambda: fwd.down_since is not None, what="the broken write")
            await until(lambda: not spool.batches, what="the second group stored")
            gc.collect()
            await asyncio.sleep(0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await fwd.close()
            worker.shutdown()
        return leaked

    leaked = asyncio.run(go())
    assert not [m for m in leaked if "destroyed but it is pending" in m], leaked
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 20


def test_readings_committed_by_a_write_cancelled_during_its_spool_delete_are_counted_stored(pg_dsn, tmp_path):
    """The watchdog (or a shutdown) cancels a write after its COMMIT, while the spool thread deletes the batch: the
    delete completes in its thread, so the readings are in the database and gone from the spool, but
    ``valvoja_readings_stored_total`` (and /healthz's readings_stored) were only counted after the delete returned:
    readings stored without a count, for good (a replay of a batch whose delete failed counts as duplicates)."""
    t0 = (utcnow() - timedelta(hours=1)).replace(second=0, microsecond=0)

    async def go():
        spool = Spool(tmp_path / "spool.db", max_bytes=100 << 20)
        worker = SpoolWorker(spool)
        started, original = _slow_delete(spool)
        await worker.call(spool.append_many, [(_cols("count.a", t0, 30), [])])
        metrics = Metrics()
        fwd = Forwarder(worker, pg_dsn, SiteConfig(), metrics, asyncio.Event())
        await fwd._connect()
        write = asyncio.create_task(fwd.drain_once(linger=False))
        assert await asyncio.to_thread(started.wait, 30)
        write.cancel()
        await asyncio.gather(write, return_exceptions=True)
        await asyncio.sleep(0.7)  # the delete finishes in its thread
        spool.delete = original
        assert not await fwd.drain_once(linger=False), "the batch was deleted by the cancelled write"
        await fwd.close()
        worker.shutdown()
        return metrics.readings_out._value.get(), fwd.stored

    counted, stored = asyncio.run(go())
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 30
    assert counted == 30 and stored == 30, f"30 readings committed, {counted} counted ({stored} in /healthz)"


def test_a_locked_spool_makes_the_rollups_wait_quietly_instead_of_dying(pg_dsn, tmp_path, caplog):
    """Another process holding the spool's write lock (a backup with the sqlite3 shell, a stuck checkpoint) made the
    rollups' note update raise sqlite3.OperationalError "database is locked", which the rollup task did not catch:
    it died, the watchdog restarted it, it died again the next round, each time with a traceback. It backs off with
    one log line and a count, and catches up once the lock is gone."""
    import logging
    import sqlite3

    t0 = (utcnow() - timedelta(hours=1)).replace(second=0, microsecond=0)
    cfg = SiteConfig.model_validate({"database": {"rollup_interval_s": 0.05}})

    async def go():
        spool = Spool(tmp_path / "spool.db", max_bytes=100 << 20)
        worker = SpoolWorker(spool)
        await worker.call(spool._db.execute, "PRAGMA busy_timeout=50")  # fail fast instead of after 10 s
        await worker.call(spool.append_many, [(_cols("locked.a", t0, 30), [])])
        metrics = Metrics()
        fwd = Forwarder(worker, pg_dsn, cfg, metrics, asyncio.Event())
        await fwd._connect()
        assert await fwd.drain_once(linger=False)
        assert await worker.call(spool.rollup_pending) is not None
        other = sqlite3.connect(tmp_path / "spool.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the write lock, as another process would hold it
        rollups = RollupWorker(fwd, pg_dsn, fwd.db)
        rollups.backoff.initial_s = rollups.backoff.max_s = 0.05
        task = asyncio.create_task(rollups.run())
        try:
            await until(lambda: metrics.spool_errors._value.get() >= 3 or task.done(), what="locked rounds")
            assert not task.done(), f"the rollup task died: {task.exception()!r}"
            other.execute("ROLLBACK")
            await until(lambda: any(getattr(r, "event", "") == "rollup_resumed" for r in caplog.records),
                        what="the rollups resumed")
            left = await worker.call(spool.rollup_pending)
        finally:
            other.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await rollups.close()
            await fwd.close()
            worker.shutdown()
        return left

    with caplog.at_level(logging.DEBUG, logger="edge.forwarder"):
        left = asyncio.run(go())
    assert left is None, "the rollups owed were not marked done after the lock went"
    assert _minute(pg_dsn, "locked.a", t0) is not None
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "locked" in errors[0].getMessage(), [r.getMessage() for r in errors]
    assert errors[0].exc_info is None, "a traceback for an expected condition"


def test_parts_of_a_refused_group_committed_before_a_cancel_are_counted_stored(pg_dsn, tmp_path):
    """A group the database refuses for one reading is written in parts, each in its own transaction; a cancel in the
    middle (the shutdown flush's deadline, a watchdog restart) lost the count of the parts already committed: the
    group is written again later, those parts come back as duplicates and were never counted stored."""
    t0 = (utcnow() - timedelta(hours=1)).replace(second=0, microsecond=0)

    async def go():
        spool = Spool(tmp_path / "spool.db", max_bytes=100 << 20)
        worker = SpoolWorker(spool)
        cols = _cols("split.a", t0, 64)
        cols.time_us[40] = -300_000_000_000_000_000  # ~9,500 years BC: PostgreSQL's "timestamp out of range"
        await worker.call(spool.append_many, [(cols, [])])
        metrics = Metrics()
        fwd = Forwarder(worker, pg_dsn, SiteConfig(), metrics, asyncio.Event())
        await fwd._connect()
        committed, original = threading.Event(), fwd.sink.write

        async def linger_after_a_commit(batches):
            if committed.is_set():
                await asyncio.sleep(5)  # the next part, after one committed: the cancel arrives here
            result = await original(batches)
            if result.inserted:
                committed.set()
            return result

        fwd.sink.write = linger_after_a_commit
        write = asyncio.create_task(fwd.drain_once(linger=False))
        await until(committed.is_set, what="the first part committed")
        await asyncio.sleep(0.2)
        write.cancel()
        await asyncio.gather(write, return_exceptions=True)
        fwd.sink.write = original
        assert await fwd.drain_once(linger=False)  # the group again, whole
        await fwd.close()
        worker.shutdown()
        return metrics.readings_out._value.get(), metrics.readings_refused._value.get()

    counted, refused = asyncio.run(go())
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
    assert rows == 63 and refused >= 1
    assert counted == 63, f"63 readings committed, {counted} counted stored"


def test_the_tag_id_map_of_a_writer_is_bounded_whatever_the_tags_table_holds(pg_dsn, monkeypatch):
    """Readings of a tag nobody configured make a ``tags`` row (flagged), and anyone who may publish on a subscribed
    topic chooses those names. Each writer loaded every row of ``tags`` at connect and kept every name it met since:
    millions of junk topics made a map of gigabytes in each writer, loaded again at every start from the table that
    keeps them. The map is a cache now: at most TAG_IDS_MAX names (configured tags first) are loaded, it is
    emptied when it would grow beyond, and a name it lacks is looked up when a group needs it."""
    import asyncio

    from edge.sink import timescale

    monkeypatch.setattr(timescale, "TAG_IDS_MAX", 1000, raising=False)
    t0 = utcnow().replace(microsecond=0) - timedelta(minutes=5)

    async def scenario() -> tuple[int, int, list]:
        sink = TimescaleSink(pg_dsn)
        await sink.connect()  # makes the schema
        async with sink.conn.cursor() as cur:
            await cur.execute("INSERT INTO tags (name, configured) SELECT 'junk.' || g, false "
                              "FROM generate_series(1, 5000) g")
        await sink.conn.commit()
        await sink.close()
        sink = TimescaleSink(pg_dsn)
        await sink.connect()
        loaded = len(sink._tag_ids)
        biggest = loaded
        for i in range(0, 3000, 500):  # groups of 500 tags, old and new names
            cols = Columns.concat([_cols(f"junk.{j}" if j % 2 else f"new.{j}", t0, 1) for j in range(i, i + 500)])
            result = await sink.write([SpooledBatch(i + 1, cols, [], 0.0)])
            assert result.inserted == 500
            biggest = max(biggest, len(sink._tag_ids))
        await sink.close()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            stored = conn.execute("SELECT t.name, count(*) FROM readings r JOIN tags t ON t.id = r.tag_id "
                                  "GROUP BY 1 HAVING count(*) <> 1").fetchall()
        return loaded, biggest, stored

    loaded, biggest, wrong = asyncio.run(scenario())
    assert loaded <= 1000 and biggest <= 1000, (loaded, biggest)
    assert wrong == [], "every reading stored once under its own tag"



def test_rollup_refreshes_and_retention_rounds_the_database_refuses_are_counted(pg_dsn, tmp_path):
    """A role without INSERT on the rollup tables (a restore under another owner), a statement_timeout or a lock
    refuses every refresh: the console's 1-minute and 1-hour trends and the emissions job's late-data check (which
    counts readings in readings_1h) go stale, and all that said so was one log line, at the first failure. Nothing
    in /metrics counted it, so no alert rule could see it (the forwarder counts its own failures in
    valvoja_db_errors_total). A refused removal of old alerts, predictions or dead letters was the same."""
    from edge.settings import Database

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                     " $$ BEGIN RAISE EXCEPTION 'permission denied for table %', TG_TABLE_NAME; END $$")

    async def go():
        worker = SpoolWorker(Spool(tmp_path / "spool.db", max_bytes=100 << 20))
        metrics = Metrics()
        fwd = Forwarder(worker, pg_dsn, SiteConfig(), metrics, asyncio.Event())
        await fwd._connect()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO dead_letters (time, source, topic, payload, error)"
                         " VALUES (now() - interval '60 days', 's', 't', 'x', 'e')")
            for table in ("readings_1m", "dead_letters"):
                conn.execute(f"CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OR DELETE ON {table}"
                             " FOR EACH ROW EXECUTE FUNCTION refuse()")
        rollups = RollupWorker(fwd, pg_dsn, Database(url="postgresql://x/y", rollup_interval_s=0.1))
        rollups.backoff = Backoff(initial_s=0.1, max_s=0.1)  # several refused rounds in the test's time
        try:
            await worker.call(worker.spool.append_many, [(_cols("refused.t", utcnow(), 10), [])])
            assert await fwd.drain_once(linger=False)
            task = asyncio.create_task(rollups.run())
            await until(lambda: rollups.error is not None, what="a refused refresh")
            await asyncio.sleep(0.5)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await rollups.trim_once()  # the hourly round (behind the refresh in run(), which fails first here)
            return metrics.render().decode()
        finally:
            await rollups.close()
            await fwd.close()
            worker.shutdown()

    text = asyncio.run(go())
    counted = {part: float(line.split()[-1]) for part in ("refresh", "retention") for line in text.splitlines()
               if line.startswith(f'valvoja_rollup_errors_total{{part="{part}"}}')}
    assert counted.get("refresh", 0) >= 2 and counted.get("retention") == 1, counted


def test_a_second_value_at_a_stored_time_is_counted_and_said_a_replay_is_not(pg_dsn, tmp_path, caplog):
    """The database keeps one reading per (tag, time) and drops a repeat as a replay. A device stamping whole
    seconds while it sends twice a second lost every second value that way without a word (only the OPC UA
    collector noticed its own). A repeat with another value is counted (`valvoja_readings_conflicting_total`,
    /healthz `conflicting_not_stored`) and logged once a minute with the first; a replay of the same values is not."""
    t0 = utcnow().replace(microsecond=0) - timedelta(minutes=10)
    first = Columns.from_readings([Reading("conf.flow", t0 + timedelta(seconds=i), 10.0 + i, t0) for i in range(5)])
    # the next message: the same five seconds, two of them with new values (the half-second samples)
    again = Columns.from_readings([Reading("conf.flow", t0 + timedelta(seconds=i), 10.0 + i + (0.5 if i in (1, 3)
                                                                                                 else 0.0), t0)
                                   for i in range(5)] + [Reading("conf.flow", t0 + timedelta(seconds=5), 15.0, t0)])

    async def go():
        spool = Spool(tmp_path / "spool.db", max_bytes=100 << 20)
        worker = SpoolWorker(spool)
        metrics = Metrics()
        fwd = Forwarder(worker, pg_dsn, SiteConfig(), metrics, asyncio.Event())
        await fwd._connect()
        for cols in (first, first, again):  # the second is a replay (a crash before the spool delete)
            await worker.call(spool.append_many, [(cols, [])])
            assert await fwd.drain_once(linger=False)
        await fwd.close()
        worker.shutdown()
        return fwd, metrics

    with caplog.at_level("WARNING", logger="edge.forwarder"):
        fwd, metrics = asyncio.run(go())
    assert fwd.conflicting == 2 and metrics.readings_conflicting._value.get() == 2
    assert fwd.duplicates == 5 + 5  # the replay's five, and the repeat's five (three of them the same values)
    [line] = [r for r in caplog.records if getattr(r, "event", "") == "readings_conflicting"]
    assert "conf.flow" in line.getMessage() and "11 kept, 11.5 not stored" in line.getMessage(), line.getMessage()
    with psycopg.connect(pg_dsn) as conn:
        stored = conn.execute("SELECT r.value FROM readings r JOIN tags t ON t.id = r.tag_id WHERE t.name = "
                              "'conf.flow' ORDER BY r.time").fetchall()
    assert [v for (v,) in stored] == [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
