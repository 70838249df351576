"""Database growth: bytes per prediction and per dead letter, and the cost of raw retention on plain PostgreSQL.

    PYTHONPATH=. .venv/bin/python bench/bench_db_growth.py [--tags 100] [--days 10] [--every-s 20]

1. predictions (TimescaleDB hypertable and plain table): size per row with its indexes, as the gateway writes them
   (one every 5 s per model and asset: 17,280 a day), and the time to trim a day of them (edge.sink.housekeeping).
2. dead letters: size per row (a 200-byte payload); the rollups (``readings_1m``, ``readings_1h``, which have no
   retention): size per row with the (tag_id, bucket) key, written a week (1m) or 90 days (1h) for 200 tags.
3. readings on plain PostgreSQL, ``tags`` x one reading every ``every_s`` over ``days``: the hourly retention
   deleting its hour by time alone (no index: a scan of the whole table), per tag by the (tag_id, time) key, and
   with an index on time; the index's size and its cost on writes (1M rows by INSERT ... SELECT, time and WAL,
   without and with the index alternated ``--rounds`` times, medians and every run).

Servers are private (tests/servers.py), fsync off. Writes bench/results/db_growth.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import psycopg  # noqa: E402
from results_io import write_results  # noqa: E402
from servers import PostgresServer  # noqa: E402

from edge.db.features import detect  # noqa: E402
from edge.db.migrate import migrate  # noqa: E402
from edge.sink.housekeeping import trim  # noqa: E402
from edge.sink.rollups import retention  # noqa: E402

PER_DAY = 86_400 // 5


def _size(conn: psycopg.Connection, table: str, hyper: bool) -> int:
    sql = "SELECT hypertable_size(%s)" if hyper else "SELECT pg_total_relation_size(%s)"
    return conn.execute(sql, (table,)).fetchone()[0]


def predictions(dsn: str, hyper: bool, days: int = 3, series: int = 4) -> dict:
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
        empty = _size(conn, "predictions", hyper)
        conn.execute(
            "INSERT INTO predictions (time, model_id, model_version, asset, kind, target, value, lower, upper,"
            " coverage, p_value, input_start, input_end, details)"
            " SELECT now() - %s * interval '1 day' + s * interval '5 s', 'anomaly-' || m, '3', 'P-10' || m,"
            " 'anomaly', '', random(), random() - 1, random() + 1, 0.9, random(),"
            " now() - interval '10 min', now(), '{\"quality\": {\"signals_out_of_range\": []}}'::jsonb"
            " FROM generate_series(0, %s - 1) s, generate_series(1, %s) m",
            (days + 200, days * PER_DAY, series))
        conn.execute("VACUUM ANALYZE predictions")
        rows = days * PER_DAY * series
        per_row = (_size(conn, "predictions", hyper) - empty) / rows

    async def go():
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            t0 = time.perf_counter()
            out = await trim(aconn, 180, None, budget_s=3600)
            return out.predictions, time.perf_counter() - t0

    removed, seconds = asyncio.run(go())
    return {"bytes_per_row": round(per_row, 1), "mb_per_model_asset_day": round(per_row * PER_DAY / 1e6, 2),
            "gb_per_model_asset_year": round(per_row * PER_DAY * 365 / 1e9, 2), "trim_rows": removed,
            "trim_s": round(seconds, 2), "trim_rows_per_s": round(removed / seconds)}


def dead_letters(dsn: str, n: int = 200_000) -> dict:
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = _size(conn, "dead_letters", False)
        conn.execute("INSERT INTO dead_letters (time, source, topic, payload, error, digest)"
                     " SELECT now() - s * interval '1 s', 'mqtt', 'plant/line1/pump7/vibration',"
                     " convert_to(repeat('x', 200), 'UTF8'), 'payload is not valid JSON: expecting value at 0',"
                     " sha256(s::text::bytea) FROM generate_series(1, %s) s", (n,))
        return {"bytes_per_row": round((_size(conn, "dead_letters", False) - before) / n, 1)}


def rollups(dsn: str, hyper: bool, tags: int = 200) -> dict:
    out = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
        for table, step, buckets in (("readings_1m", "1 minute", 1440 * 7), ("readings_1h", "1 hour", 24 * 90)):
            empty = _size(conn, table, hyper)
            conn.execute(f"INSERT INTO {table} (bucket, tag_id, min, max, sum, count, last, last_time, bad_count)"
                         f" SELECT now() - i * interval '{step}', t, random(), random(), random(), 60, random(), now(),"
                         " 0 FROM generate_series(1, %s) t, generate_series(0, %s - 1) i", (tags, buckets))
            conn.execute(f"VACUUM ANALYZE {table}")
            per_row = (_size(conn, table, hyper) - empty) / (tags * buckets)
            per_year = per_row * (1440 if table == "readings_1m" else 24) * 365
            out[table] = {"bytes_per_row": round(per_row, 1), "mb_per_tag_year": round(per_year / 1e6, 1)}
    return out


def _fill(conn: psycopg.Connection, tags: int, days: int, every_s: int) -> int:
    conn.execute("INSERT INTO readings (time, tag_id, value, quality, receive_time)"
                 " SELECT ts, t, random(), 0, ts FROM generate_series(1, %s) t,"
                 " generate_series(now() - %s * interval '1 day', now(), %s * interval '1 s') ts",
                 (tags, days, every_s))
    conn.execute("VACUUM ANALYZE readings")
    return conn.execute("SELECT count(*) FROM readings").fetchone()[0]


def _timed_delete(conn: psycopg.Connection, sql: str, params: tuple) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = conn.execute(sql, params).rowcount
    return time.perf_counter() - t0, n


def _copy(conn: psycopg.Connection, rows: int) -> tuple[float, int]:
    """Write ``rows`` new readings (tag 10_000 +) by INSERT ... SELECT in the server (no client in the figure; the
    index's cost per row is the same as under the gateway's COPY); seconds and WAL bytes. Removed afterwards."""
    lsn0 = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    t0 = time.perf_counter()
    conn.execute("INSERT INTO readings (time, tag_id, value, quality, receive_time)"
                 " SELECT now() + (s %% 1000) * interval '1 ms', 10000 + s / 1000, random(), 0, now()"
                 " FROM generate_series(0, %s - 1) s", (rows,))
    seconds = time.perf_counter() - t0
    wal = conn.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", (lsn0,)).fetchone()[0]
    conn.execute("DELETE FROM readings WHERE tag_id >= 10000")
    conn.execute("VACUUM readings")
    return seconds, int(wal)


def plain_retention(dsn: str, tags: int, days: int, every_s: int, rounds: int = 3) -> dict:
    out: dict = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
        features = detect(conn)
        conn.execute("DROP INDEX IF EXISTS readings_time")  # the measurement of the table as it was
        out["rows"] = _fill(conn, tags, days, every_s)
        out["table_mb"] = round(conn.execute("SELECT pg_total_relation_size('readings')").fetchone()[0] / 1e6, 1)
        keep = days - 1 / 24  # each round deletes the hour that aged past retention since the last
        conn.execute("BEGIN")
        out["by_time_s"], out["hour_rows"] = _timed_delete(
            conn, "DELETE FROM readings WHERE time < now() - %s * interval '1 day'", (keep,))
        conn.execute("ROLLBACK")
        conn.execute("BEGIN")
        out["per_tag_key_s"], _ = _timed_delete(
            conn, "DELETE FROM readings WHERE tag_id = ANY(ARRAY(SELECT generate_series(1, %s)))"
                  " AND time < now() - %s * interval '1 day'", (tags, keep))
        conn.execute("ROLLBACK")
        copy_rows = 1_000_000
        # Without and with the index in turns, `rounds` times: one write of each swung by a quarter on a shared
        # machine, and the first write into a fresh table finds no free space the later ones reuse.
        writes: dict[str, list[tuple[float, int]]] = {"without_index": [], "with_index": []}
        for r in range(rounds):
            writes["without_index"].append(_copy(conn, copy_rows))
            conn.execute("CREATE INDEX readings_time ON readings (time)")
            if r == 0:
                out["time_index_mb"] = round(
                    conn.execute("SELECT pg_relation_size('readings_time')").fetchone()[0] / 1e6, 1)
                conn.execute("BEGIN")
                out["by_time_indexed_s"], _ = _timed_delete(
                    conn, "DELETE FROM readings WHERE time < now() - %s * interval '1 day'", (keep,))
                conn.execute("ROLLBACK")
            writes["with_index"].append(_copy(conn, copy_rows))
            conn.execute("DROP INDEX readings_time")
        for k, runs in writes.items():
            out[f"copy_1m_s_{k}"] = round(statistics.median(s for s, _ in runs), 3)
            out[f"copy_1m_wal_{k}"] = int(statistics.median(w for _, w in runs))
            out[f"copy_1m_runs_{k}"] = [{"s": round(s, 3), "wal": w} for s, w in runs]
        out["index_time_cost"] = round(out["copy_1m_s_with_index"] / out["copy_1m_s_without_index"] - 1, 3)
        out["index_wal_cost"] = round(out["copy_1m_wal_with_index"] / out["copy_1m_wal_without_index"] - 1, 3)

        async def shipped():
            async with await psycopg.AsyncConnection.connect(dsn) as aconn:
                t0 = time.perf_counter()
                n = await retention(aconn, features, keep)
                await aconn.commit()
                return n, time.perf_counter() - t0

        n, out["shipped_retention_s"] = asyncio.run(shipped())
        out["shipped_retention_rows"] = n
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tags", type=int, default=100)
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--every-s", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="writes of 1 M readings without / with the index on time, "
                    "alternated (medians reported)")
    args = ap.parse_args()
    results: dict = {}
    ts = PostgresServer(fsync=False, timescaledb=True).start()
    try:
        results["predictions_timescaledb"] = predictions(ts.create_database(timescaledb=True), hyper=True)
        print("predictions_timescaledb:", results["predictions_timescaledb"], flush=True)
        results["rollups_timescaledb"] = rollups(ts.create_database(timescaledb=True), hyper=True)
        print("rollups_timescaledb:", results["rollups_timescaledb"], flush=True)
    finally:
        ts.close()
    plain = PostgresServer(fsync=False, timescaledb=False).start()
    try:
        dsn = plain.create_database(timescaledb=False)
        results["predictions_plain"] = predictions(dsn, hyper=False)
        results["dead_letters"] = dead_letters(dsn)
        print("predictions_plain:", results["predictions_plain"], "dead_letters:", results["dead_letters"], flush=True)
        results["rollups_plain"] = rollups(plain.create_database(timescaledb=False), hyper=False)
        print("rollups_plain:", results["rollups_plain"], flush=True)
        results["readings_retention_plain"] = plain_retention(plain.create_database(timescaledb=False), args.tags,
                                                              args.days, args.every_s, args.rounds)
    finally:
        plain.close()
    for k, v in results.items():
        print(f"{k}: {v}")
    write_results(results, "db_growth.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
