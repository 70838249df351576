"""1-minute and 1-hour rollups per tag, and retention (DESIGN.md §3).

The rollup tables have one shape on every edition; the forwarder recomputes the
buckets its commits touched, so late data (a spool drained after an outage)
corrects old buckets too. Bad-quality and non-finite values are left out of
min/max/mean and counted in ``bad_count``.

Raw readings only ever grow, except where retention removed them (the rollups are
kept). A 1-minute bucket is therefore never replaced by a recomputation over fewer
readings than it counted: late data for a bucket whose raw readings retention already
removed would otherwise turn the rollup of the whole minute into that of the late
readings alone. Such late readings are stored raw (until retention removes them too)
and counted only in a bucket that had no rollup yet.

The same holds one level up: an hour is recomputed from its 1-minute rollups, which
``database.rollups_1m_retention_days`` removes (`retention_1m`) while the hourly ones are kept. A late reading for
such an hour makes a 1-minute rollup of its own minute (there is none left to guard), and the hour recomputed from
that one minute would become the hour of the late readings alone; so an hour, too, is never replaced by a
recomputation over fewer readings than it counted. The late readings stay in their own 1-minute rollup (until
retention removes it) and out of the hour. The 1-minute retention cuts on whole hours, so an hour keeps either all
of its minutes or none.

The work is tracked as the set of 1-minute buckets the commits touched (`minutes_of`) and
recomputed per run of neighbouring minutes (`runs`), not as one span from the oldest to the
newest reading: a device whose clock fell back to 1970 (a flat clock battery) made every
refresh recompute the whole history of every tag committed beside it.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import psycopg

from edge.db.features import Features


def _last(features: Features) -> str:
    if features.timescaledb:
        return "last(value, time) FILTER (WHERE {good}), max(time) FILTER (WHERE {good})"
    return ("(array_agg(value ORDER BY time DESC) FILTER (WHERE {good}))[1], "
            "max(time) FILTER (WHERE {good})")


US_PER_MINUTE = 60_000_000
MAX_RUNS = 64  # refresh statements per round at most: scattered minutes are merged over their smallest gaps


def minutes_of(time_us: np.ndarray) -> set[int]:
    """The 1-minute buckets (minutes since the epoch) of reading times in µs."""
    return set(np.unique(np.floor_divide(time_us, US_PER_MINUTE)).tolist())


def runs(minutes: set[int], max_runs: int = MAX_RUNS) -> list[tuple[int, int]]:
    """``minutes`` as runs (first, last minute) of neighbouring minutes; where there would be more than
    ``max_runs``, the runs across the smallest gaps are joined (recomputing a few untouched minutes is cheaper
    than a statement per scattered minute)."""
    if not minutes:
        return []
    m = np.fromiter(sorted(minutes), np.int64, len(minutes))
    gaps = np.diff(m)
    cut = gaps > 1
    if cut.sum() >= max_runs:
        keep = np.argsort(gaps, kind="stable")[-(max_runs - 1):]  # the widest gaps stay cuts
        cut = np.zeros_like(cut)
        cut[keep] = True
    starts = np.r_[0, np.flatnonzero(cut) + 1]
    ends = np.r_[starts[1:] - 1, len(m) - 1]
    return [(int(m[a]), int(m[b])) for a, b in zip(starts, ends, strict=True)]


async def refresh(conn: psycopg.AsyncConnection, features: Features, tag_ids: list[int],
                  start: datetime, end: datetime) -> None:
    if not tag_ids:
        return
    good = "quality < 2 AND value IS NOT NULL AND value <> 'NaN'::float8"
    b1m = features.bucket("1 minute", "time")
    last = _last(features).format(good=good)
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            f"""
            INSERT INTO readings_1m (bucket, tag_id, min, max, sum, count, last, last_time, bad_count)
            SELECT {b1m} AS bucket, tag_id,
                   min(value) FILTER (WHERE {good}), max(value) FILTER (WHERE {good}),
                   sum(value) FILTER (WHERE {good}), count(*) FILTER (WHERE {good}),
                   {last}, count(*) FILTER (WHERE NOT ({good}))
            FROM readings
            WHERE tag_id = ANY(%(tags)s)
              AND time >= {features.bucket('1 minute', '%(start)s::timestamptz')}
              AND time < {features.bucket('1 minute', '%(end)s::timestamptz')} + interval '1 minute'
            GROUP BY 1, 2
            ON CONFLICT (tag_id, bucket) DO UPDATE SET min = EXCLUDED.min, max = EXCLUDED.max,
              sum = EXCLUDED.sum, count = EXCLUDED.count, last = EXCLUDED.last,
              last_time = EXCLUDED.last_time, bad_count = EXCLUDED.bad_count
            WHERE readings_1m.count + readings_1m.bad_count <= EXCLUDED.count + EXCLUDED.bad_count
            """, {"tags": tag_ids, "start": start, "end": end})
        b1h = features.bucket("1 hour", "bucket")
        last_h = ("last(last, last_time)" if features.timescaledb
                  else "(array_agg(last ORDER BY last_time DESC NULLS LAST))[1]")
        await cur.execute(
            f"""
            INSERT INTO readings_1h (bucket, tag_id, min, max, sum, count, last, last_time, bad_count)
            SELECT {b1h} AS b, tag_id, min(min), max(max), sum(sum), sum(count)::int,
                   {last_h}, max(last_time), sum(bad_count)::int
            FROM readings_1m
            WHERE tag_id = ANY(%(tags)s)
              AND bucket >= {features.bucket('1 hour', '%(start)s::timestamptz')}
              AND bucket < {features.bucket('1 hour', '%(end)s::timestamptz')} + interval '1 hour'
            GROUP BY 1, 2
            ON CONFLICT (tag_id, bucket) DO UPDATE SET min = EXCLUDED.min, max = EXCLUDED.max,
              sum = EXCLUDED.sum, count = EXCLUDED.count, last = EXCLUDED.last,
              last_time = EXCLUDED.last_time, bad_count = EXCLUDED.bad_count
            WHERE readings_1h.count + readings_1h.bad_count <= EXCLUDED.count + EXCLUDED.bad_count
            """, {"tags": tag_ids, "start": start, "end": end})


TAIL_MARGIN_MINUTES = 10  # before the newest rollup: commits racing a refresh, writers finishing out of order


async def unrolled_tail(conn: psycopg.AsyncConnection) -> tuple[set[int], set[int]]:
    """Tags and 1-minute buckets (minutes since the epoch) of raw readings from ``TAIL_MARGIN_MINUTES`` before each
    tag's newest rollup on (all of a tag's readings where it has none): rollup work a starting gateway owes that no
    spool note may record.

    The documented backup is a pg_dump of the running database: readings committed after the last refresh are in
    it, and the work they owe is noted in the spool of the gateway that wrote them, not in the dump. After a restore
    those minutes kept rollups short of their raw readings. Recomputing the tail once at start costs a few minutes
    per tag, read by the (tag_id, bucket) and (tag_id, time) keys on every edition (a max() over the whole rollup
    table is a full scan on plain PostgreSQL), and changes nothing where the rollups were right. A dump taken while
    a long backlog was drained can also leave older minutes owed; those are not found here."""
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            "SELECT t.id, m.minute FROM tags t"
            " CROSS JOIN LATERAL (SELECT max(bucket) AS newest FROM readings_1m WHERE tag_id = t.id) n"
            " CROSS JOIN LATERAL (SELECT DISTINCT floor(extract(epoch FROM r.time) / 60)::bigint AS minute"
            "  FROM readings r WHERE r.tag_id = t.id"
            "  AND r.time >= coalesce(n.newest - %s * interval '1 minute', '-infinity')) m",
            (TAIL_MARGIN_MINUTES,))
        rows = await cur.fetchall()
    return {r[0] for r in rows}, {int(r[1]) for r in rows}


async def _is_hypertable(cur: psycopg.AsyncCursor, table: str) -> bool:
    await cur.execute("SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables"
                      " WHERE hypertable_name = %s AND hypertable_schema = current_schema())", (table,))
    return (await cur.fetchone())[0]


async def _key_tag_ids(cur: psycopg.AsyncCursor, table: str) -> list[int]:
    """The tag ids of ``table`` from its (tag_id, ...) key itself (a skip scan: one probe per tag), not from
    ``tags``."""
    await cur.execute(
        f"WITH RECURSIVE t AS (SELECT min(tag_id) AS id FROM {table}"
        f" UNION ALL SELECT (SELECT min(tag_id) FROM {table} WHERE tag_id > t.id) FROM t WHERE t.id IS NOT NULL)"
        " SELECT array_agg(id) FROM t WHERE id IS NOT NULL")
    return (await cur.fetchone())[0] or []


async def _retention_policy(cur: psycopg.AsyncCursor, table: str, days: int) -> None:
    # The server's own job scheduler does it (community edition); re-adding keeps the policy in step with the config.
    await cur.execute("SELECT remove_retention_policy(%s::regclass, if_exists => true)", (table,))
    await cur.execute("SELECT add_retention_policy(%s::regclass, %s * interval '1 day')", (table, days))


async def retention(conn: psycopg.AsyncConnection, features: Features, days: int, batch: int | None = None) -> int:
    """Drop raw readings older than ``days`` (rollups are kept); returns chunks or rows removed.

    What is possible depends on the table, not only on the server: a database made on plain PostgreSQL and moved to
    TimescaleDB (pg_restore, or the extension installed later) keeps ``readings`` an ordinary table, on which
    ``drop_chunks`` and retention policies fail, so it is trimmed by DELETE as on plain PostgreSQL. There, with
    ``batch``, at most that many rows go in one call: the caller (which holds writes off around each call) repeats
    while a call removes ``batch``."""
    async with conn.transaction(), conn.cursor() as cur:
        hypertable = features.timescaledb and await _is_hypertable(cur, "readings")
        if hypertable and features.community:
            await _retention_policy(cur, "readings", days)
            return 0
        if hypertable:
            await cur.execute("SELECT count(*) FROM drop_chunks('readings', older_than => %s * interval '1 day')",
                              (days,))
            return (await cur.fetchone())[0]
        # By the (tag_id, time) key, one range per tag: there is no index on time alone, and a DELETE by time
        # scanned the whole table every hour for the hour that aged out, writes held off (0.84-1.07 s on 4.3 M rows,
        # growing with the table; this 0.024 s: bench/bench_db_growth.py). An index on time would cost every write
        # instead (37-40 % more WAL).
        tag_ids = await _key_tag_ids(cur, "readings")
        if batch is None:
            await cur.execute("DELETE FROM readings WHERE tag_id = ANY(%s) AND time < now() - %s * interval '1 day'",
                              (tag_ids, days))
            return cur.rowcount
        # By row address (a TID scan): the rows found by the key are removed without a join the planner might
        # answer with a scan of the whole table. The caller's lock holds writes off, so no address changes between.
        await cur.execute(
            "DELETE FROM readings WHERE ctid = ANY(ARRAY(SELECT ctid FROM readings WHERE tag_id = ANY(%s)"
            " AND time < now() - %s * interval '1 day' LIMIT %s))", (tag_ids, days, batch))
        return cur.rowcount


# Rows of an ordinary readings_1m, by its (tag_id, bucket) key: a plain table has no index on bucket alone. Whole
# hours only (see the module docstring); now() is the statement's, so a batch after an hour boundary takes that hour.
_DELETE_1M = """
    DELETE FROM readings_1m WHERE (tag_id, bucket) IN (
        SELECT tag_id, bucket FROM readings_1m
        WHERE tag_id = ANY(%(tags)s) AND bucket < {cutoff} LIMIT %(batch)s)"""

_LOCK_TIMEOUT_S = 5  # as raw readings' retention waits (edge.forwarder.RETENTION_LOCK_TIMEOUT_S)


async def retention_1m(conn: psycopg.AsyncConnection, features: Features, days: int, deadline: float,
                       batch: int = 20_000) -> tuple[int, str, bool]:
    """Remove 1-minute rollups older than ``days`` (the hourly ones are kept): (how many, "chunks" or "rows",
    done). ``done`` is False when ``deadline`` (time.monotonic()) passed with rows left: the caller goes on soon.

    The cheapest removal the table allows: a retention policy in the server's scheduler on the community edition,
    ``drop_chunks`` (whole 7-day chunks: the rollups are kept up to a week longer) on the Apache-2 edition, and
    DELETE in batches of ``batch`` rows, each its own transaction, on an ordinary table (plain PostgreSQL, or a
    database moved there from it). Chunk boundaries are whole hours, and so is the DELETE's cutoff. Only the rollup
    worker writes this table, on the connection this runs on, so no rollup work can be lost in between: a minute
    rolled up before is in its hour already."""
    from edge.sink.housekeeping import delete_batches

    async with conn.transaction(), conn.cursor() as cur:
        hypertable = features.timescaledb and await _is_hypertable(cur, "readings_1m")
        if hypertable and features.community:
            await _retention_policy(cur, "readings_1m", days)
            return 0, "chunks", True
    if hypertable:
        try:
            async with conn.transaction(), conn.cursor() as cur:
                # A console query reading an old chunk holds it: the rollups wait behind drop_chunks no longer
                # than this, and the chunk goes at the next hourly round.
                await cur.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT_S}s'")
                await cur.execute("SELECT count(*) FROM drop_chunks('readings_1m',"
                                  " older_than => %s * interval '1 day')", (days,))
                return (await cur.fetchone())[0], "chunks", True
        except psycopg.errors.LockNotAvailable:
            return 0, "chunks", True
    async with conn.transaction(), conn.cursor() as cur:
        tag_ids = await _key_tag_ids(cur, "readings_1m")
    cutoff = features.bucket("1 hour", "now() - %(days)s * interval '1 day'")
    removed, done = await delete_batches(conn, _DELETE_1M.format(cutoff=cutoff), {"tags": tag_ids, "days": days},
                                         batch, deadline)
    return removed, "rows", done
