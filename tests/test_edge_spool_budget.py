"""The spool's budget under ``drop_oldest`` while the forwarder writes, against a real PostgreSQL + TimescaleDB:
what is counted dropped is what the database never got."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
from opcua_support import until

from edge.columns import Columns
from edge.forwarder import Forwarder
from edge.metrics import Metrics
from edge.pipeline import SpoolWorker
from edge.records import Reading, utcnow
from edge.settings import SiteConfig
from edge.spool import Spool


def _cols(tag: str, start, n: int) -> Columns:
    return Columns.from_readings([Reading(tag, start + timedelta(milliseconds=i), float(i), start) for i in range(n)])


def _waiting_on_a_lock(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return bool(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                 " AND application_name LIKE 'valvoja-%' AND wait_event_type = 'Lock'").fetchone()[0])


def test_readings_dropped_for_the_budget_are_only_those_the_database_never_gets(pg_dsn, tmp_path):
    """Under drop_oldest the oldest batches are the ones the forwarder is writing. A slow database (here: a lock
    holding the COPY) let new groups drop them from the spool and count them in valvoja_spool_dropped_total
    ("data was lost by policy"), and then their COPY committed: readings stored and counted lost, so stored +
    dropped came to more than was spooled. Batches being written are on their way out: the budget is the batches
    that wait, and what it drops is lost indeed."""
    t0 = (utcnow() - timedelta(hours=1)).replace(second=0, microsecond=0)
    n = 1000
    groups = [_cols(f"budget.{i}", t0, n) for i in range(4)]

    async def go():
        probe = Spool(tmp_path / "probe.db", max_bytes=10**9)
        probe.append_many([(groups[0], [])])
        one = probe.bytes
        probe.close()
        spool = Spool(tmp_path / "spool.db", max_bytes=round(2.5 * one), policy="drop_oldest")
        worker = SpoolWorker(spool)
        fwd = Forwarder(worker, pg_dsn, SiteConfig(), Metrics(), asyncio.Event())
        await fwd._connect()
        await worker.call(spool.append_many, [(groups[0], [])])
        with psycopg.connect(pg_dsn) as holder:
            holder.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
            write = asyncio.create_task(fwd.drain_once(linger=False))
            await until(lambda: _waiting_on_a_lock(pg_dsn), what="the first group's COPY waiting")
            for g in groups[1:]:  # the collectors go on while the database is slow
                await worker.call(spool.append_many, [(g, [])])
            holder.rollback()
        await write
        while await fwd.drain_once(linger=False):
            pass
        await fwd.close()
        worker.shutdown()
        dropped = spool.dropped
        spool.close()
        return dropped

    dropped = asyncio.run(go())
    with psycopg.connect(pg_dsn) as conn:
        stored = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
    assert dropped > 0, "the budget was exceeded: something had to go"
    assert stored + dropped == 4 * n, f"{stored} stored + {dropped} counted dropped of {4 * n} spooled"
