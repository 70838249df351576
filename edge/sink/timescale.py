"""TimescaleDB / PostgreSQL sink: readings by binary COPY, idempotently (DESIGN.md §3).

`write()` commits one group of spool batches in one transaction:
1. fast path: COPY straight into ``readings`` inside a savepoint;
2. if that hits the (tag_id, time) key (a replay after a crash, or a device
   re-sending a sample), roll back to the savepoint, COPY into a temporary table and
   ``INSERT ... ON CONFLICT DO NOTHING`` - so a replayed batch creates no duplicates.
Dead letters go in the same transaction. Only after COMMIT does the forwarder delete
the batches from the spool.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import msgpack
import numpy as np
import psycopg
from psycopg import sql

from edge.columns import Columns, from_us
from edge.db.features import Features, detect
from edge.db.migrate import check_schema, migrate
from edge.settings import Asset, Tag
from edge.sink.pgbinary import COLUMNS, encode_columns
from edge.sink.rollups import US_PER_MINUTE, minutes_of, runs
from edge.spool import SpooledBatch

log = logging.getLogger(__name__)

# Tag name -> id map of a writer: a cache of at most this many names. Readings of tags nobody configured make rows of
# their own, named by whoever may publish; loaded whole and kept whole, the map of a table holding millions of junk
# names took gigabytes in each writer, again at every start.
TAG_IDS_MAX = 200_000
_COPY_READINGS = f"COPY readings ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"


def _checked_detect(conn: psycopg.Connection) -> Features:
    check_schema(conn)
    return detect(conn)


def _text(s: str) -> str:
    # PostgreSQL text cannot hold NUL; a dead letter must be storable whatever its topic or error says.
    return s.replace("\x00", "\\x00")


async def write_dead_letters(cur: psycopg.AsyncCursor, dead: list[tuple]) -> None:
    """``(source, topic, payload, error, receive_time_us)`` rows, each stored once: a replay of the same batch
    (a crash between COMMIT and the spool delete) finds its digest and adds nothing."""
    rows = []
    for source, topic, payload, error, t in dead:
        payload = bytes(payload)
        h = hashlib.sha256()
        for part in (source.encode(), topic.encode(), payload, error.encode(), str(t).encode()):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        rows.append((from_us(t), _text(source), _text(topic), payload, _text(error), h.digest()))
    await cur.executemany(
        "INSERT INTO dead_letters (time, source, topic, payload, error, digest) VALUES (%s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (digest) DO NOTHING", rows)


@dataclass(slots=True)
class WriteResult:
    rows: int
    inserted: int
    duplicates: int
    minutes: set[int] = field(default_factory=set)  # the 1-minute buckets the readings fall in (rollup work)
    tag_ids: set[int] = field(default_factory=set)
    fast_path: bool = True
    refused: list[tuple[str, str]] = field(default_factory=list)
    # Of the duplicates, readings whose (tag, time) the database held with another value: not a replay but a second
    # value at one time (a device stamping whole seconds at 2 Hz), which the database does not keep. With the first
    # of them: (tag id, time, value kept, value not stored).
    conflicts: int = 0
    conflict: tuple | None = None

    def add(self, other: WriteResult) -> None:
        """Fold the result of another write of the same group into this one (a group written in parts)."""
        self.rows += other.rows
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.conflicts += other.conflicts
        self.conflict = self.conflict or other.conflict
        self.minutes |= other.minutes
        self.tag_ids |= other.tag_ids
        self.fast_path &= other.fast_path
        self.refused += other.refused


class TimescaleSink:
    """One connection to the database; not shared between tasks."""

    def __init__(self, conninfo: str, *, connect_timeout_s: float = 5.0, application_name: str = "valvoja",
                 migration_lock_timeout_s: float = 60.0):
        self._conninfo = conninfo
        self._timeout = connect_timeout_s
        self._lock_timeout_s = migration_lock_timeout_s
        self._app = application_name
        self.conn: psycopg.AsyncConnection | None = None
        self.features: Features | None = None
        self._tag_ids: dict[str, int] = {}

    async def connect(self, *, migrate_schema: bool = True) -> Features:
        """Connect, migrate (in a sync side connection), and load the tag id map.

        The migration and the feature detection are sync (one code path with the CLI); they run in a worker
        thread, so a database that answers slowly (or a connect that waits out its timeout) never stalls the
        event loop the collectors run on. Without migrating, the schema must be exactly the one this program ships
        (`check_schema`): writes to a schema behind or ahead of it were attempted anyway."""
        if migrate_schema:
            await asyncio.to_thread(self._sync, self._migrate, self._app + "-migrate")
        self.conn = await psycopg.AsyncConnection.connect(
            self._conninfo, connect_timeout=int(max(1, self._timeout)), application_name=self._app)
        self.features = await asyncio.to_thread(self._sync, detect if migrate_schema else _checked_detect, self._app)
        await self._load_tag_ids()
        return self.features

    def _migrate(self, conn: psycopg.Connection) -> None:
        """`migrate`, waiting at most ``migration_lock_timeout_s`` for a lock. Without a limit a gateway whose start
        met the migration lock held (another gateway upgrading the schema, `valvoja db migrate`, a long query on a
        table a migration alters) waited in silence (no error in /healthz, no db_down) in a worker thread the
        watchdog's restart could not cancel, one more thread each restart, until the pool's threads (6 on 2 cores)
        were all waiting and nothing else run in a thread (connects, spool work) went on."""
        conn.execute(f"SET lock_timeout = '{int(self._lock_timeout_s * 1000)}ms'")
        try:
            migrate(conn)
        except psycopg.errors.LockNotAvailable as exc:
            raise TimeoutError(
                f"the schema migration check waited {self._lock_timeout_s:g} s for a lock another session holds "
                "(another gateway or `valvoja db migrate` upgrading the schema, or a long query on a table a "
                "migration alters; see pg_stat_activity); retrying") from exc

    def _sync(self, fn, application_name: str):
        """``fn(conn)`` on a short-lived sync connection."""
        with psycopg.connect(self._conninfo, connect_timeout=int(max(1, self._timeout)),
                             autocommit=True, application_name=application_name) as sconn:
            return fn(sconn)

    async def close(self) -> None:
        if self.conn is not None:
            try:
                await self.conn.close()
            finally:
                self.conn = None

    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.closed

    async def _load_tag_ids(self) -> None:
        async with self.conn.cursor() as cur:
            # Configured tags first: they are the ones read every second; the others are looked up when met.
            await cur.execute("SELECT name, id FROM tags ORDER BY configured DESC, id DESC LIMIT %s", (TAG_IDS_MAX,))
            self._tag_ids = dict(await cur.fetchall())
        await self.conn.commit()

    async def sync_registry(self, assets: Iterable[Asset], tags: Iterable[Tag]) -> None:
        """Upsert the configured assets, tags and calibration records (traceability)."""
        conn = self.conn
        async with conn.transaction(), conn.cursor() as cur:
            for a in assets:
                await cur.execute(
                    "INSERT INTO assets (name, site, kind, description) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET site = EXCLUDED.site, kind = EXCLUDED.kind, "
                    "description = EXCLUDED.description, updated_at = now()",
                    (a.name, a.site, a.kind, a.description))
            for t in tags:
                lo, hi = t.range if t.range else (None, None)
                await cur.execute(
                    "INSERT INTO tags (name, asset, unit, description, kind, range_min, range_max, sampling_ms,"
                    " configured) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, true) "
                    "ON CONFLICT (name) DO UPDATE SET asset = EXCLUDED.asset, unit = EXCLUDED.unit,"
                    " description = EXCLUDED.description, kind = EXCLUDED.kind, range_min = EXCLUDED.range_min,"
                    " range_max = EXCLUDED.range_max, sampling_ms = EXCLUDED.sampling_ms, configured = true,"
                    " updated_at = now() RETURNING id",
                    (t.name, t.asset, t.unit, t.description, t.kind, lo, hi, t.sampling_ms))
                (tag_id,) = await cur.fetchone()
                self._tag_ids[t.name] = tag_id
                c = t.calibration
                if c is not None:
                    # A calibration other than the one in force (the latest record up to now) starts a new period;
                    # the same one is not repeated at each start. Compared with that one only: compared with every
                    # record, a transmitter back from repair after a spare (its certificate stored before) left the
                    # spare's record in force.
                    await cur.execute(
                        "INSERT INTO tag_calibrations (tag_id, valid_from, certificate, calibrated_on,"
                        " uncertainty, uncertainty_unit) SELECT %(tag)s, now(), %(cert)s, %(on)s, %(u)s, %(unit)s "
                        "WHERE NOT EXISTS (SELECT 1 FROM (SELECT * FROM tag_calibrations WHERE tag_id = %(tag)s"
                        " AND valid_from <= now() ORDER BY valid_from DESC LIMIT 1) c WHERE c.certificate = %(cert)s"
                        " AND c.calibrated_on = %(on)s AND c.uncertainty = %(u)s AND c.uncertainty_unit = %(unit)s)",
                        {"tag": tag_id, "cert": c.certificate, "on": c.date, "u": c.uncertainty,
                         "unit": c.uncertainty_unit})

    async def _ensure_tags(self, names: set[str]) -> None:
        missing = [n for n in names if n not in self._tag_ids]
        if missing and len(self._tag_ids) + len(missing) > TAG_IDS_MAX:  # a cache: emptied, this group's looked up
            self._tag_ids = {}
            missing = list(names)
        # Sorted: parallel writers inserting overlapping new tags take the key locks in one order (no deadlock).
        missing.sort()
        if not missing:
            return
        conn = self.conn
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute(
                "INSERT INTO tags (name, configured) SELECT unnest(%s::text[]), false ON CONFLICT (name) DO NOTHING",
                (missing,))
            await cur.execute("SELECT name, id FROM tags WHERE name = ANY(%s)", (missing,))
            self._tag_ids.update(dict(await cur.fetchall()))

    async def write(self, batches: list[SpooledBatch]) -> WriteResult:
        """Commit the readings and dead letters of ``batches`` exactly once."""
        conn = self.conn
        cols = Columns.concat([b.columns for b in batches])
        dead = [d for b in batches for d in b.dead_letters]
        records = [r for b in batches for r in b.records]
        await self._ensure_tags(set(cols.tags))
        ids = np.array([self._tag_ids[t] for t in cols.tags], dtype=np.int32)
        payload = encode_columns(cols, ids)
        n = len(cols)
        result = WriteResult(rows=n, inserted=n, duplicates=0,
                             minutes=minutes_of(cols.time_us) if n else set(),
                             tag_ids={int(i) for i in ids[np.unique(cols.tag_idx)]} if n else set())
        async with conn.transaction():
            async with conn.cursor() as cur:
                if n:
                    try:
                        async with conn.transaction():  # savepoint
                            async with cur.copy(_COPY_READINGS) as copy:
                                await copy.write(payload)
                    except psycopg.errors.UniqueViolation:
                        result.fast_path = False
                        result.inserted = await self._insert_dedup(cur, payload)
                        result.duplicates = n - result.inserted
                        if result.duplicates:
                            result.conflicts, result.conflict = await self._conflicts(cur)
                if records:
                    from edge.analytics import write_records

                    refused = await write_records(conn, records)
                    result.refused = refused
                    # The time of the batch (not of this attempt): a replay then makes the same dead letter.
                    created = round(min(b.created for b in batches if b.records) * 1e6)  # seconds -> µs
                    dead = list(dead) + [("records", kind, msgpack.packb(
                        [r for k, r in records if k == kind], datetime=True, default=str), error,
                        created) for kind, error in refused]
                if dead:
                    await write_dead_letters(cur, dead)
        return result

    async def write_refused(self, rows: list[tuple[Columns, BaseException]]) -> None:
        """Readings the database refused on their own (`Forwarder` splits a refused group down to them) become
        dead letters: the reading as a msgpack row and the database's error, in one transaction."""
        dead = [("database", cols.tags[int(cols.tag_idx[0])], msgpack.packb(cols.rows()[0], use_bin_type=True),
                 f"{type(exc).__name__}: {exc}".strip(), int(cols.recv_us[0])) for cols, exc in rows]
        async with self.conn.transaction(), self.conn.cursor() as cur:
            await write_dead_letters(cur, dead)

    async def _insert_dedup(self, cur: psycopg.AsyncCursor, payload: bytes) -> int:
        await cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS readings_in (LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        await cur.execute("TRUNCATE readings_in")
        async with cur.copy(f"COPY readings_in ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
            await copy.write(payload)
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
        await cur.execute(sql.SQL(
            "INSERT INTO readings ({cols}) SELECT {cols} FROM readings_in ORDER BY tag_id, time "
            "ON CONFLICT (tag_id, time) DO NOTHING").format(cols=cols))
        return cur.rowcount

    async def _conflicts(self, cur: psycopg.AsyncCursor) -> tuple[int, tuple | None]:
        """How many rows of ``readings_in`` (just inserted, duplicates skipped) the database holds with another value
        at their (tag, time), and the first: (tag name, time, value kept, value not stored). A replayed batch has the
        values stored already and counts none; status and quality are not compared (a history read back holds the
        live value with other info bits)."""
        await cur.execute(
            "WITH c AS (SELECT i.tag_id, i.time, coalesce(r.value_text, r.value::text) AS kept, "
            " coalesce(i.value_text, i.value::text) AS dropped FROM readings_in i JOIN readings r "
            " ON r.tag_id = i.tag_id AND r.time = i.time "
            " WHERE (r.value, r.value_text) IS DISTINCT FROM (i.value, i.value_text)) "
            "SELECT (SELECT count(*) FROM c) AS n, c.* FROM c ORDER BY c.tag_id, c.time LIMIT 1")
        row = await cur.fetchone()
        if row is None:
            return 0, None
        names = {i: t for t, i in self._tag_ids.items()}
        return int(row[0]), (names.get(row[1], f"tag id {row[1]}"), row[2], row[3], row[4])

    async def refresh_rollups(self, tag_ids: set[int], start: datetime, end: datetime) -> None:
        """Recompute the 1-minute and 1-hour rollups touched by [start, end] for ``tag_ids``."""
        from edge.sink.rollups import refresh

        await refresh(self.conn, self.features, sorted(tag_ids), start, end)

    async def refresh_minutes(self, tag_ids: set[int], minutes: set[int]) -> None:
        """Recompute the rollups of the 1-minute buckets ``minutes`` (and their hours) for ``tag_ids``, one
        statement pair per run of neighbouring minutes (`edge.sink.rollups.runs`)."""
        for first, last in runs(minutes):
            await self.refresh_rollups(tag_ids, from_us(first * US_PER_MINUTE), from_us(last * US_PER_MINUTE))

    async def apply_retention(self, days: int, batch: int | None = None) -> int:
        """Raw readings older than ``days`` removed (`edge.sink.rollups.retention`): chunks, or rows (at most
        ``batch`` where given)."""
        from edge.sink.rollups import retention

        return await retention(self.conn, self.features, days, batch)
