"""Edition detection and the sink on every edition the product must run on."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
import pytest
from servers import PostgresServer

from edge.columns import Columns
from edge.db.features import detect, ensure_extension
from edge.db.migrate import migrate
from edge.records import Reading, utcnow
from edge.sink.timescale import TimescaleSink
from edge.spool import SpooledBatch


def _batch(seq: int, n: int, start) -> SpooledBatch:
    rs = [Reading(tag=f"e.t{i % 7}", time=start + timedelta(seconds=i), value=float(i), receive_time=start)
          for i in range(n)]
    return SpooledBatch(seq, Columns.from_readings(rs), [], 0.0)


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


def test_a_role_that_is_not_superuser_migrates_where_timescaledb_is_not_created_yet(pg_server):
    """The recommended set-up: the gateway logs in with its own role, not a superuser, on a database where nobody has
    created the extension yet. Reading shared_preload_libraries needs superuser or pg_read_all_settings: the gateway
    (and the console) crashed at the first migration with InsufficientPrivilege. Now: the reason is said, the schema
    is created as plain PostgreSQL."""
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    if not pg_server.timescaledb:
        pytest.skip("TimescaleDB is not installed on this machine (scripts/setup.sh builds it)")
    admin = pg_server.dsn()
    dsn = pg_server.create_database(timescaledb=False)
    db = conninfo_to_dict(dsn)["dbname"]
    role = f"gw_{db}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(db), sql.Identifier(role)))
    try:
        with psycopg.connect(make_conninfo(dsn, user=role), autocommit=True) as conn:
            reason = ensure_extension(conn)
            assert reason and "superuser" in reason and "CREATE EXTENSION timescaledb" in reason
            features, applied = migrate(conn)
            assert features.edition == "plain" and applied
            assert conn.execute("SELECT to_regclass('readings') IS NOT NULL").fetchone()[0]
    finally:
        pg_server.drop_database(db)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_every_value_kind_is_stored_exactly(pg_dsn):
    """Fast (vectorised) and slow COPY rows side by side: floats, NaN, None, text, bool, big int, server time."""
    import math

    t0 = utcnow().replace(microsecond=0) - timedelta(minutes=5)
    kinds = [1.25, math.nan, None, "OPEN", True, 2**60, 7, -0.0]
    rs = [Reading(tag=f"k.{i}", time=t0 + timedelta(microseconds=123457 * (i + 1)), value=v, receive_time=t0,
                  quality=i % 3, flags=i, status=0x808C0000 if i == 2 else 0,
                  server_time=t0 if i == 3 else None) for i, v in enumerate(kinds)]

    async def go():
        sink = TimescaleSink(pg_dsn)
        await sink.connect()
        await sink.write([SpooledBatch(1, Columns.from_readings(rs), [], 0.0)])
        await sink.close()

    asyncio.run(go())
    with psycopg.connect(pg_dsn) as conn:
        got = {tag: row for tag, *row in conn.execute(
            "SELECT tag, time, value, value_text, quality, flags, status, server_time FROM readings_named")}
    for i, r in enumerate(rs):
        time, value, text, quality, flags, status, server = got[r.tag]
        assert time == r.time and quality == r.quality and flags == i and status == r.status
        assert server == r.server_time
        v = r.value
        if v is None:
            assert value is None and text is None
        elif isinstance(v, str):
            assert text == v and value is None
        elif isinstance(v, float) and math.isnan(v):
            assert math.isnan(value)
        elif isinstance(v, int) and not isinstance(v, bool) and abs(v) > 2**53:
            assert text == str(v) and value == float(v), "an integer beyond float8 precision is also kept as text"
        else:
            assert value == float(v)


def test_dead_letters_of_a_replayed_batch_are_stored_once(pg_dsn):
    """A crash between the database COMMIT and the spool delete writes the batch again: its readings are
    de-duplicated by their key, and its dead letters by their digest."""
    async def go():
        sink = TimescaleSink(pg_dsn)
        await sink.connect()
        t0 = utcnow().replace(microsecond=0) - timedelta(hours=1)
        b = _batch(1, 10, t0)
        b.dead_letters = [("mqtt", "a/b", b"\x00junk", "not JSON", 1_700_000_000_000_000),
                          ("mqtt", "a/\x00c", b"junk", "bad topic", 1_700_000_000_000_001)]
        await sink.write([b])
        await sink.write([b])
        cur = await sink.conn.execute("SELECT topic FROM dead_letters ORDER BY time")
        topics = [t for (t,) in await cur.fetchall()]
        cur = await sink.conn.execute("SELECT count(*) FROM readings")
        readings = (await cur.fetchone())[0]
        await sink.close()
        return topics, readings

    topics, readings = asyncio.run(go())
    assert readings == 10
    assert topics == ["a/b", "a/\\x00c"]  # once each; a NUL in a topic is written escaped, not refused


def test_a_group_the_database_refuses_is_written_in_halves(pg_dsn, tmp_path):
    """Values the database (or the encoding before it) refuses are found by writing the group in halves: each
    becomes a dead letter with the error, every other reading is stored once, and the spool empties."""
    from edge.forwarder import Forwarder
    from edge.metrics import Metrics
    from edge.pipeline import SpoolWorker
    from edge.settings import SiteConfig
    from edge.spool import Spool

    async def go():
        t0 = utcnow().replace(microsecond=0) - timedelta(hours=1)
        worker = SpoolWorker(Spool(tmp_path / "spool.db", max_bytes=100 << 20))
        rs = [Reading(f"e.t{i % 7}", t0 + timedelta(seconds=i), "ok\x00bad" if i == 600 else float(i), t0)
              for i in range(1000)]
        first = Columns.from_readings(rs[:500])
        first.time_us[137] = -(2**62)  # about 146,000 BC: PostgreSQL refuses it ("timestamp out of range")
        await worker.call(worker.spool.append_many, [(first, []), (rs[500:], [])])
        fwd = Forwarder(worker, pg_dsn, SiteConfig(), Metrics(), asyncio.Event())
        await fwd._connect()
        assert await fwd.drain_once(linger=False)
        async with fwd.sink.conn.cursor() as cur:
            await cur.execute("SELECT count(*) FROM readings")
            stored = (await cur.fetchone())[0]
            await cur.execute("SELECT topic, error FROM dead_letters ORDER BY topic")
            dead = await cur.fetchall()
        await fwd.close()
        return stored, dead, worker.spool.readings, fwd.stored

    stored, dead, left, counted = asyncio.run(go())
    assert stored == 998 and counted == 998 and left == 0
    assert [t for t, _ in dead] == ["e.t4", "e.t5"]  # rows 137 and 600
    assert "out of range" in dead[0][1] and "NUL" in dead[1][1]


def test_a_calibration_put_back_after_another_is_the_one_in_force_again(pg_dsn):
    """A transmitter goes for repair, a spare with its own certificate takes its place, then the repaired one comes
    back: the configuration returns to the first certificate. Its record already existed, so nothing was written,
    and the spare's record stayed the one in force (console asset page, `valvoja maintenance trace`): every reading
    after the swap back was traced to the wrong instrument's calibration and uncertainty."""
    from datetime import date

    from edge.settings import Asset, Calibration, Tag

    own = Calibration(certificate="CAL-100", date=date(2026, 1, 10), uncertainty=0.5, uncertainty_unit="bar")
    spare = Calibration(certificate="CAL-SPARE-7", date=date(2025, 11, 2), uncertainty=0.8, uncertainty_unit="bar")

    def in_force() -> tuple:
        with psycopg.connect(pg_dsn) as conn:  # as the console and the trace pick it
            return conn.execute("SELECT c.certificate, c.uncertainty FROM tag_calibrations c JOIN tags t"
                                " ON t.id = c.tag_id WHERE t.name = 'pt.101' AND c.valid_from <= now()"
                                " ORDER BY c.valid_from DESC LIMIT 1").fetchone()

    async def sync(cal: Calibration) -> None:
        sink = TimescaleSink(pg_dsn)
        await sink.connect()
        try:
            await sink.sync_registry([Asset(name="B-1")], [Tag(name="pt.101", asset="B-1", calibration=cal)])
        finally:
            await sink.close()

    seen = []
    for cal in (own, own, spare, spare, own, own):  # each start syncs the registry
        asyncio.run(sync(cal))
        seen.append(in_force())
    assert seen == [("CAL-100", 0.5)] * 2 + [("CAL-SPARE-7", 0.8)] * 2 + [("CAL-100", 0.5)] * 2, seen
    with psycopg.connect(pg_dsn) as conn:  # a period per change, none per start
        assert conn.execute("SELECT count(*) FROM tag_calibrations").fetchone()[0] == 3


def test_two_writers_with_the_same_readings_in_another_order_do_not_deadlock(pg_dsn):
    """`database.writers` groups are written side by side. Readings that come twice in different orders (a redundant
    OPC UA pair's failover, a backfill over live data) were copied in arrival order: one writer held a key the
    other was about to insert and waited for one the other held, PostgreSQL broke the deadlock by failing one
    group, and the forwarder took that for an outage (db_down, every connection closed, a back-off). Here a third
    session's uncommitted rows hold both writers in the middle of their COPY, so the orders cross for certain."""
    t = utcnow().replace(microsecond=0)

    def group(names: list[str]) -> list[SpooledBatch]:
        return [SpooledBatch(1, Columns.from_readings([Reading(n, t, 1.0, t) for n in names]), [], 0.0)]

    async def go():
        a, b = TimescaleSink(pg_dsn), TimescaleSink(pg_dsn)
        await a.connect()
        await b.connect(migrate_schema=False)
        try:
            # Ids in name order; the hour's chunk made beforehand (a writer making one waits for the other's whole
            # transaction instead: no deadlock to show).
            await a.write(group(["dl.a", "dl.b", "dl.c", "dl.d", "dl.z"]))
            await b._ensure_tags({"dl.a", "dl.b", "dl.c", "dl.d"})
            async with a.conn.transaction():
                await a.conn.execute("DELETE FROM readings WHERE tag_id <> (SELECT id FROM tags WHERE name = 'dl.z')")
            with psycopg.connect(pg_dsn) as holder:
                ids = dict(holder.execute("SELECT name, id FROM tags WHERE name LIKE 'dl.%'").fetchall())
                holder.execute("INSERT INTO readings (time, tag_id, value, quality, receive_time)"
                               " VALUES (%s, %s, 0, 0, %s), (%s, %s, 0, 0, %s)", (t, ids["dl.b"], t, t, ids["dl.c"], t))
                first = asyncio.create_task(a.write(group(["dl.d", "dl.b", "dl.a"])))
                second = asyncio.create_task(b.write(group(["dl.a", "dl.c", "dl.d"])))
                await asyncio.sleep(0.5)  # both wait for the holder's rows
                holder.rollback()
            return await asyncio.gather(first, second, return_exceptions=True)
        finally:
            await a.close()
            await b.close()

    results = asyncio.run(go())
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert sorted((r.inserted, r.duplicates) for r in results) == [(1, 2), (3, 0)]
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 5
