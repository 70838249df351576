"""Query plans on TimescaleDB with a chunk range holding one tag only (a backfill), before and after m0003.

    PYTHONPATH=. .venv/bin/python bench/bench_tsdb_plans.py [--tags 200] [--days 2] [--backfill-days 30]
                                                            [--db postgresql://...]

A site of ``tags`` measured tags at 1 Hz over ``days`` (two condition indicators per tag, every 10 s; 0.1 % of the
readings bad), in the daily chunks the schema makes, and before it ``backfill-days`` of one tag's history at 1 Hz
(chunks holding that tag only), with their rollups; ANALYZEd. On a private server (tests/servers.py, fsync off)
unless ``--db`` names one where a database may be created (dropped afterwards).

The queries are run as the console and the gateway run them (the same SQL, through the same functions): the newest
reading of a tag (``/api/tags/{name}/latest``) with readings and without; an asset page's indicators (one of them
without readings); trends of 1 h, 24 h and 30 days (`console.trend.fetch`); the rollup refresh of the last minutes
(`edge.sink.rollups.refresh`) and the start-up tail (`unrolled_tail`); an alert's evidence readings and a window
older than the tag's readings (`maintenance.trace._readings`); the newest reading of an emission tag by name (and
that of the join the emissions page asked before ``LATEST_BY_NAME``). Each
as a custom plan (the first executions) and as the generic plan the server keeps for a statement psycopg prepared
(after its fifth execution on a connection): time (median of up to 5 runs), shared buffers read and the indexes
used (auto_explain), with readings' index on time (before) and without it (after m0003); the results must be equal
(floats to 12 significant digits: the refresh measured recomputes the newest rollups, summing in its own order).
Writes bench/results/tsdb_plans.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import psycopg  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402
from results_io import write_results  # noqa: E402

from console import trend  # noqa: E402
from console.params import TimeRange  # noqa: E402
from console.routes.assets import _INDICATOR_IDS, _INDICATORS, LATEST  # noqa: E402
from console.routes.emissions import LATEST_BY_NAME  # noqa: E402
from edge.db.features import Features  # noqa: E402
from edge.db.migrate import migrate  # noqa: E402
from edge.sink import rollups  # noqa: E402
from maintenance import trace  # noqa: E402

# console/routes/emissions.py's query before LATEST_BY_NAME, for comparison
_LATEST_BY_NAME_JOIN = ("SELECT r.time, r.value, r.quality, t.unit FROM readings r JOIN tags t ON t.id = r.tag_id "
                        "WHERE t.name = %s ORDER BY r.time DESC LIMIT 1")


def seed(dsn: str, n_tags: int, days: int, backfill_days: int, now: datetime) -> dict:
    """The site (see the module docstring); returns its size."""
    start = (now - timedelta(days=days)).replace(hour=0, minute=0, second=0)
    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        features, _ = migrate(conn, target=2)  # the schema as it was before m0003
        conn.execute("INSERT INTO assets (name) SELECT format('P-%%s', lpad(a::text, 3, '0'))"
                     " FROM generate_series(1, %s) a", (-(-n_tags // 10),))
        conn.execute("INSERT INTO tags (name, asset) SELECT format('P-%%s.t%%s', lpad((g / 10 + 1)::text, 3, '0'),"
                     " g %% 10), format('P-%%s', lpad((g / 10 + 1)::text, 3, '0')) FROM generate_series(0, %s - 1) g"
                     " ORDER BY g", (n_tags,))
        conn.execute("INSERT INTO tags (name, asset) SELECT t.name || s.stat, '' FROM tags t,"
                     " (VALUES ('.iso_zone'), ('.rms')) s(stat) ORDER BY t.id, s.stat")
        d = start
        while d < now:
            e = min(d + timedelta(hours=6), now)
            conn.execute("INSERT INTO readings (time, tag_id, value, quality, receive_time)"
                         " SELECT ts, tag, sin(extract(epoch FROM ts) / 3600 + tag),"
                         " CASE WHEN random() < 0.001 THEN 2 ELSE 0 END, ts"
                         " FROM generate_series(%s::timestamptz, %s::timestamptz - interval '1 s', interval '1 s') ts,"
                         " LATERAL generate_series(1, %s) tag", (d, e, n_tags))
            conn.execute("INSERT INTO readings (time, tag_id, value, quality, receive_time)"
                         " SELECT ts, tag, 1, 0, ts FROM generate_series(%s::timestamptz,"
                         " %s::timestamptz - interval '1 s', interval '10 s') ts,"
                         " LATERAL generate_series(%s + 1, 3 * %s) tag", (d, e, n_tags, n_tags))
            d = e
        conn.execute("INSERT INTO readings (time, tag_id, value, quality, receive_time)"
                     " SELECT ts, 1, 0.5, 0, now() FROM generate_series(%s::timestamptz - %s * interval '1 day',"
                     " %s::timestamptz - interval '1 s', interval '1 s') ts", (start, backfill_days, start))
        # An indicator registered without readings yet (a new one), and a measured tag configured but never read.
        conn.execute("INSERT INTO tags (name, asset) VALUES ('P-001.t0.kurtosis', ''), ('P-001.spare', 'P-001')")

    async def roll() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            ids = [r[0] for r in await (await aconn.execute("SELECT id FROM tags ORDER BY id")).fetchall()]
            d = start - timedelta(days=backfill_days)
            while d < now:
                e = min(d + timedelta(hours=6), now)
                await rollups.refresh(aconn, features, ids, d, e - timedelta(minutes=1))
                d = e
            # The minute in progress too: the trends before and after must read the same rollups.
            await rollups.refresh(aconn, features, ids, now - timedelta(minutes=2), now)

    asyncio.run(roll())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        rows = conn.execute("SELECT sum(reltuples)::bigint FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid"
                            " WHERE i.inhparent = 'readings'::regclass").fetchone()[0]
        chunks = conn.execute("SELECT count(*) FROM show_chunks('readings')").fetchone()[0]
    return {"tags": n_tags, "indicators": 2 * n_tags, "days": days, "backfill_days": backfill_days,
            "readings": rows, "chunks": chunks, "site_start": start.isoformat(),
            "seed_s": round(time.perf_counter() - t0, 1)}


class Db:
    """The console's ``Database.fetch``/``fetchone`` over one connection (dict rows), for `console.trend.fetch`."""

    def __init__(self, conn: psycopg.AsyncConnection):
        self.conn = conn

    async def fetch(self, sql: str, params=None) -> list[dict]:
        async with self.conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, params)
            return await cur.fetchall()

    async def fetchone(self, sql: str, params=None) -> dict | None:
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None


def cases(features: Features, ids: dict[str, int], now: datetime, site_start: datetime) -> dict:
    """Name -> coroutine function of an async connection: the queries of the module docstring."""
    def tr(span: timedelta) -> TimeRange:
        return TimeRange(now - span, now)

    async def indicators(conn):
        db = Db(conn)
        tags = [r["name"] for r in await db.fetch("SELECT name FROM tags WHERE asset = 'P-001' ORDER BY name")]
        found = [r["id"] for r in await db.fetch(_INDICATOR_IDS, (tags,))]
        return await db.fetch(_INDICATORS, (found,))

    async def refresh(conn):
        await rollups.refresh(conn, features, list(ids.values()), now - timedelta(minutes=3), now)
        return await Db(conn).fetch("SELECT * FROM readings_1m WHERE tag_id = %s AND bucket >= %s ORDER BY bucket",
                                    (ids["P-001.t1"], now - timedelta(minutes=3)))

    async def evidence(conn):
        times = [now - timedelta(minutes=5), now - timedelta(minutes=4)]
        win = (site_start - timedelta(days=400), site_start - timedelta(days=399), "the evidence readings")
        return await trace._readings(conn, ids["P-001.t1"], win,
                                     [{"time": t.isoformat(), "value": 1.0} for t in times])

    t1, spare = ids["P-001.t1"], ids["P-001.spare"]
    return {
        "latest": lambda c: Db(c).fetchone(LATEST, (t1,)),
        "latest_no_readings": lambda c: Db(c).fetchone(LATEST, (spare,)),
        "asset_indicators": indicators,
        "trend_1h": lambda c: trend.fetch(Db(c), features, t1, tr(timedelta(hours=1)), 1000, "auto"),
        "trend_24h": lambda c: trend.fetch(Db(c), features, t1, tr(timedelta(hours=24)), 1000, "auto"),
        "trend_30d": lambda c: trend.fetch(Db(c), features, t1, tr(timedelta(days=30)), 1000, "auto"),
        "rollup_refresh": refresh,
        "unrolled_tail": lambda c: rollups.unrolled_tail(c),
        "alert_evidence": evidence,
        "emission_latest_by_name": lambda c: Db(c).fetchone(LATEST_BY_NAME, ("P-001.spare",)),
        "emission_latest_by_name_old_sql": lambda c: Db(c).fetchone(_LATEST_BY_NAME_JOIN, ("P-001.spare",)),
    }


def _rounded(value):
    """``value`` with its floats to 12 significant digits: a rollup recomputed (the refresh measured here) may sum
    the same minutes in another order."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _walk(node: dict, found: set[str]) -> None:
    if "Index Name" in node:  # a chunk's index by the hypertable's name for it
        found.add(re.sub(r"^(_hyper_\d+_\d+_chunk_|\d+_\d+_)", "", node["Index Name"]))
    for child in node.get("Plans", []):
        _walk(child, found)


async def measure(dsn: str, run, generic: bool) -> dict:
    """One query: its plans (buffers, indexes) by auto_explain, then its time (median of up to 5 runs)."""
    plans: list[dict] = []

    def notice(diag) -> None:
        text = diag.message_primary or ""
        if text.startswith("duration:") and "{" in text:
            plans.append(json.loads(text[text.index("{"):]))

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True,
                                                     prepare_threshold=0 if generic else None) as conn:
        await conn.execute(f"SET plan_cache_mode = {'force_generic_plan' if generic else 'force_custom_plan'}")
        await conn.execute("LOAD 'auto_explain'")
        await conn.execute("SET jit = off")  # the planner's choice is measured, not JIT's compile time
        result = await run(conn)  # warms the caches and prepares the statements
        conn.add_notice_handler(notice)
        for k, v in (("log_min_duration", "0"), ("log_analyze", "on"), ("log_buffers", "on"),
                     ("log_format", "json"), ("log_nested_statements", "on")):
            await conn.execute(f"SET auto_explain.{k} = {v}")
        await conn.execute("SET client_min_messages = log")
        await run(conn)
        await conn.execute("SET client_min_messages = notice")
        await conn.execute("SET auto_explain.log_min_duration = -1")
        times = []
        while len(times) < 5 and sum(times) < 3.0:
            t0 = time.perf_counter()
            await run(conn)
            times.append(time.perf_counter() - t0)
    buffers = sum(p["Plan"].get("Shared Hit Blocks", 0) + p["Plan"].get("Shared Read Blocks", 0) for p in plans)
    indexes: set[str] = set()
    for p in plans:
        _walk(p["Plan"], indexes)
    return {"ms": round(statistics.median(times) * 1000, 2), "runs": len(times), "buffers": buffers,
            "statements": len(plans), "indexes": sorted(indexes), "result": result}


async def measure_all(dsn: str, todo: dict) -> dict:
    out = {}
    for name, run in todo.items():
        for mode in ("custom", "generic"):
            out[f"{name}/{mode}"] = await measure(dsn, run, mode == "generic")
    return out


@contextlib.contextmanager
def database(admin: str | None):
    """A new TimescaleDB database (DSN) on ``admin``'s server, or on a private server; dropped afterwards."""
    if not admin:
        from servers import PostgresServer

        with PostgresServer(fsync=False, settings={"shared_buffers": "'1GB'", "max_wal_size": "'8GB'"}) as server:
            yield server.create_database(timescaledb=True)
        return
    name = f"bench_tsdb_plans_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(admin, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tags", type=int, default=200)
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--backfill-days", type=int, default=30)
    ap.add_argument("--db", help="postgresql:// URL of a TimescaleDB server where a database may be created")
    args = ap.parse_args()
    now = datetime.now(UTC).replace(microsecond=0)
    with database(args.db) as dsn:
        setup = seed(dsn, args.tags, args.days, args.backfill_days, now)
        print(f"seeded: {setup}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            features, _ = migrate(conn, target=2)
            ids = dict(conn.execute("SELECT name, id FROM tags").fetchall())
        todo = cases(features, ids, now, datetime.fromisoformat(setup["site_start"]))
        before = asyncio.run(measure_all(dsn, todo))
        with psycopg.connect(dsn, autocommit=True) as conn:
            t0 = time.perf_counter()
            migrate(conn, target=3)
            setup["m0003_s"] = round(time.perf_counter() - t0, 3)
        after = asyncio.run(measure_all(dsn, todo))
    rows, differ, rounded = {}, [], []
    for key in before:
        b, a = before[key], after[key]
        rb, ra = b.pop("result"), a.pop("result")
        if repr(rb) != repr(ra):
            differ.append(key)
            if repr(_rounded(rb)) != repr(_rounded(ra)):
                rounded.append(key)
        rows[key] = {"before": b, "after": a}
        print(f"{key:34} before {b['ms']:9.2f} ms {b['buffers']:8} buf {','.join(b['indexes']):24} "
              f"after {a['ms']:9.2f} ms {a['buffers']:8} buf {','.join(a['indexes'])}")
    print("results equal before and after" if not differ else f"results differ in the last bits of a float: {differ}"
          if not rounded else f"RESULTS DIFFER: {rounded}")
    write_results({"time": datetime.now(UTC).isoformat(), "machine": {"cpus": os.cpu_count()}, "setup": setup,
                   "queries": rows, "results_differ_exactly": differ, "results_differ": rounded}, "tsdb_plans.json")
    return 1 if rounded else 0


if __name__ == "__main__":
    sys.exit(main())
