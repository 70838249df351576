"""Benchmark: what looking for late readings of a closed year costs the periodic job, and what taking them costs.

    .venv/bin/python bench/bench_emissions_late.py                  # starts its own TimescaleDB (tests/servers.py)
    .venv/bin/python bench/bench_emissions_late.py --db postgresql://...   (or $VALVOJA_BENCH_DB)

Seeds the year of bench_emissions.py (one waste stack, six pollutants, O2, flow, state: ~4.7 M readings), its
hourly rollups (``readings_1h``, as the forwarder keeps them; made here with one INSERT ... SELECT) and a year of
``emission_runs`` as the job leaves them (a month run every 5 minutes, a year run every hour, the year-end run).
Then times, at a year run in January: `emissions.late.due` when nothing arrived (what every hourly run pays), its
queries on their own, `due` after 240 late readings, and the recomputation of the year they cause (`job.run_span`).
Prints the figures and writes bench/results/bench_emissions_late.json. The seeded rows are deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_emissions import MINUTES, START, cleanup, seed, stack  # noqa: E402
from results_io import write_results  # noqa: E402

from edge.db.migrate import migrate  # noqa: E402
from emissions import job, late, synthetic  # noqa: E402

END = START + MINUTES * 60


def timed(fn: Callable[[], object], repeat: int = 20) -> tuple[float, object]:
    """Median milliseconds of ``repeat`` calls, and the last result."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 2), out


def rollup_hours(conn: psycopg.Connection, name: str) -> int:
    """readings_1h of the stack's tags from its raw readings (what the forwarder's rollup task leaves)."""
    with conn.cursor() as cur:
        cur.execute("INSERT INTO readings_1h (bucket, tag_id, min, max, sum, count, last, last_time, bad_count)"
                    " SELECT time_bucket('1 hour', time), tag_id, min(value), max(value), sum(value), count(*), 0,"
                    " max(time), 0 FROM readings WHERE tag_id IN (SELECT id FROM tags WHERE asset = %s) GROUP BY 1, 2"
                    " ON CONFLICT DO NOTHING", (name,))
        return cur.rowcount


def job_runs(conn: psycopg.Connection, name: str, sha: str, seen: int) -> int:
    """A year of the periodic job's emission_runs rows: month runs every 5 minutes, year runs hourly, the year end."""
    month_starts = [int(datetime(2025, m, 1, tzinfo=UTC).timestamp()) for m in range(1, 13)]
    ends = np.arange(START + 3600, END, 300)
    starts = np.asarray(month_starts)[np.searchsorted(month_starts, ends - 1, side="right") - 1]
    rows = [(s, e) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
    rows += [(START, e) for e in range(START + 3600, END, 3600)]
    with conn.cursor() as cur:
        with cur.copy("COPY emission_runs (stack, span_start, span_end, config, config_sha256, averages, events, "
                      "seconds) FROM STDIN") as copy:
            for s, e in rows:
                copy.write_row((name, datetime.fromtimestamp(s, UTC), datetime.fromtimestamp(e, UTC), "{}", "", 0, 0,
                                0.0))
        cur.execute("INSERT INTO emission_runs (stack, span_start, span_end, config, config_sha256, averages, events,"
                    " seconds, rollup_readings) VALUES (%s, %s, %s, '{}', %s, 0, 0, 0, %s)",
                    (name, datetime.fromtimestamp(START, UTC), datetime.fromtimestamp(END, UTC), sha, seen))
        cur.execute("ANALYZE emission_runs")
        cur.execute("ANALYZE readings_1h")
    return len(rows) + 1


def run(dsn: str) -> dict:
    name = f"BENCH{uuid.uuid4().hex[:6]}"
    cfg = stack(name)
    now = END + 5 * 86400 + 2100  # a year run on 6 January
    out: dict = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        features, _ = migrate(conn)
        out["edition"] = features.edition
        try:
            out["seed"] = seed(conn, name)
            t0 = time.perf_counter()
            out["rollup_hours"] = rollup_hours(conn, name)
            out["rollup_hours_s"] = round(time.perf_counter() - t0, 2)
            seen = late.rollup_readings(conn, cfg, START, END)
            out["emission_runs_rows"] = job_runs(conn, name, cfg.fingerprint(), seen)
            print(f"seeded {out['seed']['rows']:,} readings, {out['rollup_hours']:,} rollup hours, "
                  f"{out['emission_runs_rows']:,} emission_runs rows")
            out["due_unchanged_ms"], redo = timed(lambda: late.due(conn, cfg, now, {}))
            assert redo is None
            out["rollup_readings_ms"], _ = timed(lambda: late.rollup_readings(conn, cfg, START, END))
            out["last_full_run_ms"], _ = timed(lambda: late.last_full_run(conn, cfg, START, END))
            out["raw_kept_ms"], kept = timed(lambda: late.raw_kept(conn, cfg, START, END))
            assert kept
            tag = cfg.pollutant("NOx").tag
            t = np.arange(END - 4 * 3600 + 30, END, 60)  # 240 readings half a minute after the stored ones
            synthetic.copy_readings(conn, synthetic.ensure_tags(conn, [tag], asset=name)[tag], t, np.full(len(t), 50.))
            with conn.cursor() as cur:
                cur.execute("UPDATE readings_1h SET count = count + 60 WHERE tag_id = (SELECT id FROM tags WHERE name"
                            " = %s) AND bucket >= to_timestamp(%s)", (tag, END - 4 * 3600))
            out["due_late_ms"], redo = timed(lambda: late.due(conn, cfg, now, {}), repeat=1)
            assert redo is not None and redo[2].startswith("late data: 240 readings"), redo
            t0 = time.perf_counter()
            sr = job.run_span(conn, cfg, redo[0], redo[1], context="year", clock=lambda: now, reason=redo[2])
            out["recompute_year_s"] = round(time.perf_counter() - t0, 2)
            out["recompute_averages"] = sr.rows_written
            out["due_after_recompute_ms"], redo = timed(lambda: late.due(conn, cfg, now, {}))
            assert redo is None
        finally:
            cleanup(conn, name)
            with conn.cursor() as cur:
                cur.execute("DELETE FROM readings_1h WHERE tag_id NOT IN (SELECT id FROM tags)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=os.environ.get("VALVOJA_BENCH_DB"),
                    help="database to use (default: a TimescaleDB server of its own, fsync off)")
    args = ap.parse_args()
    if args.db:
        out = run(args.db)
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from servers import PostgresServer

        server = PostgresServer(fsync=False, timescaledb=True).start()
        try:
            out = run(server.create_database(timescaledb=True))
        finally:
            server.close()
    print(f"hourly check, nothing new: {out['due_unchanged_ms']} ms (rollup count {out['rollup_readings_ms']} ms, "
          f"last full run {out['last_full_run_ms']} ms); with late readings: {out['due_late_ms']} ms incl. retention "
          f"check ({out['raw_kept_ms']} ms); recomputing the year: {out['recompute_year_s']} s")
    result = {"benchmark": "emissions_late", **out, "machine": {"cpus": os.cpu_count()},
              "when": datetime.now(UTC).isoformat(timespec="seconds")}
    write_results(result, "bench_emissions_late.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
