"""1-minute rollup retention (``database.rollups_1m_retention_days``): rows removed per second, per edition.

    PYTHONPATH=. .venv/bin/python bench/bench_rollup_retention.py [--tags 1000] [--keep-days 2] [--backlog-days 2]
                                                                  [--chunk-tags 200]

``readings_1m`` of ``tags`` tags (one row per tag and minute, as the rollup worker writes them) over ``keep_days``
and what ages out past it, removed by the shipped `edge.sink.rollups.retention_1m` in the rollup worker's rounds
(`edge.sink.housekeeping.ROUND_BUDGET_S` each):

- plain PostgreSQL (DELETE by the (tag_id, bucket) key in batches of 20,000 rows), ``keep_days`` of rows and
  1. steady state: one hour past the retention (the hourly round's work: ``tags`` x 60 rows);
  2. first round after the key is set on a gateway that kept everything: ``backlog_days`` past it, cut into
     rounds by the time budget;
- the Apache-2 edition of TimescaleDB: drop_chunks of one 7-day chunk (``chunk_tags`` x 10,080 rows). The
community edition's retention policy runs in the server's scheduler and is not measured (Debian ships the Apache-2
edition only). Each run must remove exactly the rows past the retention, or the script fails.
Servers are private (tests/servers.py), fsync off. Writes bench/results/rollup_retention.json.
"""

from __future__ import annotations

import argparse
import asyncio
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
from edge.sink.housekeeping import BATCH_ROWS, ROUND_BUDGET_S  # noqa: E402
from edge.sink.rollups import retention_1m  # noqa: E402


def _fill(conn: psycopg.Connection, tags: int, oldest: str, newest: str) -> None:
    """Rollup rows of ``tags`` tags for every minute from ``oldest`` to ``newest`` (SQL timestamptz expressions)."""
    conn.execute("INSERT INTO readings_1m (bucket, tag_id, min, max, sum, count, last, last_time, bad_count)"
                 " SELECT b, t, random(), random(), random() * 60, 60, random(), b, 0"
                 f" FROM generate_series(1, %s) t, generate_series({oldest}, {newest}, interval '1 minute') b",
                 (tags,))


def run(dsn: str, tags: int, keep_days: int, past_h: float) -> dict:
    """Fill, then remove what is more than ``keep_days`` old in rounds, as the rollup worker does."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
        features = detect(conn)
        now = "date_trunc('minute', now())"
        if features.timescaledb:
            # drop_chunks removes whole 7-day chunks: one chunk wholly past the retention, and the newest hour
            # (the chunks between are left empty: their rows would not change what dropping one chunk costs).
            first = f"time_bucket('7 days', now() - interval '{keep_days} days') - interval '7 days'"
            _fill(conn, tags, first, f"{first} + interval '7 days' - interval '1 minute'")
            _fill(conn, tags, f"{now} - interval '1 hour'", now)
        else:
            # The table as retention finds it: keep_days of rows, and past_h hours past them.
            _fill(conn, tags, f"date_trunc('hour', now() - interval '{keep_days} days') - interval '{past_h} hours'",
                  now)
        conn.execute("VACUUM ANALYZE readings_1m")
        rows = conn.execute("SELECT count(*) FROM readings_1m").fetchone()[0]
        due = conn.execute("SELECT count(*) FROM readings_1m WHERE bucket < date_trunc('hour', now()"
                           " - %s * interval '1 day')", (keep_days,)).fetchone()[0]
        size_mb = conn.execute("SELECT pg_total_relation_size('readings_1m')" if not features.timescaledb
                               else "SELECT hypertable_size('readings_1m')").fetchone()[0] / 1e6

    async def rounds() -> tuple[list[tuple[int, float]], int]:
        out = []
        async with await psycopg.AsyncConnection.connect(dsn) as aconn:
            while True:
                t0 = time.perf_counter()
                removed, _, done = await retention_1m(aconn, features, keep_days, time.monotonic() + ROUND_BUDGET_S)
                out.append((removed, time.perf_counter() - t0))
                if done:
                    break
        with psycopg.connect(dsn) as conn:
            left = conn.execute("SELECT count(*) FROM readings_1m").fetchone()[0]
        return out, left

    done_rounds, left = asyncio.run(rounds())
    # Removing too much (the kept days) or too little is no speed: the figure counts only an exact removal.
    if rows - left != due:
        raise SystemExit(f"{features.edition}: removed {rows - left:,} rows, {due:,} were past the retention")
    seconds = sum(s for _, s in done_rounds)
    return {"edition": features.edition, "tags": tags, "table_rows": rows, "table_mb": round(size_mb, 1),
            "rows_due": due, "rows_removed": rows - left, "removed_reported": sum(n for n, _ in done_rounds),
            "unit": "chunks" if features.timescaledb else "rows", "rounds": len(done_rounds),
            "round_s": [round(s, 3) for _, s in done_rounds], "seconds": round(seconds, 3),
            "rows_per_s": round((rows - left) / seconds) if seconds else None,
            "batch_rows": None if features.timescaledb else BATCH_ROWS}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tags", type=int, default=1000)
    ap.add_argument("--keep-days", type=int, default=2)
    ap.add_argument("--backlog-days", type=int, default=2)
    ap.add_argument("--chunk-tags", type=int, default=200, help="tags of the 7-day chunk dropped on TimescaleDB")
    args = ap.parse_args()
    results: dict = {}
    ts = PostgresServer(fsync=False, timescaledb=True).start()
    try:
        results["apache_one_chunk"] = run(ts.create_database(timescaledb=True), args.chunk_tags, args.keep_days, 0)
        print(f"apache_one_chunk: {results['apache_one_chunk']}", flush=True)
    finally:
        ts.close()
    plain = PostgresServer(fsync=False, timescaledb=False).start()
    try:
        for name, past_h in (("steady_hour", 1.0), ("first_round", args.backlog_days * 24.0)):
            key = f"plain_{name}"
            results[key] = run(plain.create_database(timescaledb=False), args.tags, args.keep_days, past_h)
            print(f"{key}: {results[key]}", flush=True)
    finally:
        plain.close()
    write_results(results, "rollup_retention.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
