"""Benchmark of the console (issue 6). Bars: trend p99 <= 300 ms; alert visible <= 2 s after it is raised.

    .venv/bin/python bench/bench_console.py --db postgresql://...   (or $VALVOJA_DB_URL; else embedded PostgreSQL)

In a fresh database on that server: one tag with a week of 1 Hz readings (604,800 rows) and its
1-minute / 1-hour rollups made by the gateway's rollup code, a second tag with the same readings but
no rollups (to show what the rollups buy), and 10,000 alerts. The console runs as its own process
(``valvoja console serve``); requests come from this process over loopback HTTP, one at a time.

Measured: API latency p50/p99 of a one-week trend (server-side downsampling to 1,000 points), of a
one-day and a six-hour trend, of the alert list (first page with counts, a filtered page, a deep page
by cursor); and in headless Chromium the time from an alert's INSERT commit to its row on an open
board (a MutationObserver stamps the row's arrival with the same clock). Writes
bench/results/console.json. The database is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import psycopg
from psycopg.conninfo import conninfo_to_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from console_support import PASSWORD, free_port, fresh_database, seed_users  # noqa: E402
from results_io import write_results  # noqa: E402

from edge.db.features import detect  # noqa: E402
from edge.sink import rollups  # noqa: E402
from emissions import synthetic  # noqa: E402

WEEK_S = 7 * 86400
N_ALERTS = 10_000
CHROMIUM = "/usr/bin/chromium"


def pct(samples: list[float]) -> dict:
    a = np.array(samples) * 1000
    return {"n": len(samples), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "max_ms": round(float(a.max()), 2),
            "mean_ms": round(float(a.mean()), 2)}


def seed(dsn: str, end: datetime) -> dict:
    t0 = time.perf_counter()
    start = end - timedelta(seconds=WEEK_S)
    t = int(start.timestamp()) + np.arange(WEEK_S, dtype=np.int64)
    rng = np.random.default_rng(1)
    v = 3.0 + 0.3 * np.sin(2 * np.pi * t / 86400.0) + 0.05 * rng.standard_normal(WEEK_S)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO assets (name, site, kind) VALUES ('P-101', 'KIP-North', 'pump'), "
                     "('F-201', 'KIP-North', 'fan'), ('B-301', 'KIP-South', 'boiler')")
        ids = synthetic.ensure_tags(conn, ["P-101.vib_rms", "P-101.vib_rms_norollup"], asset="P-101")
        for tag in ids.values():
            synthetic.copy_readings(conn, tag, t, v)
        features = detect(conn)
    t_copy = time.perf_counter() - t0

    async def roll():
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            await rollups.refresh(aconn, features, [ids["P-101.vib_rms"]], start, end)

    t1 = time.perf_counter()
    asyncio.run(roll())
    t_roll = time.perf_counter() - t1
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Bulk-load through a temporary copy so the row triggers (history, notify) do not fire 10,000 times.
        conn.execute("CREATE TEMP TABLE a (LIKE alerts INCLUDING DEFAULTS)")
        with conn.cursor().copy("COPY a (id, asset, kind, severity, state, raised_at, message, acknowledged_at, "
                                "acknowledged_by, cleared_at, dedup_key, last_seen) FROM STDIN") as cp:
            for i in range(N_ALERTS):
                raised = end - timedelta(seconds=60 * (N_ALERTS - i))
                state = i % 10  # 70 % cleared, 20 % acknowledged, 10 % open
                ack = raised + timedelta(minutes=5) if state < 9 else None
                clr = raised + timedelta(minutes=30) if state < 7 else None
                st = "cleared" if clr else "acknowledged" if ack else "raised"
                cp.write_row((f"B{i:05d}", ["P-101", "F-201", "B-301"][i % 3], "threshold",
                              ["info", "warning", "critical"][i % 3], st, raised, f"bench alert {i}", ack,
                              "engineer" if ack else None, clr, f"bench|{i}", raised))
        conn.execute("INSERT INTO alerts SELECT * FROM a")
        conn.execute("ANALYZE")
    return {"raw_rows_per_tag": WEEK_S, "copy_s": round(t_copy, 1), "rollup_s": round(t_roll, 1),
            "alerts": N_ALERTS, "edition": features.edition}


@contextlib.contextmanager
def bench_database(admin: str | None, prefix: str) -> Iterator[str]:
    """A fresh, migrated database (DSN) on the server of ``admin`` (else $VALVOJA_DB_URL, else the embedded
    PostgreSQL under var/bench-pg); dropped afterwards."""
    admin = admin or os.environ.get("VALVOJA_DB_URL")
    server = None
    if not admin:
        from edge.embedded import embedded_postgres

        server, admin = embedded_postgres(ROOT / "var" / "bench-pg", dbname="postgres")
    try:
        with fresh_database(admin, prefix) as dsn:
            yield dsn
    finally:
        if server is not None and hasattr(server, "cleanup"):
            server.cleanup()


@contextlib.contextmanager
def console_process(dsn: str, workdir: Path) -> Iterator[str]:
    """``valvoja console serve`` on ``dsn`` as a process of its own; yields its base URL, stops it afterwards."""
    proc, base = start_console(dsn, workdir)
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def start_console(dsn: str, workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    p = conninfo_to_dict(dsn)
    url = f"postgresql://{p.get('user', 'postgres')}@{p.get('host', '127.0.0.1')}:{p.get('port', 5432)}/{p['dbname']}"
    cfg = workdir / "console.toml"
    cfg.write_text(f'[console]\nlisten = "127.0.0.1:{port}"\nalert_poll_s = 1.0\n[database]\nurl = "{url}"\n')
    env = dict(os.environ)
    if p.get("password"):
        env["PGPASSWORD"] = p["password"]
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "console", "serve", "-c", str(cfg),
                             "--log-level", "warning"], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/api/openapi.json", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("console did not start")


def time_requests(c: httpx.Client, path: str, params: dict, n: int, check) -> dict:
    for _ in range(5):  # warm-up: pool connections, plans, page cache
        c.get(path, params=params).raise_for_status()
    samples = []
    body = None
    for _ in range(n):
        t0 = time.perf_counter()
        r = c.get(path, params=params)
        samples.append(time.perf_counter() - t0)
        r.raise_for_status()
        body = r.json()
    out = pct(samples)
    out.update(check(body))
    return out


def bench_api(base: str, end: datetime, n: int) -> dict:
    to = end.isoformat()
    res = {}
    with httpx.Client(base_url=base, timeout=60) as c:
        c.post("/api/auth/login", json={"username": "viewer", "password": PASSWORD}).raise_for_status()
        trend = lambda b: {"points": len(b["t"]), "source": b["source"], "bucket_s": b["bucket_s"]}  # noqa: E731
        res["trend_week"] = time_requests(c, "/api/tags/P-101.vib_rms/readings", {"to": to, "last": "P7D"}, n, trend)
        res["trend_day"] = time_requests(c, "/api/tags/P-101.vib_rms/readings", {"to": to, "last": "P1D"}, n, trend)
        res["trend_6h"] = time_requests(c, "/api/tags/P-101.vib_rms/readings", {"to": to, "last": "PT6H"}, n, trend)
        res["trend_week_without_rollups"] = time_requests(
            c, "/api/tags/P-101.vib_rms_norollup/readings", {"to": to, "last": "P7D"}, max(n // 10, 10), trend)
        items = lambda b: {"items": len(b["items"])}  # noqa: E731
        res["alerts_first_page"] = time_requests(c, "/api/alerts", {"limit": 100}, n, items)
        res["alerts_open_critical"] = time_requests(
            c, "/api/alerts", {"severity": "critical", "state": ["raised", "acknowledged"], "limit": 100}, n, items)
        first = c.get("/api/alerts", params={"limit": 1000}).json()
        for _ in range(4):
            first = c.get("/api/alerts", params={"limit": 1000, "cursor": first["next_cursor"]}).json()
        res["alerts_deep_page"] = time_requests(c, "/api/alerts", {"limit": 100, "cursor": first["next_cursor"]}, n,
                                                items)
    return res


def bench_browser(base: str, dsn: str, n: int) -> dict:
    from playwright.sync_api import sync_playwright

    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    delays = []
    with sync_playwright() as p, psycopg.connect(dsn, autocommit=True) as conn:
        b = p.chromium.launch(executable_path=CHROMIUM, args=args)
        page = b.new_page()
        page.goto(base + "/login")
        page.fill("#username", "viewer")
        page.fill("#password", PASSWORD)
        page.click("#login")
        page.wait_for_selector("#live-dot.on", timeout=15000)
        page.evaluate("""() => { window.__seen = {};
            new MutationObserver(() => { for (const tr of document.querySelectorAll('#alert-rows tr[data-id]')) {
              if (!(tr.dataset.id in window.__seen)) window.__seen[tr.dataset.id] = Date.now(); } })
            .observe(document.getElementById('alert-rows'), {childList: true, subtree: true}); }""")
        for i in range(n):
            aid = f"LIVE-{uuid.uuid4().hex[:8]}"
            # The clock starts before the INSERT is sent: its commit lies between this and execute's return, and
            # a start after the return would leave the commit's own round trip out of the figure.
            committed_ms = time.time() * 1000
            # As maintenance.store.apply_changes raises one: a committed INSERT.
            conn.execute("INSERT INTO alerts (id, asset, kind, severity, state, raised_at, message, dedup_key, "
                         "last_seen) VALUES (%s, 'P-101', 'threshold', 'critical', 'raised', now(), %s, %s, now())",
                         (aid, f"live alert {i}", f"live|{aid}"))
            page.wait_for_selector(f'tr[data-id="{aid}"]', timeout=10000)
            seen_ms = page.evaluate(f"() => window.__seen['{aid}']")
            delays.append((seen_ms - committed_ms) / 1000)
            time.sleep(0.2)
        b.close()
    return pct(delays)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", help="postgresql:// URL of a server where a database may be created")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--alerts-live", type=int, default=20)
    args = ap.parse_args()
    with bench_database(args.db, "bench_console") as dsn:
        seed_users(dsn)
        end = datetime.now(UTC).replace(microsecond=0)
        setup = seed(dsn, end)
        print(f"seeded: {json.dumps(setup)}")
        with tempfile.TemporaryDirectory() as tmp, console_process(dsn, Path(tmp)) as base:
            api = bench_api(base, end, args.requests)
            for k, v in api.items():
                print(f"{k:28} p50 {v['p50_ms']:8.2f} ms  p99 {v['p99_ms']:8.2f} ms  "
                      f"({', '.join(f'{a}={b}' for a, b in v.items() if not a.endswith('_ms') and a != 'n')})")
            browser = bench_browser(base, dsn, args.alerts_live) if Path(CHROMIUM).exists() else None
            if browser:
                print(f"{'alert_to_screen':28} p50 {browser['p50_ms']:8.2f} ms  p99 {browser['p99_ms']:8.2f} ms  "
                      f"max {browser['max_ms']:.2f} ms (n={browser['n']})")
    bars = {"trend_week_p99_le_300ms": api["trend_week"]["p99_ms"] <= 300,
            "alert_visible_le_2s": browser is not None and browser["max_ms"] <= 2000}
    out = {"time": datetime.now(UTC).isoformat(), "machine": {"cpus": os.cpu_count()}, "setup": setup, "api": api,
           "alert_to_screen": browser, "bars": bars}
    write_results(out, "console.json")
    print(f"bars: {bars}")
    return 0 if all(bars.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
