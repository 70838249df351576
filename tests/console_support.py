"""Helpers for the console tests: a fresh database per module on the test server (``pg_dsn``), the
console running under uvicorn on a free loopback port, and seed data written through the same
tables the gateway and the analytics write."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from serverproc import free_port

from console.config import ConsoleConfig
from console.passwords import hash_password
from edge.db.migrate import migrate

PASSWORD = "test-password-123"
ROLES = ("viewer", "engineer", "maintenance", "admin")


@contextmanager
def fresh_database(pg_dsn: str, prefix: str = "console"):
    """A new, migrated database on the server of ``pg_dsn``; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(pg_dsn, dbname=name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrate(conn)
        yield dsn
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')




class ConsoleServer:
    """The console app under uvicorn in a thread, on 127.0.0.1 and a free port."""

    def __init__(self, dsn: str, *, port: int | None = None, server: dict | None = None, **console: object):
        import uvicorn

        from console.app import create_app
        from console.server import server_options

        server = {"timeout_graceful_shutdown": 3, **(server or {})}  # console.server.server_options' arguments

        self.port = port or free_port()  # a given port: the console restarted where its pages are open
        params = conninfo_to_dict(dsn)
        host, port = params.get("host", "127.0.0.1"), params.get("port", 5432)
        url = f"postgresql://{params.get('user', 'postgres')}@{host}:{port}/{params['dbname']}"
        gateways = console.pop("gateways", [])
        models = console.pop("models", {})  # [models]: registry, report_cache
        self.cfg = ConsoleConfig.model_validate({
            "console": {"listen": f"127.0.0.1:{self.port}", "alert_poll_s": 0.5, **console},
            "database": {"url": url}, "models": models, "gateways": gateways})
        self.app = create_app(self.cfg, dsn=dsn)
        # The settings of `valvoja console serve` (console.server): its protocol, deadlines and proxy_headers off.
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on", **server_options(**server)))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ConsoleServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("console server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    @contextmanager
    def client(self, role: str | None = None, *, username: str | None = None, password: str = PASSWORD):
        """An HTTP client, logged in as the seeded user of ``role`` (with its CSRF token set) when given."""
        with httpx.Client(base_url=self.url, timeout=30) as c:
            if role or username:
                r = c.post("/api/auth/login", json={"username": username or role, "password": password})
                r.raise_for_status()
                c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
            yield c


def seed_users(dsn: str) -> None:
    """One user per role, named after the role, all with PASSWORD."""
    h = hash_password(PASSWORD)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.cursor().executemany(
            "INSERT INTO console_users (username, password_hash, role) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            [(r, h, r) for r in ROLES])


def seed_plant(dsn: str, *, hours: float = 48, step_s: int = 10, end: datetime | None = None) -> dict[str, int]:
    """Two sites, three assets, five tags with calibration records, and readings up to ``end`` (default now)
    at ``step_s``; rollups computed with the gateway's own rollup code."""
    from edge.db.features import detect
    from edge.sink import rollups
    from emissions import synthetic

    end = end or datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(hours=hours)
    assets = [("P-101", "KIP-North", "pump"), ("F-201", "KIP-North", "fan"), ("B-301", "KIP-South", "boiler")]
    tags = [("P-101.vib_rms", "P-101", "mm/s", 0, 20), ("P-101.bearing_temp", "P-101", "degC", 0, 150),
            ("F-201.vib_rms", "F-201", "mm/s", 0, 20), ("B-301.steam_flow", "B-301", "t/h", 0, 200),
            ("B-301.O2", "B-301", "%", 0, 21)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.cursor()
        cur.executemany("INSERT INTO assets (name, site, kind) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", assets)
        cur.executemany("INSERT INTO tags (name, asset, unit, range_min, range_max, sampling_ms) "
                        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        [(n, a, u, lo, hi, step_s * 1000) for n, a, u, lo, hi in tags])
        cur.execute("SELECT name, id FROM tags")
        ids = dict(cur.fetchall())
        cur.executemany("INSERT INTO tag_calibrations (tag_id, valid_from, certificate, calibrated_on, uncertainty, "
                        "uncertainty_unit) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        [(ids[n], start - timedelta(days=30), f"CAL-{i:04d}", (start - timedelta(days=30)).date(),
                          0.5, u) for i, (n, _, u, _, _) in enumerate(tags)])
        t = int(start.timestamp()) + step_s * np.arange(int(hours * 3600 / step_s), dtype=np.int64)
        rng = np.random.default_rng(7)
        for i, (name, *_rest) in enumerate(tags):
            base = [2.5, 65.0, 3.1, 120.0, 4.0][i]
            v = base * (1 + 0.05 * np.sin(2 * np.pi * t / 86400.0) + 0.02 * rng.standard_normal(len(t)))
            synthetic.copy_readings(conn, ids[name], t, v)
        features = detect(conn)

    async def roll() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            await rollups.refresh(aconn, features, list(ids.values()), start, end)

    run_async(roll())
    return ids



def run_async(coro):
    """Run a coroutine to completion in a thread of its own (Playwright's sync API may own this thread's loop)."""
    box: dict = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


async def _raise(dsn: str, alerts: list) -> None:
    from maintenance import store
    from maintenance.alerts import AlertChange, dedup_key

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        # One condition per test alert, so that each stays its own open alert.
        await store.apply_changes(conn, [AlertChange("raised", a, dedup_key(a.asset, a.tag, f"{a.kind}#{a.id}"))
                                         for a in alerts], source="test")


def make_alert(alert_id: str, *, asset: str = "P-101", severity: str = "warning", kind: str = "threshold",
               message: str = "", tag: str | None = None, raised_at: datetime | None = None,
               evidence: dict | None = None):
    from edge.records import Alert

    return Alert(alert_id, asset, tag, kind, severity, raised_at or datetime.now(UTC), message,
                 evidence=evidence or {})


def insert_alert(dsn: str, alert_id: str, **fields) -> None:
    """Raise an alert through maintenance's own store (the path the alert manager takes)."""
    run_async(_raise(dsn, [make_alert(alert_id, **fields)]))


def insert_alerts(dsn: str, alerts: list) -> None:
    """Raise several alerts (from `make_alert`) in one transaction."""
    run_async(_raise(dsn, alerts))


def seed_predictions(dsn: str, *, asset: str = "P-101", hours: float = 24, end: datetime | None = None) -> None:
    """Predictions every 10 minutes, written by maintenance's store: a regression of the bearing temperature
    with a 90 % interval, an anomaly score with its conformal p-value and alpha (as maintenance.live writes
    them), a RUL with an interval; and the ISO 20816 zone as maintenance derives it (readings of
    ``<tag>.iso_zone``, the zone's index, on a tag registered without an asset)."""
    from edge.records import Prediction
    from maintenance import store

    end = end or datetime.now(UTC)
    preds = []
    n = int(hours * 6)
    for i in range(n):
        t = end - timedelta(minutes=10 * (n - i))
        temp = 65 * (1 + 0.05 * np.sin(2 * np.pi * t.timestamp() / 86400.0))
        preds.append(Prediction("temp-gbr", "a1b2c3d4e5f6", asset, t, temp, temp - 2.0, temp + 2.0, 0.9,
                                kind="regression", target=f"{asset}.bearing_temp"))
        score = 0.2 + 0.6 * (i / n) ** 3
        preds.append(Prediction(f"anomaly:{asset}", "0f9e8d7c6b5a", asset, t, score, p_value=max(0.002, 1 - score),
                                kind="anomaly", details={"alpha": 0.25, "top_signals": [
                                    {"signal": f"{asset}.vib_rms", "share": 0.7},
                                    {"signal": f"{asset}.bearing_temp", "share": 0.3}]}))
        rul = 900 - 300 * (i / n)
        preds.append(Prediction("pump-rul", "99aa88bb77cc", asset, t, rul, rul * 0.8, rul * 1.2, 0.9, kind="rul",
                                details={"unit": "h"}))

    async def write():
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn, conn.transaction():
            await store.write_predictions(conn, preds)

    run_async(write())
    from emissions import synthetic

    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = synthetic.ensure_tags(conn, [f"{asset}.vib_rms.iso_zone", f"{asset}.vib_rms.kurtosis"])
        t = int(end.timestamp()) - 600 * np.arange(n, 0, -1)
        synthetic.copy_readings(conn, ids[f"{asset}.vib_rms.iso_zone"], t, np.where(np.arange(n) >= n * 0.8, 2.0, 1.0))
        synthetic.copy_readings(conn, ids[f"{asset}.vib_rms.kurtosis"], t, 3.0 + 0.1 * np.sin(np.arange(n)))


KINDS = ("pump", "fan", "compressor", "motor")


def seed_many_assets(dsn: str, n: int = 20_000, *, tags_per_asset: int = 3, indicators_per_tag: int = 2,
                     areas: int = 40, readings_per_tag: int = 12) -> None:
    """A big site: ``n`` assets ``A-00000`` ... over ``areas`` sites (``Area-00`` ...), each with
    ``tags_per_asset`` tags and ``indicators_per_tag`` condition indicators per tag (``<tag>.rms``, ... registered
    without an asset, as maintenance registers them); loaded with COPY. Each asset's first indicator has
    ``readings_per_tag`` good readings over the last three days, so that the planner sees readings of many tags in
    every chunk (in a chunk of one tag's readings only, it read any tag's newest readings from the chunk's time
    index, not from the tag's own key)."""
    from emissions import synthetic

    stats = ("rms", "kurtosis", "crest", "peak")[:indicators_per_tag]
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy("COPY assets (name, site, kind, description) FROM STDIN") as cp:
            for i in range(n):
                kind = KINDS[i % len(KINDS)]
                cp.write_row((f"A-{i:05d}", f"Area-{i % areas:02d}", kind, f"{kind} on line {i % 7}"))
        with cur.copy("COPY tags (name, asset, unit) FROM STDIN") as cp:
            for i in range(n):
                for j in range(tags_per_asset):
                    cp.write_row((f"A-{i:05d}.t{j}", f"A-{i:05d}", "mm/s"))
                    for s in stats:
                        cp.write_row((f"A-{i:05d}.t{j}.{s}", "", ""))
        if readings_per_tag:
            ids = np.array([r[0] for r in cur.execute(
                "SELECT id FROM tags WHERE name LIKE 'A-%%.t0.' || %s ORDER BY id", (stats[0],))], dtype=np.int32)
            now = int(datetime.now(UTC).timestamp())
            t = np.tile(now - 3 * 86400 + (3 * 86400 // readings_per_tag) * np.arange(readings_per_tag), len(ids))
            buf = synthetic.encode_readings(np.repeat(ids, readings_per_tag), t, np.full(len(t), 1.5))
            with cur.copy("COPY readings (time, tag_id, value, value_text, quality, flags, status, receive_time,"
                          " server_time) FROM STDIN (FORMAT BINARY)") as cp:
                cp.write(buf)
        cur.execute("ANALYZE assets")
        cur.execute("ANALYZE tags")
        cur.execute("ANALYZE readings")


def bad_run_after_good(dsn: str, tag: str, n_bad: int, *, end: datetime | None = None, good: float = 3.25,
                       rollups: bool = True) -> datetime:
    """The readings of ``tag`` (any before are deleted): one good one (``good``), then ``n_bad`` newer BAD ones
    (quality 2, a fault value of 9999) a second apart up to ``end`` (default now); with ``rollups``, the gateway's
    rollups of them, as the forwarder keeps them. Returns the good reading's time."""
    from edge.db.features import detect
    from edge.sink import rollups as rollup
    from emissions import synthetic

    end = (end or datetime.now(UTC)).replace(microsecond=0)
    first = int(end.timestamp()) - n_bad
    t = np.arange(first - 1, first + n_bad, dtype=np.int64)
    with psycopg.connect(dsn, autocommit=True) as conn:
        (tag_id,) = conn.execute("SELECT id FROM tags WHERE name = %s", (tag,)).fetchone()
        conn.execute("DELETE FROM readings WHERE tag_id = %s", (tag_id,))  # these are the tag's whole history
        synthetic.copy_readings(conn, tag_id, t, np.r_[good, np.full(n_bad, 9999.0)],
                                quality=np.r_[0, np.full(n_bad, 2)].astype(np.int16))
        conn.execute("ANALYZE readings")
        features = detect(conn)
    start = datetime.fromtimestamp(int(t[0]), UTC)
    if rollups:
        async def roll() -> None:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
                await rollup.refresh(aconn, features, [tag_id], start, end + timedelta(minutes=1))

        run_async(roll())
    return start


@contextmanager
def bad_indicator_readings(dsn: str, asset: str = "P-101"):
    """A minute from now, a zone D and a kurtosis of 9999 of ``asset``'s indicators (as `seed_predictions` registers
    them), both stored with quality BAD; removed afterwards."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = dict(conn.execute("SELECT name, id FROM tags WHERE name = ANY(%s)",
                                ([f"{asset}.vib_rms.iso_zone", f"{asset}.vib_rms.kurtosis"],)).fetchall())
        for name, value in ((f"{asset}.vib_rms.iso_zone", 3.0), (f"{asset}.vib_rms.kurtosis", 9999.0)):
            conn.execute("INSERT INTO readings (time, tag_id, value, quality, flags, status, receive_time, server_time)"
                         " VALUES (now() + interval '1 minute', %s, %s, 2, 0, 0, now(), now())", (ids[name], value))
        try:
            yield
        finally:
            conn.execute("DELETE FROM readings WHERE tag_id = ANY(%s) AND quality = 2", (list(ids.values()),))


def midday_zone() -> str:
    """A fixed-offset zone in which it is now about noon: the stack's running day then has hours done whenever the
    test runs (in UTC, a run in the first hour after midnight found no average of the day yet)."""
    east = (12 - datetime.now(UTC).hour + 11) % 24 - 11  # -11 .. 12 hours east of UTC
    return "UTC" if east == 0 else f"Etc/GMT{'-' if east > 0 else '+'}{abs(east)}"  # POSIX signs: GMT-3 is UTC+3


def insert_revision(dsn: str, day: datetime, *, period: str = "day", start_h: float = 0.0, hours: float = 24.0,
                    old: float | None = 180.5, new: float | None = 150.25, old_status: int = 1,
                    new_status: int = 0) -> int:
    """One stored revision of stack WI1's NOx average of ``period`` (starting ``start_h`` hours into ``day``, lasting
    ``hours``), as `emissions.revisions.record` writes it an hour ago, naming the newest run; returns that run's id."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        (run_id,) = conn.execute("SELECT max(id) FROM emission_runs WHERE stack = 'WI1'").fetchone()
        start = day.astimezone(UTC) + timedelta(hours=start_h)
        conn.execute("INSERT INTO emission_revisions (stack, pollutant, period, period_start, period_end, old_value,"
                     " new_value, old_status, new_status, run_id, revised_at)"
                     " VALUES ('WI1', 'NOx', %s, %s, %s, %s, %s, %s, %s, %s, now() - interval '1 h')",
                     (period, start, start + timedelta(hours=hours), old, new, old_status, new_status, run_id))
    return run_id


def seed_emissions(dsn: str, *, days: int = 3, timezone: str = "UTC", name: str = "WI1") -> str:
    """A waste-incinerator stack: synthetic analyser readings up to now, averaged and judged by emissions/."""
    from emissions import job, synthetic

    cfg = synthetic.waste_stack(name, timezone=timezone)
    end = int(datetime.now(UTC).timestamp()) // 60 * 60
    start = end - days * 86400
    with psycopg.connect(dsn, autocommit=True) as conn:
        series = synthetic.synthetic_series(cfg, start, days * 1440, seed=3)
        ids = synthetic.ensure_tags(conn, sorted(series), asset="WI1")
        for tag, (t, v, f) in series.items():
            synthetic.copy_readings(conn, ids[tag], t, v, f)
        job.run_span(conn, cfg, start, end, context="month", whole_days=False)
    return cfg.name


class Dialogs:
    """The page's confirm() questions, kept in ``asked`` and answered by ``accept`` (False: dismissed, a user's no)."""

    def __init__(self, page):
        self.asked: list[str] = []
        self.accept = False
        page.on("dialog", self._answer)

    def _answer(self, dialog) -> None:
        self.asked.append(dialog.message)
        dialog.accept() if self.accept else dialog.dismiss()
