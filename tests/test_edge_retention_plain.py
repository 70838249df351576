"""Raw retention on plain PostgreSQL reads readings by their (tag_id, time) key: ``readings`` has no index on time
alone, and the hourly ``DELETE ... WHERE time < ...`` scanned the whole table (every reading of every tag kept,
years of them) to find the hour that aged out. Measured in bench/bench_db_growth.py."""

from __future__ import annotations

import asyncio

import psycopg

from edge.db.features import detect
from edge.db.migrate import migrate
from edge.sink.rollups import retention


async def _seq_scans(conn: psycopg.AsyncConnection) -> int:
    # Statistics are sent when the session goes idle; forced so that this session's own scans are counted now.
    await conn.execute("SELECT pg_stat_force_next_flush()")
    cur = await conn.execute("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'readings'")
    return (await cur.fetchone())[0]


def test_retention_on_a_plain_table_does_not_scan_it_whole(plain_pg_dsn):
    with psycopg.connect(plain_pg_dsn, autocommit=True) as conn:
        migrate(conn)
        features = detect(conn)
        conn.execute("INSERT INTO readings (time, tag_id, value, quality, receive_time)"
                     " SELECT ts, t, 1.0, 0, ts FROM generate_series(1, 40) t,"
                     " generate_series(now() - interval '10 days', now(), interval '2 min') ts")
        conn.execute("ANALYZE readings")
        total = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        due = conn.execute("SELECT count(*) FROM readings WHERE time < now() - interval '9 days'").fetchone()[0]

    async def go():
        async with await psycopg.AsyncConnection.connect(plain_pg_dsn, autocommit=True) as conn:
            before = await _seq_scans(conn)
            removed = await retention(conn, features, 9)
            return removed, await _seq_scans(conn) - before

    removed, scans = asyncio.run(go())
    assert removed == due > 0
    assert scans == 0, "retention read the whole readings table to find the rows past their age"
    with psycopg.connect(plain_pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == total - due
        assert conn.execute("SELECT count(*) FROM readings WHERE time < now() - interval '9 days'").fetchone()[0] == 0
