"""Edition detection and the sink on every edition the product must run on."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
import pytest
from servers import PostgresServer

from edge.db.features import detect, ensure_extension
from edge.db.migrate import migrate
from edge.records import Reading, utcnow
from edge.sink.timescale import TimescaleSink
from edge.spool import SpooledBatch, encode_readings


def _batch(seq: int, n: int, start) -> SpooledBatch:
    rs = [Reading(tag=f"e.t{i % 7}", time=start + timedelta(seconds=i), value=float(i), receive_time=start)
          for i in range(n)]
    return SpooledBatch(seq, encode_readings(rs), [], 0.0)


def _roundtrip(dsn: str) -> tuple[str, int, int]:
    async def go():
        sink = TimescaleSink(dsn)
        features = await sink.connect()
        t0 = utcnow().replace(microsecond=0) - timedelta(hours=1)
        first = await sink.write([_batch(1, 500, t0)])
        replay = await sink.write([_batch(1, 500, t0), _batch(2, 100, t0 + timedelta(seconds=500))])
        await sink.refresh_rollups(first.tag_ids | replay.tag_ids, t0, t0 + timedelta(seconds=600))
        async with sink.conn.cursor() as cur:
            await cur.execute("SELECT count(*) FROM readings")
            rows = (await cur.fetchone())[0]
            await cur.execute("SELECT sum(count) FROM readings_1h")
            rolled = (await cur.fetchone())[0]
        await sink.close()
        assert first.fast_path and not replay.fast_path and replay.duplicates == 500
        return features.edition, rows, rolled

    return asyncio.run(go())


def test_timescaledb_apache_edition(pg_dsn):
    edition, rows, rolled = _roundtrip(pg_dsn)
    assert edition == "apache" and rows == 600 and rolled == 600
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM timescaledb_information.hypertables "
                            "WHERE hypertable_name = 'readings'").fetchone()[0] == 1


def test_plain_postgresql(plain_pg_dsn):
    edition, rows, rolled = _roundtrip(plain_pg_dsn)
    assert edition == "plain" and rows == 600 and rolled == 600


def test_timescaledb_installed_but_not_preloaded_is_reported_not_fatal():
    """Library installed, not preloaded: CREATE EXTENSION would be FATAL; we say why and run as plain."""
    server = PostgresServer(settings={"shared_preload_libraries": "''"})
    if not server.timescaledb:
        server.close()
        pytest.skip("TimescaleDB is not installed on this machine (scripts/setup.sh builds it)")
    server.start()
    try:
        dsn = server.create_database("nopreload", timescaledb=False)
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
            reason = ensure_extension(conn)
            assert reason and "shared_preload_libraries" in reason
            features, applied = migrate(conn)
            assert features.edition == "plain" and applied and detect(conn).edition == "plain"
    finally:
        server.close()
