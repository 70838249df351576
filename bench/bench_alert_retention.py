"""Alert retention: bytes per alert with its history, the time to remove old ones, and `evidence_keys` before/after.

    PYTHONPATH=. .venv/bin/python bench/bench_alert_retention.py [--per-day 50] [--years 10] [--keep-days 1827]

``per_day`` alerts a day over ``years``, each as the gateway and console leave it: raised with a prediction as its
evidence (the trigger's ``raised`` event holds it too), acknowledged, cleared, a notification of each change to two
receivers (7 events), and one review in 50 (an own verdict). Then one retention round as the gateway runs it
(`edge.sink.housekeeping.trim` with alerts only, no time budget), and `evidence_keys` (what every hourly prediction
retention reads) timed before and after, best of 5. Sizes are of the tables packed (VACUUM FULL) after the bulk
fill: its two UPDATEs of every alert left the alerts table three times its size, dead space a live gateway reuses
(the unpacked figure is kept in the JSON too). TimescaleDB and plain PostgreSQL (alerts are plain tables on
both: one run on TimescaleDB). Server private (tests/servers.py), fsync off. Writes bench/results/alert_retention.json.
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

from edge.db.migrate import migrate  # noqa: E402
from edge.sink.housekeeping import evidence_keys, trim  # noqa: E402

TABLES = ("alerts", "alert_events", "alert_comments", "prediction_feedback")


def _bytes(conn: psycopg.Connection) -> int:
    return sum(conn.execute("SELECT pg_total_relation_size(%s)", (t,)).fetchone()[0] for t in TABLES)


def _fill(conn: psycopg.Connection, per_day: int, years: int) -> int:
    n = per_day * 365 * years
    # Alert i raised (years * 365 - i / per_day) days ago; the trigger writes `raised` with the evidence.
    conn.execute(
        "INSERT INTO alerts (id, asset, tag, kind, severity, raised_at, message, evidence, dedup_key, source,"
        " model_id, model_version, last_seen)"
        " SELECT 'a-' || i, 'P-' || (i %% 100), 'P-' || (i %% 100) || '.vib', 'anomaly', 'warning', t,"
        " 'vibration anomaly: p=0.0004 < alpha 0.001',"
        " jsonb_build_object('prediction', jsonb_build_object('model_id', 'anomaly-pump', 'model_version', '3',"
        "   'time', to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS+00:00'), 'p_value', 0.0004,"
        "   'alpha', 0.001), 'window', jsonb_build_object('start', t - interval '10 min', 'end', t)),"
        " 'P-' || (i %% 100) || '/anomaly/' || i, 'anomaly', 'anomaly-pump', '3', t"
        " FROM generate_series(0, %s - 1) i,"
        " LATERAL (SELECT now() - %s * interval '1 day' + i * (interval '1 day' / %s)) x(t)",
        (n, years * 365, per_day))
    conn.execute("UPDATE alerts SET acknowledged_at = raised_at + interval '20 min', acknowledged_by = 'anna',"
                 " ack_comment = 'WO opened', state = 'acknowledged'")
    conn.execute("UPDATE alerts SET cleared_at = raised_at + interval '3 hours', cleared_by = 'system',"
                 " state = 'cleared', updated_at = raised_at + interval '3 hours'")
    conn.execute("INSERT INTO alert_events (alert_id, asset, kind, time, event, detail)"
                 " SELECT id, asset, kind, raised_at + o * interval '1 hour', 'notified',"
                 " jsonb_build_object('receiver', r, 'status', 200)"
                 " FROM alerts, unnest(ARRAY[0, 3]) o, unnest(ARRAY['pager', 'cmms']) r")
    conn.execute("INSERT INTO prediction_feedback (alert_id, verdict, reviewer)"
                 " SELECT id, 'right', 'anna' FROM alerts WHERE substr(id, 3)::int % 50 = 0")
    return n


async def _evidence_keys_s(dsn: str) -> tuple[float, int]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        best, keys = float("inf"), 0
        for _ in range(5):
            t0 = time.perf_counter()
            ids, k = await evidence_keys(conn)
            best = min(best, time.perf_counter() - t0)
            keys = len(ids) + len(k)
        return best, keys


async def _trim(dsn: str, days: int) -> tuple[float, int]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        t0 = time.perf_counter()
        out = await trim(conn, None, None, alerts_days=days, budget_s=3600)
        return time.perf_counter() - t0, out.alerts


def run(dsn: str, per_day: int, years: int, keep_days: int) -> dict:
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)
        empty = _bytes(conn)
        n = _fill(conn, per_day, years)
        events = conn.execute("SELECT count(*) FROM alert_events").fetchone()[0]
        # Every alert was updated twice in bulk just now, leaving two dead versions of each row that a gateway,
        # updating a few alerts an hour under autovacuum, reuses: packed, the tables hold what a year costs.
        bulk = _bytes(conn)
        conn.execute("VACUUM FULL ANALYZE alerts, alert_events, prediction_feedback")
        full = _bytes(conn)
    out = {"alerts": n, "events": events, "bytes_per_alert": round((full - empty) / n),
           "mb_per_year": round((full - empty) / years / 1e6, 1),
           "bytes_per_alert_before_vacuum_full": round((bulk - empty) / n)}
    out["evidence_keys_before_s"], out["evidence_keys_before_keys"] = asyncio.run(_evidence_keys_s(dsn))
    seconds, removed = asyncio.run(_trim(dsn, keep_days))
    with psycopg.connect(dsn, autocommit=True) as conn:
        left = conn.execute("SELECT count(*) FROM alerts").fetchone()[0]
        events_left = conn.execute("SELECT count(*) FROM alert_events").fetchone()[0]
        conn.execute("VACUUM ANALYZE alerts, alert_events")
    out |= {"trim_s": round(seconds, 2), "alerts_removed": removed, "events_removed": events - events_left,
            "alerts_per_s": round(removed / seconds), "rows_per_s": round((removed + events - events_left) / seconds),
            "alerts_left": left}
    out["evidence_keys_after_s"], out["evidence_keys_after_keys"] = asyncio.run(_evidence_keys_s(dsn))
    # A second round with nothing due: the hourly cost once the backlog is gone (the reviewed ones are read again).
    out["idle_round_s"] = round(asyncio.run(_trim(dsn, keep_days))[0], 3)
    for k in ("evidence_keys_before_s", "evidence_keys_after_s"):
        out[k] = round(out[k], 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-day", type=int, default=50)
    ap.add_argument("--years", type=int, default=10)
    ap.add_argument("--keep-days", type=int, default=1827)
    args = ap.parse_args()
    results: dict = {"per_day": args.per_day, "years": args.years, "keep_days": args.keep_days}
    for name, tsdb in (("timescaledb", True), ("plain", False)):
        server = PostgresServer(fsync=False, timescaledb=tsdb).start()
        try:
            results[name] = run(server.create_database(timescaledb=tsdb), args.per_day, args.years, args.keep_days)
            print(f"{name}: {results[name]}", flush=True)
        finally:
            server.close()
    write_results(results, "alert_retention.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
