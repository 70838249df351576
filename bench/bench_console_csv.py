"""Benchmark of the console's CSV download of raw readings (console/csvexport.py) against psql's COPY.

    .venv/bin/python bench/bench_console_csv.py [--db postgresql://...] [--rows 1000000] [--runs 3]

Without ``--db`` (or $VALVOJA_DB_URL) it starts a PostgreSQL with TimescaleDB of its own (tests/servers.py). In a
fresh database: one tag with ``--rows`` raw readings at 1 Hz (1,000,000: 11.6 days; the default
``console.csv_max_rows``, so the whole range is one file). The console runs as its own process (``valvoja console
serve``); the file comes over loopback HTTP, read in chunks and counted, not kept. Measured per run: seconds,
rows/s and MB/s of ``GET /api/tags/{tag}/readings.csv?resolution=raw``, the console process's peak RSS over the
download (the kernel's VmHWM, reset before it; sampled every 20 ms where it cannot be reset) and its rise over the
RSS before; every file must hold all the seeded rows, untruncated, or the run fails; and in the same run
``psql -c "COPY (SELECT ...) TO STDOUT WITH (FORMAT csv, HEADER)"`` of the same rows (time, value, quality: what
the database alone takes to write them as CSV). Writes bench/results/console_csv.json.
The database is dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import psutil
import psycopg
from psycopg.conninfo import conninfo_to_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_console import start_console  # noqa: E402
from console_support import PASSWORD, fresh_database, seed_users  # noqa: E402
from results_io import peak_rss_kb, reset_peak_rss, write_results  # noqa: E402
from servers import PostgresServer  # noqa: E402

from emissions import synthetic  # noqa: E402

TAG = "P-101.vib_rms"


def seed(dsn: str, rows: int, end: datetime) -> tuple[int, datetime]:
    """``rows`` readings of one tag at 1 Hz up to ``end``; the tag's id and the first reading's time."""
    start = end - timedelta(seconds=rows)
    t = int(start.timestamp()) + np.arange(rows, dtype=np.int64)
    v = 3.0 + 0.3 * np.sin(2 * np.pi * t / 86400.0) + 0.05 * np.random.default_rng(1).standard_normal(rows)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO assets (name, site, kind) VALUES ('P-101', 'KIP-North', 'pump')")
        tag = synthetic.ensure_tags(conn, [TAG], asset="P-101")[TAG]
        conn.execute("UPDATE tags SET unit = 'mm/s' WHERE id = %s", (tag,))
        synthetic.copy_readings(conn, tag, t, v)
        conn.execute("ANALYZE readings")
    return tag, start


class RssSampler:
    """The RSS of process ``pid`` every ``every_s`` in a thread; ``peak`` in bytes."""

    def __init__(self, pid: int, every_s: float = 0.02):
        self.proc, self.every_s, self.peak = psutil.Process(pid), every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def download(c: httpx.Client, pid: int, params: dict) -> dict:
    hwm = reset_peak_rss(pid)  # the kernel's own peak over this download, which 20 ms samples can miss
    before = psutil.Process(pid).memory_info().rss
    n_bytes = n_lines = 0
    with RssSampler(pid) as rss:
        t0 = time.perf_counter()
        with c.stream("GET", f"/api/tags/{TAG}/readings.csv", params=params, timeout=600) as r:
            r.raise_for_status()
            truncated = r.headers["x-valvoja-truncated"]
            for chunk in r.iter_bytes():
                n_bytes += len(chunk)
                n_lines += chunk.count(b"\n")
        seconds = time.perf_counter() - t0
    peak = max(rss.peak, peak_rss_kb(pid) * 1024) if hwm else rss.peak
    rows = n_lines - 1  # the header row
    return {"seconds": round(seconds, 3), "rows": rows, "rows_per_s": round(rows / seconds),
            "mb_per_s": round(n_bytes / seconds / 1e6, 1), "bytes": n_bytes, "truncated": truncated,
            "rss_before_mb": round(before / 2**20, 1), "rss_peak_mb": round(peak / 2**20, 1),
            "rss_rise_mb": round((peak - before) / 2**20, 1), "rss_peak_from": "VmHWM" if hwm else "samples"}


def psql_copy(dsn: str, tag: int, start: datetime, end: datetime) -> dict:
    sql = (f"COPY (SELECT time, value, quality FROM readings WHERE tag_id = {tag} AND time >= '{start.isoformat()}' "
           f"AND time < '{end.isoformat()}' ORDER BY time) TO STDOUT WITH (FORMAT csv, HEADER)")
    env = dict(os.environ)
    if conninfo_to_dict(dsn).get("password"):
        env["PGPASSWORD"] = conninfo_to_dict(dsn)["password"]
    n_bytes = n_lines = 0
    t0 = time.perf_counter()
    with subprocess.Popen(["psql", "-X", "-q", dsn, "-c", sql], stdout=subprocess.PIPE, env=env) as p:
        assert p.stdout is not None
        while chunk := p.stdout.read(1 << 16):
            n_bytes += len(chunk)
            n_lines += chunk.count(b"\n")
    seconds = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"psql COPY failed (exit {p.returncode})")
    rows = n_lines - 1
    return {"seconds": round(seconds, 3), "rows": rows, "rows_per_s": round(rows / seconds),
            "mb_per_s": round(n_bytes / seconds / 1e6, 1), "bytes": n_bytes}


def run(admin: str, rows: int, runs: int) -> dict:
    with fresh_database(admin, "bench_console_csv") as dsn, tempfile.TemporaryDirectory() as tmp:
        seed_users(dsn)
        end = datetime.now(UTC).replace(microsecond=0)
        t0 = time.perf_counter()
        tag, start = seed(dsn, rows, end)
        print(f"seeded {rows:,} readings in {time.perf_counter() - t0:.1f} s")
        proc, base = start_console(dsn, Path(tmp))
        try:
            with httpx.Client(base_url=base, timeout=60) as c:
                c.post("/api/auth/login", json={"username": "viewer", "password": PASSWORD}).raise_for_status()
                params = {"from": start.isoformat(), "to": end.isoformat(), "resolution": "raw"}
                out: dict = {"console": [], "psql_copy": []}
                for i in range(runs):
                    d = download(c, proc.pid, params)
                    q = psql_copy(dsn, tag, start, end)
                    out["console"].append(d)
                    out["psql_copy"].append(q)
                    # a short or truncated file must not be timed as the whole one
                    if d["rows"] != rows or q["rows"] != rows or d["truncated"] != "false":
                        raise SystemExit(f"run {i + 1}: console {d['rows']:,} rows (truncated {d['truncated']}), "
                                         f"psql {q['rows']:,}; {rows:,} seeded")
                    print(f"run {i + 1}: console {d['rows']:,} rows in {d['seconds']:.2f} s = {d['rows_per_s']:,} "
                          f"rows/s, {d['mb_per_s']} MB/s, RSS {d['rss_before_mb']} -> peak {d['rss_peak_mb']} MB "
                          f"(+{d['rss_rise_mb']}); psql COPY {q['rows']:,} rows in {q['seconds']:.2f} s = "
                          f"{q['rows_per_s']:,} rows/s, {q['mb_per_s']} MB/s")
        finally:
            proc.terminate()
            proc.wait(10)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", help="postgresql:// URL of a server where a database may be created")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    admin = args.db or os.environ.get("VALVOJA_DB_URL")
    if admin:
        figures = run(admin, args.rows, args.runs)
    else:
        with PostgresServer(fsync=False) as server:
            figures = run(server.dsn(), args.rows, args.runs)
    median = {k: float(np.median([r["rows_per_s"] for r in v])) for k, v in figures.items()}
    summary = {"console_rows_per_s_median": median["console"], "psql_copy_rows_per_s_median": median["psql_copy"],
               "console_vs_copy": round(median["console"] / median["psql_copy"], 3),
               "console_rss_rise_mb_max": max(r["rss_rise_mb"] for r in figures["console"])}
    print(summary)
    write_results({"time": datetime.now(UTC).isoformat(), "machine": {"cpus": os.cpu_count()}, "rows": args.rows,
                   **figures, "summary": summary}, "console_csv.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
