"""Retention against rollup work still owed: what a long outage's backlog brings back must reach the rollups."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta

import psycopg
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


def test_a_backlog_older_than_retention_committed_during_a_refresh_reaches_the_rollups(pg_dsn, tmp_path):
    """A spool drained after an outage longer than `retention_days` brings readings retention removes again; the
    docs promise their rollups are kept. The hourly retention ran right after a refresh: a group the forwarder
    committed meanwhile (its rollups noted, not yet made) was dropped with its chunk, and the next refresh found
    no raw readings to roll up: those readings were in neither table."""
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
